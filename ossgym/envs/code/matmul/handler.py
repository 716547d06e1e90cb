"""Worker side of GptOssMatmul-v0: call the untrusted ``matmul(A, B)`` on the matrices the caller sends.

The sandbox loads this trusted module in the worker before the untrusted code and calls
``handle(fn, request, ctx)`` once per request ``{"A": packed, "B": packed, "shape": [n, k, m]}`` (each
matrix one base64 str of doubles, :func:`~ossgym.envs.code.matmul.matrices.pack_matrix`). The function gets
fresh lists of lists of floats; the reply is its product packed the same way (after the exact-type and
shape check: a list of lists of int/float) or a failure record ``{"fail": "timeout" | "error" |
"invalid_output", "detail": str, ...}``. Nothing here decides a reward: the caller keeps the expected
products, checks every reply itself and times every call from outside the worker.
"""

from __future__ import annotations

import struct
from typing import Any

from ossgym.envs.code.matmul.matrices import check_matrix, pack_matrix, unpack_matrix
from ossgym.sandbox import CallTimeout, UserError

__all__ = ["handle"]

_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 800


def handle(fn: Any, request: Any, ctx: Any) -> Any:
    """One call of the untrusted ``fn`` (per-call CPU limit via ``ctx.call``); its checked, copied result."""
    shape = request.get("shape") if type(request) is dict else None
    if type(shape) is not list or len(shape) != 3 or not all(type(v) is int and 0 <= v <= 4096 for v in shape):
        raise ValueError("the request must be {'A': str, 'B': str, 'shape': [n, k, m]}")
    n, k, m = shape
    A = unpack_matrix(request.get("A"), n, k)
    B = unpack_matrix(request.get("B"), k, m) if k else []
    rows, cols = n, m
    try:
        value = ctx.call(A, B)
    except CallTimeout:
        return {"fail": "timeout", "detail": "the call took longer than the per-call limit"}
    except UserError as exc:
        type_name = str(getattr(exc, "type_name", "Exception"))
        if type_name == "MemoryError":
            raise
        return {"fail": "error", "detail": f"{type_name}: {getattr(exc, 'message', '')}"[:_DETAIL_CHARS],
                "traceback": str(getattr(exc, "traceback", ""))[-_TRACEBACK_CHARS:]}
    why = check_matrix(value, rows, cols)
    if why is not None:
        return {"fail": "invalid_output", "detail": why}
    try:
        return pack_matrix(value)
    except (OverflowError, struct.error):  # an int too large for a double
        return {"fail": "invalid_output", "detail": "an entry does not fit a float"}
