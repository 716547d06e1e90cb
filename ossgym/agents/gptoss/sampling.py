"""Batched on-device sampling: temperature, top-p, a vocabulary limit, and the log-probability of each pick.

Log-probabilities are log_softmax(logits / temperature) over the whole vocabulary (logits alone when greedy),
the quantity a policy-gradient trainer recomputes; top-p and the vocabulary limit only restrict the choice.
"""

from __future__ import annotations

import torch


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero every token outside the smallest set whose probability mass reaches top_p (the top token always stays)."""
    if top_p >= 1.0:
        return probs
    sorted_probs, sorted_index = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, sorted_index, sorted_probs)


def sample(
    logits: torch.Tensor,
    temperature: float,
    top_p: float,
    vocab_size_limit: int | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of logits [B, V]; returns (tokens [B] long, log-probabilities [B] fp32).

    temperature 0 means greedy. Ids >= vocab_size_limit are never picked.
    """
    scaled = logits.float()
    if temperature > 0:
        scaled = scaled / temperature
    logprobs = torch.log_softmax(scaled, dim=-1)
    if vocab_size_limit is not None and vocab_size_limit < scaled.shape[-1]:
        scaled = scaled.clone()
        scaled[:, vocab_size_limit:] = float("-inf")
    if temperature <= 0:
        tokens = scaled.argmax(dim=-1)
    else:
        probs = top_p_filter(torch.softmax(scaled, dim=-1), top_p)
        # Exponential race: argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i, without a host sync.
        noise = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_min_(1e-30)
        tokens = (probs / noise).argmax(dim=-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
