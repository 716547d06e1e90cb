"""Stable-Baselines3 on ``Game2048-v0``: a VecEnv over the native vector env, action masks, an episode limit.

::

    from stable_baselines3 import PPO
    from ossgym.integrations.sb3 import Game2048VecEnv
    model = PPO("MlpPolicy", Game2048VecEnv(num_envs=8, seed=0)).learn(10_000)

    from sb3_contrib import MaskablePPO          # MaskablePPO reads env.action_masks()
    model = MaskablePPO("MlpPolicy", Game2048VecEnv(num_envs=8)).learn(10_000)

:class:`Game2048VecEnv` steps every board at once on the batched engine (SB3's ``make_vec_env`` would run
``num_envs`` Python envs one by one). :func:`make_env` is the single-env route (``gymnasium.make`` with
the default episode limit); ``Game2048-v0`` itself has ``action_masks()``, so SB3's ``DummyVecEnv`` over it
works with MaskablePPO too. Needs ``pip install 'ossgym[sb3]'``.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

from ossgym.envs.game2048.vector import Game2048VectorEnv
from ossgym.errors import ConfigError

try:
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("ossgym.integrations.sb3 needs Stable-Baselines3: pip install 'ossgym[sb3]'") from e

__all__ = ["DEFAULT_MAX_EPISODE_STEPS", "Game2048VecEnv", "make_env"]

#: Episode limit used unless told otherwise: with ``illegal_move="noop"`` a policy that repeats an illegal
#: move would otherwise never end its episode (a 2048 game that reaches 4096 takes about 3,000 moves).
DEFAULT_MAX_EPISODE_STEPS = 10_000


def make_env(env_id: str = "Game2048-v0", max_episode_steps: int | None = DEFAULT_MAX_EPISODE_STEPS,
             **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make(env_id, ...)`` with the default episode limit (``None`` for no limit)."""
    import ossgym  # noqa: F401  (registers the envs)

    return gymnasium.make(env_id, max_episode_steps=max_episode_steps, **kwargs)


class Game2048VecEnv(VecEnv):
    """An SB3 ``VecEnv`` over :class:`~ossgym.envs.game2048.vector.Game2048VectorEnv` (all boards at once).

    SB3 conventions: ``reset()`` returns only observations (seeds from ``seed(...)`` or the ``seed``
    argument, sub-env ``i`` gets ``seed + i`` as in SB3's own VecEnvs); ``step`` returns per-env info dicts
    (``action_mask``, ``score``, ``max_tile``, ``illegal_move``); a finished env is reset in the same step
    and its last observation is in ``info["terminal_observation"]``, with ``info["TimeLimit.truncated"]``
    when the episode limit (``max_episode_steps``, default :data:`DEFAULT_MAX_EPISODE_STEPS`) ended it.
    :meth:`action_masks` gives MaskablePPO the legal moves. Other keyword arguments are those of
    ``Game2048-v0`` (``size``, ``illegal_move``, ``one_hot``, ``reward_mode``, ...).
    """

    def __init__(self, num_envs: int = 8, seed: int | None = None,
                 max_episode_steps: int | None = DEFAULT_MAX_EPISODE_STEPS, **env_kwargs: Any):
        if "autoreset_mode" in env_kwargs:
            raise ConfigError("autoreset_mode", "is fixed to same_step (SB3 resets a finished env in the same step)",
                              "Leave autoreset_mode out.")
        self.venv = Game2048VectorEnv(num_envs=num_envs, max_episode_steps=max_episode_steps,
                                      autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP, **env_kwargs)
        super().__init__(num_envs, self.venv.single_observation_space, self.venv.single_action_space)
        self._actions: np.ndarray | None = None
        self._masks = np.ones((num_envs, 4), dtype=np.bool_)
        if seed is not None:
            self.seed(seed)

    # -- VecEnv ----------------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Start new games in every env (seeded by the last ``seed(...)``, once); returns the observations."""
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        obs, info = self.venv.reset(seed=seeds)
        self._masks = info["action_mask"].copy()
        self.reset_infos = self._split(info, np.ones(self.num_envs, dtype=np.bool_))
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self):
        if self._actions is None:
            raise RuntimeError("step_async must come before step_wait")
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        self._actions = None
        dones = terminated | truncated
        infos = self._split(info, ~dones)
        if dones.any():
            final = info["final_info"]
            for i in np.flatnonzero(dones).tolist():
                infos[i] = {k: _item(final[k][i]) for k in ("action_mask", "score", "max_tile", "illegal_move")}
                infos[i]["terminal_observation"] = info["final_obs"][i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        self._masks = info["action_mask"].copy()
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        """An attribute of the vector env (the same for every sub-env), once per index."""
        return [getattr(self.venv, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        """``action_masks`` per env (what MaskablePPO calls); other methods are not per-env here."""
        idx = self._indices(indices)
        if method_name == "action_masks":
            return [self._masks[i].copy() for i in idx]
        raise AttributeError(f"Game2048VecEnv has no per-env method {method_name!r}; use .venv for the vector env")

    def has_attr(self, attr_name: str) -> bool:
        return attr_name == "action_masks" or hasattr(self.venv, attr_name)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def get_images(self) -> list[np.ndarray]:
        frames = self.venv.render()
        return list(frames) if frames is not None else []

    # -- extras ----------------------------------------------------------------------------------------
    def action_masks(self) -> np.ndarray:
        """Legal moves of every current board, shape ``(num_envs, 4)``."""
        return self._masks.copy()

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def _split(self, info: dict[str, Any], where: np.ndarray) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(self.num_envs):
            d = {}
            for k in ("action_mask", "score", "max_tile", "illegal_move"):
                if k in info and info.get("_" + k, where)[i]:
                    d[k] = _item(info[k][i])
            out.append(d)
        return out


def _item(v: Any) -> Any:
    return v.copy() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v)
