"""Attention with per-head sinks, as gpt-oss defines it: softmax over the allowed keys plus one sink logit per head.

Masks: causal; sliding layers see only q - kv < window; row b ignores its left padding (columns < pad[b]).
A padding column attends only to itself, so no row is ever empty (no NaN) and real tokens never see padding.
Prefill on CUDA runs flex attention (compiled) and corrects its output exactly with sigmoid(lse - sink);
decode and the CPU path use `attend`, which reads each key and value once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - old torch
    create_block_mask = flex_attention = None

try:  # torch >= 2.9: return_lse is deprecated in favour of AuxRequest
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover
    AuxRequest = None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves of the last dim (gpt-oss layout): x [B, H, T, D], cos/sin [B, 1, T, D/2]."""
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def allowed(q_col: torch.Tensor, kv_col: torch.Tensor, pad: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean mask of (query column, key column) pairs a row may attend to; all arguments broadcast."""
    ok = (kv_col <= q_col) & ((kv_col >= pad) | (kv_col == q_col))
    if window is not None:
        ok = ok & (q_col - kv_col < window)
    return ok


def prefill_mask(pad: torch.Tensor, length: int, window: int | None) -> torch.Tensor:
    """[B, 1, T, T] mask for a left-padded prefill of T columns."""
    cols = torch.arange(length, device=pad.device)
    return allowed(cols[:, None], cols[None, :], pad[:, None, None, None], window)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, sinks: torch.Tensor, scale: float
) -> torch.Tensor:
    """Exact sink attention, softmax in fp32. q [B, H, Tq, D]; k, v [B, KVH, S, D]; mask [B, 1, Tq, S] -> [B, H, Tq, D].

    The two products run in the cache's dtype (fp32 accumulation), so a bf16 cache is read once, never upcast.
    """
    batch, heads, tq, dim = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    qg = q.reshape(batch, kv_heads, group * tq, dim)
    scores = torch.matmul(qg, k.transpose(-1, -2)).float() * scale
    scores = scores.view(batch, kv_heads, group, tq, -1)
    sink = sinks.float().view(1, kv_heads, group, 1, 1)
    scores = scores.masked_fill(~mask.unsqueeze(2), float("-inf"))
    top = torch.maximum(scores.amax(dim=-1, keepdim=True), sink)
    probs = torch.exp(scores - top)
    denom = probs.sum(dim=-1, keepdim=True) + torch.exp(sink - top)
    probs = (probs / denom).view(batch, kv_heads, group * tq, -1)
    out = torch.matmul(probs.to(v.dtype), v)
    return out.view(batch, heads, tq, dim).to(q.dtype)


def _flex_mask_mod(pad: torch.Tensor, window: int | None) -> Callable:
    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_idx, kv_idx, pad[b], window)

    return mask_mod


def flex_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pad: torch.Tensor,
    window: int | None,
    sinks: torch.Tensor,
    scale: float,
    attention_fn: Callable | None = None,
    block_mask_fn: Callable | None = None,
) -> torch.Tensor:
    """Prefill through flex attention plus the exact sink correction out * sigmoid(lse - sink), in fp32.

    `attention_fn`/`block_mask_fn` are (compiled) flex_attention/create_block_mask; the plain ones if None.
    """
    attention_fn = attention_fn or flex_attention
    block_mask_fn = block_mask_fn or create_block_mask
    batch, heads, length, _ = q.shape
    block_mask = block_mask_fn(_flex_mask_mod(pad, window), batch, None, length, length, device=q.device)
    kwargs = {"return_aux": AuxRequest(lse=True)} if AuxRequest is not None else {"return_lse": True}
    out, aux = attention_fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True, **kwargs)
    lse = aux.lse if AuxRequest is not None else aux
    gate = torch.sigmoid(lse.float() - sinks.float().view(1, heads, 1))
    return (out.float() * gate.unsqueeze(-1)).to(q.dtype)
