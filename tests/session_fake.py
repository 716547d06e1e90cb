"""TEST-ONLY stand-ins for the sandbox's caller-driven Session, to test the tasks' drivers and judges alone.

``FakeSession`` runs a task's real worker-side handler in this process on a TRUSTED test function (never
on model code), with the sandbox's exception types and a plain-data round trip at the boundary, and counts
CPU time deterministically (``cost_s`` per call, plus what the function asks for via ``spend``), so budget
tests are exact. ``HostileSession`` is the compromised worker reduced to what it controls from the caller's
point of view: any reply to any request, and how much CPU it burns; nothing else crosses.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from ossgym.sandbox import CallTimeout, UserError, decode_plain, encode_plain


@dataclass(frozen=True)
class FakeReply:
    ok: bool
    value: Any = None
    kind: str = ""
    message: str = ""


def _roundtrip(value: Any) -> Any:
    return decode_plain(encode_plain(value, 64 << 20), 64 << 20)


def load_handler(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class _Ctx:
    def __init__(self, session: "FakeSession") -> None:
        self.s = session

    def call(self, *args: Any) -> Any:
        s = self.s
        s._spent = 0.0
        try:
            value = s.fn(*_roundtrip(list(args)))
        except CallTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - the test function's error, as the worker reports it
            raise UserError(type(exc).__name__, str(exc), f"Traceback: {type(exc).__name__}") from None
        used = s.cost_s + s._spent
        s._request_cpu += used
        if used > s.call_limit_s:
            raise CallTimeout(used, s.call_limit_s)
        return value


class FakeSession:
    """In-process session: ``request`` runs the handler on the trusted ``fn``; CPU time is counted, not read."""

    def __init__(self, fn: Callable, handler: str | Callable, call_limit_s: float = 0.05, cost_s: float = 1e-4,
                 request_cost_s: float = 0.0) -> None:
        self.fn = fn
        self.handler = load_handler(handler) if isinstance(handler, str) else handler
        self.call_limit_s, self.cost_s, self.request_cost_s = call_limit_s, cost_s, request_cost_s
        self.cpu_s = 0.0
        self.last_cpu_s = 0.0
        self.requests = 0
        self._spent = 0.0
        self._request_cpu = 0.0

    def spend(self, seconds: float) -> None:
        """Called by a test function to pretend its current call used ``seconds`` of CPU time."""
        self._spent += seconds

    def request(self, data: Any) -> FakeReply:
        self.requests += 1
        self._request_cpu = self.request_cost_s
        try:
            value = self.handler(self.fn, _roundtrip(data), _Ctx(self))
            reply = FakeReply(True, _roundtrip(value))
        except UserError as exc:
            reply = FakeReply(False, None, "memory" if exc.type_name == "MemoryError" else "error", exc.message)
        except Exception as exc:  # noqa: BLE001
            reply = FakeReply(False, None, "error", f"handler raised {type(exc).__name__}: {exc}")
        self.last_cpu_s = self._request_cpu
        self.cpu_s += self._request_cpu
        return reply


class HostileSession:
    """A compromised worker as the caller sees it: ``respond(request) -> (reply value, cpu seconds burnt)``.

    The caller measures the CPU time itself, so the attacker can burn more but never report less: the
    ``cpu`` it returns is clamped at ``floor_s`` per request (what the request really cost).
    """

    def __init__(self, respond: Callable[[Any], tuple[Any, float]], floor_s: float = 1e-4, fail: str | None = None):
        self.respond, self.floor_s, self.fail = respond, floor_s, fail
        self.cpu_s = 0.0
        self.last_cpu_s = 0.0
        self.seen: list = []

    def request(self, data: Any) -> FakeReply:
        data = _roundtrip(data)
        self.seen.append(data)
        value, cpu = self.respond(data)
        self.last_cpu_s = max(float(cpu), self.floor_s)
        self.cpu_s += self.last_cpu_s
        if self.fail is not None:
            return FakeReply(False, None, self.fail, "forced failure")
        try:
            return FakeReply(True, _roundtrip(value))
        except Exception:  # noqa: BLE001 - not plain data: the real session calls that invalid
            return FakeReply(False, None, "invalid", "not plain data")


def run_local(task: Any, fn: Callable, seed: int, **session_kw: Any) -> Any:
    """Score a trusted Python ``fn`` through ``task``'s real driver, handler and judge (no worker)."""
    from ossgym.sandbox import Outcome, SandboxResult

    driver = task.driver(seed)
    session_kw.setdefault("call_limit_s", task.call_time_limit_s)
    session = FakeSession(fn, task.handler, **session_kw)
    partner, baseline = getattr(driver, "partner", None), None
    base = task.baseline(seed)
    if partner is not None:  # a paired baseline (matmul): run its trusted source in-process too
        driver.partner, base = None, (partner.source, partner.driver)
    driver(session)
    if base is not None:
        ns: dict = {}
        exec(base[0], ns)  # noqa: S102 - the task's own trusted reference source
        baseline = base[1]
        baseline(FakeSession(ns[task.entrypoint], task.handler, **session_kw))
    return task.judge(SandboxResult(Outcome.OK, None), driver, baseline), driver, session


class LocalPool:
    """TEST-ONLY pool: ``run_batch`` runs each driver against a FakeSession on the source exec'd in this
    process. Only for trusted test sources (references); model code only ever runs in the real sandbox."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.closed = False
        self.batches = 0

    def run_batch(self, jobs):
        import time

        from ossgym.sandbox import Outcome, SandboxResult, check_policy

        self.batches += 1
        results = []
        for source, task, driver in jobs:
            time.sleep(self.delay_s)
            violations = check_policy(source, task)
            if violations:
                results.append(SandboxResult(Outcome.POLICY_VIOLATION, None, "policy", tuple(violations)))
                continue
            ns: dict = {}
            exec(source, ns)  # noqa: S102 - trusted test sources only
            handler = getattr(task, "handler", None) or task.harness
            value = driver(FakeSession(ns[task.entrypoint], handler, call_limit_s=task.call_timeout_s))
            results.append(SandboxResult(Outcome.OK, value))
        return results

    def close(self) -> None:
        self.closed = True
