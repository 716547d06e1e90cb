"""Worker side of GptOss2048-v0: answer ``strategy(board) -> move`` for the boards the caller sends.

The sandbox loads this trusted module in the worker before the untrusted code and calls
``handle(fn, request, ctx)`` once per request. A request is ``{"boards": [board, ...]}`` (one board per live
game, batched per game step by the caller); the reply is one item per board, in order: the move (exactly
one of the str ``"W"``, ``"A"``, ``"S"``, ``"D"``) or a failure record ``{"fail": "timeout" | "error" |
"invalid_output", "detail": str, ...}``.

This module holds no game, no generator and no clock that decides anything: the caller owns the games,
draws every spawn after the move it follows, and measures the worker's CPU time from outside. An attacker
that rewrites this handler or reads the worker's whole heap finds only boards already on the table.
"""

from __future__ import annotations

from typing import Any

from ossgym.sandbox import CallTimeout, UserError

__all__ = ["handle", "describe_value", "MOVES"]

MOVES = frozenset({"W", "A", "S", "D"})
_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 2000
_MAX_BOARDS = 4096
_BUILTIN_NAMES = {
    int: "an int", float: "a float", bool: "a bool", type(None): "None", list: "a list", tuple: "a tuple",
    dict: "a dict", set: "a set", bytes: "bytes",
}


def describe_value(x: object) -> str:
    """Describe an untrusted return value without calling any of its methods (no repr of unknown types)."""
    t = type(x)
    if t is str:
        s = x if len(x) <= 20 else x[:20] + "..."  # type: ignore[index]
        return f"the str {s!r}"
    if isinstance(x, str):
        return "an object of a str subclass"
    return _BUILTIN_NAMES.get(t, "an object of another type")


def _board(rows: Any) -> tuple[tuple[int, ...], ...]:
    """A fresh, deeply immutable board (tuple of tuples of exact ints) from the request's plain rows."""
    if type(rows) not in (list, tuple) or not 3 <= len(rows) <= 8:
        raise ValueError("a board must be 3..8 rows")
    out = []
    for row in rows:
        if type(row) not in (list, tuple) or len(row) != len(rows) or not all(type(v) is int for v in row):
            raise ValueError("a board row must hold exactly size ints")
        out.append(tuple([int(v) for v in row]))
    return tuple(out)


def handle(fn: Any, request: Any, ctx: Any) -> list:
    """Call the untrusted ``fn`` (through ``ctx.call``: per-call CPU limit) once per board; plain replies."""
    boards = request.get("boards") if type(request) is dict else None
    if type(boards) is not list or len(boards) > _MAX_BOARDS:
        raise ValueError("the request must be {'boards': [board, ...]}")
    boards = [_board(b) for b in boards]
    out: list = []
    for board in boards:
        try:
            key = ctx.call(board)
        except CallTimeout:
            out.append({"fail": "timeout", "detail": "the call took longer than the per-move limit"})
            continue
        except UserError as exc:
            type_name = str(getattr(exc, "type_name", "Exception"))
            if type_name == "MemoryError":  # the evaluation's memory limit: end the evaluation
                raise
            tb = getattr(exc, "traceback", None)
            out.append({"fail": "error", "error_type": type_name[:100],
                        "detail": str(getattr(exc, "message", ""))[:_DETAIL_CHARS],
                        "traceback": "" if tb is None else str(tb)[-_TRACEBACK_CHARS:]})
            continue
        if type(key) is str and key in MOVES:
            out.append(key)
        else:
            out.append({"fail": "invalid_output",
                        "detail": f"strategy returned {describe_value(key)}; expected exactly one of the str"
                                  " 'W', 'A', 'S', 'D'"})
    return out
