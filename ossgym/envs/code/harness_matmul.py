"""Trusted matmul harness (runs inside the sandbox worker) and the trusted helpers its caller shares.

Design (invariant 1: the reward is computed by trusted code from plain data):

- **Correctness** is decided by the CALLER. It builds the cases itself (:func:`correctness_cases`, fresh
  random values and shapes from its own seed, including 1xN, Nx1, non-square and empty-inner-dimension
  cases), sends them as plain lists, and gets back the untrusted outputs, which the harness only checks for
  exact types and shape (``list`` of ``list`` of exact ``int``/``float``, no bool, no subclass). The caller
  compares them with its own :func:`naive_matmul` using :func:`compare` (trusted value on the left).
- **Speed** is timed inside the worker in CPU time of the worker process (``ctx.last_call_cpu_s`` for the
  function, ``ctx.cpu_clock()`` for the reference; both bound before the untrusted code was loaded), which
  other processes on a loaded machine do not inflate the way they inflate wall time; the wall times
  (``ctx.clock()``) are returned beside them for the caller's cross-check.
  Every trial builds fresh input objects from the caller's seed and the trial number
  (:func:`speed_inputs`: new values each trial, so caching by identity or by content cannot pay), then times
  the untrusted function and the bundled naive triple loop on separate fresh copies, alternating which goes
  first. ``gc.collect()`` runs before each timed call so garbage left by one side is not collected on the
  other side's clock. Each trial's untrusted output is compared in the worker with the reference output
  (``max_rel_err``), and the values at caller-chosen positions (``positions``, unknown to the untrusted
  code) are returned so the caller can check them against its own reference of :func:`speed_inputs`
  (:func:`check_speed_samples`). Speed counts only if every correctness case and every trial is right;
  a trial that raises, times out or is wrong stops the speed part (no time is credited for it).
- The harness also returns the total time it measured; the caller checks that it is not larger than its
  own wall clock for the evaluation.

Shapes: ``A`` is ``n`` rows of ``k`` numbers, ``B`` is ``k`` rows of ``m`` numbers, the result is ``n``
rows of ``m`` numbers. When ``k == 0``, ``A`` is ``n`` empty rows and ``B`` is ``[]``; then ``m`` is 0 and
the result is ``n`` empty rows (``[[]] * n`` as distinct lists). The untrusted code runs under the
sandbox's restricted compiler and the reference does not, so the measured speedup of a naive submission is
somewhat below 1; the ordering between submissions is what the reward needs.
"""

from __future__ import annotations

import gc
import math
import random
from typing import Any

from ossgym.errors import ConfigError
from ossgym.sandbox import CallTimeout, UserError

_FIX = "Build the payload with harness_matmul.make_payload."

__all__ = [
    "harness",
    "make_payload",
    "naive_matmul",
    "random_matrix",
    "speed_inputs",
    "correctness_cases",
    "check_matrix",
    "compare",
    "check_speed_samples",
    "verify_result",
    "DEFAULT_RTOL",
]

DEFAULT_RTOL = 1e-9
_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 800
_STATUS_WORDS = {"invalid_output": "invalid result,", "error": "raised", "timeout": "timed out,", "budget": "not run,"}


def naive_matmul(A: list[list[float]], B: list[list[float]]) -> list[list[float]]:
    """The bundled reference: a plain triple loop (also the speed baseline; same code as references' naive)."""
    n, k = len(A), len(B)
    m = len(B[0]) if k else 0
    C = []
    for i in range(n):
        row = []
        for j in range(m):
            s = 0.0
            for t in range(k):
                s = s + A[i][t] * B[t][j]
            row.append(s)
        C.append(row)
    return C


def random_matrix(rng: random.Random, rows: int, cols: int, scale: float = 1.0) -> list[list[float]]:
    """A rows x cols list of lists of floats drawn uniformly from [-scale, scale)."""
    return [[scale * (2.0 * rng.random() - 1.0) for _ in range(cols)] for _ in range(rows)]


def speed_inputs(seed: int, trial: int, shape: tuple[int, int, int]) -> tuple[list[list[float]], list[list[float]]]:
    """Fresh inputs of speed trial ``trial``: the same on the harness and the caller side, new each trial."""
    n, k, m = shape
    rng = random.Random(seed * 1_000_003 + trial)
    return random_matrix(rng, n, k), random_matrix(rng, k, m)


def correctness_cases(seed: int, max_dim: int = 12) -> list[tuple[list[list[float]], list[list[float]]]]:
    """The caller's correctness inputs: 1xN, Nx1, 1x1, non-square both ways, k=0, and random shapes/scales."""
    rng = random.Random(seed)
    d = lambda: rng.randint(2, max_dim)  # noqa: E731
    shapes = [
        (1, d(), d()),  # A is 1xN
        (d(), d(), 1),  # result is Nx1
        (d(), 1, d()),  # inner dimension 1 (outer product)
        (1, 1, 1),
        (2, max_dim, 3),  # wide A
        (max_dim, 2, max_dim - 1),  # tall A, non-square result
        (d(), 0, 0),  # empty inner dimension: A has empty rows, B == []
        (d(), d(), d()),
        (d(), d(), d()),
    ]
    cases = []
    for n, k, m in shapes:
        scale = 10.0 ** rng.randint(-3, 3)
        cases.append((random_matrix(rng, n, k, scale), random_matrix(rng, k, m, 1.0)))
    return cases


def _shape(A: list[list[float]], B: list[list[float]]) -> tuple[int, int]:
    return len(A), (len(B[0]) if B else 0)


def check_matrix(value: Any, rows: int, cols: int) -> str | None:
    """Why ``value`` is not exactly a rows x cols list of lists of int/float, or None when it is."""
    if type(value) is not list:
        return f"returned {_type_word(value)}, expected a list of {rows} lists"
    if len(value) != rows:
        return f"returned {len(value)} rows, expected {rows}"
    for i, row in enumerate(value):
        if type(row) is not list:
            return f"row {i} is {_type_word(row)}, expected a list"
        if len(row) != cols:
            return f"row {i} has {len(row)} entries, expected {cols}"
        for j, v in enumerate(row):
            if type(v) is not float and type(v) is not int:
                return f"entry [{i}][{j}] is {_type_word(v)}, expected a float"
    return None


def _type_word(x: Any) -> str:
    t = type(x)
    names = {int: "an int", float: "a float", bool: "a bool", str: "a str", type(None): "None", list: "a list", tuple: "a tuple", dict: "a dict"}
    if t in names:
        return names[t]
    for base, word in ((list, "a list subclass"), (float, "a float subclass"), (int, "an int subclass"), (str, "a str subclass")):
        if isinstance(x, base):
            return word
    return "an object of another type"


def _scale(A: list[list[float]], B: list[list[float]]) -> float:
    """Upper bound of any entry's magnitude: k * max|A| * max|B|."""
    k = len(B)
    a = max((abs(v) for r in A for v in r), default=0.0)
    b = max((abs(v) for r in B for v in r), default=0.0)
    return k * a * b


def compare(
    reference: list[list[float]], value: list[list[float]], A: list[list[float]], B: list[list[float]], rtol: float = DEFAULT_RTOL
) -> tuple[bool, float]:
    """(ok, max relative error) of ``value`` against the trusted ``reference``; error bound rtol * k*max|A|*max|B|.

    ``value`` must already have passed :func:`check_matrix`. NaN or infinity never compares as correct.
    """
    scale = _scale(A, B) or 1.0
    worst = 0.0
    for ref_row, row in zip(reference, value):
        for r, v in zip(ref_row, row):
            try:
                err = abs(r - v) / scale
            except OverflowError:  # an int too large for a float
                err = math.inf
            if not err <= worst:  # also catches NaN
                worst = err if err == err else math.inf
    return worst <= rtol, worst


def check_speed_samples(
    seed: int, shape: tuple[int, int, int], trial: int, positions: list[list[int]], samples: list[float], rtol: float = DEFAULT_RTOL
) -> bool:
    """Caller side: recompute the speed trial's inputs and check the returned entries at ``positions``."""
    if type(samples) is not list or len(samples) != len(positions):
        return False
    A, B = speed_inputs(seed, trial, shape)
    scale = _scale(A, B) or 1.0
    for (i, j), v in zip(positions, samples):
        if type(v) is not float and type(v) is not int:
            return False
        ref = math.fsum(A[i][t] * B[t][j] for t in range(len(B)))
        try:
            if not abs(ref - v) / scale <= rtol:
                return False
        except OverflowError:
            return False
    return True


def verify_result(result: Any, cases: list[tuple[list[list[float]], list[list[float]]]], payload: dict) -> tuple[bool, bool, str]:
    """Caller side: (all cases correct, speed trials all verified, reason) for a harness result.

    Re-checks every case against the caller's own :func:`naive_matmul` (exact types and shape first) and
    every speed trial's samples against :func:`speed_inputs`; trusts nothing but ``result``'s plain values.
    """
    if type(result) is not dict or type(result.get("cases")) is not list or len(result["cases"]) != len(cases):
        return False, False, "the evaluation did not return a result for every case"
    rtol = payload["rtol"]
    for index, (record, (A, B)) in enumerate(zip(result["cases"], cases)):
        rows, cols = _shape(A, B)
        name = f"case {index} ({rows}x{len(B)} times {len(B)}x{cols})"
        if type(record) is not dict or record.get("status") != "ok":
            status = record.get("status") if type(record) is dict else "missing"
            detail = record.get("detail", "") if type(record) is dict else ""
            word = _STATUS_WORDS.get(status, status) if type(status) is str else "malformed record,"  # may be a list
            return False, False, f"{name}: {word} {detail}".strip() + _traceback_of(record)
        why = check_matrix(record.get("value"), rows, cols)
        if why is not None:
            return False, False, f"{name}: {why}"
        ok, err = compare(naive_matmul(A, B), record["value"], A, B, rtol)
        if not ok:
            return False, False, f"{name}: wrong result (max relative error {err:.3g})"
    sp, speed = payload.get("speed"), result.get("speed")
    if sp is None:
        return True, False, "correct (no speed trials requested)"
    if type(speed) is not dict or speed.get("stopped") is not None or type(speed.get("trials")) is not list:
        why = speed.get("detail", "") if type(speed) is dict else "no speed result"
        return True, False, f"correct, but the speed trials stopped: {why}" + _traceback_of(speed)
    trials = speed["trials"]
    if len(trials) != sp["trials"]:
        return True, False, f"correct, but only {len(trials)} of {sp['trials']} speed trials ran"
    for t, trial in enumerate(trials):
        if type(trial) is not dict or not check_speed_samples(sp["seed"], tuple(sp["shape"]), t, sp["positions"], trial.get("samples"), rtol):
            return True, False, f"correct, but speed trial {t} returned wrong values"
    return True, True, "correct, speed trials verified"


def _traceback_of(record: Any) -> str:
    """The untrusted code's trimmed traceback in a failure record, on its own lines ('' when none)."""
    tb = record.get("traceback") if type(record) is dict else None
    return f"\n{tb}" if type(tb) is str and tb else ""


def make_payload(
    cases: list[tuple[list[list[float]], list[list[float]]]],
    speed_seed: int,
    trials: int = 5,
    shape: tuple[int, int, int] = (48, 48, 48),
    num_positions: int = 8,
    rtol: float = DEFAULT_RTOL,
    reserve_s: float = 0.1,
) -> dict:
    """Plain-data payload for :func:`harness`; the secret sample positions come from ``speed_seed``."""
    rng = random.Random(f"positions:{speed_seed}")
    n, _k, m = shape
    positions = [[rng.randrange(n), rng.randrange(m)] for _ in range(num_positions)] if n and m else []
    payload = {
        "cases": [[A, B] for A, B in cases],
        "speed": {"seed": int(speed_seed), "trials": int(trials), "shape": [int(v) for v in shape], "positions": positions},
        "rtol": float(rtol),
        "reserve_s": float(reserve_s),
    }
    _check_payload(payload)
    return payload


def _check_payload(p: Any) -> None:
    if type(p) is not dict or type(p.get("cases")) is not list:
        raise ConfigError("payload", "must be a dict with a list 'cases' (see make_payload)", _FIX)
    for case in p["cases"]:
        if type(case) not in (list, tuple) or len(case) != 2:
            raise ConfigError("payload['cases']", "each case must be [A, B]", _FIX)
    sp = p.get("speed")
    if sp is not None:
        if type(sp) is not dict or type(sp.get("seed")) is not int or type(sp.get("trials")) is not int or sp["trials"] < 0:
            raise ConfigError("payload['speed']", "must be None or a dict with int 'seed' and int 'trials' >= 0", _FIX)
        shape = sp.get("shape")
        if type(shape) is not list or len(shape) != 3 or not all(type(v) is int and v >= 0 for v in shape):
            raise ConfigError("payload['speed']['shape']", "must be [n, k, m] ints >= 0", _FIX)
        n, _k, m = shape
        pos = sp.get("positions")
        if type(pos) is not list or not all(
            type(q) is list and len(q) == 2 and type(q[0]) is int and type(q[1]) is int and 0 <= q[0] < n and 0 <= q[1] < m
            for q in pos
        ):
            raise ConfigError("payload['speed']['positions']", "must be a list of [i, j] inside the n x m result", _FIX)
    if type(p.get("rtol")) is not float or type(p.get("reserve_s")) is not float:
        raise ConfigError("payload['rtol'] / payload['reserve_s']", "must be floats", _FIX)


def _copy(M: list[list[float]]) -> list[list[float]]:
    return [list(r) for r in M]


def _timed_reference(ctx: Any, A: list[list[float]], B: list[list[float]]) -> tuple[list[list[float]], float, float]:
    """(naive product, CPU seconds, wall seconds) of the bundled reference, timed like ``ctx.call`` times fn."""
    gc.collect()
    t0, c0 = ctx.clock(), ctx.cpu_clock()
    ref = naive_matmul(A, B)
    return ref, ctx.cpu_clock() - c0, ctx.clock() - t0


def harness(fn: Any, payload: dict, ctx: Any) -> dict:
    """Run the correctness cases and the timed speed trials of an untrusted ``matmul``; return plain data.

    Returns ``{"cases": [...], "speed": {...}, "timed_s": float}``: each case is
    ``{"status": "ok", "value": rows}`` or ``{"status": "invalid_output" | "error" | "timeout" | "budget",
    "detail", "error_type"}`` (errors also carry the trimmed "traceback"); speed is ``{"trials": [{"fn_s", "ref_s", "fn_wall_s", "ref_wall_s", "fn_first",
    "max_rel_err", "samples"}], "stopped": None | reason, "detail"}`` (``*_s`` CPU seconds, ``*_wall_s`` wall).
    """
    _check_payload(payload)
    clock, reserve = ctx.clock, payload["reserve_s"]
    start = clock()

    def attempt(A: list[list[float]], B: list[list[float]]) -> tuple[dict | None, Any]:
        """Call fn on A, B (objects nobody else holds); (failure record or None, value)."""
        try:
            return None, ctx.call(A, B)
        except CallTimeout:
            return {"status": "timeout", "detail": "the call took longer than the per-call limit", "error_type": None}, None
        except UserError as exc:
            type_name = str(getattr(exc, "type_name", "Exception"))
            return {
                "status": "error",
                "detail": f"{type_name}: {getattr(exc, 'message', '')}"[:_DETAIL_CHARS],
                "error_type": type_name,
                "traceback": str(getattr(exc, "traceback", ""))[-_TRACEBACK_CHARS:],
            }, None

    cases: list[dict] = []
    for A, B in payload["cases"]:
        if ctx.time_left() <= reserve:
            cases.append({"status": "budget", "detail": "the time budget ran out before this case", "error_type": None})
            continue
        failure, value = attempt(_copy(A), _copy(B))
        if failure is None:
            rows, cols = _shape(A, B)
            why = check_matrix(value, rows, cols)
            failure = None if why is None else {"status": "invalid_output", "detail": why, "error_type": None}
        cases.append(failure if failure is not None else {"status": "ok", "value": _copy(value)})
    ctx.checkpoint({"cases": cases, "speed": None, "timed_s": clock() - start})

    speed: dict | None = None
    sp = payload["speed"]
    if sp is not None:
        speed = {"trials": [], "stopped": None, "detail": ""}
        if any(c["status"] != "ok" for c in cases):
            speed["stopped"], speed["detail"] = "correctness", "a correctness case failed"
        shape = tuple(sp["shape"])
        n, _k, m = shape
        for trial in range(sp["trials"] if speed["stopped"] is None else 0):
            if ctx.time_left() <= reserve:
                speed["stopped"], speed["detail"] = "budget", f"the time budget ran out after {trial} trials"
                break
            A, B = speed_inputs(sp["seed"], trial, shape)  # fresh objects, new values every trial
            A2, B2 = _copy(A), _copy(B)
            fn_first = trial % 2 == 0
            if not fn_first:
                ref, ref_s, ref_wall_s = _timed_reference(ctx, A2, B2)
            gc.collect()
            failure, value = attempt(A, B)
            fn_s, fn_wall_s = ctx.last_call_cpu_s, ctx.last_call_s  # the call itself (argument copy excluded)
            if failure is None:
                # Check and snapshot the result NOW, before anything (a gc run, in particular) can let code
                # the function left behind (a generator's finally, run when it is collected) fill it in
                # after the clock stopped.
                why = check_matrix(value, n, m)
                value = _copy(value) if why is None else None
                if why is not None:
                    failure = {"status": "invalid_output", "detail": why}
            if fn_first:
                ref, ref_s, ref_wall_s = _timed_reference(ctx, A2, B2)
            if failure is not None:
                speed["stopped"], speed["detail"] = failure["status"], f"trial {trial}: {failure['detail']}"
                speed["traceback"] = failure.get("traceback", "")
                break
            ok, err = compare(ref, value, A2, B2, payload["rtol"])
            samples = [value[i][j] for i, j in sp["positions"]]
            speed["trials"].append({"fn_s": fn_s, "ref_s": ref_s, "fn_wall_s": fn_wall_s, "ref_wall_s": ref_wall_s,
                                    "fn_first": fn_first, "max_rel_err": err, "samples": samples})
            if not ok:
                speed["stopped"], speed["detail"] = "wrong", f"trial {trial}: result differs from the reference (max relative error {err:.3g})"
                break
    return {"cases": cases, "speed": speed, "timed_s": clock() - start}
