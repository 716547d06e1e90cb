"""Trusted harness that plays 2048 games with an untrusted ``strategy(board)`` inside a sandbox worker.

The sandbox loads this module (trusted) before the untrusted source, then calls
``harness(fn, payload, ctx)`` once per evaluation (see the sandbox contract). The harness plays every game
with the engine's ``Game2048`` and returns ONLY plain data: per game the moves as a string of ``WASD``
letters and how the game ended. The caller replays every game itself with its own engine and generator
from the seeds and the moves (invariant 1), so nothing computed here, not even the board, feeds a reward.

Per move the strategy gets a fresh, deeply immutable copy of the board: a tuple of ``size`` tuples of
exact ``int`` tile values (0 = empty). Nothing it can reach from that object leads back to the game.

How a game ends (``end`` in each game record):

============== =====================================================================================
end            meaning
============== =====================================================================================
over           no move changes the board any more (a normal game over)
target         the target tile (``payload["target"]``, when set) was reached: the game is won
invalid_output the strategy returned something other than exactly one of the str "W", "A", "S", "D"
               (a str subclass counts as invalid); ``detail`` says what came back
timeout        one call took longer than the per-call limit (``CallTimeout``)
error          the strategy raised; ``error_type``, ``detail`` (message) and ``traceback`` say where.
               A ``MemoryError`` (the evaluation's memory limit) also ends the evaluation: after this
               game's checkpoint the harness lets it escape, so the result is MEMORY_EXCEEDED
budget         the evaluation's time (total, or this game's share of it) ran out; counts as far as it got
move_limit     ``max_moves`` moves were played
stalled        more than ``max_stalled_moves`` consecutive moves changed nothing
============== =====================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from numpy.random import default_rng

from ossgym.envs.game2048.engine import KEY_TO_ACTION, Game2048, tables
from ossgym.errors import ConfigError
from ossgym.sandbox import CallTimeout, UserError

# Build the 4x4 engine's lookup tables now, at import. The sandbox template imports this module once and
# forks every worker from it, so the workers inherit the tables; built lazily instead, every evaluation
# rebuilt them (about 0.3 s of CPU, more on a loaded machine) inside the first game's share of its time budget.
tables()

_FIX = "Build the payload with harness2048.make_payload."

__all__ = ["harness", "make_payload", "replay_result", "ReplayedGame", "GAME_ENDS", "describe_value"]

GAME_ENDS = ("over", "target", "invalid_output", "timeout", "error", "budget", "move_limit", "stalled")
_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 2000
_BUILTIN_NAMES = {
    int: "an int",
    float: "a float",
    bool: "a bool",
    type(None): "None",
    list: "a list",
    tuple: "a tuple",
    dict: "a dict",
    set: "a set",
    bytes: "bytes",
}


def make_payload(
    seeds: list[int],
    size: int = 4,
    max_moves: int = 10_000,
    max_stalled_moves: int = 20,
    target: int = 0,
    game_time_s: float | None = None,
    reserve_s: float = 0.1,
) -> dict:
    """Build the plain-data payload for :func:`harness` (validated the same way the harness does)."""
    payload = {
        "seeds": [int(s) for s in seeds],
        "size": int(size),
        "max_moves": int(max_moves),
        "max_stalled_moves": int(max_stalled_moves),
        "target": int(target),
        "game_time_s": None if game_time_s is None else float(game_time_s),
        "reserve_s": float(reserve_s),
    }
    _check_payload(payload)
    return payload


def _check_payload(p: Any) -> None:
    if type(p) is not dict:
        raise ConfigError("payload", "must be a dict (see make_payload)", _FIX)
    seeds = p.get("seeds")
    if type(seeds) is not list or not all(type(s) is int and s >= 0 for s in seeds):
        raise ConfigError("payload['seeds']", "must be a list of ints >= 0", _FIX)
    if type(p.get("size")) is not int or not 3 <= p["size"] <= 8:
        raise ConfigError("payload['size']", "must be an int in 3..8", _FIX)
    for key in ("max_moves", "max_stalled_moves", "target"):
        if type(p.get(key)) is not int or p[key] < 0:
            raise ConfigError(f"payload[{key!r}]", "must be an int >= 0", _FIX)
    gt = p.get("game_time_s")
    if gt is not None and (type(gt) is not float or not gt > 0):
        raise ConfigError("payload['game_time_s']", "must be None or a float > 0", _FIX)
    if type(p.get("reserve_s")) is not float or not p["reserve_s"] >= 0:
        raise ConfigError("payload['reserve_s']", "must be a float >= 0", _FIX)


def describe_value(x: object) -> str:
    """Describe an untrusted return value without calling any of its methods (no repr of unknown types)."""
    t = type(x)
    if t is str:
        s = x if len(x) <= 20 else x[:20] + "..."  # type: ignore[index]
        return f"the str {s!r}"
    if isinstance(x, str):
        return "an object of a str subclass"
    return _BUILTIN_NAMES.get(t, "an object of another type")


def harness(fn: Any, payload: dict, ctx: Any) -> dict:
    """Play ``payload['seeds']`` games with the untrusted ``fn`` (via ``ctx.call``); return plain game records.

    Returns ``{"games": [{"seed", "moves", "end", "detail", "error_type", "traceback", "time_s"}, ...]}``
    with one record per seed, in order. After each game ``ctx.checkpoint`` gets the records so far.
    """
    _check_payload(payload)
    seeds: list[int] = payload["seeds"]
    size, max_moves = payload["size"], payload["max_moves"]
    target = payload["target"] or math.inf  # 0: play on until the game is over
    max_stalled, reserve = payload["max_stalled_moves"], payload["reserve_s"]
    game_time = payload["game_time_s"] if payload["game_time_s"] is not None else math.inf
    clock, time_left, call = ctx.clock, ctx.time_left, ctx.call
    key_to_action = dict(KEY_TO_ACTION)
    games: list[dict] = []

    for index, seed in enumerate(seeds):
        start = clock()
        # This game's share of what is left: a slow strategy cannot starve the later games.
        share = (time_left() - reserve) / (len(seeds) - index)
        deadline = start + min(game_time, share)
        game = Game2048(size=size, rng=default_rng(seed))  # starts the game (two tiles)
        moves: list[str] = []
        stalled = 0
        end, detail, error_type, trace = "over", "", None, None
        out_of_memory: UserError | None = None
        while True:
            if game.max_tile >= target:
                end = "target"
                break
            if game.is_over():
                end = "over"
                break
            if len(moves) >= max_moves:
                end = "move_limit"
                break
            if clock() >= deadline or time_left() <= reserve:
                end = "budget"
                break
            board = tuple([tuple([int(v) for v in row]) for row in game.tiles()])
            try:
                key = call(board)
            except CallTimeout:
                end = "timeout"
                break
            except UserError as exc:
                end = "error"
                error_type = str(getattr(exc, "type_name", "Exception"))
                detail = str(getattr(exc, "message", ""))[:_DETAIL_CHARS]
                tb = getattr(exc, "traceback", None)
                trace = None if tb is None else str(tb)[-_TRACEBACK_CHARS:]
                if error_type == "MemoryError":  # the evaluation's memory limit, not this game's bad luck
                    out_of_memory = exc
                break
            if type(key) is not str or key not in key_to_action:
                end = "invalid_output"
                detail = f"strategy returned {describe_value(key)}; expected exactly one of the str 'W', 'A', 'S', 'D'"
                break
            moves.append(key)
            _gain, changed = game.step(key_to_action[key])
            if changed:
                stalled = 0
            else:
                stalled += 1
                if stalled > max_stalled:
                    end = "stalled"
                    detail = f"{stalled} moves in a row did not change the board"
                    break
        games.append(
            {
                "seed": seed,
                "moves": "".join(moves),
                "end": end,
                "detail": detail,
                "error_type": error_type,
                "traceback": trace,
                "time_s": clock() - start,
            }
        )
        ctx.checkpoint({"games": [dict(g) for g in games]})
        if out_of_memory is not None:
            # Let it escape: the worker reports MEMORY_EXCEEDED with the games so far (this one as an error).
            raise out_of_memory
    return {"games": games}


@dataclass(frozen=True)
class ReplayedGame:
    """One game as the trusted caller re-derived it from the seed and the returned moves."""

    seed: int
    moves: int  # moves replayed (including ones that changed nothing)
    score: int
    max_tile: int
    over: bool  # the replayed board has no move left
    end: str  # the harness's reason (for feedback only), or "missing" / "bad_record"
    detail: str


def replay_result(result: Any, payload: dict) -> list[ReplayedGame]:
    """Caller side: replay every game of a harness result with the caller's own engine and generators.

    ``result`` is the sandbox value (the harness's return or its last checkpoint, possibly None). Every seed
    of ``payload`` gets a game: a game missing from ``result`` (worker killed) or with a malformed record
    replays as zero moves. Only the seed and the move letters are used to compute the outcome.
    """
    _check_payload(payload)
    records = result.get("games") if type(result) is dict else None
    records = records if type(records) is list else []
    games = []
    for index, seed in enumerate(payload["seeds"]):
        record = records[index] if index < len(records) else None
        moves, end, detail = "", "missing", "the evaluation stopped before this game was reported"
        if record is not None:
            ok = (
                type(record) is dict
                and record.get("seed") == seed
                and type(record.get("moves")) is str
                and len(record["moves"]) <= payload["max_moves"]
                and set(record["moves"]) <= set("WASD")
                and record.get("end") in GAME_ENDS
            )
            if ok:
                moves, end = record["moves"], record["end"]
                detail = record["detail"] if type(record.get("detail")) is str else ""
            else:
                end, detail = "bad_record", "the game record was malformed and counts as no moves"
        game = Game2048(size=payload["size"], rng=default_rng(seed))  # starts the game (two tiles)
        for key in moves:
            game.step(KEY_TO_ACTION[key])
        games.append(ReplayedGame(seed, len(moves), int(game.score), int(game.max_tile), bool(game.is_over()), end, detail))
    return games
