"""Worker side of GptOssMatmul-v0: call the untrusted ``matmul(A, B)`` on the matrices the caller sends.

The sandbox loads this trusted module in the worker before the untrusted code and calls
``handle(fn, request, ctx)`` once per request ``{"A": A, "B": B}``. The reply is the product as plain
data (exactly a list of lists of int/float, copied) or a failure record ``{"fail": "timeout" | "error" |
"invalid_output", "detail": str, ...}``. Nothing here decides a reward: the caller keeps the expected
products, checks every reply itself and times every call from outside the worker.
"""

from __future__ import annotations

from typing import Any

from ossgym.envs.code.matmul.matrices import check_matrix
from ossgym.sandbox import CallTimeout, UserError

__all__ = ["handle"]

_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 800


def _matrix(M: Any) -> list[list[float]]:
    if type(M) is not list or not all(type(r) is list and all(type(v) in (int, float) for v in r) for r in M):
        raise ValueError("the request's matrices must be lists of lists of numbers")
    return [list(r) for r in M]


def handle(fn: Any, request: Any, ctx: Any) -> Any:
    """One call of the untrusted ``fn`` (per-call CPU limit via ``ctx.call``); its checked, copied result."""
    if type(request) is not dict:
        raise ValueError("the request must be {'A': ..., 'B': ...}")
    A, B = _matrix(request.get("A")), _matrix(request.get("B"))
    rows, cols = len(A), (len(B[0]) if B else 0)
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
    return [list(r) for r in value]
