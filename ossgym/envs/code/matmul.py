"""GptOssMatmul-v0: the model writes a fast pure-Python ``matmul(A, B)``; the env checks it and times it."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from ossgym.envs.code import harness_matmul
from ossgym.envs.code.base import CodeEnv, CodeTask, FormatWeights
from ossgym.errors import ConfigError
from ossgym.sandbox import DEFAULT_IMPORTS, Outcome, SandboxResult

_CLOCK_SLACK_S = 1e-3  # clock granularity allowed when checking the harness's times against the caller's


@dataclass(frozen=True)
class MatmulConfig:
    """Options of GptOssMatmul-v0 (defaults in the table of :class:`GptOssMatmulEnv`)."""

    case_max_dim: int = 12
    speed_shape: tuple[int, int, int] = (48, 48, 48)
    speed_trials: int = 7
    sample_positions: int = 8
    rtol: float = harness_matmul.DEFAULT_RTOL
    call_time_limit_s: float = 0.1
    time_budget_s: float = 3.0
    memory_mb: int = 512
    allowed_imports: frozenset[str] = DEFAULT_IMPORTS
    correct_weight: float = 1.0
    speed_weight: float = 1.0
    speed_min_log2: float = -1.5
    speed_max_log2: float = 4.0
    weights: FormatWeights = field(default_factory=FormatWeights)

    def __post_init__(self) -> None:
        if type(self.case_max_dim) is not int or not 3 <= self.case_max_dim <= 64:
            raise ConfigError("case_max_dim", f"must be an int in 3..64, got {self.case_max_dim!r}", "Pass case_max_dim=12.")
        shape = self.speed_shape
        if (type(shape) not in (tuple, list) or len(shape) != 3
                or not all(type(v) is int and 1 <= v <= 256 for v in shape)):
            raise ConfigError("speed_shape", f"must be (n, k, m), ints in 1..256, got {shape!r}", "Pass speed_shape=(48, 48, 48).")
        object.__setattr__(self, "speed_shape", tuple(shape))
        if type(self.speed_trials) is not int or not 1 <= self.speed_trials <= 101:
            raise ConfigError("speed_trials", f"must be an int in 1..101, got {self.speed_trials!r}", "Pass speed_trials=7.")
        if type(self.sample_positions) is not int or not 1 <= self.sample_positions <= 256:
            raise ConfigError("sample_positions", f"must be an int in 1..256, got {self.sample_positions!r}", "Pass 8.")
        if type(self.rtol) is not float or not 0.0 < self.rtol < 1e-3:
            raise ConfigError("rtol", f"must be a float in (0, 1e-3), got {self.rtol!r}", "Pass rtol=1e-9.")
        for name in ("call_time_limit_s", "time_budget_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 3600:
                raise ConfigError(name, f"must be seconds in (0, 3600], got {v!r}", "Pass e.g. 0.1 or 3.0.")
        if self.time_budget_s <= 0.2:
            raise ConfigError("time_budget_s", "must leave time to run the checks (> 0.2 s)", "Pass time_budget_s=3.0.")
        for name in ("correct_weight", "speed_weight", "speed_min_log2", "speed_max_log2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(name, f"must be a finite number, got {v!r}", "See the options table of GptOssMatmulEnv.")
        if self.correct_weight <= 0 or self.speed_weight < 0:
            raise ConfigError("correct_weight" if self.correct_weight <= 0 else "speed_weight",
                              "must be > 0 (correct_weight) and >= 0 (speed_weight)", "Pass 1.0.")
        if not self.speed_min_log2 < self.speed_max_log2:
            raise ConfigError("speed_min_log2", f"must be below speed_max_log2 ({self.speed_max_log2!r})", "Pass -1.5 and 4.0.")
        if self.speed_weight * -self.speed_min_log2 >= 2 * self.correct_weight:
            raise ConfigError("speed_min_log2", "a slow correct function must still beat every incorrect one: need "
                              "speed_weight * -speed_min_log2 < 2 * correct_weight", "Pass speed_min_log2=-1.5.")


@dataclass(frozen=True)
class Timing:
    """The caller's reading of the harness's speed trials: the speedup over naive, or why none counts."""

    speedup: float | None
    ratios: list[float]
    fn_s: float
    ref_s: float
    problem: str | None


def read_timing(result: SandboxResult, speed: dict) -> Timing:
    """Median over trials of ref_s / fn_s (CPU seconds), after checking every time against the wall clocks.

    Each trial's CPU time must fit in its wall time, the trials' wall times in the harness's total, and
    that total in the caller's own wall clock for the evaluation; otherwise the timing is refused.
    """
    keys = ("fn_s", "ref_s", "fn_wall_s", "ref_wall_s")
    rows = [[t.get(key) for key in keys] for t in speed["trials"]]
    if not rows or not all(type(v) is float and math.isfinite(v) and v > 0 for row in rows for v in row):
        return Timing(None, [], 0.0, 0.0, "the speed trials reported unusable times")
    fn_total, ref_total = sum(r[0] for r in rows), sum(r[1] for r in rows)
    if any(fn > fn_wall + _CLOCK_SLACK_S or ref > ref_wall + _CLOCK_SLACK_S for fn, ref, fn_wall, ref_wall in rows):
        return Timing(None, [], fn_total, ref_total, "a trial's CPU time exceeds its wall time")
    wall_total = sum(r[2] + r[3] for r in rows)
    timed = result.value.get("timed_s") if type(result.value) is dict else None
    if type(timed) is not float or not wall_total <= timed <= result.wall_time_s + _CLOCK_SLACK_S:
        return Timing(None, [], fn_total, ref_total,
                      f"the trial times ({wall_total:.4f} s) do not fit in the harness's total ({timed!r}) "
                      f"and the caller's wall clock ({result.wall_time_s:.4f} s)")
    ratios = [r[1] / r[0] for r in rows]
    return Timing(statistics.median(ratios), ratios, fn_total, ref_total, None)


class MatmulTask(CodeTask):
    """The matmul task: prompt, sandbox limits, and the trusted judge (caller-side correctness and timing)."""

    entrypoint = "matmul"
    component_names = ("format", "policy", "correctness", "speed", "crash")
    harness = "ossgym.envs.code.harness_matmul:harness"
    seed_namespace = "ossgym.GptOssMatmul"

    def __init__(self, config: MatmulConfig):
        self.config = config
        self.call_time_limit_s = config.call_time_limit_s
        self.weights = config.weights

    def instructions(self) -> str:
        c = self.config
        n, k, m = c.speed_shape
        imports = ", ".join(sorted(c.allowed_imports))
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
            " in every trial (caching results cannot help), each timed in CPU time against a plain triple loop"
            " `for i: for j: for t: s = s + A[i][t] * B[t][j]` on its own fresh copy. Every trial's result is"
            " checked too.\n"
            f"- Each call may use at most {c.call_time_limit_s:g} s of CPU time; the whole evaluation has"
            f" {c.time_budget_s:g} s. A call that raises, times out or returns a wrong result fails the evaluation.\n"
            "- Reward: a correct function earns the correctness reward plus a speed reward that grows with log2"
            " of its median speedup over the triple loop (clipped); a wrong one earns no speed reward.\n\n"
            f"Sandbox rules: you may import only {imports}; no numpy or other modules. Helper functions go inside"
            " `matmul`; nothing but imports and `matmul` at the top level. No names that start with an"
            " underscore, no classes with dunder methods, no eval, exec, compile, open, globals, getattr with a"
            " computed name, no bare `except:` and no `except BaseException`. Printing is ignored.\n\n"
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
        return harness_matmul.correctness_cases(self.derived_seed("cases", seed), self.config.case_max_dim)

    def payload(self, seed: int) -> dict:
        c = self.config
        return harness_matmul.make_payload(
            self.cases(seed),
            speed_seed=self.derived_seed("speed", seed),
            trials=c.speed_trials,
            shape=c.speed_shape,
            num_positions=c.sample_positions,
            rtol=c.rtol,
        )

    def judge(self, result: SandboxResult, payload: Any) -> tuple[dict[str, float], str, dict]:
        """Check every case and trial against the caller's own reference; time only a fully correct function."""
        c = self.config
        cases = [(A, B) for A, B in payload["cases"]]
        cases_ok, trials_ok, why = harness_matmul.verify_result(result.value, cases, payload)
        correct = cases_ok and trials_ok and result.outcome is Outcome.OK
        components = {
            "correctness": c.correct_weight if correct else -c.correct_weight,
            "speed": 0.0,
            "crash": 0.0 if result.outcome is Outcome.OK else c.weights.crash,
        }
        details: dict = {"correct": correct, "cases_ok": cases_ok, "speedup": None}
        lines = []
        if result.outcome is not Outcome.OK:
            lines.append(f"The evaluation failed ({result.outcome.value}): {result.message}")
        if not correct:
            verdict = why if not cases_ok else f"all {len(cases)} correctness cases passed, but: {why.removeprefix('correct, but ')}"
            lines.append(f"Not correct: {verdict}")
            lines.append("No speed reward: speed counts only for a function that is correct everywhere.")
            return components, "\n".join(lines), details
        timing = read_timing(result, result.value["speed"])
        if timing.problem is not None or timing.speedup is None:
            components["speed"] = c.speed_weight * c.speed_min_log2
            lines.append(f"Correct on all {len(cases)} cases and {c.speed_trials} speed trials, but the timing was"
                         f" refused ({timing.problem}); speed counts as the minimum.")
        else:
            log2 = math.log2(timing.speedup)
            components["speed"] = c.speed_weight * min(max(log2, c.speed_min_log2), c.speed_max_log2)
            n, k, m = c.speed_shape
            lines.append(
                f"Correct on all {len(cases)} cases and {c.speed_trials} speed trials. Speed on {n}x{k} times {k}x{m}:"
                f" median {timing.speedup:.2f}x the triple loop (log2 {log2:+.2f}, counted within"
                f" [{c.speed_min_log2:g}, {c.speed_max_log2:g}]); your function took {1000 * timing.fn_s / c.speed_trials:.2f} ms"
                f" per call, the triple loop {1000 * timing.ref_s / c.speed_trials:.2f} ms."
            )
            details.update(speedup=timing.speedup, ratios=timing.ratios)
        return components, "\n".join(lines), details


class GptOssMatmulEnv(CodeEnv):
    """GptOssMatmul-v0: the model writes a pure-Python ``matmul(A, B)``, rewarded for being correct, then fast.

    **Observation**: the task prompt (``str``); ``info["messages"]`` holds it as system + user messages.
    **Action**: the completion text (any ``str``); only the final channel's last ``python`` block that
    defines ``matmul`` counts.

    **Evaluation**: the code passes the sandbox policy, then a sandbox worker runs the trusted harness
    (:mod:`ossgym.envs.code.harness_matmul`):

    - *Correctness*: the caller builds the cases from a seed derived one-way from the evaluation seed
      (random values and scales; shapes 1xN, Nx1, inner dimension 1, 1x1, wide, tall, ``k = 0`` and random
      ones up to ``case_max_dim``), the worker returns the function's outputs, and the caller checks each
      with exact types and shape against its own triple loop (trusted value on the left, error bound
      ``rtol * k * max|A| * max|B|``). ``k = 0``: ``A`` is n empty rows, ``B`` is ``[]`` and the result
      is n empty rows.
    - *Speed*: ``speed_trials`` trials on ``speed_shape`` matrices with new values and fresh objects each
      trial (caching by identity or content cannot pay). In each the worker times the function
      and the bundled naive triple loop on its own copy in CPU time of the worker (trusted clocks bound
      before the code loaded; other processes on a busy machine do not inflate it), alternating which goes
      first. Every trial's result is compared in the worker with the triple loop's, and the caller
      re-checks entries at positions the code cannot know against its own recomputation. The speedup is the
      median over trials of naive time / function time; the caller refuses it (speed = minimum) unless
      each trial's CPU time fits in its wall time, the trials in the harness's total, and that total in the
      caller's own wall clock.

    Speed counts only when every case and every trial is correct and the evaluation finished; a call that
    raises, times out, returns a wrong or mistyped value, or runs out of the budget makes the evaluation
    incorrect, so time spent in exceptions or timeouts never earns reward. The untrusted code runs under
    the sandbox's restricted compiler and the triple loop does not, so a naive submission measures below 1x.

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
    sample_positions  8            secret entries of each trial the caller re-checks
    rtol              1e-9         allowed error relative to k * max|A| * max|B|
    call_time_limit_s 0.1          CPU seconds per call of ``matmul`` (~25x the triple loop)
    time_budget_s     3.0          wall seconds for the whole evaluation
    memory_mb         512          memory the evaluation may add
    allowed_imports   math, random, itertools, functools, collections, heapq, operator, bisect
    correct_weight    1.0          +/- reward for (in)correctness
    speed_weight      1.0          weight of the clipped log2 speedup
    speed_min_log2    -1.5         lower clip of log2 speedup (0.35x the triple loop)
    speed_max_log2    4.0          upper clip of log2 speedup (16x)
    ================= ============ ============================================================

    **Episode**: one step by default; see :class:`~ossgym.envs.code.base.CodeEnv` for ``max_turns``.
    Correctness and every component but ``speed`` are deterministic given the evaluation seed and the
    completion; ``speed`` is a measurement and varies a little between runs and machines.
    """

    config_class = MatmulConfig
    task_class = MatmulTask
