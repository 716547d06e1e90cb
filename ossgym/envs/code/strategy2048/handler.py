"""Worker side of GptOss2048-v0: answer ``strategy(board) -> move`` for the boards the caller sends.

The sandbox loads this trusted module in the worker before the untrusted code and calls
``handle(fn, request, ctx)`` once per request. A request is ``{"size": n, "boards": [board, ...]}`` (one
board per live game, batched per game step by the caller), each board a str of ``n * n`` hex digits, the
cells' exponents in row-major order (``"0"`` empty, ``"1"`` a 2, ``"b"`` a 2048: one plain value per board,
so a round trip stays cheap); the strategy gets it as a tuple of tuples of tile values. The reply is one item per board, in order: the move (exactly
one of the str ``"W"``, ``"A"``, ``"S"``, ``"D"``) or a failure record ``{"fail": "timeout" | "error" |
"invalid_output", "detail": str, ...}``.

This module holds no game, no generator and no clock that decides anything: the caller owns the games,
draws every spawn after the move it follows, and measures the worker's CPU time from outside. An attacker
that rewrites this handler or reads the worker's whole heap finds only boards already on the table.
"""

from __future__ import annotations

from typing import Any

from ossgym.sandbox import CallTimeout, UserError

__all__ = ["handle", "describe_value", "encode_board", "decode_board", "MOVES"]

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


_TILES = {c: (1 << i if i else 0) for i, c in enumerate("0123456789abcdef")}


def encode_board(exponents: bytes) -> str:
    """Caller side: a board's exponents (row-major bytes, 0..15) as the request's hex str."""
    return exponents.translate(_HEX).decode("ascii")


_HEX = bytes.maketrans(bytes(range(16)), b"0123456789abcdef")


def decode_board(text: Any, size: int) -> tuple[tuple[int, ...], ...]:
    """A fresh, deeply immutable board (tuple of tuples of exact ints) from the request's hex str."""
    if type(text) is not str or len(text) != size * size:
        raise ValueError(f"a board must be a str of {size * size} hex digits")
    tiles = _TILES
    try:
        cells = [tiles[c] for c in text]
    except KeyError:
        raise ValueError("a board must hold only the hex digits 0-9a-f") from None
    return tuple([tuple(cells[r * size:(r + 1) * size]) for r in range(size)])


def handle(fn: Any, request: Any, ctx: Any) -> list:
    """Call the untrusted ``fn`` (through ``ctx.call``: per-call CPU limit) once per board; plain replies."""
    boards = request.get("boards") if type(request) is dict else None
    size = request.get("size") if type(request) is dict else None
    if type(boards) is not list or len(boards) > _MAX_BOARDS or type(size) is not int or not 3 <= size <= 8:
        raise ValueError("the request must be {'size': 3..8, 'boards': [board, ...]}")
    boards = [decode_board(b, size) for b in boards]
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
