"""NF4 (bitsandbytes' 4-bit NormalFloat) for gpt-oss's dense projections and LM head, as an option.

:func:`quantize_nf4` replaces chosen ``nn.Linear`` layers of a GptOssForCausalLM by ``bitsandbytes.nn.Linear4bit``
(quant_type nf4, blocks of 64 weights with one absmax each, compute in the model's dtype), one layer at a time,
so memory only shrinks while it runs. The parts (:data:`PARTS`):

- ``"attention"``: q/k/v/o_proj of every layer. peft puts its LoRA onto a ``Linear4bit`` as onto any
  ``nn.Linear`` (``base_layer(x) + B A x``: QLoRA), so the attention LoRA trains over the frozen 4-bit weights.
  (peft's bitsandbytes-specific LoRA class is chosen only for models flagged ``is_loaded_in_4bit``, a flag that
  also makes TRL cast the LoRA weights to bf16; ossgym does not set it, so the LoRA stays in fp32 as on the dense
  path. Neither peft class may merge: see :func:`dequantize_nf4`.)
- ``"lm_head"``: the output projection, as :class:`NF4Head`, whose product runs :data:`HEAD_CHUNK_ROWS`
  vocabulary rows at a time (:func:`nf4_linear`), so at most one block of rows is ever dequantized.

Not the router (32 x 2,880 for gpt-oss-20b: nothing to save, and routing decisions are precision-critical) and
not the embedding (a lookup, not a product; offload it to the CPU instead, offload.py).

What it saves for gpt-oss-20b (presets.GPT_OSS_20B; :func:`nf4_savings` computes these from a config): bf16 holds
2 bytes a weight, NF4 0.5 plus a 4-byte absmax per 64 weights (0.5625; double quantization, ``double_quant``:
8-bit absmaxes with an fp32 scale per 256 of them, 0.5159):

============  ===========  =========  ==========  ==================  ===================
part          weights      bf16       NF4         saved               saved, double quant
============  ===========  =========  ==========  ==================  ===================
attention     637.0 M      1.187 GiB  0.334 GiB   0.853 GiB           0.880 GiB
lm_head       579.1 M      1.079 GiB  0.303 GiB   0.775 GiB           0.800 GiB
============  ===========  =========  ==========  ==================  ===================

(attention: 24 layers x (2,880 x 4,096 + 2 x 2,880 x 512 + 4,096 x 2,880); the biases stay in the model's dtype.)

The cost is accuracy: NF4 rounds each weight to one of 16 levels of its block's absmax, about 9% relative error
per Gaussian weight matrix (measured on the tiny model in tests/test_nf4.py), and the layers are frozen (LoRA
trains beside them). Code that reads a head weight directly (TRL's fused LM head, ossgym's chunked log-probs)
goes through :func:`weight_rows` / :func:`nf4_linear`, one block of vocabulary rows at a time; the merged export
turns NF4 layers back into dense ``nn.Linear`` (:func:`dequantize_nf4`, LoRA merged exactly).

On CPUs with AVX512-BF16, bitsandbytes rewrites a ``Linear4bit``'s weight in place into a CPU layout with bf16
absmaxes on its first eval-mode forward (the numbers change between train and eval mode, and the rows can no
longer be sliced); the layers made here turn that off and run bitsandbytes' plain dequantize-and-multiply path.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import QuantState, dequantize_4bit
from torch import nn

from ossgym.agents.peft_utils import base_model
from ossgym.errors import ConfigError

log = logging.getLogger(__name__)

PARTS = ("attention", "lm_head")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
BLOCKSIZE = 64  # weights per absmax (bitsandbytes' default for 4-bit)
NESTED_BLOCKSIZE = 256  # absmaxes per fp32 scale under double quantization (bitsandbytes' fixed value)
#: vocabulary rows dequantized at once by the LM head's product: 16,384 x 2,880 bf16 = 90 MiB for gpt-oss-20b;
#: a multiple of NESTED_BLOCKSIZE, so a block's double-quantized absmaxes start on a scale boundary
HEAD_CHUNK_ROWS = 16384


def check_parts(parts: Sequence[str], field: str = "nf4") -> tuple[str, ...]:
    """The parts as a tuple (duplicates dropped); ConfigError for one that is not in :data:`PARTS`."""
    for part in parts:
        if part not in PARTS:
            raise ConfigError(field, f"has {part!r}, which is not a part that can be held in NF4",
                              f"Use names from {', '.join(PARTS)} (the router and the embedding stay as they are).")
    return tuple(dict.fromkeys(parts))


def target_names(model: nn.Module, parts: Sequence[str]) -> list[str]:
    """Module names (in the transformers model) of the linear layers that ``parts`` cover."""
    base = base_model(model)
    names = []
    if "attention" in parts:
        for i in range(len(base.model.layers)):
            names += [f"model.layers.{i}.self_attn.{p}" for p in ATTENTION_PROJECTIONS]
    if "lm_head" in parts:
        names.append("lm_head")
    return names


def nf4_bytes(out_features: int, in_features: int, double_quant: bool = False) -> int:
    """Bytes of one NF4 weight as bitsandbytes holds it: packed nibbles, absmaxes, the 16-level code, and under
    double quantization the 8-bit absmaxes' fp32 scales, their 256-entry code and the offset."""
    numel = out_features * in_features
    blocks = math.ceil(numel / BLOCKSIZE)
    size = math.ceil(numel / 2) + 16 * 4
    if double_quant:
        return size + blocks + 4 * math.ceil(blocks / NESTED_BLOCKSIZE) + 256 * 4 + 4
    return size + 4 * blocks


def nf4_savings(config: object, double_quant: bool = False, dense_bytes: int = 2) -> dict[str, dict[str, float]]:
    """Per part, for a gpt-oss config: weights, bytes dense (``dense_bytes`` a weight) and in NF4, and saved."""
    hidden, head_dim = int(config.hidden_size), int(config.head_dim)
    q, kv = int(config.num_attention_heads) * head_dim, int(config.num_key_value_heads) * head_dim
    shapes = {"attention": [(q, hidden), (kv, hidden), (kv, hidden), (hidden, q)] * int(config.num_hidden_layers),
              "lm_head": [(int(config.vocab_size), hidden)]}
    out = {}
    for part, mats in shapes.items():
        weights = sum(o * i for o, i in mats)
        nf4 = sum(nf4_bytes(o, i, double_quant) for o, i in mats)
        out[part] = {"weights": weights, "dense_bytes": weights * dense_bytes, "nf4_bytes": nf4,
                     "saved_bytes": weights * dense_bytes - nf4}
    return out


def module_nf4_bytes(module: nn.Module) -> int:
    """Bytes a Linear4bit's weight holds (packed data and quant state tensors; what :func:`nf4_bytes` predicts)."""
    state = module.weight.quant_state
    tensors = [module.weight.data, state.absmax, state.code]
    if state.nested:
        tensors += [state.state2.absmax, state.state2.code, torch.as_tensor(state.offset)]
    return sum(t.numel() * t.element_size() for t in tensors)


class NF4Head(bnb.nn.Linear4bit):
    """An NF4 ``Linear4bit`` LM head whose product runs :data:`HEAD_CHUNK_ROWS` vocabulary rows at a time
    (:func:`nf4_linear`): bitsandbytes' own product dequantizes the whole matrix for a large batch of rows
    (1.08 GiB for gpt-oss-20b's head), this one never more than one block of rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return nf4_linear(x.to(self.compute_dtype), self.weight, self.bias).to(dtype)


def _nf4_layer(linear: nn.Linear, double_quant: bool, head: bool) -> bnb.nn.Linear4bit:
    """An NF4 copy of ``linear`` on its device (the dense weight is dropped once the caller replaces it)."""
    weight = linear.weight
    cls = NF4Head if head else bnb.nn.Linear4bit
    layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=weight.dtype,
                compress_statistics=double_quant, quant_type="nf4", device="meta")
    layer.weight = bnb.nn.Params4bit(weight.data, requires_grad=False, blocksize=BLOCKSIZE,
                                     compress_statistics=double_quant, quant_type="nf4", module=layer
                                     ).to(weight.device)  # quantizes on the weight's device
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    layer.support_avx512bf16_for_cpu = False  # see the module docstring: no in-place CPU repacking
    layer.train(linear.training)
    return layer


def check_nf4(model: nn.Module, parts: Sequence[str], field: str = "nf4") -> list[str]:
    """The target names of ``parts`` in ``model``; ConfigError for a part that cannot be held in NF4 there."""
    base = base_model(model)
    parts = check_parts(parts, field)
    if "lm_head" in parts and getattr(base.config, "tie_word_embeddings", False):
        raise ConfigError(field, "has lm_head, but this model ties its LM head to the input embedding",
                          "Leave lm_head out (quantizing it would untie or quantize the embedding too).")
    names = target_names(base, parts)
    for name in names:
        module = base.get_submodule(name)
        if isinstance(module, bnb.nn.Linear4bit):
            continue
        if type(module) is not nn.Linear:
            raise ConfigError(field, f"{name} is a {type(module).__name__}, not a plain nn.Linear (a LoRA layer?)",
                              "Quantize before adding LoRA adapters (load_agent does), or leave that part out.")
        if module.in_features % BLOCKSIZE:
            raise ConfigError(field, f"{name} has {module.in_features} input features, not a multiple of NF4's "
                              f"block of {BLOCKSIZE} weights (its rows could not be dequantized apart)",
                              "Leave that part out for this model.")
    return names


def probe_nf4(device: torch.device | str, dtype: torch.dtype, double_quant: bool = False,
              field: str = "nf4") -> None:
    """ConfigError naming ``field`` when bitsandbytes cannot quantize and multiply an NF4 layer in ``dtype`` on
    ``device`` (tried on one 64 x 64 layer, forward and backward)."""
    try:
        linear = nn.Linear(BLOCKSIZE, BLOCKSIZE, device=device, dtype=dtype)
        layer = _nf4_layer(linear, double_quant, head=False)
        x = torch.ones(2, BLOCKSIZE, device=device, dtype=dtype, requires_grad=True)
        layer(x).sum().backward()
        ok = bool(torch.isfinite(x.grad).all())
    except Exception as exc:  # noqa: BLE001 - any failure of bitsandbytes here means NF4 cannot run on this machine
        raise ConfigError(field, f"bitsandbytes cannot run NF4 in {dtype} on {device} here: {exc!r}"[:600],
                          "Leave nf4 out on this machine (or install a bitsandbytes build for this device).") from None
    if not ok:
        raise ConfigError(field, f"bitsandbytes' NF4 product gave non-finite values in {dtype} on {device}",
                          "Leave nf4 out on this machine.")


def quantize_nf4(model: nn.Module, parts: Sequence[str], double_quant: bool = False) -> nn.Module:
    """Hold the linear layers of ``parts`` (:data:`PARTS`) of a GptOssForCausalLM (peft-wrapped or not, before any
    LoRA is added to those layers) in NF4, one layer at a time; layers already 4-bit are left. Returns the model."""
    base = base_model(model)
    for name in check_nf4(base, parts):
        module = base.get_submodule(name)
        if isinstance(module, bnb.nn.Linear4bit):
            continue
        parent, _, child = name.rpartition(".")
        setattr(base.get_submodule(parent) if parent else base, child, _nf4_layer(module, double_quant,
                                                                                  head=name == "lm_head"))
        del module
    log.info("NF4: %s (%d layers%s)", ", ".join(check_parts(parts)), len(target_names(base, parts)),
             ", double quantization" if double_quant else "")
    return model


def weight_rows(weight: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, QuantState]:
    """Rows ``start:stop`` of an NF4 weight as (packed data, quant state), views of the whole (nothing copied):
    what ``bitsandbytes.matmul_4bit`` and ``dequantize_4bit`` take. ``start`` must be a multiple of
    :data:`NESTED_BLOCKSIZE` under double quantization (the layers made here have whole blocks per row)."""
    state = weight.quant_state
    rows, cols = state.shape
    per_row = cols // state.blocksize
    if cols % state.blocksize or not 0 <= start < stop <= rows:
        raise ValueError(f"rows {start}:{stop} of a [{rows}, {cols}] NF4 weight in blocks of {state.blocksize}")
    data = weight.data  # bitsandbytes' canonical [rows * cols / 2, 1] bytes (sliced as is: no full-size view)
    if data.dim() != 2 or data.shape[1] != 1:
        data = data.reshape(-1, 1)
    packed = data[start * cols // 2: stop * cols // 2]
    first, last = start * per_row, stop * per_row
    state2 = None
    if state.nested:
        nested = state.state2
        if first % nested.blocksize:
            raise ValueError(f"row {start} does not start a block of {nested.blocksize} double-quantized absmaxes")
        state2 = QuantState(absmax=nested.absmax[first // nested.blocksize: math.ceil(last / nested.blocksize)],
                            code=nested.code, blocksize=nested.blocksize, dtype=nested.dtype)
    rows_state = QuantState(absmax=state.absmax[first:last], shape=torch.Size([stop - start, cols]), code=state.code,
                            blocksize=state.blocksize, quant_type=state.quant_type, dtype=state.dtype,
                            offset=state.offset, state2=state2)
    return packed, rows_state


def nf4_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               start: int = 0, stop: int | None = None, chunk_rows: int = HEAD_CHUNK_ROWS) -> torch.Tensor:
    """``x @ W[start:stop].T (+ bias)`` for an NF4 weight W, ``chunk_rows`` output rows of W at a time (each block
    dequantized, or multiplied in bitsandbytes' 4-bit kernel, on its own); differentiable in ``x`` (the backward
    dequantizes one block at a time again). ``x`` in the weight's compute dtype."""
    stop = weight.quant_state.shape[0] if stop is None else stop
    parts = []
    for first in range(start, stop, chunk_rows):
        last = min(first + chunk_rows, stop)
        packed, state = weight_rows(weight, first, last)
        parts.append(bnb.matmul_4bit(x, packed, quant_state=state,
                                     bias=None if bias is None else bias[first:last].to(x.dtype)))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def dense_rows(weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of an NF4 weight, dequantized (in the dtype it was quantized from)."""
    packed, state = weight_rows(weight, start, stop)
    return dequantize_4bit(packed, state)


def _dense_linear(layer: nn.Module) -> nn.Linear:
    """A plain nn.Linear holding a Linear4bit's dequantized weight, in the dtype it was quantized from."""
    weight = layer.weight
    rows, cols = weight.quant_state.shape
    dense = torch.empty(rows, cols, dtype=weight.quant_state.dtype, device=weight.device)
    for start in range(0, rows, HEAD_CHUNK_ROWS):
        stop = min(start + HEAD_CHUNK_ROWS, rows)
        dense[start:stop] = dense_rows(weight, start, stop)
    out = nn.Linear(cols, rows, bias=layer.bias is not None, device="meta")
    out.weight = nn.Parameter(dense, requires_grad=False)
    if layer.bias is not None:
        out.bias = nn.Parameter(layer.bias.data.to(dense.dtype), requires_grad=False)
    out.train(layer.training)
    return out


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


@torch.no_grad()
def dequantize_nf4(model: nn.Module) -> nn.Module:
    """Replace every bitsandbytes 4-bit layer of ``model`` (peft-wrapped or not) by an ``nn.Linear`` holding its
    dequantized weight, one layer at a time. A peft LoRA layer over one is replaced too, its active adapters
    merged into the dense weight exactly (peft's merge would add the update to the packed 4-bit bytes, or with its
    bitsandbytes class re-quantize the sum and round most of the update away), so a later ``merge_and_unload``
    leaves it be. Returns the model."""

    def replace(name: str, new: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)

    for name, module in list(model.named_modules()):
        if _is_lora_layer(module) and isinstance(module.get_base_layer(), bnb.nn.Linear4bit):
            dense = _dense_linear(module.get_base_layer())
            if not module.merged and not module.disable_adapters:
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        dense.weight += module.get_delta_weight(adapter).to(dense.weight.dtype)
            replace(name, dense)
    for name, module in list(model.named_modules()):
        if isinstance(module, bnb.nn.Linear4bit):
            replace(name, _dense_linear(module))
    return model


__all__ = [
    "HEAD_CHUNK_ROWS", "NF4Head", "PARTS", "check_nf4", "check_parts", "dense_rows", "dequantize_nf4",
    "module_nf4_bytes", "nf4_bytes", "nf4_linear", "nf4_savings", "probe_nf4", "quantize_nf4", "target_names",
    "weight_rows",
]
