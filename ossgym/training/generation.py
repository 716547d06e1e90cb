"""The rollout's generate function over the gpt-oss agent (:class:`AgentGenerate`).

It samples with the model TRL hands it (the peft-wrapped model being trained), on the fast engine (or, with
``use_fast_engine=False``, on the agent's reference path), and passes every generation option to ``generate``
explicitly: the agent it was given is never changed.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from ossgym.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ossgym.agents.agent import Generation, GptOssAgent

logger = logging.getLogger(__name__)


class AgentGenerate:
    """The rollout's ``GenerateFn`` over a GptOssAgent: samples with the model TRL hands it.

    The model is the peft-wrapped model being trained; it is generated with unmerged (the fast engine calls
    the HF projection modules, so the LoRA weights act; an optimizer step updates them in place). A private
    agent over that model (the given agent's tokenizer and config) holds the engine, so the given agent is
    left as it is. After sampling, the engine's KV cache and CUDA graphs are freed (``release_cache``) so the
training step that follows has that memory; the next rollout allocates and captures them again. Returns the agent's ``Generation`` objects: prompt ids, completion ids ending with the stop
    token when the completion finished, and log-probabilities of the temperature-scaled distribution.
    """

    CHAT_KWARGS = ("reasoning_effort", "model_identity")  # the chat-template options generate() takes

    def __init__(self, agent: "GptOssAgent", use_fast_engine: bool = True, release_cache: bool = True):
        self.agent = agent
        self.use_fast_engine = use_fast_engine
        self.release_cache = release_cache  # free the engine's KV cache and graphs once a rollout is sampled
        self._sampler: GptOssAgent | None = None  # the private agent over the model being trained
        self.backend: str | None = None  # "fast" or "reference" after the first call

    def _sampler_for(self, model: "torch.nn.Module") -> "GptOssAgent":
        if self._sampler is None or self._sampler.model is not model:
            from ossgym.agents.agent import GptOssAgent

            config = dataclasses.replace(self.agent.config, use_fast_engine=self.use_fast_engine)
            self._sampler = GptOssAgent(model, self.agent.tokenizer, config)
        return self._sampler

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
        unknown = sorted(set(chat_template_kwargs) - set(self.CHAT_KWARGS))
        if unknown:
            raise ConfigError(
                "chat_template_kwargs", f"has keys {unknown} the agent cannot apply", f"Use only {self.CHAT_KWARGS}."
            )
        sampler = self._sampler_for(model)
        self.backend = "fast" if sampler.engine() is not None else "reference"
        from ossgym.agents.gptoss.tokenizer import STOP_TOKEN_IDS

        extra = sorted(set(stop_token_ids) - set(STOP_TOKEN_IDS))
        if extra:
            logger.warning("the agent stops only at %s; TRL's stop ids %s are not among them", STOP_TOKEN_IDS, extra)
        out = sampler.generate(list(prompts), num_samples=num_samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed % (2**62), **chat_template_kwargs)
        engine = sampler.engine()
        if self.release_cache and engine is not None:  # the training forward/backward gets that memory
            engine.release()
        return out
