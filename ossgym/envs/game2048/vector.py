"""The native vector env of ``Game2048-v0``: all boards stepped at once by the batched bitboard engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from ossgym.envs.game2048.engine import BatchGame2048, Game2048, codes_to_mask
from ossgym.envs.game2048.env import ONE_HOT_TABLE, Game2048Config
from ossgym.envs.game2048.render import render_ansi, render_rgb
from ossgym.errors import ConfigError
from ossgym.options import check_keys


class _GameList:
    """Boards of a size other than 4 as a list of :class:`Game2048`, with the batch interface."""

    def __init__(self, size: int, rngs: Sequence[np.random.Generator]):
        self.games = [Game2048(size, rng=r) for r in rngs]
        self.n = len(self.games)

    def set_rng(self, i: int, rng: np.random.Generator) -> None:
        self.games[i].rng = rng

    def reset(self, where: np.ndarray) -> None:
        for i in np.flatnonzero(where).tolist():
            self.games[i].reset()

    def step(self, actions: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gains = np.zeros(self.n, dtype=np.int64)
        changed = np.zeros(self.n, dtype=np.bool_)
        for i in np.flatnonzero(where).tolist():
            gains[i], changed[i] = self.games[i].step(int(actions[i]))
        return gains, changed

    @property
    def codes(self) -> np.ndarray:
        return np.array([g.legal_code for g in self.games], dtype=np.uint8)

    @property
    def score(self) -> np.ndarray:
        return np.array([g.score for g in self.games], dtype=np.int64)

    def max_exponents(self) -> np.ndarray:
        return np.array([g.max_exponent for g in self.games], dtype=np.uint8)

    def boards(self) -> np.ndarray:
        return np.stack([g.board for g in self.games])


class Game2048VectorEnv(VectorEnv):
    """``num_envs`` games of ``Game2048-v0`` stepped together (4x4 boards on the batched bitboard engine).

    Each sub-env follows exactly the spec of :class:`~ossgym.envs.game2048.env.Game2048Env` (same
    arguments, spaces per env, rewards, illegal-move modes, info keys). Made with
    ``gymnasium.make_vec("Game2048-v0", num_envs=N)`` (the registered ``vector_entry_point``, also
    ``vectorization_mode="vector_entry_point"``).

    Seeding: ``reset(seed=s)`` seeds sub-env ``i`` with ``s + i`` (a list gives one seed per env), as
    ``SyncVectorEnv`` does, and each sub-env draws from its own generator exactly as a single env does,
    so the results equal those of ``N`` single envs (``SyncVectorEnv``) with the same seeds.

    Autoreset (``autoreset_mode``): ``AutoresetMode.NEXT_STEP`` (default, Gymnasium 1.x): when sub-env
    ``i`` ends (terminated or truncated) its next ``step`` ignores its action, starts a new game and
    returns the first observation with reward 0 and ``terminated = truncated = False``.
    ``AutoresetMode.SAME_STEP``: a finished sub-env is reset in the same step; the returned observation is
    the new game's, and ``info["final_obs"]`` / ``info["final_info"]`` hold the last ones (with
    ``info["_final_obs"]`` marking which envs ended).

    Info: arrays over the envs, ``action_mask`` (N, 4), ``score``, ``max_tile``, ``illegal_move``, each
    with Gymnasium's ``_key`` mask (all true). ``max_episode_steps`` truncates episodes as ``TimeLimit`` does.
    Rendering returns a tuple with one frame per sub-env.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4,
                "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, max_episode_steps: int | None = None,
                 autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP, **options: Any):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ConfigError("num_envs", f"must be an int >= 1, got {num_envs!r}", "Pass num_envs=8.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError("render_mode", f"must be None, 'ansi' or 'rgb_array', got {render_mode!r}",
                              'Pass render_mode="ansi" or "rgb_array".')
        if max_episode_steps is not None and (not isinstance(max_episode_steps, int) or max_episode_steps < 1):
            raise ConfigError("max_episode_steps", f"must be None or an int >= 1, got {max_episode_steps!r}",
                              "Pass max_episode_steps=None (no limit) or a positive int.")
        try:
            self.autoreset_mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ConfigError("autoreset_mode", f"must be next_step or same_step, got {autoreset_mode!r}",
                              "Pass autoreset_mode=AutoresetMode.NEXT_STEP.") from None
        if self.autoreset_mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ConfigError("autoreset_mode", f"{self.autoreset_mode} is not supported",
                              "Pass autoreset_mode=AutoresetMode.NEXT_STEP or SAME_STEP.")
        self.metadata = {**self.metadata, "autoreset_mode": self.autoreset_mode}
        self.config = Game2048Config.from_options(
            options, type(self).__name__, ("num_envs", "render_mode", "max_episode_steps", "autoreset_mode"))
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.max_episode_steps = max_episode_steps
        self.single_action_space = spaces.Discrete(4)
        self.single_observation_space = self.config.observation_space()
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._games: BatchGame2048 | _GameList | None = None
        self._rngs: list[np.random.Generator] = []
        self._elapsed = np.zeros(num_envs, dtype=np.int64)
        self._autoreset = np.zeros(num_envs, dtype=np.bool_)
        self._all = np.ones(num_envs, dtype=np.bool_)
        self._terminate_on_illegal = self.config.illegal_move == "terminate"
        self._penalty = -float(self.config.illegal_penalty) if self.config.illegal_move == "penalize" else 0.0

    # -- helpers ---------------------------------------------------------------------------------------
    def _new_games(self, rngs: list[np.random.Generator]) -> BatchGame2048 | _GameList:
        if self.config.size == 4:
            return BatchGame2048(rngs)
        return _GameList(self.config.size, rngs)

    def _obs(self) -> np.ndarray:
        boards = self._games.boards()
        return ONE_HOT_TABLE[boards] if self.config.one_hot else boards

    def _info(self, illegal: np.ndarray | None, stepped: np.ndarray | None = None) -> dict[str, Any]:
        """Batched info; ``illegal_move`` is present (``_illegal_move`` true) only for envs in ``stepped``."""
        g = self._games
        max_exp = g.max_exponents().astype(np.int64)
        info: dict[str, Any] = {
            "action_mask": codes_to_mask(g.codes),
            "score": g.score.copy(),
            "max_tile": np.where(max_exp > 0, np.left_shift(1, max_exp), 0),
        }
        for key in list(info):
            info["_" + key] = self._all.copy()
        if illegal is not None and stepped.any():
            info["illegal_move"] = illegal & stepped
            info["_illegal_move"] = stepped.copy()
        return info

    # -- API -------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new games in every sub-env (or those in ``options["reset_mask"]``); see the class doc."""
        options = dict(options or {})
        mask = np.asarray(options.pop("reset_mask", self._all), dtype=np.bool_)
        check_keys(options, ("reset_mask",), "Game2048VectorEnv.reset")
        if mask.shape != (self.num_envs,):
            raise ValueError(f"reset_mask must have shape ({self.num_envs},)")
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        if self._games is None:
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
            self._games = self._new_games(self._rngs)
        else:
            for i in np.flatnonzero(mask).tolist():
                if seeds[i] is not None:
                    self._rngs[i] = seeding.np_random(seeds[i])[0]
                    self._games.set_rng(i, self._rngs[i])
            self._games.reset(mask)
        self._elapsed[mask] = 0
        self._autoreset[mask] = False
        return self._obs(), self._info(None)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Step every sub-env with its action (autoresetting finished ones); see the class doc."""
        games = self._games
        if games is None:
            raise gym.error.ResetNeeded("Call reset() before step().")
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        if actions.min() < 0 or actions.max() > 3:
            raise ValueError(f"actions must be in 0..3, got {actions}")
        resetting = self._autoreset
        active = ~resetting
        gains, changed = games.step(actions, active)
        if resetting.any():
            games.reset(resetting)
        illegal = active & ~changed
        rewards = self.config.rewards_of(gains)
        rewards[illegal] = self._penalty
        terminated = active & ((games.codes == 0) | (illegal & self._terminate_on_illegal))
        self._elapsed = np.where(active, self._elapsed + 1, 0)
        if self.max_episode_steps is not None:
            truncated = active & (self._elapsed >= self.max_episode_steps)
        else:
            truncated = np.zeros(self.num_envs, dtype=np.bool_)
        done = terminated | truncated
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset = done
            return self._obs(), rewards, terminated, truncated, self._info(illegal, active)
        obs, info = self._obs(), self._info(illegal, self._all)
        if done.any():
            info["final_obs"] = np.array([o if d else None for o, d in zip(obs, done)], dtype=object)
            info["_final_obs"] = done.copy()
            final_info: dict[str, Any] = {}
            for k in ("action_mask", "score", "max_tile", "illegal_move"):
                v = info[k]
                final_info[k] = np.where(done.reshape((-1,) + (1,) * (v.ndim - 1)), v, np.zeros_like(v))
                final_info["_" + k] = done.copy()
            info["final_info"] = final_info
            info["_final_info"] = done.copy()
            games.reset(done)
            self._elapsed[done] = 0
            obs = self._obs()
            fresh = self._info(illegal, ~done)
            for k in ("illegal_move", "_illegal_move"):
                info.pop(k)
            info.update(fresh)
        return obs, rewards, terminated, truncated, info

    def render(self) -> tuple[Any, ...] | None:
        """One frame per sub-env (ANSI text or RGB array, per ``render_mode``)."""
        if self.render_mode is None or self._games is None:
            return None
        boards, scores = self._games.boards(), self._games.score
        draw = render_ansi if self.render_mode == "ansi" else render_rgb
        return tuple(draw(b, int(s)) for b, s in zip(boards, scores))
