"""Caller side of GptOss2048-v0: the games, their spawn generators and the CPU budget live here.

:class:`GamesDriver` plays every game of one evaluation in the caller's process with the trusted engine.
Each game step it sends the worker one request holding the current board of every live game (batched, so
one round trip serves all games) and reads back one move per board. A spawn is drawn from the game's own
generator only after the move it follows has been received, so the worker never sees a tile before it
spawns; the seeds are one-way derivations of the evaluation seed that never leave the caller.

Budgets are CPU time of the worker, measured by the caller from outside (``session.last_cpu_s`` and
``session.cpu_s``), never wall time and never a time the worker reports:

- per move: a request of ``n`` boards may use ``n x move_time_limit_s`` (the worker's handler also stops
  each call at the limit, for honest feedback); more ends every game of that request as ``timeout``;
- in total: ``time_budget_s + move_budget_s x moves`` after ``moves`` moves. A strategy whose moves average
  at most ``move_budget_s`` never runs out, whatever the number or length of its games.

How a game ends (``GameRecord.end``):

============== =====================================================================================
end            meaning
============== =====================================================================================
over           no move changes the board any more (a normal game over)
target         the target tile was reached: the game is won
move_limit     ``max_moves`` moves were played
stalled        more than ``max_stalled_moves`` consecutive moves changed nothing
invalid_output the strategy returned something other than exactly one of the str "W", "A", "S", "D"
timeout        a move used more than the per-move CPU limit
error          the strategy raised (``detail`` and ``traceback`` say where)
budget         the evaluation's total CPU budget ran out (a failure, like a timeout: see the rule below)
crash          the worker died, ran out of memory or sent a malformed reply (the evaluation's ``crash``)
============== =====================================================================================

The cut rule: a game ended by ``budget`` counts as far as it got AND as a failure. Only a strategy that
exceeds the stated mean per-move budget is ever cut, and being cut never pays more than finishing would,
so among strategies that keep the limits nothing is cut and the reward ranks them by their play alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from numpy.random import default_rng

from ossgym.envs.code.base import read_reply, session_cpu
from ossgym.envs.code.strategy2048.handler import encode_board
from ossgym.envs.game2048.engine import KEY_TO_ACTION, Game2048, tables

__all__ = ["GamesDriver", "GameRecord", "GAME_ENDS", "FAILED_ENDS", "game_seeds"]

GAME_ENDS = ("over", "target", "move_limit", "stalled", "invalid_output", "timeout", "error", "budget", "crash")
#: ends that count as a failure of the strategy (the ``failures`` component)
FAILED_ENDS = ("invalid_output", "timeout", "error", "budget")
_REQUEST_SLACK_S = 0.05  # CPU the handler may add to a request beyond its calls (decoding, copying boards)
_DETAIL_CHARS = 300
_TRACEBACK_CHARS = 2000

tables()  # the engine's 4x4 lookup tables, built once per caller process rather than inside an evaluation


def game_seeds(seed: int, num_games: int) -> list[int]:
    """The games' seeds from a (derived) seed: numpy's generator, drawn in the caller only."""
    return [int(s) for s in default_rng(seed).integers(2**63, size=num_games)]


@dataclass
class GameRecord:
    """One game as the caller played it (its own engine, its own generator)."""

    seed: int
    game: Game2048
    moves: int = 0
    stalled: int = 0
    end: str | None = None
    detail: str = ""
    traceback: str = ""

    @property
    def score(self) -> int:
        return int(self.game.score)

    @property
    def max_tile(self) -> int:
        return int(self.game.max_tile)


@dataclass
class GamesDriver:
    """Plays ``seeds`` games against one worker session; all state stays in this (caller-side) object."""

    seeds: list[int]
    size: int = 4
    target: int = 2048
    max_moves: int = 5000
    max_stalled_moves: int = 20
    move_time_limit_s: float = 0.05
    move_budget_s: float = 0.01
    time_budget_s: float = 2.0
    games: list[GameRecord] = field(init=False)
    requests: int = field(init=False, default=0)
    cpu_s: float = field(init=False, default=0.0)
    failure: str | None = field(init=False, default=None)  # why the session failed, if it did
    started: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.games = [GameRecord(s, Game2048(size=self.size, rng=default_rng(s))) for s in self.seeds]

    @property
    def moves(self) -> int:
        """Moves played so far, over all games."""
        return sum(g.moves for g in self.games)

    def _settle(self, g: GameRecord) -> None:
        """End ``g`` if its position ends it (before asking for a move)."""
        if g.end is not None:
            return
        if g.game.max_tile >= self.target:
            g.end = "target"
        elif g.game.is_over():
            g.end = "over"
        elif g.moves >= self.max_moves:
            g.end = "move_limit"

    def _end_all(self, live: list[GameRecord], end: str, detail: str) -> None:
        for g in live:
            g.end, g.detail = end, detail[:_DETAIL_CHARS]

    def __call__(self, session: Any) -> dict:
        """Play every game to its end through ``session``; returns a plain summary (the state stays here)."""
        self.started = True
        while True:
            for g in self.games:
                self._settle(g)
            live = [g for g in self.games if g.end is None]
            if not live:
                break
            boards = [encode_board(g.game.exponent_bytes()) for g in live]
            allowance = self.time_budget_s + (self.moves + len(live)) * self.move_budget_s
            reply = read_reply(session.request({"size": self.size, "boards": boards}))
            self.requests += 1
            self.cpu_s = session_cpu(session, "cpu_s")
            if not reply.ok:
                self.failure = f"{reply.kind}: {reply.message}".strip()
                self._end_all(live, "crash", f"the worker failed ({self.failure})")
                break
            if session_cpu(session, "last_cpu_s") > len(live) * self.move_time_limit_s + _REQUEST_SLACK_S:
                self._end_all(live, "timeout", f"a move used more than {self.move_time_limit_s:g} s of CPU time")
                break
            items = reply.value
            if type(items) is not list or len(items) != len(live):
                self.failure = "invalid: the reply does not hold one item per board"
                self._end_all(live, "crash", "the worker sent a malformed reply")
                break
            for g, item in zip(live, items):
                self._apply(g, item)
            if self.cpu_s > allowance:
                self._end_all([g for g in self.games if g.end is None], "budget",
                              f"the evaluation used {self.cpu_s:.2f} s of CPU time, more than its budget of"
                              f" {allowance:.2f} s after {self.moves} moves")
        return {"games": [{"seed": g.seed, "moves": g.moves, "end": g.end} for g in self.games]}

    def _apply(self, g: GameRecord, item: Any) -> None:
        if type(item) is str and len(item) == 1 and item in KEY_TO_ACTION:
            g.moves += 1
            _gain, changed = g.game.step(KEY_TO_ACTION[item])  # the spawn is drawn here, after the move
            g.stalled = 0 if changed else g.stalled + 1
            if g.stalled > self.max_stalled_moves:
                g.end, g.detail = "stalled", f"{g.stalled} moves in a row did not change the board"
            return
        fail = item.get("fail") if type(item) is dict else None
        if fail in ("timeout", "error", "invalid_output"):
            g.end = fail
            detail = item.get("detail")
            g.detail = detail[:_DETAIL_CHARS] if type(detail) is str else ""
            if fail == "error":
                kind, tb = item.get("error_type"), item.get("traceback")
                g.detail = (f"{kind[:100]}: " if type(kind) is str else "") + g.detail
                g.traceback = tb[-_TRACEBACK_CHARS:] if type(tb) is str else ""
        else:
            g.end, g.detail = "invalid_output", "the worker's reply for this board was not a move"


def log2_ratio(x: float, top: float) -> float:
    """log2(x) / log2(top), for the shaped components."""
    return math.log2(max(x, 1)) / math.log2(top)
