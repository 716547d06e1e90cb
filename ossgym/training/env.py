"""An ossgym code env seen by GRPO: its scorer, its reward components, the prompt of a row and the dataset.

:class:`EnvRewards` builds, from an env id and its options, everything a run needs from the env;
:class:`EnvScorer` is its scorer (the env's ``score_batch`` -> component dicts), which pickles (it holds only
the id and options and builds the env at first use). Of the envs it uses only ``CodeEnv`` (ossgym.envs.code.base) and the gymnasium registry.

Where completions are scored: ``EnvRewards(env_id, scoring="local")`` (the default: this process's sandbox
pool) or ``scoring="ray"`` (a :class:`~ossgym.sandbox.ray_backend.RayPool`, built once by EnvRewards, on the
Ray cluster at ``ray_address`` or, with None, on a local Ray instance it starts; ``pip install 'ossgym[ray]'``).
Close an EnvRewards when done (``close()`` or ``with``): that stops its RayPool, and a Ray instance it started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ossgym.errors import ConfigError
from ossgym.training.config import check_env_id
from ossgym.training.dataset import Messages, build_dataset
from ossgym.training.rewards import ComponentReward, make_reward_funcs

if TYPE_CHECKING:
    from ossgym.envs.code.base import CodeEnv


def make_code_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, reasoning_effort: str = "low",
                  pool: Any = None) -> "CodeEnv":
    """The unwrapped ossgym code env ``env_id`` built with ``env_kwargs`` (scoring through ``pool``; None: the
    default pool); ConfigError if it is not one."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    from ossgym.envs.code.base import CodeEnv

    check_env_id(env_id)
    entry = gymnasium.registry[env_id].entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    if not (isinstance(creator, type) and issubclass(creator, CodeEnv)):
        raise ConfigError(
            "env_id",
            f"{env_id!r} is not a code-writing env (GRPO scores completions through CodeEnv.score_batch)",
            "Use a code env such as GptOss2048-v0 or GptOssMatmul-v0.",
        )
    kwargs = dict(env_kwargs or {}, **({} if pool is None else {"pool": pool}))
    return gymnasium.make(env_id, reasoning_effort=reasoning_effort, **kwargs).unwrapped


class EnvScorer:
    """The scorer over an ossgym code env: ``(completions, seeds) -> [components]``, scored in parallel.

    Holds only the env id, options and ``pool`` (the env is built at first use), so it pickles when the pool
    is None (the default pool of the process it runs in); a RayPool is a live connection and does not pickle.
    """

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any] | None = None, env: "CodeEnv | None" = None,
                 pool: Any = None):
        self.env_id, self.env_kwargs, self.pool = env_id, dict(env_kwargs or {}), pool
        self._env = env

    @property
    def env(self) -> "CodeEnv":
        """The unwrapped env that scores (built at first use)."""
        if self._env is None:
            self._env = make_code_env(self.env_id, self.env_kwargs, pool=self.pool)
        return self._env

    def __getstate__(self) -> dict:
        return {"env_id": self.env_id, "env_kwargs": self.env_kwargs, "pool": self.pool}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["env_id"], state["env_kwargs"], pool=state.get("pool"))

    def __call__(self, completions: list[str], seeds: list[int]) -> list[dict[str, float]]:
        return [dict(r.components) for r in self.env.score_batch(list(completions), [int(s) for s in seeds])]


@dataclasses.dataclass
class EnvRewards:
    """An ossgym code env seen by GRPO: its scorer, component names, row prompts and dataset.

    ``scoring``: ``"local"`` (this process's sandbox pool) or ``"ray"`` (a RayPool built here, at
    ``ray_address`` or on a local Ray instance; ``ray_options`` go to it, e.g. ``{"actors": 8}``); close it
    when done (:meth:`close`, or ``with``).
    """

    env_id: str
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    reasoning_effort: str = "low"
    scoring: str = "local"
    ray_address: str | None = None
    ray_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from ossgym.sandbox.ray_backend import scoring_pool

        check_env_id(self.env_id)  # a bad id fails before a RayPool starts
        self.pool = scoring_pool(self.scoring, ray_address=self.ray_address, **self.ray_options)
        try:
            self.env = make_code_env(self.env_id, self.env_kwargs, self.reasoning_effort, pool=self.pool)
        except BaseException:
            self.close()
            raise
        self.scorer = EnvScorer(self.env_id, self.env_kwargs, env=self.env, pool=self.pool)

    def close(self) -> None:
        """Stop the RayPool of ``scoring="ray"`` (and the Ray instance it started); nothing for local scoring."""
        if self.pool is not None:
            self.pool.close()  # idempotent; a later scoring through it raises SandboxError (closed)

    def __enter__(self) -> "EnvRewards":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def component_names(self) -> tuple[str, ...]:
        """The env's reward components, in its order (they sum to the reward)."""
        return tuple(self.env.task.component_names)

    def prompt(self, seed: int) -> Messages:
        """The chat messages of the task for evaluation seed ``seed`` (what the env's reset shows)."""
        return self.env.reset(options={"eval_seed": int(seed)})[1]["messages"]

    def dataset(self, num_rows: int, seed: int):
        """Rows (prompt, seed, reasoning_effort) with distinct evaluation seeds (see ``build_dataset``)."""
        return build_dataset(self.prompt, num_rows, seed, self.reasoning_effort)

    def reward_funcs(self) -> list[ComponentReward]:
        """One TRL reward function per component, sharing one scoring of each batch."""
        return make_reward_funcs(self.scorer, self.component_names)
