"""ossgym code envs and the gpt-oss agent plugged into the GRPO adapter (:mod:`ossgym.agents.grpo`).

From an env id and its options, :class:`EnvRewards` gives everything a GRPO run needs from the env: the
scorer (the env's ``score_batch`` -> component dicts), the component names, the prompt of a row (the env's
chat messages for an evaluation seed) and the dataset. :class:`AgentGenerate` is the adapter's
``GenerateFn`` over a :class:`~ossgym.agents.agent.GptOssAgent`: it samples with the model TRL hands it
(the peft-wrapped model being trained), on the fast engine when it is importable, else on the agent's
reference path.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ossgym.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ossgym.agents.agent import Generation, GptOssAgent
    from ossgym.envs.code.base import CodeEnv

logger = logging.getLogger(__name__)


def make_code_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, reasoning_effort: str = "low") -> "CodeEnv":
    """The unwrapped ossgym code env ``env_id`` built with ``env_kwargs``; ConfigError if it is not one."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    from ossgym.agents.grpo import check_env_id
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
    return gymnasium.make(env_id, reasoning_effort=reasoning_effort, **dict(env_kwargs or {})).unwrapped


class EnvScorer:
    """The adapter's scorer over an ossgym code env: ``(completions, seeds) -> [components]``, scored in parallel.

    Holds only the env id and options (the env is built at first use), so it pickles.
    """

    def __init__(self, env_id: str, env_kwargs: Mapping[str, Any] | None = None):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self._env: CodeEnv | None = None

    @property
    def env(self) -> "CodeEnv":
        """The unwrapped env that scores (built at first use)."""
        if self._env is None:
            self._env = make_code_env(self.env_id, self.env_kwargs)
        return self._env

    def __getstate__(self) -> dict:
        return {"env_id": self.env_id, "env_kwargs": self.env_kwargs}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["env_id"], state["env_kwargs"])

    def __call__(self, completions: list[str], seeds: list[int]) -> list[dict[str, float]]:
        return [dict(r.components) for r in self.env.score_batch(list(completions), [int(s) for s in seeds])]


@dataclasses.dataclass
class EnvRewards:
    """An ossgym code env seen by GRPO: its scorer, component names, row prompts and dataset."""

    env_id: str
    env_kwargs: dict = dataclasses.field(default_factory=dict)
    reasoning_effort: str = "low"

    def __post_init__(self) -> None:
        self.env = make_code_env(self.env_id, self.env_kwargs, self.reasoning_effort)
        self.scorer = EnvScorer(self.env_id, self.env_kwargs)
        self.scorer._env = self.env

    @property
    def component_names(self) -> tuple[str, ...]:
        """The env's reward components, in its order (they sum to the reward)."""
        return tuple(self.env.task.component_names)

    def prompt(self, seed: int) -> list[dict[str, str]]:
        """The chat messages of the task for evaluation seed ``seed`` (what the env's reset shows)."""
        return self.env.reset(options={"eval_seed": int(seed)})[1]["messages"]

    def dataset(self, num_rows: int, seed: int):
        """Rows (prompt, seed, reasoning_effort) with distinct evaluation seeds (see ``build_dataset``)."""
        from ossgym.agents.grpo import build_dataset

        return build_dataset(self.prompt, num_rows, seed, self.reasoning_effort)

    def reward_funcs(self) -> list:
        """One TRL reward function per component, sharing one scoring of each batch."""
        from ossgym.agents.grpo import make_reward_funcs

        return make_reward_funcs(self.scorer, self.component_names)


class AgentGenerate:
    """The adapter's ``GenerateFn`` over a GptOssAgent: samples with the model TRL hands it.

    The model is the peft-wrapped model being trained; the agent generates with it unmerged (the fast engine
    calls the HF projection modules, so the LoRA weights act; an optimizer step updates them in place).
    Returns the agent's ``Generation`` objects: prompt ids, completion ids ending with the stop token when
    the completion finished, and log-probabilities of the temperature-scaled distribution.
    """

    CHAT_KWARGS = ("reasoning_effort", "model_identity")  # the agent config fields the chat template reads

    def __init__(self, agent: "GptOssAgent", use_fast_engine: bool = True):
        self.agent = agent
        agent.config = dataclasses.replace(agent.config, use_fast_engine=use_fast_engine)
        self.backend: str | None = None  # "fast" or "reference" after the first call

    def __call__(
        self,
        prompts: list,
        *,
        num_samples: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        model: "torch.nn.Module",
        stop_token_ids: list[int],
        chat_template_kwargs: dict[str, Any],
    ) -> list["Generation"]:
        agent = self.agent
        unknown = sorted(set(chat_template_kwargs) - set(self.CHAT_KWARGS))
        if unknown:
            raise ConfigError(
                "chat_template_kwargs", f"has keys {unknown} the agent cannot apply", f"Use only {self.CHAT_KWARGS}."
            )
        if model is not agent.model:  # TRL wrapped the model (peft): generate with the wrapped one
            agent.model = model
            agent.reset_engine()
        if chat_template_kwargs:
            agent.config = dataclasses.replace(agent.config, **chat_template_kwargs)
        self.backend = "fast" if agent.engine() is not None else "reference"
        from ossgym.agents.gptoss.tokenizer import STOP_TOKEN_IDS

        extra = sorted(set(stop_token_ids) - set(STOP_TOKEN_IDS))
        if extra:
            logger.warning("the agent stops only at %s; TRL's stop ids %s are not among them", STOP_TOKEN_IDS, extra)
        return agent.generate(list(prompts), num_samples=num_samples, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, seed=seed % (2**62))

