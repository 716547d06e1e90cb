"""``Game2048-v0``: the classic 2048 game as a Gymnasium environment."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ossgym.envs.game2048.engine import MAX_EXPONENT, MAX_SIZE, MIN_SIZE, Game2048
from ossgym.envs.game2048.render import render_ansi, render_rgb
from ossgym.errors import ConfigError
from ossgym.options import check_keys, check_options, option

ILLEGAL_MOVE_MODES = ("noop", "penalize", "terminate")
REWARD_MODES = ("score", "log2")


@dataclass
class Game2048Config:
    """Settings of :class:`Game2048Env` and :class:`~ossgym.envs.game2048.vector.Game2048VectorEnv`."""

    size: int = option(4, "board size", min=MIN_SIZE, max=MAX_SIZE)
    illegal_move: str = option("noop", "what a move that changes nothing does", choices=ILLEGAL_MOVE_MODES)
    illegal_penalty: float = option(1.0, "the penalty of an illegal move in the penalize mode", min=0.0)
    one_hot: bool = option(False, "one-hot observations (size, size, 16) instead of exponents")
    reward_mode: str = option("score", "reward of a move: its score gain, or log2 of it", choices=REWARD_MODES)

    def __post_init__(self) -> None:
        check_options(self)

    @classmethod
    def from_options(cls, options: dict[str, Any], owner: str, env_args: tuple[str, ...] = ()) -> "Game2048Config":
        """The config of an env's keyword options; ConfigError names an unknown one (``env_args`` are the
        env's own arguments, named in the hint)."""
        check_keys(options, [*(f.name for f in fields(cls)), *env_args], owner)
        return cls(**options)

    def observation_space(self) -> spaces.Box:
        """The observation space of one board under these settings."""
        s = self.size
        if self.one_hot:
            return spaces.Box(0, 1, shape=(s, s, MAX_EXPONENT + 1), dtype=np.uint8)
        return spaces.Box(0, MAX_EXPONENT, shape=(s, s), dtype=np.uint8)

    def reward_of(self, gain: int) -> float:
        """The reward of a legal move that gained ``gain`` points: the gain, or its log2 (0 when nothing merged)."""
        if self.reward_mode == "log2":
            return math.log2(gain) if gain else 0.0
        return float(gain)

    def rewards_of(self, gains: np.ndarray) -> np.ndarray:
        """:meth:`reward_of` of each gain of a batch, as float64 (the vector env). log2 goes through the same
        ``math.log2`` per gain: numpy's vectorized log2 may differ from it in the last bit (numpy 1.26 does),
        and the vector env must equal the single env exactly."""
        if self.reward_mode == "log2":
            return np.array([self.reward_of(g) for g in gains.tolist()], dtype=np.float64)
        return gains.astype(np.float64)


ONE_HOT_TABLE = np.eye(MAX_EXPONENT + 1, dtype=np.uint8)


class Game2048Env(gym.Env[np.ndarray, np.int64]):
    """The 2048 sliding-tile game (gabrielecirulli/2048) on a ``size x size`` board (default 4x4).

    ## Rules
    Tiles slide as far as they go in the chosen direction; two equal tiles that meet merge into their
    sum (at most once per move, the pair nearest the wall first). After a move that changed the board a
    2 (probability 0.9) or a 4 (0.1) appears in a uniformly random empty cell. The largest tile is 32768
    (exponent 15): two 32768 tiles do not merge. The rules live in
    :mod:`ossgym.envs.game2048.engine`; this environment only wraps them.

    ## Action Space
    ``Discrete(4)``: 0 up, 1 right, 2 down, 3 left.

    ## Observation Space
    ``Box(0, 15, (size, size), uint8)``: the exponent of each cell (0 empty, ``e`` the tile ``2**e``).
    With ``one_hot=True``: ``Box(0, 1, (size, size, 16), uint8)``, channel ``e`` set where the exponent is ``e``.
    Every observation is a new array.

    ## Rewards
    ``reward_mode="score"`` (default): the score gain of the move (the sum of the tiles merges created),
    so the episode return is the game score. ``reward_mode="log2"``: ``log2`` of that gain (0 if nothing
    merged). An illegal move (one that does not change the board) gives 0, or ``-illegal_penalty`` in the
    ``"penalize"`` mode.

    ## Illegal moves (``illegal_move``)
    * ``"noop"`` (default): nothing happens, reward 0, no new tile; the episode goes on.
    * ``"penalize"``: as noop, but the reward is ``-illegal_penalty`` (default 1.0).
    * ``"terminate"``: the episode ends (``terminated=True``) with reward 0.
    ``info["action_mask"]`` (and ``env.action_masks()``, for MaskablePPO) says which moves are legal, so an
    agent can avoid them altogether.

    ## Starting State
    An empty board with two random tiles, score 0. ``reset(options={"board": B, "score": S})`` starts
    from the exponent board ``B`` (``size x size``) and score ``S`` instead (after the usual random start,
    so the random stream stays the same).

    ## Episode End
    Terminated when no move changes the board (or on an illegal move in ``"terminate"`` mode). There is
    no built-in time limit: with ``"noop"`` an agent that keeps making illegal moves never ends an
    episode, so wrap with ``gymnasium.wrappers.TimeLimit`` (or pass ``max_episode_steps`` to ``make``).

    ## Info
    ``action_mask`` (``bool`` array of 4, legal moves of the new board), ``score`` (int, the game
    score), ``max_tile`` (int, largest tile value); after a step also ``illegal_move`` (bool).

    ## Randomness
    All randomness comes from ``self.np_random`` (seeded by ``reset(seed=...)``) through
    :class:`~ossgym.envs.game2048.engine.Game2048`: the same seed and actions give the same episode.

    ## Rendering
    ``render_mode="ansi"``: the board as ANSI-coloured text with the score. ``render_mode="rgb_array"``:
    an RGB picture like the web game (uint8, shape ``render.image_shape(size)``, 500x444x3 for 4x4).

    ## Arguments
    ``gymnasium.make("Game2048-v0", render_mode=None, size=4, illegal_move="noop", illegal_penalty=1.0,
    one_hot=False, reward_mode="score")`` (the options are :class:`Game2048Config`'s fields; a wrong value
    or an unknown name raises :class:`~ossgym.errors.ConfigError` at ``make``)
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **options: Any):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError("render_mode", f"must be None, 'ansi' or 'rgb_array', got {render_mode!r}",
                              'Pass render_mode="ansi" or "rgb_array".')
        self.config = Game2048Config.from_options(options, type(self).__name__, ("render_mode",))
        self.render_mode = render_mode
        self.size = self.config.size
        self.action_space = spaces.Discrete(4)
        self.observation_space = self.config.observation_space()
        self._game: Game2048 | None = None
        self._shape = (self.size, self.size)
        self._reward_of = self.config.reward_of
        self._one_hot = self.config.one_hot
        self._mode = self.config.illegal_move
        self._penalty = -float(self.config.illegal_penalty)

    @property
    def game(self) -> Game2048:
        """The running game (after :meth:`reset`)."""
        if self._game is None:
            raise gym.error.ResetNeeded("Call reset() before using the game.")
        return self._game

    def _obs(self) -> np.ndarray:
        obs = np.frombuffer(bytearray(self._game.exponent_bytes()), dtype=np.uint8).reshape(self._shape)
        return ONE_HOT_TABLE[obs] if self._one_hot else obs

    def _info(self) -> dict[str, Any]:
        g = self._game
        return {"action_mask": g.legal_mask(), "score": g.score, "max_tile": g.max_tile}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new game (two random tiles); ``options`` may give ``board`` and ``score`` to start from."""
        super().reset(seed=seed)
        self._game = Game2048(self.size, rng=self.np_random)
        if options:
            check_keys(options, ("board", "score"), "Game2048Env.reset")
            if "board" in options:
                self._game.set_board(options["board"], score=int(options.get("score", 0)))
            elif "score" in options:
                self._game.score = int(options["score"])
        return self._obs(), self._info()

    def step(self, action: np.int64 | int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Play one move: returns the usual ``(obs, reward, terminated, truncated, info)``."""
        game = self._game
        if game is None:
            raise gym.error.ResetNeeded("Call reset() before step().")
        gain, changed = game.step(action)
        if changed:
            reward = self._reward_of(gain)
            terminated = game.is_over()
        else:
            reward = self._penalty if self._mode == "penalize" else 0.0
            terminated = self._mode == "terminate" or game.is_over()
        info = {"action_mask": game.legal_mask(), "score": game.score, "max_tile": game.max_tile,
                "illegal_move": not changed}
        return self._obs(), reward, terminated, False, info

    def action_masks(self) -> np.ndarray:
        """The legal moves of the current board (``bool`` array of 4), as sb3-contrib's MaskablePPO asks for."""
        return self.game.legal_mask()

    def render(self) -> str | np.ndarray | None:
        """The board as ANSI text or an RGB array, per ``render_mode`` (None without one)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'.")
            return None
        g = self.game
        if self.render_mode == "ansi":
            return render_ansi(g.board, g.score)
        return render_rgb(g.board, g.score)
