"""GptOss2048-v0: the model writes ``strategy(board)`` for the game 2048; the caller plays the games."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ossgym.envs.code.base import CodeEnv, CodeTask, TaskConfig
from ossgym.envs.code.strategy2048.judge import FAILED_ENDS, GamesDriver, game_seeds
from ossgym.envs.game2048.engine import MAX_EXPONENT, MAX_SIZE, MIN_SIZE
from ossgym.errors import ConfigError
from ossgym.options import option, redefault
from ossgym.sandbox import DEFAULT_IMPORTS, Outcome, SandboxResult

_SECONDS = dict(min=0.0, min_open=True, max=3600.0)  # CPU seconds: > 0 and at most an hour


@dataclass(frozen=True)
class Strategy2048Config(TaskConfig):
    """Options of GptOss2048-v0 (defaults in the table of :class:`GptOss2048Env`); shared ones in TaskConfig."""

    #: the shared default plus ``time``, so a strategy can budget its search (the sandbox serves it a
    #: read-only clock)
    allowed_imports: frozenset[str] = redefault(TaskConfig, "allowed_imports", DEFAULT_IMPORTS | {"time"})
    size: int = option(4, "board size", min=MIN_SIZE, max=MAX_SIZE)
    target: int = option(2048, "the winning tile (a power of two)", min=8, max=2**MAX_EXPONENT)
    num_games: int = option(8, "games per evaluation", min=1, max=100_000)
    move_time_limit_s: float = option(0.05, "CPU seconds per call of strategy (caller-measured)", **_SECONDS)
    move_budget_s: float = option(0.01, "mean CPU seconds per move the total budget grows by", **_SECONDS)
    time_budget_s: float = option(2.0, "CPU seconds of every evaluation on top (loading, warm-up)", **_SECONDS)
    max_moves: int = option(5000, "moves per game at most", min=1, max=100_000)
    max_stalled_moves: int = option(20, "consecutive moves that change nothing before a game ends", min=0)
    tile_weight: float = option(1.0, "weight of the tile component", min=0.0)
    score_weight: float = option(1.0, "weight of the score component", min=0.0)
    win_weight: float = option(2.0, "weight of the win component", min=0.0)
    failure_weight: float = option(1.0, "weight of the failures component", min=0.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        t = self.target
        if t & (t - 1):
            raise ConfigError("target", f"must be a power of two in 8..{2**MAX_EXPONENT}, got {t!r}", "Pass target=2048.")
        if self.move_budget_s > self.move_time_limit_s:
            raise ConfigError("move_budget_s", "the mean per-move budget cannot exceed the per-move limit",
                              "Pass e.g. move_time_limit_s=0.05, move_budget_s=0.01.")


class Strategy2048Task(CodeTask):
    """The 2048 strategy task: prompt, sandbox limits, the caller-side games and the trusted judge."""

    entrypoint = "strategy"
    component_names = ("format", "policy", "tile", "score", "win", "failures", "crash")
    handler = "ossgym.envs.code.strategy2048.handler:handle"
    seed_namespace = "ossgym.GptOss2048"
    config: Strategy2048Config

    def __init__(self, config: Strategy2048Config):
        super().__init__(config)
        self.call_time_limit_s = config.move_time_limit_s

    def instructions(self) -> str:
        c = self.config
        # The caller ends a game on the move that makes a run of no-change moves longer than max_stalled_moves.
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
            f"- Your function plays {c.num_games} games, which may be interleaved (one call per game and step)."
            f" Each call may use at most {c.move_time_limit_s:g} s of CPU time, and the evaluation has"
            f" {c.time_budget_s:g} s of CPU time plus {c.move_budget_s:g} s per move played: a strategy whose"
            " moves stay within that mean always finishes its games; one that runs out has its unfinished"
            f" games end as failures. A game also ends when it reaches the {c.target} tile (a win) or after"
            f" {c.max_moves} moves.\n"
            f"- Reward: higher for a larger largest tile and a higher score in every game, plus a bonus for each"
            f" game that reaches {c.target}.\n\n"
            f"{self.rules()}\n\n"
            "Answer with the complete code in one ```python block."
        )

    def user_prompt(self) -> str:
        return (
            f"Write `strategy(board)` for 2048 on a {self.config.size}x{self.config.size} board that reaches the"
            f" {self.config.target} tile as often as possible."
        )

    def game_seeds(self, seed: int) -> list[int]:
        """The seeds of the games of evaluation seed ``seed`` (derived one-way; never sent to the worker)."""
        return game_seeds(self.derived_seed("games", seed), self.config.num_games)

    def driver(self, seed: int) -> GamesDriver:
        c = self.config
        return GamesDriver(self.game_seeds(seed), size=c.size, target=c.target, max_moves=c.max_moves,
                           max_stalled_moves=c.max_stalled_moves, move_time_limit_s=c.move_time_limit_s,
                           move_budget_s=c.move_budget_s, time_budget_s=c.time_budget_s)

    def judge(self, result: SandboxResult, driver: Any, baseline: Any = None) -> tuple[dict[str, float], str, dict]:
        """Shape the reward from the games the driver played (the caller's engine and generators only)."""
        c = self.config
        games = driver.games
        log_target = math.log2(c.target)
        target_score = (log_target - 1) * c.target  # the score of building the target from 2s alone
        tile = sum(math.log2(max(g.max_tile, 1)) / log_target for g in games) / len(games)
        score = sum(math.log2(1 + g.score) / math.log2(1 + target_score) for g in games) / len(games)
        wins = sum(g.max_tile >= c.target for g in games) / len(games)
        failed = [g for g in games if g.end in FAILED_ENDS]
        crashed = result.outcome is not Outcome.OK or driver.failure is not None or not driver.started
        components = {
            "tile": c.tile_weight * min(tile, 1.0),
            "score": c.score_weight * min(score, 1.0),
            "win": c.win_weight * wins,
            "failures": -c.failure_weight * len(failed) / len(games),
            "crash": c.weights.crash if crashed else 0.0,
        }
        lines = [
            f"{len(games)} games: largest tiles {sorted((g.max_tile for g in games), reverse=True)}, mean score "
            f"{sum(g.score for g in games) / len(games):.0f}, {round(wins * len(games))} reached {c.target}."
        ]
        if crashed:
            why = driver.failure or (f"{result.outcome.value}: {result.message}" if result.outcome is not Outcome.OK
                                     else "the evaluation did not start")
            lines.append(f"The evaluation failed ({why}).")
        ends: dict[str, int] = {}
        for g in games:
            ends[g.end or "not_played"] = ends.get(g.end or "not_played", 0) + 1
        lines.append("Game ends: " + ", ".join(f"{k} {v}" for k, v in sorted(ends.items())) + ".")
        for g in failed[:1]:
            lines.append(f"A game ended by {g.end} after {g.moves} moves: {g.detail}")
            if g.traceback:
                lines.append(g.traceback[-600:])
        details = {
            "games": [{"seed": g.seed, "moves": g.moves, "score": g.score, "max_tile": g.max_tile,
                       "end": g.end or "not_played"}
                      for g in games],
            "mean_score": sum(g.score for g in games) / len(games),
            "wins": round(wins * len(games)),
            "worker_cpu_s": driver.cpu_s,
            "requests": driver.requests,
        }
        return components, "\n".join(lines), details


class GptOss2048Env(CodeEnv):
    """GptOss2048-v0: the model writes ``strategy(board)`` and is rewarded for how well it plays 2048.

    **Observation**: the task prompt (``str``); ``info["messages"]`` holds it as system + user messages
    (with ``max_turns > 1``, then each earlier attempt's answer as an assistant turn and its feedback as a
    user turn).
    **Action**: the completion text (any ``str``); only the final channel's last ``python`` block that
    defines ``strategy`` counts.

    **Evaluation** (caller-driven; :mod:`ossgym.envs.code.strategy2048.judge`): the code passes the sandbox
    policy and is loaded in a sandbox worker beside the trusted handler. The caller plays ``num_games``
    games with its own engine from seeds derived one-way from the evaluation seed (drawn from the env's
    generator at ``reset``, so every completion after the same reset plays the same games). Each game step
    it sends the worker the boards of all live games (tuples of tuples of ints) and reads back one move per
    board; the next tile is drawn in the caller after the move, so the worker never sees a tile before it
    spawns. Budgets are the worker's CPU time measured by the caller: ``move_time_limit_s`` per move and
    ``time_budget_s + move_budget_s x moves played`` in total; wall time never counts (a generous liveness
    cap, ``liveness_wall_s``, only ends a stuck worker).

    **The cut rule**: a game cut by the total budget counts as far as it got and as a failure. A strategy
    whose moves average within ``move_budget_s`` is never cut, so a cut can never rank a strategy that keeps
    the limits below one that plays worse; exceeding the budget never pays more than finishing would.

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
               return value, a per-move timeout, an exception or the budget
    crash      -1 when the worker died (memory, crash, malformed reply); the   -1 .. 0
               games count as far as they got
    ========== ============================================================ ========================

    **Options** (``Strategy2048Config`` fields, passed as keyword arguments to ``gymnasium.make``):

    ===================== ========= ========================================================
    option                default   meaning
    ===================== ========= ========================================================
    size                  4         board size (3..8)
    target                2048      the winning tile (4x4: random play never reaches it)
    num_games             8         games per evaluation
    move_time_limit_s     0.05      CPU seconds per call of ``strategy`` (caller-measured)
    move_budget_s         0.01      mean CPU seconds per move the total budget grows by
    time_budget_s         2.0       CPU seconds of every evaluation on top (loading, warm-up)
    max_moves             5000      moves per game at most
    max_stalled_moves     20        consecutive moves that change nothing before a game ends
    memory_mb             512       memory the evaluation may add
    liveness_wall_s       120.0     wall seconds before a stuck worker is killed (not a budget)
    allowed_imports       math, random, itertools, functools, collections, heapq, operator, bisect, time
    ===================== ========= ========================================================

    Why 4x4 and not 6x6 as in public notebooks: on 6x6 a uniformly random policy reaches 2048 in about
    97% of games, so GRPO converges to ``random.choice("WASD")``.

    **Episode**: one step by default; see :class:`~ossgym.envs.code.base.CodeEnv` for ``max_turns``.
    Deterministic: the same completion and evaluation seed give the same reward in any pool, process and
    load (CPU-time budgets; only a strategy within a few percent of a CPU limit can land on either side).
    """

    config_class = Strategy2048Config
    task_class = Strategy2048Task
