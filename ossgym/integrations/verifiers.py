"""A verifiers (0.4, ``verifiers.v1``) taskset over an ossgym code env: one reward per reward component.

::

    from ossgym.integrations.verifiers import OssgymTaskset, OssgymTasksetConfig
    taskset = OssgymTasksetConfig(env_id="GptOss2048-v0", seeds=list(range(64))).build()   # or OssgymTaskset(config)

Each task is one evaluation seed: its prompt is the env's chat messages for that seed (system instructions
+ user turn), and :meth:`OssgymTask.components` scores the agent's last reply in the sandbox and records
every component (``format``, ``policy``, ``tile``, ...) as its own reward (weight 1; they sum to the env's
reward). Needs ``pip install verifiers``; verifiers 0.4.0 pins ``mcp==2.0.0``, which conflicts with the
``fastmcp`` that OpenEnv 0.10 brings, so install it in an environment without ``ossgym[openenv]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import gymnasium

try:
    import verifiers.v1 as vf
except ImportError as e:  # pragma: no cover - only without verifiers
    raise ImportError("ossgym.integrations.verifiers needs verifiers>=0.4: pip install verifiers") from e

__all__ = ["OssgymData", "OssgymTask", "OssgymTasksetConfig", "OssgymTaskset"]


@lru_cache(maxsize=8)
def _env(env_id: str, options: tuple) -> Any:
    import ossgym  # noqa: F401

    return gymnasium.make(env_id, **dict(options)).unwrapped


class OssgymData(vf.TaskData):
    """One evaluation of an ossgym code env."""

    env_id: str = "GptOss2048-v0"
    eval_seed: int = 0
    env_options: dict[str, Any] = {}


class OssgymTask(vf.Task[OssgymData]):
    """Scores the agent's last reply on the task's env and evaluation seed, one reward per component."""

    @vf.reward
    async def components(self, task: OssgymData, trace: Any) -> dict[str, float]:
        env = _env(task.env_id, tuple(sorted(task.env_options.items())))
        result = env.score(trace.last_reply or "", seed=task.eval_seed)
        return {k: float(v) for k, v in result.components.items()}


class OssgymTasksetConfig(vf.TasksetConfig):
    env_id: str = "GptOss2048-v0"
    """The ossgym code env."""
    seeds: list[int] = list(range(64))
    """One task per evaluation seed."""
    env_options: dict[str, Any] = {}
    """Keyword options of the env (e.g. ``{"num_games": 4}``)."""


class OssgymTaskset(vf.Taskset[OssgymTask, OssgymTasksetConfig]):
    """The env's evaluations as verifiers tasks (prompt: the env's chat messages for the seed)."""

    def load(self) -> Iterator[OssgymTask]:
        c = self.config
        env = _env(c.env_id, tuple(sorted(c.env_options.items())))
        for seed in c.seeds:
            _, info = env.reset(options={"eval_seed": int(seed)})
            system, user = info["messages"][0]["content"], info["messages"][-1]["content"]
            yield OssgymTask(OssgymData(name=f"{c.env_id}#{seed}", prompt=user, system_prompt=system,
                                        env_id=c.env_id, eval_seed=int(seed), env_options=dict(c.env_options)),
                             c.task)
