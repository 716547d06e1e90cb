"""Caller side of GptOssMatmul-v0: every input, every expected output and every clock live here.

:class:`MatmulDriver` runs one evaluation against a worker session: it builds the correctness cases and the
speed trials' inputs from seeds derived one-way from the evaluation seed, computes every expected product
itself with :func:`naive_matmul`, sends the worker one plain request per call (the matrices packed as
base64 doubles, so the wire costs little inside the timed call), checks each reply (the handler checked
exact types and shape, :func:`check_matrix`; the caller unpacks exactly n x m doubles) against its own product (:func:`compare`,
trusted value on the left), and times each speed call as the worker's CPU time read by the caller from
outside (``session.last_cpu_s``). The worker never sees an expected output, a seed or a clock that counts.

The speed baseline is the plain triple loop (``references.NAIVE_SOURCE``), trusted source run through the
same sandbox machinery in a worker of its own (from a separate baseline pool) on the same inputs, paired
trial by trial with the completion's calls (:class:`PairedBaseline`): for each speed trial the caller sends
the same matrices to the baseline's worker right before or right after the completion's (alternating), so
both CPU times are measured under the same load. Both sides pay the same request overhead and the same
restricted compilation, so the naive reference measures 1x. The speedup is the median over trials of
baseline CPU / function CPU.

Shapes: ``A`` is ``n`` rows of ``k`` numbers, ``B`` is ``k`` rows of ``m`` numbers, the result is ``n``
rows of ``m`` numbers. When ``k == 0``, ``A`` is ``n`` empty rows and ``B`` is ``[]``; then ``m`` is 0 and
the result is ``n`` empty rows.
"""

from __future__ import annotations

import atexit
import functools
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from ossgym.envs.code.base import read_reply, session_cpu
from ossgym.envs.code.matmul.matrices import (DEFAULT_RTOL, check_matrix, compare, correctness_cases,
                                              naive_matmul, pack_matrix, random_matrix, speed_inputs,
                                              unpack_matrix)

__all__ = [
    "MatmulDriver",
    "naive_matmul",
    "random_matrix",
    "speed_inputs",
    "speed_set",
    "correctness_cases",
    "check_matrix",
    "compare",
    "DEFAULT_RTOL",
]

_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 800
_REQUEST_SLACK_S = 0.02  # CPU a request may add beyond the call (decoding the matrices, checking the reply)



@functools.lru_cache(maxsize=32)
def speed_set(seed: int, trials: int, shape: tuple[int, int, int]) -> tuple[tuple[Any, Any, Any], ...]:
    """The speed trials' (A, B, expected) of a seed, computed once per seed (GRPO groups share seeds).

    Callers must not mutate the matrices (the drivers send them as plain data and never touch them).
    """
    out = []
    for t in range(trials):
        A, B = speed_inputs(seed, t, shape)
        out.append((A, B, naive_matmul(A, B)))
    return tuple(out)


@dataclass
class MatmulDriver:
    """One evaluation of an untrusted ``matmul`` (or, with ``baseline=True``, the timing of the trusted
    triple loop): correctness cases first, then the timed speed trials; all state stays in this object."""

    cases: list[tuple[list[list[float]], list[list[float]]]]
    speed_seed: int
    trials: int = 7
    shape: tuple[int, int, int] = (48, 48, 48)
    rtol: float = DEFAULT_RTOL
    call_time_limit_s: float = 0.1
    time_budget_s: float = 5.0
    baseline: bool = False
    #: the trusted baseline, timed trial by trial beside this driver's calls (see :class:`PairedBaseline`)
    partner: Any = None
    #: per case: "ok" or why not (filled as the cases run)
    case_status: list[str] = field(init=False, default_factory=list)
    #: caller-measured CPU seconds of each speed call that returned a correct product
    trial_cpu_s: list[float] = field(init=False, default_factory=list)
    #: why the evaluation is not correct everywhere (None while it is)
    problem: str | None = field(init=False, default=None)
    traceback: str = field(init=False, default="")
    failure: str | None = field(init=False, default=None)  # the session failed (crash, memory, ...)
    started: bool = field(init=False, default=False)
    cpu_s: float = field(init=False, default=0.0)

    @property
    def correct(self) -> bool:
        """Every case and every speed trial ran and was right."""
        return self.started and self.problem is None and len(self.trial_cpu_s) == self.trials

    def _call(self, session: Any, A: list, B: list, expected: list, name: str) -> float | None:
        """One checked call; the caller-measured CPU seconds, or None (``problem`` says why)."""
        n, k, m = len(A), len(B), (len(B[0]) if B else 0)
        reply = read_reply(session.request({"A": pack_matrix(A), "B": pack_matrix(B), "shape": [n, k, m]}))
        self.cpu_s = session_cpu(session, "cpu_s")
        used = session_cpu(session, "last_cpu_s")
        if not reply.ok:
            self.failure = f"{reply.kind}: {reply.message}".strip()
            self.problem = f"{name}: the worker failed ({self.failure})"
            return None
        if used > self.call_time_limit_s + _REQUEST_SLACK_S:
            self.problem = f"{name}: timed out, the call used more than {self.call_time_limit_s:g} s of CPU time"
            return None
        value = reply.value
        if type(value) is dict:  # the handler's failure record (plain strings, for feedback only)
            status, detail = value.get("fail"), value.get("detail")
            words = {"timeout": "timed out,", "error": "raised", "invalid_output": "invalid result,"}
            word = words.get(status, "failed,") if type(status) is str else "failed,"
            self.problem = f"{name}: {word} {detail if type(detail) is str else ''}".strip()[:_DETAIL_CHARS]
            tb = value.get("traceback")
            self.traceback = tb[-_TRACEBACK_CHARS:] if type(tb) is str else ""
            return None
        try:
            value = unpack_matrix(value, n, m)
        except ValueError:
            self.problem = f"{name}: the reply was not a {n}x{m} product"
            return None
        ok, err = compare(expected, value, A, B, self.rtol)
        if not ok:
            self.problem = f"{name}: wrong result (max relative error {err:.3g})"
            return None
        if self.cpu_s > self.time_budget_s:
            self.problem = f"{name}: the evaluation used more than its {self.time_budget_s:g} s of CPU time"
            return None
        return used

    def __call__(self, session: Any) -> dict:
        """Run the cases (not for the baseline) and the speed trials; a plain summary (the state stays here)."""
        self.started = True
        if not self.baseline:
            for index, (A, B) in enumerate(self.cases):
                rows, cols = len(A), (len(B[0]) if B else 0)
                name = f"case {index} ({rows}x{len(B)} times {len(B)}x{cols})"
                if self._call(session, A, B, naive_matmul(A, B), name) is None:
                    self.case_status.append(self.problem or "failed")
                    return self.summary()
                self.case_status.append("ok")
        partner = self.partner
        if partner is not None:
            partner.start()
        try:
            for t, (A, B, expected) in enumerate(speed_set(self.speed_seed, self.trials, self.shape)):
                if partner is not None and t % 2:  # alternate which side goes first
                    partner.time(t)
                used = self._call(session, A, B, expected, f"speed trial {t}")
                if partner is not None and not t % 2:
                    partner.time(t)
                if used is None:
                    break
                self.trial_cpu_s.append(used)
        finally:
            if partner is not None:
                partner.stop()
        return self.summary()

    def time_trial(self, session: Any, t: int) -> None:
        """Baseline side: run speed trial ``t`` once (its CPU time goes to ``trial_cpu_s``)."""
        A, B, expected = speed_set(self.speed_seed, self.trials, self.shape)[t]
        used = self._call(session, A, B, expected, f"baseline trial {t}")
        if used is not None:
            self.trial_cpu_s.append(used)

    def summary(self) -> dict:
        return {"cases": list(self.case_status), "trial_cpu_s": list(self.trial_cpu_s), "problem": self.problem}


_baseline_pools: dict[int, Any] = {}
_baseline_lock = threading.Lock()


def baseline_pool() -> Any:
    """The process's pool for trusted baselines (apart from the completions' pool, so a completion holding a
    slot of its own pool can always get a baseline worker beside it: no wait on itself)."""
    from ossgym.sandbox import SandboxPool

    with _baseline_lock:
        pool = _baseline_pools.get(os.getpid())
        if pool is None or pool._closed:
            pool = _baseline_pools[os.getpid()] = SandboxPool()
            atexit.register(pool.close)
        return pool


class PairedBaseline:
    """The trusted baseline (its own worker, trusted source) timed trial by trial right beside the
    completion's calls: for every speed trial the caller sends the same inputs to the baseline's worker
    just before or just after the completion's, so both measurements see the same load (the pair's
    requests alternate, only one of the two computes at a time)."""

    def __init__(self, source: str, task: Any, driver: MatmulDriver) -> None:
        self.source, self.task, self.driver = source, task, driver
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.result: Any = None

    def __getstate__(self) -> dict:
        """Picklable (a driver is shipped to a Ray scoring actor and back): the queues and the thread are
        per-run machinery, rebuilt empty; the baseline's driver and result are the state."""
        return {"source": self.source, "task": self.task, "driver": self.driver, "result": self.result}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"], state["task"], state["driver"])
        self.result = state["result"]

    def _drive(self, session: Any) -> None:
        self.driver.started = True
        while True:
            t = self._todo.get()
            if t is None:
                return
            self.driver.time_trial(session, t)
            self._done.put(t)

    def start(self) -> None:
        def run() -> None:
            self.result = baseline_pool().run(self.source, self.task, self._drive)
            self._done.put(None)  # the worker ended (or never started): stop waiting

        self._thread = threading.Thread(target=run, name="ossgym-baseline", daemon=True)
        self._thread.start()

    def time(self, t: int) -> None:
        """Time trial ``t`` on the baseline's worker and wait for it."""
        if self._thread is None or not self._thread.is_alive():
            return
        self._todo.put(t)
        self._done.get()

    def stop(self) -> None:
        self._todo.put(None)
        if self._thread is not None:
            self._thread.join()
