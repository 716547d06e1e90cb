"""gpt-oss mixture of experts: top-k router and clamped SwiGLU exactly as Hugging Face's GptOss defines them.

The expert parameters are read from the HF module on every call (no copy). On CUDA the experts run as two
grouped matrix products (torch._grouped_mm) over the token-expert pairs sorted by expert, so only the routed
experts' weights are read; elsewhere a plain loop over the routed experts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_grouped_mm = getattr(torch, "_grouped_mm", None) or getattr(F, "grouped_mm", None)


def route(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts per token and their softmax weights (over the top-k logits). x [N, H] -> ([N, k], [N, k])."""
    logits = F.linear(x, weight, bias)
    top_values, top_index = torch.topk(logits, top_k, dim=-1)
    return torch.softmax(top_values, dim=-1, dtype=top_values.dtype), top_index


def clamped_swiglu(gate_up: torch.Tensor, alpha: float, limit: float) -> torch.Tensor:
    """gpt-oss activation: interleaved gate/up, gate clamped above, up clamped both sides, (up + 1) * gate * sigmoid(alpha * gate)."""
    gate, up = gate_up[..., ::2], gate_up[..., 1::2]
    gate = gate.clamp(max=limit)
    up = up.clamp(min=-limit, max=limit)
    return (up + 1) * (gate * torch.sigmoid(gate * alpha))


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


def experts_grouped(
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
    """Experts as two grouped matmuls over the token-expert pairs sorted by expert (no host sync, graph-safe)."""
    num_experts = gate_up.shape[0]
    top_k = index.shape[1]
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    expert_sorted = flat[order]
    token = order // top_k
    counts = (expert_sorted[:, None] == torch.arange(num_experts, device=x.device)).sum(0)
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    h = _grouped_mm(x[token], gate_up, offs=offs) + gate_up_bias[expert_sorted]
    h = clamped_swiglu(h, alpha, limit).contiguous()
    y = _grouped_mm(h, down, offs=offs) + down_bias[expert_sorted]
    y = y.float() * weights.reshape(-1)[order, None].float()
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, token, y)
    return out.to(x.dtype)


def use_grouped(x: torch.Tensor) -> bool:
    """Whether the grouped-matmul path applies (CUDA, bf16, grouped_mm present)."""
    return _grouped_mm is not None and x.is_cuda and x.dtype == torch.bfloat16


def moe_tensors(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    router_bias: torch.Tensor,
    top_k: int,
    gate_up: torch.Tensor,
    gate_up_bias: torch.Tensor,
    down: torch.Tensor,
    down_bias: torch.Tensor,
    alpha: float,
    limit: float,
) -> torch.Tensor:
    """One layer's MoE on tokens x [N, H] from its tensors alone (so one compiled version serves every layer)."""
    weights, index = route(x, router_weight, router_bias, top_k)
    experts = experts_grouped if use_grouped(x) else experts_loop
    return experts(x, weights, index, gate_up, gate_up_bias, down, down_bias, alpha, limit)


def expert_tensors(experts: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(the GptOssExperts module, {parameter name: its LoRA delta}) through peft's ``target_parameters`` wrappers.

    peft wraps ``mlp.experts`` in one ParamWrapper per targeted parameter (nested); reading the parameter from
    the experts module gives the base weight only, so the active adapters' deltas are added here, as the
    peft forward does (none when adapters are disabled or merged).
    """
    deltas: dict[str, torch.Tensor] = {}
    while hasattr(experts, "parameter_name") and hasattr(experts, "base_layer"):  # a peft ParamWrapper
        if not experts.disable_adapters and not experts.merged:
            for adapter in experts.active_adapters:
                if adapter in experts.lora_A:
                    delta = experts.get_delta_weight(adapter)
                    name = experts.parameter_name
                    deltas[name] = deltas[name] + delta if name in deltas else delta
        experts = experts.base_layer
    return experts, deltas


def moe_args(mlp: nn.Module) -> tuple:
    """The arguments of `moe_tensors` after x, read from an HF GptOssMLP now (no copy, so updates are seen);
    expert LoRA adapters (peft ``target_parameters``) are applied."""
    router = mlp.router
    experts, deltas = expert_tensors(mlp.experts)

    def weight(name: str) -> torch.Tensor:
        param = getattr(experts, name)
        return param + deltas[name] if name in deltas else param

    return (
        router.weight,
        router.bias,
        int(router.top_k),
        weight("gate_up_proj"),
        weight("gate_up_proj_bias"),
        weight("down_proj"),
        weight("down_proj_bias"),
        float(getattr(experts, "alpha", 1.702)),
        float(getattr(experts, "limit", 7.0)),
    )
