"""The training forward of Hugging Face's stock gpt-oss experts, chunked over tokens like ossgym's own experts.

A bf16 checkpoint loaded through transformers keeps HF's ``GptOssExperts``, and expert LoRA is peft's
``target_parameters`` adapter: nested ``ParamWrapper`` modules around the experts that, on every forward, fold
the adapter into a full-size copy of the expert stack (``W + scaling * B A``) before HF's forward runs all the
sequence's tokens at once. :func:`chunk_stock_experts` makes each such layer's ``GptOssMLP`` a
:class:`ChunkedGptOssMLP` (the same object, so its router, its experts, peft's wrappers, hooks and state dict
stay as they are): HF's router, then ``experts_forward`` (weights.py) with peft's adapters read as split factors
(``moe.expert_tensors``), ``chunk_tokens`` tokens at a time, each chunk checkpointed. It is the code the fast
engine and ``OssExperts`` run, so there is one chunked experts path.

peft keeps owning the adapter: the factors are read from its ``lora_A``/``lora_B`` parameters at each forward
(differentiable), none while its adapters are disabled (``disable_adapter``, TRL's reference pass for
``beta > 0``) or merged; ``save_pretrained``, loading and ``merge_and_unload`` see stock peft modules.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

from ossgym.agents.gptoss.moe import expert_tensors, expert_weight
from ossgym.agents.gptoss.weights import EXPERT_CHUNK_TOKENS, experts_forward
from ossgym.agents.peft_utils import is_param_wrapper


class ChunkedGptOssMLP(GptOssMLP):
    """``GptOssMLP`` whose experts run through ``experts_forward`` in checkpointed chunks of ``chunk_tokens``
    tokens (None: one pass), with peft's ``target_parameters`` LoRA as split factors. Same outputs as HF's."""

    chunk_tokens: int | None = EXPERT_CHUNK_TOKENS

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``GptOssMLP.forward``: [B, S, H] -> ([B, S, H], the router scores)."""
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        x = hidden_states.reshape(-1, hidden_dim)
        _, router_scores, router_indices = self.router(x)
        weights = router_scores
        if weights.shape[-1] != router_indices.shape[-1]:  # older transformers: scores over all experts
            weights = weights.gather(-1, router_indices)
        experts, factors = expert_tensors(self.experts)
        out = experts_forward(
            x, weights, router_indices, expert_weight(experts, "gate_up_proj"), experts.gate_up_proj_bias,
            expert_weight(experts, "down_proj"), experts.down_proj_bias, float(experts.alpha), float(experts.limit),
            factors.get("gate_up_proj") or None, factors.get("down_proj") or None, self.chunk_tokens,
        )
        return out.reshape(batch_size, sequence_length, hidden_dim), router_scores


def chunk_stock_experts(model: nn.Module) -> int:
    """Make every decoder layer's stock ``GptOssMLP`` of a GptOssForCausalLM (peft-wrapped or not) a
    :class:`ChunkedGptOssMLP` in place; layers with ossgym's ``OssExperts`` (chunked themselves) are left as they
    are. Returns the number of chunked layers. Idempotent; install before or after peft wraps the model."""
    from ossgym.agents.gptoss.mxfp4 import OssExperts, expert_modules

    count = 0
    for _, mlp in expert_modules(model):
        experts = mlp.experts
        while is_param_wrapper(experts):
            experts = experts.base_layer
        if isinstance(experts, OssExperts):
            continue
        if type(mlp) is GptOssMLP:
            mlp.__class__ = ChunkedGptOssMLP  # no new module: peft's wrappers, hooks and the state dict stay
        count += isinstance(mlp, ChunkedGptOssMLP)
    return count


__all__ = ["ChunkedGptOssMLP", "chunk_stock_experts"]
