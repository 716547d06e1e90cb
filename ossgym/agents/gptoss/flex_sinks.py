"""``flex_sinks``: a training attention for gpt-oss with exact sinks and O(N) memory, forward and backward.

After :func:`register` (called when ``ossgym.agents`` or ``ossgym.training`` is imported), transformers gpt-oss
models accept ``attn_implementation="flex_sinks"``::

    from ossgym.agents.gptoss.flex_sinks import register
    register()
    model = GptOssForCausalLM.from_pretrained(..., attn_implementation="flex_sinks")
    # or, on a built model: model.set_attn_implementation("flex_sinks")

The sink of head h is one extra logit ``s_h`` in every softmax row with no value vector. With ``out`` and ``lse``
the attention output and log-sum-exp *without* the sink, the exact result is::

    out_sinks = out * exp(lse) / (exp(lse) + exp(s)) = out * sigmoid(lse - s)

so it is applied after the kernel, differentiably through ``lse`` (PyTorch's flex attention has carried the
gradient of its log-sum-exp since 2.9; ``grad_logsumexp`` in its backward), which gives exact gradients for
q, k, v and the sinks. Fully masked rows (left padding) have ``lse = -inf`` and an output of 0, as in eager.

Paths:
- CUDA: compiled ``flex_attention`` (one compiled kernel, ``dynamic=True``, so lengths do not recompile), with
  a block-sparse ``BlockMask`` built at block granularity from causality, the sliding window and the padding
  (O((N/128)^2) small integers, never an N x N mask). Memory is O(N) in forward and backward.
- CPU (and CUDA without flex, and decoding steps against a cache): the same formula in plain PyTorch over query chunks, each chunk recomputed in
  backward (``torch.utils.checkpoint``), so memory is O(N * chunk). This is the reference the tests use.

The mask function registered beside the attention returns a :class:`SinksMask` (a few ints and the 2-D
padding mask), not a 4-D tensor; the attention builds what its path needs from it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

NAME = "flex_sinks"
BLOCK = 128  # flex attention's sparse block size
CPU_CHUNK = 256  # query rows per chunk on the reference path

_compiled_flex = None
_registered = False


@dataclass
class SinksMask:
    """What the attention needs to know about visibility: causal with offsets, an optional window, padding.

    Query i (absolute position ``i + q_offset``) sees key j (absolute ``j + kv_offset``) iff ``kv <= q``,
    ``kv > q - window`` when ``window`` is set, and ``padding[b, kv]`` is True (padding is None: no padding).
    """

    batch_size: int
    q_length: int
    kv_length: int
    q_offset: int = 0
    kv_offset: int = 0
    window: int | None = None
    padding: torch.Tensor | None = None  # bool [B, >= kv_offset + kv_length], indexed by absolute kv position

    # BlockMask-like duck typing: transformers only looks at .shape of 4-D masks in a few checks.
    @property
    def shape(self) -> tuple[int, int, int, int]:  # pragma: no cover - informational
        return (self.batch_size, 1, self.q_length, self.kv_length)

    def dense(self, q_start: int, q_end: int, device: torch.device) -> torch.Tensor:
        """Bool visibility [B or 1, 1, q_end - q_start, kv_length] for a chunk of query rows."""
        qa = torch.arange(q_start, q_end, device=device)[:, None] + self.q_offset
        ka = torch.arange(self.kv_length, device=device)[None, :] + self.kv_offset
        vis = ka <= qa
        if self.window is not None:
            vis = vis & (ka > qa - self.window)
        vis = vis[None, None]
        if self.padding is not None:
            pad = self.padding[:, self.kv_offset:self.kv_offset + self.kv_length].to(device=device, dtype=torch.bool)
            vis = vis & pad[:, None, None, :]
        return vis


def sinks_mask(batch_size: int, q_length: int, kv_length: int, q_offset: int = 0, kv_offset: int = 0,
               attention_mask: torch.Tensor | None = None, local_size: int | None = None,
               **kwargs: Any) -> SinksMask:
    """The AttentionMaskInterface function for ``flex_sinks`` (signature as transformers' ``sdpa_mask``)."""
    padding = None
    if attention_mask is not None:
        padding = attention_mask.to(torch.bool)
        if bool(padding.all()):
            padding = None
    return SinksMask(batch_size, q_length, kv_length, int(q_offset), int(kv_offset),
                     int(local_size) if local_size is not None else None, padding)


# ----------------------------------------------------------------------------------------------------------
# reference path (CPU, fallback): exact, chunked over queries, recomputed in backward


def _chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: torch.Tensor, sinks: torch.Tensor,
                     scaling: float) -> torch.Tensor:
    """out * sigmoid(lse - sink) for one chunk of queries; q [B,H,c,D], k/v [B,H,K,D], vis bool [B|1,1,c,K]."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    scores = scores.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # [B,H,c,1]; -inf on fully masked rows
    dead = torch.isinf(lse)
    lse_safe = torch.where(dead, torch.zeros_like(lse), lse)
    probs = torch.exp(scores - lse_safe)  # 0 on masked entries, and on dead rows
    out = torch.matmul(probs, v)
    gate = torch.sigmoid(lse_safe - sinks.to(lse.dtype).view(1, -1, 1, 1))
    gate = torch.where(dead, torch.zeros_like(gate), gate)
    return out * gate


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: SinksMask, sinks: torch.Tensor,
                         scaling: float, chunk: int = CPU_CHUNK) -> torch.Tensor:
    from torch.utils.checkpoint import checkpoint

    outs = []
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, sinks))
    for start in range(0, q.shape[2], chunk):
        end = min(start + chunk, q.shape[2])
        vis = mask.dense(start, end, q.device)
        args = (q[:, :, start:end], k, v, vis, sinks, scaling)
        if grad and q.shape[2] > chunk:
            outs.append(checkpoint(_chunk_attention, *args, use_reentrant=False))
        else:
            outs.append(_chunk_attention(*args))
    return torch.cat(outs, dim=2)


# ----------------------------------------------------------------------------------------------------------
# CUDA path: compiled flex attention with a block-sparse mask


def _flex():
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def block_mask(mask: SinksMask, device: torch.device):
    """A flex ``BlockMask`` for ``mask``, built at block granularity (no N x N tensor anywhere)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, Q, K = mask.batch_size, mask.q_length, mask.kv_length
    nq, nk = math.ceil(Q / BLOCK), math.ceil(K / BLOCK)
    qb = torch.arange(nq, device=device)[:, None]
    kb = torch.arange(nk, device=device)[None, :]
    q_lo, q_hi = qb * BLOCK + mask.q_offset, torch.clamp((qb + 1) * BLOCK, max=Q) - 1 + mask.q_offset
    k_lo, k_hi = kb * BLOCK + mask.kv_offset, torch.clamp((kb + 1) * BLOCK, max=K) - 1 + mask.kv_offset
    any_vis = k_lo <= q_hi
    all_vis = k_hi <= q_lo
    if mask.window is not None:
        any_vis = any_vis & (k_hi > q_lo - mask.window)
        all_vis = all_vis & (k_lo > q_hi - mask.window)
    # ragged last blocks are never "full": flex must apply the mask_mod there
    all_vis = all_vis & ((kb + 1) * BLOCK <= K) & ((qb + 1) * BLOCK <= Q)
    any_vis, all_vis = any_vis[None].expand(B, nq, nk), all_vis[None].expand(B, nq, nk)
    pad_full = None
    if mask.padding is not None:
        pad = mask.padding[:, mask.kv_offset:mask.kv_offset + K].to(device=device, dtype=torch.bool)
        pad = torch.nn.functional.pad(pad, (0, nk * BLOCK - K), value=False)
        counts = pad.view(B, nk, BLOCK).sum(-1)  # valid keys per kv block
        any_vis = any_vis & (counts > 0)[:, None, :]
        all_vis = all_vis & (counts == BLOCK)[:, None, :]
        pad_full = pad
    partial = any_vis & ~all_vis

    def to_indices(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num = sel.sum(-1).to(torch.int32)[:, None]  # [B,1,nq]
        # stable sort puts selected blocks first, in ascending order
        idx = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)[:, None]
        return num.contiguous(), idx.contiguous()

    kv_num, kv_idx = to_indices(partial)
    full_num, full_idx = to_indices(all_vis)
    q_off, kv_off, window = mask.q_offset, mask.kv_offset, mask.window

    def mask_mod(b, h, q_idx, kv_idx):
        qa, ka = q_idx + q_off, kv_idx + kv_off
        ok = ka <= qa
        if window is not None:
            ok = ok & (ka > qa - window)
        if pad_full is not None:
            ok = ok & pad_full[b, kv_idx]
        return ok

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(Q, K))


def _flex_attention(q, k, v, mask: SinksMask, sinks, scaling, block_mask_obj=None):
    from torch.nn.attention.flex_attention import AuxRequest

    bm = block_mask_obj if block_mask_obj is not None else block_mask(mask, q.device)
    out, aux = _flex()(q, k, v, block_mask=bm, scale=scaling, enable_gqa=q.shape[1] != k.shape[1],
                       return_aux=AuxRequest(lse=True))
    lse = aux.lse.unsqueeze(-1)  # [B,H,Q,1], natural log
    dead = torch.isinf(lse)
    lse_safe = torch.where(dead, torch.zeros_like(lse), lse)
    gate = torch.sigmoid(lse_safe.float() - sinks.float().view(1, -1, 1, 1))
    gate = torch.where(dead, torch.zeros_like(gate), gate)
    return (out.float() * gate).to(q.dtype)


def use_flex(device: torch.device) -> bool:
    """True where the compiled flex path runs (CUDA with torch's flex attention)."""
    if device.type != "cuda":
        return False
    try:
        from torch.nn.attention.flex_attention import AuxRequest  # noqa: F401
    except ImportError:
        return False
    return True


def flex_sinks_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                         s_aux: torch.Tensor | None = None, sliding_window: int | None = None,
                         **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The AttentionInterface function: query [B,H,Q,D], key/value [B,Hkv,K,D] -> ([B,Q,H,D], None)."""
    if dropout and module.training:
        raise ValueError("flex_sinks has no attention dropout; set config.attention_dropout = 0")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    sinks = s_aux if s_aux is not None else getattr(module, "sinks", None)
    if sinks is None:
        sinks = torch.full((query.shape[1],), float("-inf"), device=query.device, dtype=query.dtype)
    if isinstance(attention_mask, SinksMask):
        mask = attention_mask
    elif attention_mask is None:
        mask = SinksMask(query.shape[0], query.shape[2], key.shape[2], key.shape[2] - query.shape[2], 0,
                         sliding_window)
    else:
        raise TypeError(f"flex_sinks expects the mask from its own mask function, got {type(attention_mask)}; "
                        "load the model with attn_implementation='flex_sinks'")
    if mask.window is None and sliding_window is not None:
        mask = dataclasses.replace(mask, window=int(sliding_window))
    if use_flex(query.device) and query.shape[2] == key.shape[2]:  # cached decoding: the reference path
        out = _flex_attention(query, key, value, mask, sinks, scaling)
    else:
        groups = query.shape[1] // key.shape[1]
        k = key.repeat_interleave(groups, dim=1) if groups > 1 else key
        v = value.repeat_interleave(groups, dim=1) if groups > 1 else value
        out = _reference_attention(query, k, v, mask, sinks, scaling)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register ``flex_sinks`` with transformers' AttentionInterface and AttentionMaskInterface (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, flex_sinks_attention)
    AttentionMaskInterface.register(NAME, sinks_mask)
    _registered = True
