"""FastGptOss: batched generation for a Hugging Face gpt-oss model, on the model's own weights (no copy).

gpt-fast style: a static KV cache (kv_cache.py), attention with sinks (attention.py), grouped-matmul MoE (moe.py),
on-device sampling (sampling.py). Projections, embeddings and the LM head are called as the HF modules, so peft
LoRA adapters on them act without a merge (plain LoRA at decode sizes through lora_rows.py's launches: `project`),
and NF4 layers (nf4.py) run bitsandbytes' own product. On CUDA the
decode step's tensor functions are compiled and the whole step is captured in a CUDA graph per batch size; prefill
runs compiled flex attention.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn

from ossgym.agents.gptoss.attention import (
    allowed,
    apply_rope,
    attend,
    create_block_mask,
    flex_attention,
    flex_prefill,
    prefill_mask,
)
from ossgym.agents.gptoss import lora_rows
from ossgym.agents.gptoss.kv_cache import KVCache
from ossgym.agents.gptoss.moe import moe_args, moe_tensors
from ossgym.agents.gptoss.sampling import sample
from ossgym.agents.peft_utils import adapter_state, base_model, linear_lora_factors
from ossgym.errors import ConfigError

log = logging.getLogger(__name__)

MIN_SPAN = 256  # decode reads full-attention caches up to a power-of-two span >= the current length, at least this


@dataclass
class EngineOutput:
    """Per sequence: generated token ids (the stop token included), their log-probabilities, and why it stopped."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]  # "stop" (a stop token was generated) or "length"


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """GptOssRMSNorm: normalise in fp32, scale, cast back."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * h).to(x.dtype)


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kv_cols: torch.Tensor,
    col: torch.Tensor,
    pad: torch.Tensor,
    window: int | None,
    sinks: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One query column per row against the cache (read once); kv_cols: the column each cache slot holds."""
    mask = allowed(col.view(1, 1, 1, 1), kv_cols.view(1, 1, 1, -1), pad.view(-1, 1, 1, 1), window)
    return attend(q, k_cache, v_cache, mask, sinks, scale)


def project(modules: Sequence[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """[module(x) for module in modules]: projections that read the same input (q, k and v; or o alone).

    Where every one that carries LoRA is a plain peft LoRA ``Linear`` and lora_rows may run (decode sizes, no
    autograd), each module's base product runs as itself and the adapters are added by lora_rows' two launches
    for up to three of them together, instead of peft's cast, two products, scale and add per module: the same
    sum, in fp32 as peft computes it. Anything else runs the modules' own forwards."""
    found = [linear_lora_factors(m) for m in modules]
    flat = x.reshape(-1, x.shape[-1])
    factors = [t for f in found if f is not None for lora in f[1] for t in (lora.a, lora.b)]
    if not factors or not lora_rows.usable(flat, *factors) or any(
            f is None and adapter_state(m) for f, m in zip(found, modules)):  # a peft layer of another form
        return [m(x) for m in modules]
    outs = [m(x) if f is None else f[0](x) for m, f in zip(modules, found)]
    ys = [y.reshape(-1, y.shape[-1]) for y in outs]
    groups: dict[tuple, list] = {}  # adapters that can share a launch: the same rank, strides and dtypes
    for i, f in enumerate(found):
        for depth, lora in enumerate(f[1] if f is not None else ()):
            key = (depth, lora.a.shape[-1], lora.a.stride(), lora.b.stride(), lora.a.dtype, ys[i].dtype)
            groups.setdefault(key, []).append((i, lora))
    for members in groups.values():
        for start in range(0, len(members), lora_rows.MAX_SLOTS):
            chunk = members[start:start + lora_rows.MAX_SLOTS]
            new = lora_rows.lora_rows(flat, [ys[i] for i, _ in chunk], [f.a for _, f in chunk],
                                      [f.b for _, f in chunk], [float(f.scaling) for _, f in chunk])
            for (i, _), y in zip(chunk, new):
                ys[i] = y
    return [y.view(out.shape) for y, out in zip(ys, outs)]


def embedding_device(embed: nn.Module) -> torch.device:
    """Where an embedding module's table lives (an offloaded one keeps it off the module's parameters)."""
    table = getattr(embed, "table", None)
    return (table if table is not None else embed.weight).device


def unwrap_model(model: nn.Module) -> nn.Module:
    """The GptOssForCausalLM inside a peft PeftModel (its LoRA layers stay in place), or the model itself."""
    model = base_model(model)
    if not (hasattr(model, "model") and hasattr(model, "lm_head") and hasattr(model.model, "layers")):
        raise ConfigError("model", f"{type(model).__name__} is not a gpt-oss causal LM", "pass a GptOssForCausalLM")
    return model


class FastGptOss:
    """Fast batched inference for gpt-oss on the weights of `model` (an HF GptOssForCausalLM, optionally peft-wrapped).

    The cache holds `max_batch_size` rows of `max_seq_len` columns (left-padded prompt + new tokens).
    `compile` (default: on CUDA) compiles the decode step's tensor functions and captures CUDA graphs.
    In-place weight updates are seen. Captured graphs are dropped by themselves when the model's modules or its
    adapters' state (added, removed, enabled, merged, active) change between calls; `reset_graphs()` drops them
    by hand.
    """

    def __init__(
        self, model: nn.Module, max_batch_size: int = 8, max_seq_len: int = 4096, compile: bool | None = None
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError("max_batch_size", f"must be >= 1, got {max_batch_size}", "pass a positive batch size")
        if max_seq_len < 2:
            raise ConfigError("max_seq_len", f"must be >= 2, got {max_seq_len}", "pass prompt + new tokens")
        self.model = unwrap_model(model)
        self.base = self.model.model
        config = self.model.config
        # the final norm's weight: on the compute device even when the embedding is offloaded, and in the model's
        # dtype even when the LM head is 4-bit (nf4.py: its weight is packed uint8)
        weight = self.base.norm.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self.window = int(config.sliding_window)
        self.layer_types = list(config.layer_types)
        self.head_dim = int(config.head_dim)
        self.vocab_size = int(config.vocab_size)
        self.kv_heads = int(config.num_key_value_heads)
        self.cache: KVCache | None = None
        self._ensure_cache()
        with torch.no_grad():
            positions = torch.arange(max_seq_len, device=self.device)[None]
            cos, sin = self.base.rotary_emb(torch.zeros(1, dtype=self.dtype, device=self.device), positions)
        self.cos, self.sin = cos[0], sin[0]  # [max_seq_len, head_dim / 2]
        is_cuda = self.device.type == "cuda"
        self.compile = is_cuda if compile is None else bool(compile)
        self.use_graphs = is_cuda
        self.use_flex = is_cuda and flex_attention is not None
        self._build_functions()
        self._graphs: dict[tuple[int, int], SimpleNamespace] = {}
        self._captured_state: tuple | None = None  # _module_state() when the graphs in _graphs were captured
        self.min_span = MIN_SPAN
        self._pool = None
        log.info(
            "FastGptOss: cache %.2f GiB (%d rows x %d columns), compile=%s, cuda graphs=%s",
            self.cache.nbytes() / 2**30, max_batch_size, max_seq_len, self.compile, self.use_graphs,
        )

    def _ensure_cache(self) -> KVCache:
        if self.cache is None:
            self.cache = KVCache(self.layer_types, self.max_batch_size, self.max_seq_len, self.window,
                                 self.kv_heads, self.head_dim, self.dtype, self.device)
        return self.cache

    def release(self) -> None:
        """Free the KV cache and the captured CUDA graphs (their memory pool), e.g. while a trainer needs the
        memory; the next call allocates the cache again and re-captures (the compiled functions are kept)."""
        self._graphs.clear()
        self._pool = None
        self.cache = None

    # ----------------------------------------------------------------------------------------------- setup
    def _build_functions(self) -> None:
        eager = SimpleNamespace(rms=rms_norm, rope=apply_rope, attend=decode_attention, moe=moe_tensors)
        self._eager = eager
        if not self.compile:
            self._decode_fns = eager
        else:
            # batch, span: dynamic after one; the MoE (which depends on the batch alone) compiles per batch size:
            # compiled for a dynamic row count, its routing's fused sort took 63 us a layer at batch 8 (H200)
            self._decode_fns = SimpleNamespace(
                **{name: torch.compile(fn, dynamic=False if name == "moe" else None) for name, fn in vars(eager).items()}
            )
        if self.compile or self.use_flex:  # one compiled function serves every layer, batch size and length
            dynamo = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(dynamo, name):
                    setattr(dynamo, name, max(getattr(dynamo, name), 64))
        self._flex_fn = torch.compile(flex_attention) if self.use_flex else None
        self._block_mask_fn = torch.compile(create_block_mask) if self.use_flex else None

    def reset_graphs(self) -> None:
        """Drop captured CUDA graphs (the next decode step captures again)."""
        self._graphs.clear()

    def _module_state(self) -> tuple:
        """What a captured decode step depends on besides tensor values: which modules the model holds, and each
        peft layer's adapter state (disabled, merged, active adapters), which peft's forward branches on in
        Python, so a replay would keep the branch taken at capture."""
        return tuple((id(m), *adapter_state(m)) for m in self.model.modules())

    def _check_graphs(self) -> None:
        """Drop the captured graphs if the modules or adapters changed since they were captured (once a call)."""
        if self._graphs and self._module_state() != self._captured_state:
            log.info("the model's modules or adapters changed since the decode graphs were captured: re-capturing")
            self._graphs.clear()

    # --------------------------------------------------------------------------------------------- forward
    def _attention(self, i: int, x: torch.Tensor, cos, sin, pad, col, span, fns) -> torch.Tensor:
        attn = self.base.layers[i].self_attn
        batch, length, _ = x.shape
        shape = (batch, length, -1, self.head_dim)
        q, k, v = (y.view(shape).transpose(1, 2) for y in project((attn.q_proj, attn.k_proj, attn.v_proj), x))
        q, k = fns.rope(q, cos, sin), fns.rope(k, cos, sin)
        window = self.window if self.cache.is_sliding(i) else None
        if col is not None:  # decode: one column
            self.cache.write_decode(i, k, v, col)
            k_cache, v_cache = self.cache.view(i, batch, span)
            kv_cols = self.cache.slot_columns(i, col, span)
            out = fns.attend(q, k_cache, v_cache, kv_cols, col, pad, window, attn.sinks, attn.scaling)
        else:
            self.cache.write_prefill(i, k, v)
            if self.use_flex:
                out = flex_prefill(
                    q, k, v, pad, window, attn.sinks, attn.scaling, self._flex_fn, self._block_mask_fn
                )
            else:
                out = attend(q, k, v, prefill_mask(pad, length, window), attn.sinks, attn.scaling)
        return project((attn.o_proj,), out.transpose(1, 2).reshape(batch, length, -1))[0]

    def _moe(self, i: int, x: torch.Tensor, fns) -> torch.Tensor:
        mlp = self.base.layers[i].mlp
        # long prompts: experts_forward runs the experts in chunks of EXPERT_CHUNK_TOKENS (bounded activations)
        return fns.moe(x.reshape(-1, x.shape[-1]), *moe_args(mlp)).view(x.shape)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings on the engine's device, wherever the embedding lives (offloaded to the CPU: the ids
        go there and the rows come back; a host sync, which is why decode embeds outside its CUDA graph)."""
        embed = self.base.embed_tokens
        where = embedding_device(embed)
        if where == ids.device:
            return embed(ids)
        return embed(ids.to(where)).to(self.device, non_blocking=True)

    def _forward(
        self, x: torch.Tensor, pad: torch.Tensor, col: torch.Tensor | None, span: int | None, fns
    ) -> torch.Tensor:
        """Hidden states after the final norm from embedded tokens x. Prefill: x [B, T, H] at columns 0..T-1;
        decode: x [B, 1, H] at col (full-attention layers read their first `span` columns)."""
        length = x.shape[1]
        cols = col.view(1, 1) if col is not None else torch.arange(length, device=x.device)[None]
        positions = (cols - pad[:, None]).clamp(min=0)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        for i, layer in enumerate(self.base.layers):
            h = fns.rms(x, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
            x = x + self._attention(i, h, cos, sin, pad, col, span, fns)
            h = fns.rms(x, layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon)
            x = x + self._moe(i, h, fns)
        return fns.rms(x, self.base.norm.weight, self.base.norm.variance_epsilon)

    def _decode_step(self, x: torch.Tensor, col: torch.Tensor, pad: torch.Tensor, span: int) -> torch.Tensor:
        hidden = self._forward(x, pad, col, span, self._decode_fns)
        return self.model.lm_head(hidden[:, -1])

    def _span(self, col: int) -> int:
        """Columns a decode step at `col` reads from full-attention caches: a power of two, so few graphs serve all."""
        span = max(self.min_span, 1 << col.bit_length())  # > col
        return min(span, self.max_seq_len)

    def _decode(self, tokens: torch.Tensor, col: int, pad: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after appending `tokens` at column `col` (graph replay on CUDA)."""
        span = self._span(col)
        x = self._embed(tokens[:, None])
        if not self.use_graphs:
            return self._decode_step(x, torch.tensor([col], device=self.device), pad, span)
        key = (tokens.shape[0], span)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(x, col, pad, span)
        graph.x.copy_(x)
        graph.col.fill_(col)
        graph.pad.copy_(pad)
        graph.graph.replay()
        return graph.logits

    def _capture(self, x: torch.Tensor, col: int, pad: torch.Tensor, span: int) -> SimpleNamespace:
        static = SimpleNamespace(x=x.clone(), col=torch.tensor([col], device=self.device), pad=pad.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            try:
                for _ in range(2):  # compile and warm up; writes the same column the real step writes
                    self._decode_step(static.x, static.col, static.pad, span)
            except Exception as error:  # noqa: BLE001 - a compiler failure must not stop generation
                if self._decode_fns is self._eager:
                    raise
                log.warning("compiled decode step failed (%s); using the eager functions", error)
                self._decode_fns = self._eager
                for _ in range(2):
                    self._decode_step(static.x, static.col, static.pad, span)
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        if not self._graphs:
            self._captured_state = self._module_state()
        static.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(static.graph, pool=self._pool):
            static.logits = self._decode_step(static.x, static.col, static.pad, span)
        self._graphs[(x.shape[0], span)] = static
        log.info("captured the decode step for batch %d, span %d", x.shape[0], span)
        return static

    # ------------------------------------------------------------------------------------------ public API
    @torch.no_grad()
    def warmup(self, batch_size: int) -> None:
        """Compile and capture the decode step for `batch_size` at every span up to max_seq_len (no stalls later)."""
        if not 1 <= batch_size <= self.max_batch_size:
            raise ConfigError("batch_size", f"{batch_size} not in 1..{self.max_batch_size}", "pass a valid batch size")
        self._ensure_cache()
        tokens = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        pad = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        spans = sorted({self._span(col) for col in range(self.max_seq_len)})
        self._check_graphs()
        with _eval(self.model):
            # Writes one junk column per span; any column is rewritten by prefill or its own step before it is read.
            for span in spans:
                self._decode(tokens, span - 1, pad)


    def _batch(self, prompt_ids: Sequence[Sequence[int]], new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ConfigError("prompt_ids", "empty batch or empty prompt", "pass at least one token per prompt")
        if len(prompt_ids) > self.max_batch_size:
            raise ConfigError(
                "prompt_ids", f"{len(prompt_ids)} prompts > max_batch_size {self.max_batch_size}",
                "split the batch or build the engine with a larger max_batch_size",
            )
        length = max(len(p) for p in prompt_ids)
        if length + new_tokens > self.max_seq_len:
            raise ConfigError(
                "max_new_tokens", f"longest prompt {length} + {new_tokens} new tokens > max_seq_len {self.max_seq_len}",
                "shorten the prompt, ask for fewer tokens or build the engine with a larger max_seq_len",
            )
        ids = torch.zeros(len(prompt_ids), length, dtype=torch.long)
        pad = torch.empty(len(prompt_ids), dtype=torch.long)
        for row, prompt in enumerate(prompt_ids):
            ids[row, length - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
            pad[row] = length - len(prompt)
        return ids.to(self.device), pad.to(self.device)

    def _prefill(self, ids: torch.Tensor, pad: torch.Tensor, all_logits: bool) -> torch.Tensor:
        self._ensure_cache()
        hidden = self._forward(self._embed(ids), pad, None, None, self._eager)
        return self.model.lm_head(hidden if all_logits else hidden[:, -1])

    def _prefill_shared(self, ids: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Last-position logits [B, V] of the batch, prefilling each distinct row once (a GRPO group repeats
        one prompt): the distinct rows' cache rows are then copied to their repeats, so prefill time and its
        activations scale with the distinct prompts, not the group."""
        unique, inverse = torch.unique(torch.cat([ids, pad[:, None]], 1), dim=0, return_inverse=True)  # pad: id 0
        if unique.shape[0] == ids.shape[0]:
            return self._prefill(ids, pad, all_logits=False)
        first = torch.full((unique.shape[0],), ids.shape[0], dtype=torch.long, device=ids.device)
        first = first.scatter_reduce(0, inverse, torch.arange(ids.shape[0], device=ids.device), "amin")
        logits = self._prefill(ids[first], pad[first], all_logits=False)
        for layer in range(len(self.layer_types)):  # row u of the cache -> every row b with inverse[b] == u
            for store in (self.cache.k[layer], self.cache.v[layer]):
                store[: ids.shape[0]] = store[: unique.shape[0]].index_select(0, inverse)
        return logits.index_select(0, inverse)

    @torch.no_grad()
    def logits(self, prompt_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Prefill logits [B, T, V] (fp32) of the left-padded batch; row b's prompt ends at column T-1."""
        ids, pad = self._batch(prompt_ids, 0)
        with _eval(self.model):
            return self._prefill(ids, pad, all_logits=True).float()

    @torch.no_grad()
    def decode_logits(self, prompt_ids: Sequence[Sequence[int]], continuation: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits [B, n + 1, V] fed token by token through the decode path: entry j follows prompt + continuation[:j]."""
        steps = {len(c) for c in continuation}
        if len(continuation) != len(prompt_ids) or len(steps) != 1:
            raise ConfigError("continuation", "needs one list per prompt, all of one length", "pad continuations")
        ids, pad = self._batch(prompt_ids, steps.pop())
        cont = torch.tensor([list(c) for c in continuation], dtype=torch.long, device=self.device)
        self._check_graphs()
        with _eval(self.model):
            out = [self._prefill_shared(ids, pad).float()]
            for j in range(cont.shape[1]):
                step = self._decode(cont[:, j].contiguous(), ids.shape[1] + j, pad)
                out.append(step.to(torch.float32, copy=True))  # a copy: on CUDA this is the graph's static output
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: Sequence[int] = (),
        vocab_size_limit: int | None = None,
    ) -> EngineOutput:
        """Sample up to `max_new_tokens` per prompt (temperature 0: greedy); a row stops after a stop token.

        Log-probabilities are log_softmax(logits / temperature) over the whole vocabulary at the chosen token (plain
        logits when greedy): what a trainer recomputes. top_p and vocab_size_limit only restrict the choice.
        """
        if max_new_tokens < 1:
            raise ConfigError("max_new_tokens", f"must be >= 1, got {max_new_tokens}", "ask for at least one token")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError("temperature/top_p", f"got {temperature}/{top_p}", "use temperature >= 0, 0 < top_p <= 1")
        ids, pad = self._batch(prompt_ids, max_new_tokens)
        batch, length = ids.shape
        self._check_graphs()
        generator = torch.Generator(device=self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        stops = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=self.device)
        tokens = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=self.device)
        logprobs = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=self.device)
        done = torch.zeros(batch, dtype=torch.bool, device=self.device)
        stop_step = torch.full((batch,), max_new_tokens, dtype=torch.long, device=self.device)
        with _eval(self.model):
            logits = self._prefill_shared(ids, pad)
            for step in range(max_new_tokens):
                token, logprob = sample(logits, temperature, top_p, vocab_size_limit, generator)
                tokens[:, step], logprobs[:, step] = token, logprob
                hit = torch.isin(token, stops) & ~done
                stop_step = torch.where(hit, step, stop_step)
                done |= hit
                if step == max_new_tokens - 1 or (step % 4 == 3 and bool(done.all())):
                    break
                logits = self._decode(token, length + step, pad)
        ends, stopped = (stop_step + 1).tolist(), (stop_step < max_new_tokens).tolist()
        generated = step + 1
        token_rows, logprob_rows = tokens.tolist(), logprobs.tolist()
        return EngineOutput(
            tokens=[row[: min(end, generated)] for row, end in zip(token_rows, ends)],
            logprobs=[row[: min(end, generated)] for row, end in zip(logprob_rows, ends)],
            finish_reasons=["stop" if s else "length" for s in stopped],
        )


class _eval:
    """Context manager: the model in eval mode (no LoRA dropout) for the duration, its mode restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        if self.was_training:
            self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.model.train()


__all__ = ["EngineOutput", "FastGptOss", "unwrap_model"]
