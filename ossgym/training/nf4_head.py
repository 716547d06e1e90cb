"""TRL's fused LM head on an NF4 LM head (ossgym.agents.gptoss.nf4): log-probabilities one vocabulary block at a time.

TRL 1.16's ``add_fused_lm_head`` hands ``lm_head.weight`` to ``trl.kernels.ChunkedLogProbFunction``, which slices
its rows and multiplies them as a dense matrix. An NF4 head's weight is packed 4-bit data, so
:func:`nf4_fused_lm_head` (entered by :func:`ossgym.training.run.run_training`) routes an NF4 weight to
:func:`nf4_head_logprobs` instead and leaves every other head to TRL's function. Like TRL's kernel it never forms
the ``[positions, vocab]`` logits: each block of :data:`~ossgym.agents.gptoss.nf4.HEAD_CHUNK_ROWS`-or-fewer
vocabulary rows is multiplied through bitsandbytes (that block dequantized, never the whole matrix), folded into
per-position statistics, and recomputed in the backward (activation checkpointing); the gradient flows to the
hidden states only (an NF4 head is frozen). It computes the log-probabilities and the entropy, what GRPO asks for.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used (run.py imports this module; the CLI parser stays light)
    import torch

logger = logging.getLogger(__name__)

#: positions scored at once (TRL's own kernel uses 4,096 too)
TOKEN_TILE = 4096
SUPPORTED_OUTPUTS = ("log_probs", "entropy")


def _block_stats(hidden: torch.Tensor, start: int, stop: int, targets: torch.Tensor, scale: float,
                 softcap: float | None, inv_t: float, *, weight: torch.Tensor, bias: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For vocabulary rows start:stop: per position the logsumexp of the block's logits, the target's logit (0 when
    the target is outside the block) and the block's softmax-weighted mean logit (for the entropy)."""
    import torch

    from ossgym.agents.gptoss.nf4 import nf4_linear

    z = nf4_linear(hidden, weight, bias, start, stop).float() * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z * inv_t
    lse = torch.logsumexp(z, dim=-1)
    local = targets - start
    inside = (local >= 0) & (local < stop - start)
    target = torch.where(inside, z.gather(-1, local.clamp(0, stop - start - 1)[:, None])[:, 0], 0.0)
    mean = (torch.softmax(z, dim=-1) * z).sum(-1)
    return lse, target, mean


def nf4_head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                      temperature: float, chunk_size: int, final_logit_softcapping: float | None = None,
                      logit_scale: float = 1.0, outputs: tuple[str, ...] = ("log_probs",)) -> tuple:
    """``trl.kernels.ChunkedLogProbFunction.apply``'s arguments and results for an NF4 head weight: per position
    ``(log_probs, entropy or None, None, None, None)``; ``chunk_size`` vocabulary rows per block (rounded down to
    whole double-quantization blocks)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    from ossgym.agents.gptoss.nf4 import NESTED_BLOCKSIZE

    extra = [name for name in outputs if name not in SUPPORTED_OUTPUTS]
    if extra:
        raise ValueError(f"an NF4 LM head computes {SUPPORTED_OUTPUTS} only, not {extra}")
    vocab = weight.quant_state.shape[0]
    rows = max(NESTED_BLOCKSIZE, chunk_size // NESTED_BLOCKSIZE * NESTED_BLOCKSIZE)
    device = hidden.device.type  # the product's dtype as TRL's kernel picks it (cast_lm_head_to_fp32 gives fp32)
    hidden = hidden.to(torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype)
    grad = torch.is_grad_enabled() and hidden.requires_grad
    args = (float(logit_scale), final_logit_softcapping, 1.0 / temperature)
    logprobs, entropy = [], []
    for first in range(0, hidden.shape[0], TOKEN_TILE):
        h, ids = hidden[first: first + TOKEN_TILE], targets[first: first + TOKEN_TILE]
        stats = []
        # the weight and bias reach the block through a closure, not as checkpoint inputs: saved inputs can come
        # back as plain tensors (save_on_cpu's copies, offload_checkpoints), without the NF4 quantization state
        stats_of = functools.partial(_block_stats, weight=weight, bias=bias)
        for start in range(0, vocab, rows):
            block = (h, start, min(start + rows, vocab), ids, *args)
            stats.append(checkpoint(stats_of, *block, use_reentrant=False) if grad else stats_of(*block))
        lse, target, mean = (torch.stack(s) for s in zip(*stats))  # [blocks, positions]
        log_z = torch.logsumexp(lse, dim=0)
        logprobs.append(target.sum(0) - log_z)
        if "entropy" in outputs:  # H = log Z - sum_v p_v z_v, each block's share weighted by exp(lse_b - log Z)
            entropy.append(log_z - (torch.exp(lse - log_z) * mean).sum(0))
    if not logprobs:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty if "entropy" in outputs else None, None, None, None
    return torch.cat(logprobs), torch.cat(entropy) if entropy else None, None, None, None


@contextlib.contextmanager
def nf4_fused_lm_head() -> Iterator[bool]:
    """While active, TRL's fused LM head scores an NF4 head through :func:`nf4_head_logprobs` (other heads: TRL's
    own function). Yields whether the patch applies (False, with a warning, when the installed TRL lacks
    ``trl.trainer.utils._ChunkedLogProbFunction``). Restores TRL's function on exit."""
    try:
        from trl.trainer import utils
    except ImportError:  # pragma: no cover - TRL is in the train extra, which this module is for
        yield False
        return
    original = getattr(utils, "_ChunkedLogProbFunction", None)
    if original is None or not hasattr(original, "apply"):
        logger.warning("this TRL's fused LM head is not the 1.16 one: an NF4 LM head cannot be scored by it")
        yield False
        return

    class NF4OrTrl:
        """``_ChunkedLogProbFunction`` for TRL's fused forward: NF4 weights here, the rest to TRL's kernel."""

        @staticmethod
        def apply(hidden, weight, *args):
            if getattr(weight, "quant_state", None) is not None:
                return nf4_head_logprobs(hidden, weight, *args)
            return original.apply(hidden, weight, *args)

    utils._ChunkedLogProbFunction = NF4OrTrl
    try:
        yield True
    finally:
        utils._ChunkedLogProbFunction = original


__all__ = ["nf4_fused_lm_head", "nf4_head_logprobs"]
