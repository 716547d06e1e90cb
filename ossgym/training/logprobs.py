"""Per-token log-probabilities without the full ``[positions, vocab]`` logits (outside the trainer).

TRL's ``GRPOTrainer`` already computes its training and reference log-probabilities in vocabulary chunks
(``trl.kernels.ChunkedLogProbFunction``); :func:`chunked_logprobs` is the same quantity for code outside the
trainer (checking the engine against the training forward, benchmarks), checked against TRL's kernel in tests.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from ossgym.errors import ConfigError

if TYPE_CHECKING:
    import torch


def head_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``hidden @ W.T`` for a dense LM-head weight, or an NF4 one (ossgym.agents.gptoss.nf4: its vocabulary rows
    dequantized one block at a time, never the whole matrix)."""
    if getattr(weight, "quant_state", None) is not None:  # a bitsandbytes 4-bit weight
        from ossgym.agents.gptoss.nf4 import nf4_linear

        return nf4_linear(hidden.to(weight.quant_state.dtype), weight)
    return hidden @ weight.t()


def _chunk_logprobs(hidden: torch.Tensor, ids: torch.Tensor, *, weight: torch.Tensor, inv_t: float) -> torch.Tensor:
    import torch

    logits = head_logits(hidden, weight).float() * inv_t
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
    ``lm_head_weight`` may be an NF4 weight (``lm_head.weight`` of an NF4 head: frozen, no gradient).
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
    # the weight reaches each chunk through a closure, not as a checkpoint input: saved inputs can come back as
    # plain tensors (save_on_cpu's copies, offload_checkpoints), which would lose an NF4 weight's quantization state
    chunk_of = functools.partial(_chunk_logprobs, weight=lm_head_weight, inv_t=inv_t)
    parts = []
    for start in range(0, flat_ids.numel(), chunk_size):
        h, ids = flat_hidden[start : start + chunk_size], flat_ids[start : start + chunk_size]
        parts.append(checkpoint(chunk_of, h, ids, use_reentrant=False) if grad else chunk_of(h, ids))
    if not parts:
        return torch.zeros(token_ids.shape, dtype=torch.float32, device=hidden_states.device)
    return torch.cat(parts).reshape(token_ids.shape)
