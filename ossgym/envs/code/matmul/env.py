"""GptOssMatmul-v0: the model writes a fast pure-Python ``matmul(A, B)``; the caller checks it and times it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from ossgym.envs.code.base import CodeEnv, CodeTask, TaskConfig
from ossgym.envs.code.matmul.judge import DEFAULT_RTOL, MatmulDriver, PairedBaseline, correctness_cases
from ossgym.envs.code.matmul.references import NAIVE_SOURCE
from ossgym.errors import ConfigError
from ossgym.options import option, redefault
from ossgym.sandbox import Outcome, SandboxResult


@dataclass(frozen=True)
class MatmulConfig(TaskConfig):
    """Options of GptOssMatmul-v0 (defaults in the table of :class:`GptOssMatmulEnv`); shared ones in TaskConfig."""

    #: a matmul evaluation takes well under a second of CPU: a stuck worker is ended sooner than a 2048 one
    liveness_wall_s: float = redefault(TaskConfig, "liveness_wall_s", 30.0)
    case_max_dim: int = option(12, "largest dimension of the correctness cases", min=3, max=64)
    speed_shape: tuple[int, int, int] = option((48, 48, 48), "(n, k, m) of the speed trials", item=int, min=1,
                                               max=256)
    speed_trials: int = option(7, "timed trials", min=1, max=101)
    rtol: float = option(DEFAULT_RTOL, "relative error allowed (of k * max|A| * max|B|)", min=0.0, min_open=True,
                         max=1e-3, max_open=True)
    call_time_limit_s: float = option(0.1, "CPU seconds per call of matmul", min=0.0, min_open=True, max=3600.0)
    time_budget_s: float = option(3.0, "CPU seconds of the whole evaluation (it must leave time for the checks)",
                                  min=0.2, min_open=True, max=3600.0)
    correct_weight: float = option(1.0, "weight of the correctness component", min=0.0, min_open=True)
    speed_weight: float = option(1.0, "weight of the speed component", min=0.0)
    speed_min_log2: float = option(-1.5, "log2 speedup at which the speed reward is clipped below")
    speed_max_log2: float = option(4.0, "log2 speedup at which the speed reward is clipped above")

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.speed_shape) != 3:
            raise ConfigError("speed_shape", f"must be (n, k, m), ints in 1..256, got {self.speed_shape!r}",
                              "Pass speed_shape=(48, 48, 48).")
        if not self.speed_min_log2 < self.speed_max_log2:
            raise ConfigError("speed_min_log2", f"must be below speed_max_log2 ({self.speed_max_log2!r})", "Pass -1.5 and 4.0.")
        if self.speed_weight * -self.speed_min_log2 >= 2 * self.correct_weight:
            raise ConfigError("speed_min_log2", "a slow correct function must still beat every incorrect one: need "
                              "speed_weight * -speed_min_log2 < 2 * correct_weight", "Pass speed_min_log2=-1.5.")


class MatmulTask(CodeTask):
    """The matmul task: prompt, sandbox limits, the caller-side checks and timing, and the trusted judge."""

    entrypoint = "matmul"
    component_names = ("format", "policy", "correctness", "speed", "crash")
    handler = "ossgym.envs.code.matmul.handler:handle"
    seed_namespace = "ossgym.GptOssMatmul"
    config: MatmulConfig

    def __init__(self, config: MatmulConfig):
        super().__init__(config)
        self.call_time_limit_s = config.call_time_limit_s

    def instructions(self) -> str:
        c = self.config
        n, k, m = c.speed_shape
        return (
            "You write a fast matrix multiplication in pure Python.\n\n"
            "Write exactly one top-level function:\n\n"
            "    def matmul(A, B):\n\n"
            "- `A` is an n x k matrix and `B` is a k x m matrix, each a list of rows, each row a list of floats."
            " Return their product C = A B as a new list of n rows, each a list of m numbers, where"
            " C[i][j] = sum over t of A[i][t] * B[t][j].\n"
            "- Every shape must work: 1 x N and N x 1 matrices, non-square ones, inner dimension 1, and an empty"
            " inner dimension: when k = 0, `A` is n empty lists and `B` is [] (so m = 0), and the result is n"
            " empty lists, e.g. matmul([[], []], []) == [[], []].\n"
            "- The result must be exactly a `list` of `list`s of `float` (or `int`) values: no tuples, no bools,"
            " no subclasses. Results are compared with an exact reference up to a relative error of"
            f" {c.rtol:g} of k * max|A| * max|B|.\n"
            f"- Correctness is checked on matrices generated fresh for every evaluation (random values and shapes"
            f" up to {c.case_max_dim} x {c.case_max_dim}, including all the cases above).\n"
            f"- Speed is measured on {c.speed_trials} trials with {n} x {k} times {k} x {m} matrices, new values"
            " in every trial (caching results cannot help), each call timed in CPU time from outside your"
            " process against a plain triple loop `for i: for j: for t: s = s + A[i][t] * B[t][j]` run the"
            " same way on the same inputs. Every trial's result is checked too.\n"
            f"- Each call may use at most {c.call_time_limit_s:g} s of CPU time; the whole evaluation has"
            f" {c.time_budget_s:g} s of CPU time. A call that raises, times out or returns a wrong result fails the evaluation.\n"
            "- Reward: a correct function earns the correctness reward plus a speed reward that grows with log2"
            " of its median speedup over the triple loop (clipped); a wrong one earns no speed reward.\n\n"
            f"{self.rules()} No numpy or other modules.\n\n"
            "Answer with the complete code in one ```python block."
        )

    def user_prompt(self) -> str:
        n, k, m = self.config.speed_shape
        return (
            "Write `matmul(A, B)` in pure Python: correct for every shape, and as fast as you can make it on"
            f" {n} x {k} times {k} x {m} matrices."
        )

    def cases(self, seed: int) -> list[tuple[list[list[float]], list[list[float]]]]:
        """The correctness cases of evaluation seed ``seed`` (built by the caller, one-way from the seed)."""
        return correctness_cases(self.derived_seed("cases", seed), self.config.case_max_dim)

    def driver(self, seed: int, baseline: bool = False, paired: bool = True) -> MatmulDriver:
        """The completion's driver, with its paired trusted baseline (``paired``); ``baseline=True``: the
        baseline's own driver."""
        c = self.config
        d = MatmulDriver([] if baseline else self.cases(seed), self.derived_seed("speed", seed),
                         trials=c.speed_trials, shape=c.speed_shape, rtol=c.rtol,
                         call_time_limit_s=c.call_time_limit_s, time_budget_s=c.time_budget_s, baseline=baseline)
        if paired and not baseline:
            d.partner = PairedBaseline(NAIVE_SOURCE, self.sandbox_task(seed), self.driver(seed, baseline=True))
        return d

    def judge(self, result: SandboxResult, driver: Any, baseline: Any = None) -> tuple[dict[str, float], str, dict]:
        """Correct everywhere (checked by the driver against the caller's products), then timed against the baseline."""
        c = self.config
        crashed = result.outcome is not Outcome.OK or driver.failure is not None or not driver.started
        correct = driver.correct and not crashed
        components = {
            "correctness": c.correct_weight if correct else -c.correct_weight,
            "speed": 0.0,
            "crash": c.weights.crash if crashed else 0.0,
        }
        details: dict = {"correct": correct, "cases_ok": driver.case_status.count("ok"), "speedup": None,
                         "fn_cpu_s": list(driver.trial_cpu_s)}
        lines = []
        ncases = len(driver.cases)
        if crashed:
            why = driver.failure or (f"{result.outcome.value}: {result.message}" if result.outcome is not Outcome.OK
                                     else "the evaluation did not start")
            lines.append(f"The evaluation failed ({why}).")
        if not correct:
            problem = driver.problem or "the evaluation did not finish"
            if ncases and driver.case_status.count("ok") == ncases:
                problem = f"all {ncases} correctness cases passed, but {problem}"
            lines.append(f"Not correct: {problem}")
            if driver.traceback:
                lines.append(driver.traceback)
            lines.append("No speed reward: speed counts only for a function that is correct everywhere.")
            return components, "\n".join(lines), details
        if baseline is None and driver.partner is not None:
            baseline = driver.partner.driver
        base_ok = baseline is not None and baseline.correct and len(baseline.trial_cpu_s) == len(driver.trial_cpu_s)
        ratios = [b / f for b, f in zip(baseline.trial_cpu_s, driver.trial_cpu_s) if f > 0] if base_ok else []
        if not ratios or len(ratios) != c.speed_trials:
            components["speed"] = c.speed_weight * c.speed_min_log2
            lines.append(f"Correct on all {ncases} cases and {c.speed_trials} speed trials, but the baseline timing"
                         " failed; speed counts as the minimum.")
            return components, "\n".join(lines), details
        speedup = statistics.median(ratios)
        log2 = math.log2(speedup)
        components["speed"] = c.speed_weight * min(max(log2, c.speed_min_log2), c.speed_max_log2)
        n, k, m = c.speed_shape
        fn_ms = 1000 * sum(driver.trial_cpu_s) / c.speed_trials
        ref_ms = 1000 * sum(baseline.trial_cpu_s) / c.speed_trials
        lines.append(
            f"Correct on all {ncases} cases and {c.speed_trials} speed trials. Speed on {n}x{k} times {k}x{m}:"
            f" median {speedup:.2f}x the triple loop (log2 {log2:+.2f}, counted within"
            f" [{c.speed_min_log2:g}, {c.speed_max_log2:g}]); your function took {fn_ms:.2f} ms of CPU per call,"
            f" the triple loop {ref_ms:.2f} ms."
        )
        details.update(speedup=speedup, ratios=ratios, ref_cpu_s=list(baseline.trial_cpu_s))
        return components, "\n".join(lines), details


class GptOssMatmulEnv(CodeEnv):
    """GptOssMatmul-v0: the model writes a pure-Python ``matmul(A, B)``, rewarded for being correct, then fast.

    **Observation**: the task prompt (``str``); ``info["messages"]`` holds it as system + user messages
    (with ``max_turns > 1``, then each earlier attempt's answer as an assistant turn and its feedback as a
    user turn).
    **Action**: the completion text (any ``str``); only the final channel's last ``python`` block that
    defines ``matmul`` counts.

    **Evaluation** (caller-driven; :mod:`ossgym.envs.code.matmul.judge`): the code passes the sandbox
    policy and is loaded in a sandbox worker beside the trusted handler, which answers one
    ``matmul(A, B)`` call per request. The caller holds every input and every expected output:

    - *Correctness*: the caller builds the cases from a seed derived one-way from the evaluation seed
      (random values and scales; shapes 1xN, Nx1, inner dimension 1, 1x1, wide, tall, ``k = 0`` and random
      ones up to ``case_max_dim``), sends them one per request, and checks each reply with exact types and
      shape against its own triple loop (trusted value on the left, error bound
      ``rtol * k * max|A| * max|B|``). ``k = 0``: ``A`` is n empty rows, ``B`` is ``[]`` and the result
      is n empty rows.
    - *Speed*: ``speed_trials`` trials on ``speed_shape`` matrices with new values each trial (caching
      cannot pay); every product is checked in full against the caller's. Each call is timed as the
      worker's CPU time read by the caller from outside the worker (``Session.last_cpu_s``), so nothing the
      code does can change its own clock. The baseline is the plain triple loop, trusted source run in a
      worker of its own through the same machinery on the same inputs, each trial sent to it right beside
      the completion's (alternating which goes first), so both see the same load. The speedup is the
      median over trials of baseline CPU / function CPU (a naive submission measures about 1x).

    Speed counts only when every case and every trial is correct and the evaluation finished; a call that
    raises, times out, returns a wrong or mistyped value, or runs out of the CPU budget makes the
    evaluation incorrect, so time spent in exceptions or timeouts never earns reward.

    **Reward** (components sum to it; ``info["reward_components"]``):

    =========== ============================================================ =========================
    component   value                                                         range (defaults)
    =========== ============================================================ =========================
    format      +0.5 compilable ``matmul`` found; -0.5 syntax error;          -1 .. 0.5
                -1 none found
    policy      +0.5 sandbox policy passed; -1 violation                      -1 .. 0.5
    correctness +``correct_weight`` when every case and speed trial is         -1 .. 1
                correct; -``correct_weight`` otherwise
    speed       ``speed_weight`` x clip(log2(median speedup over naive),      -1.5 .. 4 (0 if incorrect)
                ``speed_min_log2``, ``speed_max_log2``); only when correct
    crash       -1 when the evaluation itself died (memory, total timeout,     -1 .. 0
                crash, invalid output)
    =========== ============================================================ =========================

    A correct function earns at least 0.5 + 0.5 + 1 - 1.5 = 0.5 (defaults) and an incorrect one at most 0,
    so every correct function outranks every incorrect one; config validation keeps it so
    (``speed_weight * -speed_min_log2 < 2 * correct_weight``). Measured means per reference: docs/rewards.md.

    **Options** (``MatmulConfig`` fields, passed as keyword arguments to ``gymnasium.make``):

    ================= ============ ============================================================
    option            default      meaning
    ================= ============ ============================================================
    case_max_dim      12           largest dimension of the correctness cases (3..64)
    speed_shape       (48, 48, 48) (n, k, m) of the speed trials (the triple loop: ~4 ms CPU)
    speed_trials      7            timed trials (the median speedup counts)
    rtol              1e-9         allowed error relative to k * max|A| * max|B|
    call_time_limit_s 0.1          CPU seconds per call of ``matmul`` (~25x the triple loop)
    time_budget_s     3.0          CPU seconds for the whole evaluation (caller-measured)
    memory_mb         512          memory the evaluation may add
    liveness_wall_s   30.0         wall seconds before a stuck worker is killed (not a budget)
    allowed_imports   math, random, itertools, functools, collections, heapq, operator, bisect
    correct_weight    1.0          +/- reward for (in)correctness
    speed_weight      1.0          weight of the clipped log2 speedup
    speed_min_log2    -1.5         lower clip of log2 speedup (0.35x the triple loop)
    speed_max_log2    4.0          upper clip of log2 speedup (16x)
    ================= ============ ============================================================

    **Episode**: one step by default; see :class:`~ossgym.envs.code.base.CodeEnv` for ``max_turns``.
    Correctness and every component but ``speed`` are deterministic given the evaluation seed and the
    completion; ``speed`` is a measurement and varies a little between runs and machines (docs/rewards.md
    gives its measured spread under load).
    """

    config_class = MatmulConfig
    task_class = MatmulTask
