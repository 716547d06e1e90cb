"""gpt-oss mixture of experts: top-k router and clamped SwiGLU exactly as Hugging Face's GptOss defines them.

The expert weights are read from the model on every call (no copy) and multiplied only through the weights
seam (weights.py): dense bf16 or MXFP4, with split expert LoRA (peft ``target_parameters`` adapters or
ossgym's own) applied to the routed tokens alone, never as a dense delta. `experts_loop` is the plain
reference (dense weights, any device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ossgym.agents.gptoss.weights import ExpertWeight, LoraFactors, clamped_swiglu, experts_forward  # noqa: F401
from ossgym.agents.peft_utils import unwrap_param_wrappers


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token and their softmax weights (over the top-k logits). x [N, H] -> ([N, k], [N, k])."""
    logits = F.linear(x, weight, bias)
    top_values, top_index = torch.topk(logits, top_k, dim=-1)
    return torch.softmax(top_values, dim=-1, dtype=top_values.dtype), top_index


def experts_loop(
    x: torch.Tensor,
    weights: torch.Tensor,
    index: torch.Tensor,
    gate_up: torch.Tensor,
    gate_up_bias: torch.Tensor,
    down: torch.Tensor,
    down_bias: torch.Tensor,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """Reference experts: a loop over the routed experts (any device, any dtype)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in torch.unique(index).tolist():
        token, slot = torch.where(index == expert)
        h = x[token] @ gate_up[expert] + gate_up_bias[expert]
        y = clamped_swiglu(h, alpha, limit) @ down[expert] + down_bias[expert]
        out.index_add_(0, token, (y * weights[token, slot, None]).float())
    return out.to(x.dtype)


def moe_tensors(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    router_bias: torch.Tensor,
    top_k: int,
    gate_up: ExpertWeight,
    gate_up_bias: torch.Tensor,
    down: ExpertWeight,
    down_bias: torch.Tensor,
    alpha: float,
    limit: float,
    gate_up_lora: tuple[LoraFactors, ...] | None = None,
    down_lora: tuple[LoraFactors, ...] | None = None,
) -> torch.Tensor:
    """One layer's MoE on tokens x [N, H] from its tensors alone (so one compiled version serves every layer)."""
    weights, index = route(x, router_weight, router_bias, top_k)
    if not use_grouped(x) and gate_up_lora is None and down_lora is None and isinstance(gate_up, torch.Tensor) \
            and isinstance(down, torch.Tensor):
        return experts_loop(x, weights, index, gate_up, gate_up_bias, down, down_bias, alpha, limit)
    return experts_forward(x, weights, index, gate_up, gate_up_bias, down, down_bias, alpha, limit,
                           gate_up_lora, down_lora)


def use_grouped(x: torch.Tensor) -> bool:
    """Whether dense experts without LoRA take the grouped path (always on CUDA; benchmarks patch this to
    compare with the plain loop). MXFP4 weights and LoRA factors always go through the weights seam."""
    return x.is_cuda


def expert_tensors(experts: nn.Module) -> tuple[nn.Module, dict[str, tuple[LoraFactors, ...]]]:
    """(the experts module, {parameter name: its active LoRA factors}) through peft's ``target_parameters``
    wrappers or ossgym's split-LoRA experts (`OssExperts`). Factors only: no delta is formed."""
    experts, factors = unwrap_param_wrappers(experts)
    own = getattr(experts, "lora_factors", None)
    if callable(own):
        for name, f in own().items():
            factors[name] = factors.get(name, ()) + (f,)
    return experts, factors


def expert_weight(experts: nn.Module, name: str) -> ExpertWeight:
    """An experts module's weight through the seam: Mxfp4 for ossgym's MXFP4 experts, else the dense parameter."""
    getter = getattr(experts, "expert_weight", None)
    return getter(name) if callable(getter) else getattr(experts, name)


def moe_args(mlp: nn.Module) -> tuple:
    """The arguments of `moe_tensors` after x, read from an HF GptOssMLP now (no copy, so updates are seen);
    expert LoRA adapters (peft ``target_parameters`` or ossgym's split LoRA) are passed as factors."""
    router = mlp.router
    experts, factors = expert_tensors(mlp.experts)
    return (
        router.weight,
        router.bias,
        int(router.top_k),
        expert_weight(experts, "gate_up_proj"),
        experts.gate_up_proj_bias,
        expert_weight(experts, "down_proj"),
        experts.down_proj_bias,
        float(getattr(experts, "alpha", 1.702)),
        float(getattr(experts, "limit", 7.0)),
        factors.get("gate_up_proj") or None,
        factors.get("down_proj") or None,
    )
