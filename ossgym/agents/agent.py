"""The gpt-oss agent: Harmony chat formatting, batched sampling with log-probabilities, and a policy for ossgym envs.

Generation runs on the fast engine (`ossgym.agents.gptoss.engine.FastGptOss`) unless `use_fast_engine` is off,
else on the reference path here: a plain batched loop over the Hugging Face model and its cache.
Both report, per sampled token, log_softmax(logits / temperature) over the model's whole vocabulary (the
logits alone when greedy): the quantity a policy-gradient trainer recomputes. Ids the tokenizer cannot
produce (the model has 201,088 rows, the tokenizer 200,019 ids) are never sampled.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ossgym.agents.gptoss.engine import FastGptOss
from ossgym.agents.gptoss.sampling import sample
from ossgym.agents.gptoss.tokenizer import STOP_TOKEN_IDS, load_tokenizer
from ossgym.agents.peft_utils import base_model
from ossgym.errors import ConfigError, ModelError
from ossgym.harmony import REASONING_EFFORTS, parse_harmony

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Prompt = str | Sequence[Mapping[str, Any]]  # a user message, or a whole conversation (role/content dicts)


@dataclass
class AgentConfig:
    """How the agent formats prompts and samples (per-call arguments of `generate` override the sampling ones)."""

    reasoning_effort: str = "low"  # "low" | "medium" | "high": the system message's "Reasoning:" line
    instructions: str | None = None  # rendered as the Harmony developer message ("# Instructions")
    model_identity: str | None = None  # None: the template's default ("You are ChatGPT, ...")
    max_new_tokens: int = 1024
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0  # seeds the calls made without an explicit seed (act(), generate(seed=None)), in call order
    use_fast_engine: bool = True  # sample with FastGptOss; False: the reference path (reference_generate)
    max_batch_size: int = 64  # sequences per engine call; larger requests are split
    max_seq_len: int = 4096  # fast-engine cache length: prompt + new tokens must fit
    compile: bool | None = None  # fast engine: compile and capture CUDA graphs (None: on CUDA only)

    def __post_init__(self) -> None:
        if self.reasoning_effort not in REASONING_EFFORTS:
            raise ConfigError("reasoning_effort", f"got {self.reasoning_effort!r}", f"use one of {REASONING_EFFORTS}")
        _check_sampling(self.max_new_tokens, self.temperature, self.top_p)
        if self.max_batch_size < 1:
            raise ConfigError("max_batch_size", f"must be >= 1, got {self.max_batch_size}", "use a positive size")
        if self.max_seq_len < 2:
            raise ConfigError("max_seq_len", f"must be >= 2, got {self.max_seq_len}", "cover prompt + new tokens")


def _check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}", "ask for at least one token")
    if temperature < 0:
        raise ConfigError("temperature", f"must be >= 0, got {temperature}", "use 0 for greedy, else a positive value")
    if not 0 < top_p <= 1:
        raise ConfigError("top_p", f"must be in (0, 1], got {top_p}", "use 1.0 to disable nucleus sampling")


@dataclass(frozen=True)
class Generation:
    """One sampled completion. `completion_ids` include the stop token when `finish_reason` is "stop"."""

    text: str  # the completion decoded with its Harmony special tokens kept
    final: str | None  # the text of the final channel, None if the completion has none
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]  # one per completion id
    finish_reason: str  # "stop" (<|return|>, <|call|> or <|endoftext|> was sampled) or "length"
    prompt_index: int  # which prompt of the request
    sample_index: int  # which of its num_samples


def _own_unaligned_cpu_weights(model: torch.nn.Module) -> None:
    """Copy CPU weights that sit at unaligned addresses into ordinary tensors (in place, ties kept).

    transformers 5.2x loads CPU weights as zero-copy views of the mmapped safetensors file, at whatever byte offset
    the file gives them; the CPU BLAS takes another path on data that is not 64-byte aligned, so one-row products
    (the decode step's `logits_to_keep=1`) differ in the last bits from the same weights held in memory.
    """
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_class: type) -> str:
    """The name of the KV-cache argument (`cache` from transformers 5.2x, `past_key_values` before)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


@torch.no_grad()
def reference_generate(model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                       temperature: float, top_p: float, generator: torch.Generator,
                       stop_token_ids: Sequence[int], vocab_size_limit: int, pad_token_id: int,
                       ) -> tuple[list[list[int]], list[list[float]], list[str]]:
    """Sample from an HF causal LM (or a PeftModel around one) with its KV cache: left-padded batch, one step a token.

    Returns per row the generated ids (stop token included), their log-probabilities and the finish reason.
    """
    from transformers import DynamicCache

    device = next(model.parameters()).device
    batch, width = len(prompt_ids), max(len(p) for p in prompt_ids)
    ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, prompt in enumerate(prompt_ids):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    base = base_model(model)
    cache = DynamicCache(config=base.config)
    cache_arg = {_cache_kwarg(type(base)): cache}
    stops = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
    tokens: list[torch.Tensor] = []
    logprobs: list[torch.Tensor] = []
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                        logits_to_keep=1, **cache_arg)
            token, logprob = sample(out.logits[:, -1], temperature, top_p, vocab_size_limit, generator)
            token = torch.where(done, pad_token_id, token)
            tokens.append(token)
            logprobs.append(logprob)
            lengths += (~done).long()
            hit = torch.isin(token, stops) & ~done
            stopped |= hit
            done |= hit
            if bool(done.all()):
                break
            ids, positions = token[:, None], positions[:, -1:] + 1
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    finally:
        model.train(was_training)
    token_rows = torch.stack(tokens, dim=1).tolist()
    logprob_rows = torch.stack(logprobs, dim=1).tolist()
    ends = lengths.tolist()
    return ([r[:n] for r, n in zip(token_rows, ends)], [r[:n] for r, n in zip(logprob_rows, ends)],
            ["stop" if s else "length" for s in stopped.tolist()])


class GptOssAgent:
    """A gpt-oss policy: formats Harmony prompts, samples completions with log-probabilities, acts on ossgym envs.

    `model` is a GptOssForCausalLM or a peft PeftModel around one (generation sees the adapter, unmerged).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: "PreTrainedTokenizerBase | None" = None,
                 config: AgentConfig | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer()
        self.config = config if config is not None else AgentConfig()
        self.vocab_size_limit = len(self.tokenizer)
        self._seeds = random.Random(self.config.seed)
        self._engine: FastGptOss | None = None

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path_or_id: str, dtype: torch.dtype = torch.bfloat16, device: str | None = None,
                        use_fast_engine: bool = True, adapter: str | None = None,
                        tokenizer: "PreTrainedTokenizerBase | str | None" = None,
                        config: AgentConfig | None = None, experts: str | None = None,
                        **model_kwargs: Any) -> "GptOssAgent":
        """Load gpt-oss from a local folder or hub id, optionally a peft adapter; the tokenizer defaults to the
        offline-built gpt-oss one.

        `experts`: "mxfp4" keeps the experts MXFP4 in memory (the default for an MXFP4 checkpoint in a local
        folder; a bf16 checkpoint is quantized at load), "bf16" holds them dense in `dtype`; both stream the
        safetensors through ossgym's loader. None on a bf16 checkpoint: transformers' own loader, as before.
        """
        from pathlib import Path

        from transformers import AutoConfig, AutoModelForCausalLM

        from ossgym.agents.gptoss.mxfp4 import EXPERT_FORMATS, is_mxfp4_checkpoint, load_gptoss

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if experts is not None and experts not in EXPERT_FORMATS:
            raise ConfigError("experts", f"got {experts!r}", f"use one of {EXPERT_FORMATS} or None")
        local = Path(path_or_id).is_dir()
        if experts is None and local and is_mxfp4_checkpoint(path_or_id):
            experts = "mxfp4"
        if experts is not None:
            if not local:
                raise ConfigError("experts", f"{experts!r} needs a local checkpoint folder, got {path_or_id!r}",
                                  "download the checkpoint first (huggingface-cli download ...)")
            if model_kwargs:
                raise ConfigError("model_kwargs", f"{sorted(model_kwargs)} are transformers loader options",
                                  "pass experts=None to load through transformers")
            model = load_gptoss(path_or_id, device=device, dtype=dtype, experts=experts)
            return cls._finish_loading(model, adapter, tokenizer, config, use_fast_engine)
        hf_config = AutoConfig.from_pretrained(path_or_id)
        if getattr(hf_config, "model_type", None) != "gpt_oss":
            raise ModelError(f"{path_or_id} is a {getattr(hf_config, 'model_type', '?')!r} model, not gpt_oss; "
                             "pass a gpt-oss checkpoint")
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "eager", "device_map": device}
        quant = getattr(hf_config, "quantization_config", None)
        quant_method = quant.get("quant_method") if isinstance(quant, Mapping) else getattr(quant, "quant_method", None)
        if quant_method == "mxfp4":
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        kwargs.update(model_kwargs)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, **kwargs)
        return cls._finish_loading(model, adapter, tokenizer, config, use_fast_engine)

    @classmethod
    def _finish_loading(cls, model: torch.nn.Module, adapter: str | None, tokenizer: Any,
                        config: AgentConfig | None, use_fast_engine: bool) -> "GptOssAgent":
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        model.eval()
        _own_unaligned_cpu_weights(model)
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        config = dataclasses.replace(config or AgentConfig(), use_fast_engine=use_fast_engine)
        return cls(model, tokenizer, config)

    @classmethod
    def tiny(cls, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu",
             config: AgentConfig | None = None) -> "GptOssAgent":
        """The embedded default: the tiny random gpt-oss model (offline, CPU) with the real gpt-oss tokenizer."""
        from ossgym.agents.gptoss.tiny import tiny_model

        return cls(tiny_model(seed=seed, dtype=dtype, device=device), None, config)

    # -------------------------------------------------------------------------------------- formatting
    def messages(self, prompt: Prompt) -> list[dict[str, Any]]:
        """The conversation for a prompt: a str becomes a user turn, after the configured developer instructions."""
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        else:
            messages = [dict(m) for m in prompt]
        if self.config.instructions and not (messages and messages[0].get("role") in ("system", "developer")):
            messages.insert(0, {"role": "system", "content": self.config.instructions})
        return messages

    def format_prompt(self, prompt: Prompt, reasoning_effort: str | None = None,
                      model_identity: str | None = None) -> str:
        """The Harmony text of a prompt: system message (with reasoning effort), developer and user turns,
        then `<|start|>assistant`. Uses the tokenizer's chat template (gpt-oss's, which dates the system message).
        Options left None take the agent config's values."""
        effort = self.config.reasoning_effort if reasoning_effort is None else reasoning_effort
        identity = self.config.model_identity if model_identity is None else model_identity
        extra = {"model_identity": identity} if identity else {}
        return self.tokenizer.apply_chat_template(
            self.messages(prompt), tokenize=False, add_generation_prompt=True, reasoning_effort=effort, **extra,
        )

    def encode_prompt(self, prompt: Prompt, reasoning_effort: str | None = None,
                      model_identity: str | None = None) -> list[int]:
        """The token ids of `format_prompt(prompt, ...)`."""
        return self.tokenizer.encode(self.format_prompt(prompt, reasoning_effort, model_identity),
                                     add_special_tokens=False)

    # -------------------------------------------------------------------------------------- generation
    @property
    def device(self) -> torch.device:
        """Where the model's weights are."""
        return next(self.model.parameters()).device

    def engine(self) -> FastGptOss | None:
        """The fast engine over this model, created at first use; None when ``use_fast_engine`` is off."""
        if not self.config.use_fast_engine:
            return None
        if self._engine is None:
            self._engine = FastGptOss(self.model, max_batch_size=self.config.max_batch_size,
                                      max_seq_len=self.config.max_seq_len, compile=self.config.compile)
        return self._engine

    def reset_engine(self) -> None:
        """Drop the fast engine (and its cache); the next call builds a new one, e.g. after swapping adapters."""
        self._engine = None

    def generate_from_ids(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None = None,
                          temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                          ) -> tuple[list[list[int]], list[list[float]], list[str]]:
        """Sample one completion per token-id prompt; return (completion ids, log-probabilities, finish reasons)."""
        cfg = self.config
        max_new_tokens = cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        temperature = cfg.temperature if temperature is None else temperature
        top_p = cfg.top_p if top_p is None else top_p
        _check_sampling(max_new_tokens, temperature, top_p)
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ConfigError("prompt_ids", "empty request or empty prompt", "pass at least one token per prompt")
        seed = self._seeds.randrange(2**62) if seed is None else seed
        engine = self.engine()
        generator = None if engine is not None else torch.Generator(device=self.device).manual_seed(seed)
        tokens: list[list[int]] = []
        logprobs: list[list[float]] = []
        reasons: list[str] = []
        for index, start in enumerate(range(0, len(prompt_ids), cfg.max_batch_size)):
            chunk = [list(p) for p in prompt_ids[start: start + cfg.max_batch_size]]
            if engine is not None:
                out = engine.generate(chunk, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                      seed=seed + index, stop_token_ids=STOP_TOKEN_IDS,
                                      vocab_size_limit=self.vocab_size_limit)
                result = (out.tokens, out.logprobs, out.finish_reasons)
            else:
                result = reference_generate(self.model, chunk, max_new_tokens, temperature, top_p, generator,
                                            STOP_TOKEN_IDS, self.vocab_size_limit, self.tokenizer.pad_token_id)
            tokens += [list(map(int, t)) for t in result[0]]
            logprobs += [list(map(float, lp)) for lp in result[1]]
            reasons += list(result[2])
        return tokens, logprobs, reasons

    def generate(self, prompts: Sequence[Prompt], num_samples: int = 1, max_new_tokens: int | None = None,
                 temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                 reasoning_effort: str | None = None, model_identity: str | None = None,
                 ) -> list[Generation]:
        """Sample `num_samples` completions per prompt; results are prompt-major (all samples of prompt 0 first).

        Arguments left None take the agent config's values (the config is never changed by a call); the same
        seed gives the same completions.
        """
        if isinstance(prompts, str):
            raise ConfigError("prompts", "got a single str", "pass a list of prompts, e.g. [prompt]")
        if num_samples < 1:
            raise ConfigError("num_samples", f"must be >= 1, got {num_samples}", "ask for at least one sample")
        encoded = [self.encode_prompt(p, reasoning_effort, model_identity) for p in prompts]
        rows = [(i, s) for i in range(len(encoded)) for s in range(num_samples)]
        tokens, logprobs, reasons = self.generate_from_ids(
            [encoded[i] for i, _ in rows], max_new_tokens, temperature, top_p, seed)
        generations = []
        for (i, s), ids, lps, reason in zip(rows, tokens, logprobs, reasons):
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            generations.append(Generation(text=text, final=parse_harmony(text).final, prompt_ids=list(encoded[i]),
                                          completion_ids=ids, logprobs=lps, finish_reason=reason,
                                          prompt_index=i, sample_index=s))
        return generations

    def act(self, observation: str, info: Mapping[str, Any] | None = None) -> str:
        """One completion for an ossgym code env: the observation is the prompt, or `info["messages"]` if given."""
        prompt: Prompt = info["messages"] if info and "messages" in info else observation
        return self.generate([prompt])[0].text


# transformers models accept attn_implementation="flex_sinks" once the agent is imported (the training attention)
from ossgym.agents.gptoss.flex_sinks import register as _register_flex_sinks  # noqa: E402

_register_flex_sinks()
