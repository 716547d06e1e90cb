"""Plain-Python matrix helpers of GptOssMatmul-v0 shared by the caller (judge) and the worker (handler).

Nothing here imports more than the standard library, so the worker's template stays light.
"""

from __future__ import annotations

import base64
import math
import random
import struct
from typing import Any

__all__ = ["pack_matrix", "unpack_matrix", "naive_matmul", "random_matrix", "speed_inputs", "correctness_cases", "check_matrix", "compare",
           "DEFAULT_RTOL"]

DEFAULT_RTOL = 1e-9


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


def pack_matrix(M: list[list[float]]) -> str:
    """A matrix of floats as one plain str (base64 of little-endian doubles, row-major): one value on the
    wire instead of one per entry, so the request overhead inside a timed call stays small."""
    flat = [v for row in M for v in row]
    return base64.b64encode(struct.pack(f"<{len(flat)}d", *flat)).decode("ascii")


def unpack_matrix(text: Any, rows: int, cols: int) -> list[list[float]]:
    """Inverse of :func:`pack_matrix` for a rows x cols matrix (ValueError if it does not fit)."""
    if type(text) is not str or type(rows) is not int or type(cols) is not int or rows < 0 or cols < 0:
        raise ValueError("a packed matrix is a str with int rows and cols")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError("a packed matrix must be base64") from None
    if len(raw) != 8 * rows * cols:
        raise ValueError(f"a packed {rows}x{cols} matrix must hold {rows * cols} doubles")
    flat = struct.unpack(f"<{rows * cols}d", raw)
    return [list(flat[i * cols:(i + 1) * cols]) for i in range(rows)]
