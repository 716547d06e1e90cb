"""GRPO adapter: ossgym scoring, datasets and fast-engine generation plugged into TRL's ``GRPOTrainer``.

The pieces here depend only on TRL (1.16) and on small interfaces, so they work without the rest of
ossgym:

- a *scorer* is any callable ``score_batch(completions: list[str], seeds: list[int]) -> list[dict[str, float]]``
  (component name -> value; an env's components sum to its reward). :func:`make_reward_funcs` turns it
  into one TRL reward function per component, so TRL logs each (``rewards/<name>/mean``).
- a *prompt function* ``prompt_fn(seed) -> list[{"role", "content"}]`` gives the chat messages of one task;
  :func:`build_dataset` turns it into a ``datasets.Dataset`` of (prompt, seed, reasoning_effort) rows.
- a *generate function* (see :class:`GenerateFn`) samples completions and returns token ids and per-token
  log-probabilities; :func:`make_rollout_func` turns it into TRL's ``rollout_func``.
- :func:`chunked_logprobs` computes per-token log-probabilities without materialising full logits.
- :class:`GRPORunConfig` holds a run's options, validates them, and maps them onto ``trl.GRPOConfig`` and
  ``peft.LoraConfig``.

For ossgym's own envs and agent, :mod:`ossgym.agents.grpo_env` builds the scorer, component names and dataset
from an env id (``EnvRewards``) and the generate function over ``GptOssAgent`` (``AgentGenerate``);
:mod:`ossgym.train` runs whole jobs (``run_training``, ``ossgym train``, the demo).

Using the reward functions with TRL alone (no other ossgym part)::

    from trl import GRPOConfig, GRPOTrainer
    from ossgym.agents.grpo import build_dataset, make_reward_funcs

    def score_batch(completions, seeds):          # your scorer, e.g. an env's score_batch
        return [{"format": float("def " in c), "length": -len(c) / 1000} for c in completions]

    dataset = build_dataset(lambda seed: [{"role": "user", "content": "Write a function."}],
                            num_rows=64, seed=0, reasoning_effort="low")
    trainer = GRPOTrainer(model="my/model", args=GRPOConfig(output_dir="out", num_generations=8),
                          reward_funcs=make_reward_funcs(score_batch, ["format", "length"]),
                          train_dataset=dataset)
    trainer.train()

What TRL 1.16 expects (read from ``trl/trainer/grpo_trainer.py`` and ``grpo_config.py``)
----------------------------------------------------------------------------------------
Reward functions
    Called once per generation batch as ``f(prompts=..., completions=..., completion_ids=..., **kw)``
    where ``kw`` holds every dataset column except ``prompt`` (one value per completion, e.g. ``seed``),
    plus ``trainer_state``, ``log_extra(column, values)``, ``log_metric(name, value)`` and any extra
    per-completion field a ``rollout_func`` returned. ``prompts`` holds each prompt once per completion
    (the sampler repeats each row ``num_generations`` times, consecutively). With conversational
    prompts, each completion is ``[{"role": "assistant", "content": text}]``; text is the completion
    decoded with ``skip_special_tokens=True`` (for gpt-oss: ``"analysis...assistantfinal..."``), or the
    output of ``parse_response`` when the tokenizer carries a ``response_template``/``response_schema``.
    A function returns one float (or ``None`` = not applicable) per completion. The k functions are
    called one after another on the same batch; TRL logs ``rewards/<__name__>/mean`` and ``/std`` for each
    and sums them with ``GRPOConfig.reward_weights`` (default 1 each). Dataset columns reach the
    functions only with ``remove_unused_columns=False`` (GRPOConfig's default).
``rollout_func(prompts, trainer) -> dict``
    Receives the raw per-process list of prompts (conversational messages, not templated: templating is
    the rollout's job), already repeated ``num_generations`` times by the sampler, and nothing else from
    the dataset rows. It must return one completion per prompt it was given, in order, as lists:
    ``prompt_ids`` (list[list[int]]), ``completion_ids`` (list[list[int]], each non-empty: TRL reads
    ``ids[-1]`` to decide truncation, so a finished completion ends with its stop token, as TRL's own
    generation keeps it), ``logprobs`` (list[list[float]], one per completion token); optionally
    ``env_mask`` (1 = model token, 0 = external token excluded from the loss). (The docstring also names
    ``logprob_token_ids``, but the 1.16 code treats it as any other extra field.) Any other key is a
    per-completion field forwarded to the reward functions (ours adds ``raw_completion``: the text
    decoded WITH special tokens, which the reward functions prefer). TRL then tokenises nothing: it pads
    the ids, decodes the completions for the reward functions, recomputes the policy's log-probabilities
    with its own forward pass and computes the loss. The rollout does not
    receive the other dataset columns, so per-row generation options (e.g. a per-row reasoning effort)
    cannot reach it: reasoning effort is per run, through ``GRPOConfig.chat_template_kwargs``, which TRL's
    own generation also uses and which :func:`make_rollout_func` hands to the generate function.
    ``top_k``, ``min_p`` and ``repetition_penalty`` apply to TRL's own generation only: the adapter
    refuses them rather than ignore them.
Log-probabilities from a rollout
    They become ``sampling_per_token_logps`` and are used ONLY for the vLLM importance-sampling correction
    (``use_vllm=True`` and ``vllm_importance_sampling_correction=True``) and for the off-policy sequence
    mask (``off_policy_mask_threshold``). Without vLLM, TRL 1.16 treats generation as exactly on-policy:
    ``old_per_token_logps`` is the training forward's own value (ratio 1 on the first iteration), so a
    numeric mismatch between the fast engine and the training forward is NOT corrected. Return them
    anyway (the contract requires them, and the off-policy mask can use them); they should be
    log-probabilities of the temperature-scaled distribution (TRL's training forward divides logits by
    ``GRPOConfig.temperature``).
Chunked log-probabilities in TRL itself
    ``GRPOTrainer`` already patches the model (``add_fused_lm_head``) so that training and reference
    log-probabilities are computed in vocabulary chunks of 32,768 (``trl.kernels.ChunkedLogProbFunction``,
    Triton on CUDA, torch elsewhere) without the ``[batch, seq, vocab]`` logits. :func:`chunked_logprobs`
    is for log-probabilities computed outside the trainer (checking the engine, benchmarks).
Other facts
    ``num_generations >= 2`` and ``generation_batch_size % num_generations == 0`` are enforced by
    GRPOConfig; there is no ``max_prompt_length`` in TRL 1.16 (prompts are never truncated: check them
    yourself, see :meth:`GRPORunConfig.check_prompt_length`). For MoE models (gpt-oss) TRL adds the
    router load-balancing loss weighted by the model config's ``router_aux_loss_coef`` (GptOssConfig's
    default: 0.001; a checkpoint's config.json may set another) unless ``GRPOConfig.router_aux_loss_coef
    =0.0``, which :class:`GRPORunConfig` sets (that gradient reaches attention LoRA weights through the
    router's inputs). TRL's GRPOConfig turns gradient checkpointing ON by default (under the name
    transformers 5.24 deprecates, hence a FutureWarning). An adapter on ``lm_head`` is refused. With a
    peft model and ``beta > 0`` the reference is the model with adapters disabled. ``rollout_func`` emits an
    "experimental" ``UserWarning`` unless ``TRL_EXPERIMENTAL_SILENCE=1``.
"""

from __future__ import annotations

import difflib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ossgym.errors import ConfigError
from ossgym.harmony import REASONING_EFFORTS

if TYPE_CHECKING:  # torch is imported where it is used, so the ``ossgym train`` parser stays light
    import torch

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Scorer = Callable[[list[str], list[int]], list[dict[str, float]]]
RolloutFunc = Callable[[list, Any], dict[str, Any]]
RAW_COMPLETION_FIELD = "raw_completion"  # per-completion text with special tokens, added by the rollout


# --------------------------------------------------------------------------------------------------------
# Reward functions
# --------------------------------------------------------------------------------------------------------


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The text to score from a TRL completion: a plain string, or the last assistant message's content."""
    if isinstance(completion, str):
        return completion
    for message in reversed(list(completion)):
        if message.get("role", "assistant") == "assistant":
            content = message.get("content") or ""
            if isinstance(content, list):  # content blocks: keep the text parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
            return content
    return ""


class _BatchScoreCache:
    """Scores one batch once and hands the result to every component's reward function.

    TRL calls the k reward functions one after another with the same completions and seeds. The first
    call scores the batch (the expensive part: sandboxed runs, game replays) and keeps the result keyed by
    the exact batch (texts, seeds and the trainer step); the other k-1 calls find it and only pick their
    component. Only the latest batch is kept, so memory stays flat, and a different batch (the next step,
    an eval batch) is always rescored.
    """

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._value: list[dict[str, float]] | None = None
        self.calls = 0  # how many times the scorer actually ran (tests and logs read it)

    def __getstate__(self) -> dict:  # pickles the scorer only; the lock and the cached batch stay behind
        return {"scorer": self.scorer}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["scorer"])

    def get(self, texts: list[str], seeds: list[int], step: int | None, log_metric: Callable | None):
        key = (step, tuple(texts), tuple(seeds))
        with self._lock:
            if key != self._key:
                start = time.perf_counter()
                value = list(self.scorer(texts, seeds))
                elapsed = time.perf_counter() - start
                if len(value) != len(texts):
                    raise ValueError(f"scorer returned {len(value)} results for {len(texts)} completions")
                self._key, self._value = key, value
                self.calls += 1
                if log_metric is not None:
                    log_metric("timing/scoring_s", elapsed)
            return self._value


class ComponentReward:
    """A TRL reward function for one reward component; its ``__name__`` is the component name.

    Scores the ``raw_completion`` field when the ossgym rollout supplied it (the text with its special
    tokens, so a Harmony parser sees the real channels), else the completions TRL decoded. A class
    instance rather than a closure so that it pickles whenever the scorer does.
    """

    def __init__(self, cache: _BatchScoreCache, component: str, seed_column: str = "seed"):
        self.cache, self.component, self.seed_column = cache, component, seed_column
        self.__name__ = component

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs) -> list[float | None]:
        raw = kwargs.get(RAW_COMPLETION_FIELD)
        texts = list(raw) if raw is not None else [completion_text(c) for c in completions or []]
        if self.seed_column not in kwargs:
            raise KeyError(
                f"reward function {self.__name__!r} needs the dataset column {self.seed_column!r} (one seed per row,"
                f" so the completions of a group are scored on the same tasks); build the dataset with "
                f"ossgym.agents.grpo.build_dataset and keep GRPOConfig.remove_unused_columns=False"
            )
        seeds = [int(s) for s in kwargs[self.seed_column]]
        trainer_state = kwargs.get("trainer_state")
        step = getattr(trainer_state, "global_step", None)
        results = self.cache.get(texts, seeds, step, kwargs.get("log_metric"))
        try:  # None (component not applicable to that completion) passes through: TRL ignores it
            return [None if r[self.component] is None else float(r[self.component]) for r in results]
        except KeyError:
            raise KeyError(
                f"the scorer's results have no component {self.component!r} (they have {sorted(results[0])})"
            ) from None

    def __repr__(self) -> str:
        return f"ComponentReward({self.component!r})"


def make_reward_funcs(
    scorer: Scorer, component_names: Sequence[str], seed_column: str = "seed"
) -> list[ComponentReward]:
    """One TRL reward function per component of ``scorer``, sharing one scoring of each batch.

    Each function takes the seeds from the dataset column ``seed_column``, accepts plain-string and
    conversational completions, and returns that component's values; TRL sums them (reward weights 1).
    """
    names = list(component_names)
    if not names:
        raise ConfigError("component_names", "is empty", "Name every component the scorer returns.")
    if len(set(names)) != len(names):
        raise ConfigError("component_names", f"has duplicates: {names}", "Name each component once.")
    cache = _BatchScoreCache(scorer)
    return [ComponentReward(cache, name, seed_column) for name in names]


# --------------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------------


def build_dataset(
    prompt_fn: Callable[[int], Messages], num_rows: int, seed: int, reasoning_effort: str = "low"
):
    """A ``datasets.Dataset`` of rows (prompt: chat messages, seed, reasoning_effort) with distinct seeds.

    Row seeds are drawn without repetition from a generator seeded with ``seed``; ``prompt_fn(row_seed)``
    gives the row's messages (for an ossgym env: ``env.reset(seed=s)[1]["messages"]``). The
    ``reasoning_effort`` column records the effort for the reward functions and logs; generation takes it
    from ``GRPOConfig.chat_template_kwargs`` (TRL hands no row column to generation).
    """
    import datasets

    if num_rows < 1:
        raise ConfigError("num_rows", f"must be at least 1, got {num_rows}", "Pass num_rows=1 or more.")
    if reasoning_effort not in REASONING_EFFORTS:
        raise ConfigError(
            "reasoning_effort", f"is {reasoning_effort!r}", f"Use one of {', '.join(REASONING_EFFORTS)}."
        )
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.choice(2**31 - 1, size=num_rows, replace=False)]
    prompts = []
    for row_seed in seeds:
        messages = prompt_fn(row_seed)
        if not messages or not all(isinstance(m, Mapping) and {"role", "content"} <= set(m) for m in messages):
            raise ValueError(f"prompt_fn({row_seed}) must return a non-empty list of {{'role', 'content'}} dicts")
        prompts.append([{"role": str(m["role"]), "content": str(m["content"])} for m in messages])
    return datasets.Dataset.from_dict(
        {"prompt": prompts, "seed": seeds, "reasoning_effort": [reasoning_effort] * num_rows}
    )


# --------------------------------------------------------------------------------------------------------
# Rollout (generation inside TRL)
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Chunked log-probabilities
# --------------------------------------------------------------------------------------------------------


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, inv_t: float) -> torch.Tensor:
    import torch

    logits = (hidden @ weight.t()).float() * inv_t
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def chunked_logprobs(
    hidden_states: torch.Tensor,
    lm_head_weight: torch.Tensor,
    token_ids: torch.Tensor,
    chunk_size: int = 1024,
    temperature: float = 1.0,
) -> torch.Tensor:
    """``log_softmax(hidden @ W.T / T)[token]`` per position, in fp32, ``chunk_size`` positions at a time.

    At most one ``[chunk_size, vocab]`` block of logits exists at once, in the forward and (recomputed
    under activation checkpointing) in the backward; gradients flow to ``hidden_states`` and ``W``.
    ``hidden_states`` is ``[..., hidden]`` and ``token_ids`` ``[...]`` (the token each position predicts).
    The product runs in the inputs' dtype (bf16 logits, as the model's own forward gives) and the
    softmax in fp32.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if chunk_size < 1:
        raise ConfigError("chunk_size", f"must be at least 1, got {chunk_size}", "Pass chunk_size=1024.")
    if hidden_states.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"hidden_states {tuple(hidden_states.shape)} does not match token_ids {tuple(token_ids.shape)}"
        )
    flat_hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    flat_ids = token_ids.reshape(-1)
    inv_t = 1.0 / temperature
    grad = torch.is_grad_enabled() and (flat_hidden.requires_grad or lm_head_weight.requires_grad)
    parts = []
    for start in range(0, flat_ids.numel(), chunk_size):
        h, ids = flat_hidden[start : start + chunk_size], flat_ids[start : start + chunk_size]
        if grad:
            parts.append(checkpoint(_chunk_logprobs, h, lm_head_weight, ids, inv_t, use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, lm_head_weight, ids, inv_t))
    if not parts:
        return torch.zeros(token_ids.shape, dtype=torch.float32, device=hidden_states.device)
    return torch.cat(parts).reshape(token_ids.shape)


# --------------------------------------------------------------------------------------------------------
# Run configuration
# --------------------------------------------------------------------------------------------------------

# Only eager is known to give the sink gradient in the backward pass (FlashAttention-3 with sinks drops it; sdpa
# has no sinks; transformers refuses flex attention with sinks on CPU, and its backward is unverified on GPU).
ATTENTION_IMPLEMENTATIONS = ("eager",)
GENERATION_BACKENDS = ("fast", "trl")


def check_env_id(env_id: str) -> None:
    """Raise ConfigError (with the closest registered ids) when ``env_id`` is not a registered environment."""
    import gymnasium

    import ossgym  # noqa: F401  (registers the environments)

    if env_id not in gymnasium.registry:
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3)
        hint = f"Did you mean {', '.join(close)}?" if close else "See gymnasium.registry for the ids."
        raise ConfigError("env_id", f"{env_id!r} is not a registered environment", hint)


@dataclass
class GRPORunConfig:
    """Options of one GRPO run; invalid values raise :class:`ossgym.errors.ConfigError` on construction.

    ``model=None`` means the embedded tiny gpt-oss agent. ``generation="fast"`` samples with the ossgym
    engine through ``rollout_func``; ``"trl"`` uses TRL's own ``generate``. One optimizer step uses
    ``prompts_per_step`` prompts x ``group_size`` completions.
    """

    env_id: str = "GptOss2048-v0"
    env_kwargs: dict = field(default_factory=dict)
    model: str | None = None
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    lora_target_parameters: tuple[str, ...] = ()  # e.g. ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
    steps: int = 20
    group_size: int = 8
    prompts_per_step: int = 1
    max_prompt_length: int = 1024
    max_completion_length: int = 512
    max_seq_len: int = 4096
    learning_rate: float = 1e-5
    beta: float = 0.0
    temperature: float = 1.0
    top_p: float = 1.0
    reasoning_effort: str = "low"
    generation: str = "fast"
    attn_implementation: str = "eager"
    gradient_checkpointing: bool = True
    router_aux_loss_coef: float = 0.0
    num_dataset_rows: int = 256
    output_dir: str = "runs/grpo"
    save_steps: int = 0  # 0: only the final checkpoint
    seed: int = 0

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.lora_target_parameters = tuple(self.lora_target_parameters)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first option that cannot work."""
        check_env_id(self.env_id)
        _positive_int(self, "steps", "Pass steps=1 or more.")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            raise ConfigError(
                "group_size",
                f"must be at least 2, got {self.group_size!r}",
                "GRPO compares completions within a group; use group_size=8 (2 at the very least).",
            )
        _positive_int(self, "prompts_per_step", "Pass prompts_per_step=1 or more.")
        _positive_int(self, "lora_rank", "Pass lora_rank=8, for example.")
        _positive_number(self, "lora_alpha", "Pass lora_alpha=2*lora_rank, for example.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"must be in [0, 1), got {self.lora_dropout}", "Pass lora_dropout=0.0.")
        if self.lora_dropout and self.lora_target_parameters:
            raise ConfigError(
                "lora_dropout",
                f"is {self.lora_dropout} with lora_target_parameters, which peft refuses (a LoRA on a parameter"
                " cannot drop out its input)",
                "Pass lora_dropout=0.0 or leave lora_target_parameters empty.",
            )
        if not self.lora_targets and not self.lora_target_parameters:
            raise ConfigError(
                "lora_targets", "is empty and so is lora_target_parameters", 'Target the attention: ("q_proj", ...).'
            )
        if "lm_head" in self.lora_targets:
            raise ConfigError(
                "lora_targets",
                "includes lm_head, which TRL refuses (it reads lm_head.weight directly: the adapter would not train)",
                "Remove lm_head.",
            )
        _positive_int(self, "max_prompt_length", "Pass max_prompt_length=1024, for example.")
        _positive_int(self, "max_completion_length", "Pass max_completion_length=512, for example.")
        _positive_int(self, "max_seq_len", "Pass the model's context length.")
        if self.max_prompt_length + self.max_completion_length > self.max_seq_len:
            raise ConfigError(
                "max_completion_length",
                f"max_prompt_length {self.max_prompt_length} + max_completion_length {self.max_completion_length}"
                f" = {self.max_prompt_length + self.max_completion_length} exceeds max_seq_len {self.max_seq_len}",
                "Shorten one of the two lengths or raise max_seq_len (at most the model's context length).",
            )
        _positive_number(self, "learning_rate", "Pass learning_rate=1e-5, for example.")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise ConfigError("beta", f"must be a finite number >= 0, got {self.beta}", "Pass beta=0.0 (no KL term).")
        _positive_number(self, "temperature", "Pass temperature=1.0.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("top_p", f"must be in (0, 1], got {self.top_p}", "Pass top_p=1.0.")
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise ConfigError(
                "reasoning_effort", f"is {self.reasoning_effort!r}", f"Use one of {', '.join(REASONING_EFFORTS)}."
            )
        if self.generation not in GENERATION_BACKENDS:
            raise ConfigError(
                "generation",
                f"is {self.generation!r}",
                '"fast" (the ossgym engine) or "trl" (TRL\'s own generate).',
            )
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(
                "attn_implementation",
                f"is {self.attn_implementation!r}; gpt-oss training needs attention whose backward includes the"
                " sink gradient (FlashAttention-3 with sinks ignores it; sdpa has no sinks)",
                'Use "eager".',
            )
        if not (math.isfinite(self.router_aux_loss_coef) and self.router_aux_loss_coef >= 0):
            raise ConfigError(
                "router_aux_loss_coef", f"must be >= 0, got {self.router_aux_loss_coef}", "Pass 0.0 for LoRA runs."
            )
        _positive_int(self, "num_dataset_rows", "Pass num_dataset_rows=256, for example.")
        if not isinstance(self.save_steps, int) or self.save_steps < 0:
            raise ConfigError("save_steps", f"must be an int >= 0, got {self.save_steps!r}", "Pass 0 or a step count.")
        if not self.output_dir:
            raise ConfigError("output_dir", "is empty", "Pass a folder, e.g. runs/grpo.")

    def check_prompt_length(self, num_tokens: int) -> None:
        """Raise ConfigError when a templated prompt of ``num_tokens`` tokens does not fit max_prompt_length."""
        if num_tokens > self.max_prompt_length:
            raise ConfigError(
                "max_prompt_length",
                f"the task prompt has {num_tokens} tokens, more than max_prompt_length {self.max_prompt_length}",
                f"Pass max_prompt_length={num_tokens} or more (and keep it + max_completion_length <= max_seq_len).",
            )

    def check_model_fits(self, model_max_positions: int) -> None:
        """Raise ConfigError when max_seq_len exceeds the model's context length."""
        if self.max_seq_len > model_max_positions:
            raise ConfigError(
                "max_seq_len",
                f"{self.max_seq_len} exceeds the model's context length {model_max_positions}",
                f"Pass max_seq_len={model_max_positions} or less.",
            )

    def check_lora_targets(self, model: "torch.nn.Module") -> None:
        """Raise ConfigError for a LoRA target that names no module (or parameter) of ``model``.

        Matched as peft matches them (the full name, or a suffix after a dot); peft itself fails only when
        no target matches at all, so a misspelt one among several would silently train less.
        """
        modules = [name for name, _ in model.named_modules()]
        params = [name for name, _ in model.named_parameters()]
        for field_name, names, targets in (
            ("lora_targets", modules, self.lora_targets),
            ("lora_target_parameters", params, self.lora_target_parameters),
        ):
            for target in targets:
                if not any(name == target or name.endswith("." + target) for name in names):
                    kind = "module" if field_name == "lora_targets" else "parameter"
                    close = difflib.get_close_matches(target, names, n=3, cutoff=0.3)
                    raise ConfigError(
                        field_name, f"{target!r} names no {kind} of the model", f"Use names it has, e.g. {close}."
                    )

    def lora_config(self):
        """The ``peft.LoraConfig`` of this run (attention projections; experts via target_parameters)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.lora_targets) or None,
            target_parameters=list(self.lora_target_parameters) or None,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def grpo_config(self, **overrides: Any):
        """The ``trl.GRPOConfig`` of this run; ``overrides`` set any other GRPOConfig field."""
        from trl import GRPOConfig

        kwargs: dict[str, Any] = dict(
            output_dir=self.output_dir,
            max_steps=self.steps,
            num_generations=self.group_size,
            per_device_train_batch_size=self.group_size * self.prompts_per_step,
            gradient_accumulation_steps=1,
            learning_rate=self.learning_rate,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            beta=self.beta,
            seed=self.seed,
            data_seed=self.seed,
            gradient_checkpointing=self.gradient_checkpointing,  # TRL's default is True
            router_aux_loss_coef=self.router_aux_loss_coef,
            chat_template_kwargs={"reasoning_effort": self.reasoning_effort},
            remove_unused_columns=False,
            disable_dropout=True,
            logging_steps=1,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            report_to="none",
        )
        kwargs.update(overrides)
        return GRPOConfig(**kwargs)


def _positive_int(config: GRPORunConfig, name: str, fix: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"must be a positive int, got {value!r}", fix)


def _positive_number(config: GRPORunConfig, name: str, fix: str) -> None:
    value = getattr(config, name)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(name, f"must be a finite number > 0, got {value!r}", fix)
