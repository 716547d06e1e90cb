"""GptOss2048-v0: the model writes ``strategy(board)`` for the game 2048; the env plays and replays the games."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ossgym.envs.code import harness2048
from ossgym.envs.code.base import CodeEnv, CodeTask, FormatWeights
from ossgym.envs.game2048.engine import MAX_EXPONENT, MAX_SIZE, MIN_SIZE
from ossgym.errors import ConfigError
from ossgym.sandbox import DEFAULT_IMPORTS, Outcome, SandboxResult

_FAILED_ENDS = ("invalid_output", "timeout", "error")
# Every move comes back as one letter in the sandbox result (capped at SandboxTask.max_output_bytes, 1 MiB);
# half of it leaves room for the rest of the game records.
_MAX_RECORDED_MOVES = 500_000


@dataclass(frozen=True)
class Strategy2048Config:
    """Options of GptOss2048-v0 (defaults in the table of :class:`GptOss2048Env`)."""

    size: int = 4
    target: int = 2048
    num_games: int = 8
    move_time_limit_s: float = 0.05
    time_budget_s: float = 5.0
    max_moves: int = 5000
    max_stalled_moves: int = 20
    memory_mb: int = 512
    allowed_imports: frozenset[str] = DEFAULT_IMPORTS
    tile_weight: float = 1.0
    score_weight: float = 1.0
    win_weight: float = 2.0
    failure_weight: float = 1.0
    weights: FormatWeights = field(default_factory=FormatWeights)

    def __post_init__(self) -> None:
        if type(self.size) is not int or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ConfigError("size", f"must be an int in {MIN_SIZE}..{MAX_SIZE}, got {self.size!r}", "Pass size=4.")
        t = self.target
        if type(t) is not int or t < 8 or t & (t - 1) or t > 2**MAX_EXPONENT:
            raise ConfigError("target", f"must be a power of two in 8..{2**MAX_EXPONENT}, got {t!r}", "Pass target=2048.")
        for name in ("num_games", "max_moves"):
            if type(getattr(self, name)) is not int or getattr(self, name) < 1:
                raise ConfigError(name, f"must be an int >= 1, got {getattr(self, name)!r}", f"Pass e.g. {name}=8.")
        if type(self.max_stalled_moves) is not int or self.max_stalled_moves < 0:
            raise ConfigError("max_stalled_moves", f"must be an int >= 0, got {self.max_stalled_moves!r}", "Pass 20.")
        for name in ("move_time_limit_s", "time_budget_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v <= 3600:
                raise ConfigError(name, f"must be seconds in (0, 3600], got {v!r}", "Pass e.g. 0.05 or 5.0.")
        if self.time_budget_s <= 0.2:
            raise ConfigError("time_budget_s", "must leave time to play (> 0.2 s)", "Pass e.g. time_budget_s=5.0.")
        if self.num_games * self.max_moves > _MAX_RECORDED_MOVES:
            raise ConfigError("num_games", f"{self.num_games} games of up to {self.max_moves} moves do not fit the "
                              f"sandbox's result size ({_MAX_RECORDED_MOVES} moves in all)",
                              "Lower num_games or max_moves.")


class Strategy2048Task(CodeTask):
    """The 2048 strategy task: prompt, sandbox limits, and the trusted judge that replays the games."""

    entrypoint = "strategy"
    component_names = ("format", "policy", "tile", "score", "win", "failures", "crash")
    harness = "ossgym.envs.code.harness2048:harness"
    seed_namespace = "ossgym.GptOss2048"

    def __init__(self, config: Strategy2048Config):
        self.config = config
        self.call_time_limit_s = config.move_time_limit_s
        self.weights = config.weights

    def instructions(self) -> str:
        c = self.config
        imports = ", ".join(sorted(c.allowed_imports))
        # The harness ends a game on the move that makes a run of no-change moves longer than max_stalled_moves.
        stalled_end = c.max_stalled_moves + 1
        stalled_rule = f"{stalled_end} such moves in a row end the game." if stalled_end > 1 else "such a move ends the game."
        return (
            f"You write Python code that plays the game 2048 on a {c.size}x{c.size} board.\n\n"
            "Write exactly one top-level function:\n\n"
            "    def strategy(board):\n\n"
            f"- `board` is a tuple of {c.size} rows, each a tuple of {c.size} ints: the tile values (2, 4, 8, ...),"
            " 0 for an empty cell. Row 0 is the top row.\n"
            '- Return exactly one of the strings "W" (up), "A" (left), "S" (down) or "D" (right). Anything'
            f" else ends the game as a loss. A move that changes nothing wastes a turn; {stalled_rule}\n"
            "- Rules of 2048: tiles slide as far as possible in the chosen direction; two equal tiles that meet"
            " merge into one of their sum (a tile merges at most once per move) and the merged value is added"
            " to the score; after every move that changed the board a new tile (2 with probability 0.9, else"
            " 4) appears in a random empty cell. The game ends when no move changes the board.\n"
            f"- Your function plays {c.num_games} games. Each call may use at most {c.move_time_limit_s:g} s of"
            f" CPU time; all games together have {c.time_budget_s:g} s, and a game cut by that budget counts"
            f" as far as it got. A game also ends when it reaches the {c.target} tile (a win).\n"
            f"- Reward: higher for a larger largest tile and a higher score in every game, plus a bonus for each"
            f" game that reaches {c.target}.\n\n"
            f"Sandbox rules: you may import only {imports}. Helper functions go inside `strategy`; nothing but"
            " imports and `strategy` at the top level. No names that start with an underscore, no classes with"
            " dunder methods, no eval, exec, compile, open, globals, getattr with a computed name, no bare"
            " `except:` and no `except BaseException`. Printing is ignored.\n\n"
            "Answer with the complete code in one ```python block."
        )

    def user_prompt(self) -> str:
        return (
            f"Write `strategy(board)` for 2048 on a {self.config.size}x{self.config.size} board that reaches the"
            f" {self.config.target} tile as often as possible."
        )

    def payload(self, seed: int) -> dict:
        c = self.config
        game_seeds = np.random.default_rng(self.derived_seed("games", seed)).integers(2**63, size=c.num_games)
        return harness2048.make_payload(
            [int(s) for s in game_seeds],
            size=c.size,
            max_moves=c.max_moves,
            max_stalled_moves=c.max_stalled_moves,
            target=c.target,
        )

    def judge(self, result: SandboxResult, payload: Any) -> tuple[dict[str, float], str, dict]:
        """Replay every game from its seed and moves with the trusted engine; shape the reward from that."""
        c = self.config
        games = harness2048.replay_result(result.value, payload)
        log_target = math.log2(c.target)
        target_score = (log_target - 1) * c.target  # the score of building the target from 2s alone
        tile = sum(math.log2(max(g.max_tile, 1)) / log_target for g in games) / len(games)
        score = sum(math.log2(1 + g.score) / math.log2(1 + target_score) for g in games) / len(games)
        wins = sum(g.max_tile >= c.target for g in games) / len(games)
        failed = [g for g in games if g.end in _FAILED_ENDS]
        components = {
            "tile": c.tile_weight * min(tile, 1.0),
            "score": c.score_weight * min(score, 1.0),
            "win": c.win_weight * wins,
            "failures": -c.failure_weight * len(failed) / len(games),
            "crash": 0.0 if result.outcome is Outcome.OK else c.weights.crash,
        }
        lines = [
            f"{len(games)} games: largest tiles {sorted((g.max_tile for g in games), reverse=True)}, mean score "
            f"{sum(g.score for g in games) / len(games):.0f}, {round(wins * len(games))} reached {c.target}."
        ]
        if result.outcome is not Outcome.OK:
            lines.append(f"The evaluation failed ({result.outcome.value}): {result.message}")
        ends: dict[str, int] = {}
        for g in games:
            ends[g.end] = ends.get(g.end, 0) + 1
        lines.append("Game ends: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())) + ".")
        for g in failed[:1]:
            lines.append(f"A game ended by {g.end} after {g.moves} moves: {g.detail}")
        # The value is plain data but its shape is not trusted (a hostile worker could send anything).
        records = result.value.get("games") if type(result.value) is dict else None
        records = records if type(records) is list else []
        trace = next((r["traceback"] for r in records if type(r) is dict and type(r.get("traceback")) is str), None)
        if trace:
            lines.append(trace[-600:])
        details = {
            "games": [{"seed": g.seed, "moves": g.moves, "score": g.score, "max_tile": g.max_tile, "end": g.end}
                      for g in games],
            "mean_score": sum(g.score for g in games) / len(games),
            "wins": round(wins * len(games)),
        }
        return components, "\n".join(lines), details


class GptOss2048Env(CodeEnv):
    """GptOss2048-v0: the model writes ``strategy(board)`` and is rewarded for how well it plays 2048.

    **Observation**: the task prompt (``str``); ``info["messages"]`` holds it as system + user messages.
    **Action**: the completion text (any ``str``); only the final channel's last ``python`` block that
    defines ``strategy`` counts.

    **Evaluation**: the completion's code passes the sandbox policy, then a sandbox worker plays
    ``num_games`` games from seeds derived from the evaluation seed (drawn from the env's generator at
    ``reset``, so every completion after the same reset plays the same games). Each move the strategy gets a
    fresh immutable copy of the board (tuple of tuples of ints) under a per-move CPU limit; the whole
    evaluation has ``time_budget_s``. The worker returns only each game's moves; the env replays every game
    with its own engine and seeds and computes the reward from that replay alone.

    **Reward** (components sum to it; ``info["reward_components"]``):

    ========== ============================================================ ========================
    component  value                                                         range (defaults)
    ========== ============================================================ ========================
    format     +0.5 compilable ``strategy`` found; -0.5 syntax error;        -1 .. 0.5
               -1 none found
    policy     +0.5 sandbox policy passed; -1 violation                      -1 .. 0.5
    tile       ``tile_weight`` x mean over games of log2(max tile) /          0 .. 1
               log2(target), capped at 1
    score      ``score_weight`` x mean of log2(1 + score) /                   0 .. 1
               log2(1 + (log2(target) - 1) x target), capped at 1
    win        ``win_weight`` x fraction of games that reached ``target``     0 .. 2
    failures   -``failure_weight`` x fraction of games ended by an invalid     -1 .. 0
               return value, a per-move timeout or an exception
    crash      -1 when the evaluation itself died (memory, total timeout,     -1 .. 0
               crash); the games count as far as the last report got
    ========== ============================================================ ========================

    **Options** (``Strategy2048Config`` fields, passed as keyword arguments to ``gymnasium.make``):

    ===================== ========= ========================================================
    option                default   meaning
    ===================== ========= ========================================================
    size                  4         board size (3..8)
    target                2048      the winning tile (4x4: random play never reaches it)
    num_games             8         games per evaluation
    move_time_limit_s     0.05      CPU seconds per call of ``strategy``
    time_budget_s         5.0       wall seconds for all games of one evaluation
    max_moves             5000      moves per game at most
    max_stalled_moves     20        consecutive moves that change nothing before a game ends
    memory_mb             512       memory the evaluation may add
    allowed_imports       math, random, itertools, functools, collections, heapq, operator, bisect
    ===================== ========= ========================================================

    Why 4x4 and not 6x6 as in public notebooks: on 6x6 a uniformly random policy reaches 2048 in about
    97% of games, so GRPO converges to ``random.choice("WASD")``.

    **Episode**: one step by default; see :class:`~ossgym.envs.code.base.CodeEnv` for ``max_turns``.
    A game cut by the time budget depends on the machine's speed; everything else is deterministic given
    the evaluation seed and the completion.
    """

    config_class = Strategy2048Config
    task_class = Strategy2048Task
