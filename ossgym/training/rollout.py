"""TRL's ``rollout_func`` over a generate function: the fast engine samples the groups inside a GRPO step.

A *generate function* (:class:`GenerateFn`) samples completions and returns their token ids and per-token
log-probabilities; :func:`make_rollout_func` turns it into TRL 1.16's ``rollout_func(prompts, trainer)``.
What TRL expects of it:

- it receives the per-process list of prompts (chat messages, not templated: templating is the rollout's
  job), already repeated ``num_generations`` times, and no other dataset column: generation options are per
  run, from the trainer's ``GRPOConfig`` (``chat_template_kwargs`` carries the reasoning effort);
- it returns, one per prompt and in order, ``prompt_ids``, ``completion_ids`` (each non-empty, ending with
  the stop token when the completion finished: TRL reads ``ids[-1]`` to decide truncation) and ``logprobs``
  (one per completion token, of the temperature-scaled distribution); any other key is a per-completion
  field forwarded to the reward functions (``raw_completion`` here);
- TRL then recomputes the policy's log-probabilities with its own forward. Without vLLM it treats
  generation as exactly on-policy: the rollout's log-probabilities feed only the off-policy mask and the
  vLLM importance-sampling correction, so an engine/trainer mismatch is not corrected today.
- ``top_k``, ``min_p`` and ``repetition_penalty`` apply to TRL's own generation only: refused here rather
  than silently ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ossgym.errors import ConfigError
from ossgym.training.dataset import Messages
from ossgym.training.rewards import RAW_COMPLETION_FIELD

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RolloutFunc = Callable[[list, Any], dict[str, Any]]


@dataclass(frozen=True)
class RolloutSample:
    """One sampled completion: token ids of its prompt and completion, and each completion token's log-prob."""

    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]


class GenerateFn(Protocol):
    """Samples ``num_samples`` completions for each prompt, prompt-major (all samples of prompt 0 first).

    ``prompts`` are chat messages: apply the chat template inside, with ``chat_template_kwargs`` (the
    trainer's ``GRPOConfig.chat_template_kwargs``, e.g. ``{"reasoning_effort": "low"}``, the same ones TRL's
    own generation would use). ``model`` is the model being trained (with its LoRA adapter), so generation
    sees the current weights. Stop at any of ``stop_token_ids`` (TRL's end-of-completion ids). Each returned
    item has ``prompt_ids``, ``completion_ids`` (ending with the stop token when the completion finished)
    and ``logprobs`` (of the temperature-scaled distribution), as attributes or mapping keys: e.g. the
    agent's ``Generation`` or :class:`RolloutSample`.
    """

    def __call__(
        self,
        prompts: list[Messages],
        *,
        num_samples: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        model: torch.nn.Module,
        stop_token_ids: list[int],
        chat_template_kwargs: dict[str, Any],
    ) -> Sequence[Any]: ...


def _field(sample: Any, name: str) -> list:
    value = sample[name] if isinstance(sample, Mapping) else getattr(sample, name)
    return value.tolist() if hasattr(value, "tolist") else list(value)


def _groups(prompts: list, group_size: int) -> tuple[list, int]:
    """(unique prompts, samples per prompt) when ``prompts`` is consecutive groups of ``group_size`` equal prompts."""
    if group_size > 1 and len(prompts) % group_size == 0:
        heads = prompts[::group_size]
        if all(prompts[i] == heads[i // group_size] for i in range(len(prompts))):
            return heads, group_size
    return list(prompts), 1


def _check_sampling_options(args: Any) -> None:
    """Refuse GRPOConfig sampling options that a GenerateFn does not receive (they would be silently ignored)."""
    unsupported = {
        "top_k": (getattr(args, "top_k", 0) or 0) != 0,
        "min_p": getattr(args, "min_p", None) is not None,
        "repetition_penalty": (getattr(args, "repetition_penalty", 1.0) or 1.0) != 1.0,
    }
    for name, is_set in unsupported.items():
        if is_set:
            raise ConfigError(
                name,
                f"is set to {getattr(args, name)!r}, which the rollout's generate function does not apply",
                f"Leave GRPOConfig.{name} at its default, or generate with TRL's own generate (generation='trl').",
            )


def make_rollout_func(
    generate_fn: GenerateFn | None, max_prompt_length: int | None = None
) -> RolloutFunc | None:
    """TRL's ``rollout_func`` over ``generate_fn``; ``None`` (TRL's own ``generate``) when ``generate_fn`` is None.

    Groups of identical prompts (TRL repeats each row ``num_generations`` times) become one prompt with
    ``num_samples`` samples. Sampling settings come from the trainer's GRPOConfig; the seed from the config
    seed, the step and the process index, so runs repeat exactly. Each completion's text decoded with its
    special tokens (Harmony channels intact) goes to the reward functions as the ``raw_completion`` field.
    """
    if generate_fn is None:
        return None

    def rollout_func(prompts: list, trainer: Any) -> dict[str, list]:
        args = trainer.args
        _check_sampling_options(args)
        model = trainer.accelerator.unwrap_model(trainer.model)
        group_size = trainer.num_generations if model.training else trainer.num_generations_eval
        unique, num_samples = _groups(prompts, group_size)
        seed = args.seed * 1_000_003 + trainer.state.global_step * 1009 + trainer.accelerator.process_index
        was_training = model.training
        model.eval()
        start = time.perf_counter()
        import torch

        try:
            with torch.no_grad():
                samples = list(
                    generate_fn(
                        unique,
                        num_samples=num_samples,
                        max_new_tokens=args.max_completion_length,
                        temperature=args.temperature,
                        top_p=args.top_p,
                        seed=seed % (2**63),
                        model=model,
                        stop_token_ids=list(getattr(trainer, "eos_token_ids", None) or []),
                        chat_template_kwargs=dict(getattr(args, "chat_template_kwargs", None) or {}),
                    )
                )
        finally:
            model.train(was_training)
        elapsed = time.perf_counter() - start
        if len(samples) != len(prompts):
            raise ValueError(
                f"generate_fn returned {len(samples)} samples for {len(unique)} prompts x {num_samples} samples"
            )
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for i, sample in enumerate(samples):
            prompt_ids = [int(t) for t in _field(sample, "prompt_ids")]
            completion_ids = [int(t) for t in _field(sample, "completion_ids")]
            logprobs = [float(x) for x in _field(sample, "logprobs")]
            if not completion_ids:
                raise ValueError(f"generate_fn returned an empty completion (sample {i}); TRL needs >= 1 token")
            if len(logprobs) != len(completion_ids):
                raise ValueError(
                    f"sample {i}: {len(logprobs)} logprobs for {len(completion_ids)} completion tokens"
                )
            if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
                raise ConfigError(
                    "max_prompt_length",
                    f"a prompt has {len(prompt_ids)} tokens, more than {max_prompt_length}",
                    "Raise max_prompt_length (and the model's sequence budget) or shorten the task prompt.",
                )
            out["prompt_ids"].append(prompt_ids)
            out["completion_ids"].append(completion_ids)
            out["logprobs"].append(logprobs)
        tokenizer = getattr(trainer, "processing_class", None)
        if tokenizer is not None:
            out[RAW_COMPLETION_FIELD] = tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=False)
        log_metric = getattr(trainer, "_log_metric", None)  # TRL 1.16's metric sink; absent elsewhere
        if callable(log_metric):
            log_metric("timing/generation_s", elapsed)
        logger.debug("rollout: %d completions in %.3f s", len(samples), elapsed)
        return out

    return rollout_func
