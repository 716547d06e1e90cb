"""peft unwrapping in one place: the base model inside a PeftModel, and expert LoRA factors inside peft's
``target_parameters`` wrappers (ParamWrapper), read as split factors (no dense delta is formed).

Duck-typed (peft is not imported here), so code that never uses peft does not pay for importing it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch stays unimported until a function runs (ossgym.agents imports this module)
    from torch import nn

    from ossgym.agents.gptoss.weights import LoraFactors


def is_peft(model: "nn.Module") -> bool:
    """True when ``model`` is a peft ``PeftModel`` (any subclass, e.g. ``PeftModelForCausalLM``)."""
    return any(cls.__name__ == "PeftModel" for cls in type(model).__mro__)


def base_model(model: "nn.Module") -> "nn.Module":
    """The transformers model inside a PeftModel (its LoRA layers stay in place, unmerged), or the model itself."""
    return model.get_base_model() if is_peft(model) else model


def is_param_wrapper(module: "nn.Module") -> bool:
    """Whether `module` is peft's ParamWrapper (a LoRA on a parameter, as ``target_parameters`` makes)."""
    return hasattr(module, "parameter_name") and hasattr(module, "base_layer") and hasattr(module, "lora_A")


def adapter_state(module: "nn.Module") -> tuple:
    """(disabled, merged, active adapters) of a peft tuner layer (it wraps a ``base_layer``); () for other modules."""
    if not hasattr(module, "base_layer") or not hasattr(module, "disable_adapters"):
        return ()
    return bool(module.disable_adapters), bool(module.merged), tuple(module.active_adapters)


def param_wrapper_factors(wrapper: "nn.Module") -> "list[LoraFactors]":
    """The active adapters of one ParamWrapper as split factors: for a 3-D parameter W [E, in, out], peft's
    delta[e] = scaling * A[e] @ B[e] with A[e] = lora_A.view(E, r, in)[e].T and B[e] = lora_B.view(out, r, E)[..., e].T.
    None when adapters are disabled or merged."""
    from ossgym.agents.gptoss.weights import LoraFactors

    if wrapper.disable_adapters or wrapper.merged:
        return []
    out = []
    num_experts = int(getattr(wrapper, "num_experts", 1))
    for adapter in wrapper.active_adapters:
        if adapter not in wrapper.lora_A:
            continue
        weight_a = wrapper.lora_A[adapter].weight  # [E * r, in]
        weight_b = wrapper.lora_B[adapter].weight  # [out, r * E]
        rank = weight_a.shape[0] // num_experts
        a = weight_a.view(num_experts, rank, weight_a.shape[-1]).transpose(1, 2)  # [E, in, r]
        b = weight_b.view(weight_b.shape[0], rank, num_experts).permute(2, 1, 0)  # [E, r, out]
        out.append(LoraFactors(a, b, float(wrapper.scaling[adapter])))  # views: read, not copied, per step
    return out


def linear_lora_factors(module: "nn.Module") -> "tuple[nn.Module, list[LoraFactors]] | None":
    """(the base layer, the active adapters as single-expert factors a [1, in, r], b [1, r, out]: views, no copy)
    for a peft LoRA ``Linear`` whose forward is exactly base(x) + scaling * B(A(x)) per active adapter: plain LoRA
    (no DoRA or other variant, no LoRA bias), unmerged, adapters enabled, dropout not in effect. None for anything
    else (the caller runs the module itself)."""
    from torch import nn

    from ossgym.agents.gptoss.weights import LoraFactors

    if is_param_wrapper(module) or not all(hasattr(module, n) for n in ("lora_A", "lora_B", "base_layer", "scaling")):
        return None
    if module.disable_adapters or module.merged:
        return None
    out = []
    for adapter in module.active_adapters:
        if adapter not in module.lora_A:
            continue
        lora_a, lora_b, dropout = module.lora_A[adapter], module.lora_B[adapter], module.lora_dropout[adapter]
        if adapter in getattr(module, "lora_variant", {}) or not (type(lora_a) is nn.Linear and type(lora_b) is nn.Linear):
            return None
        if lora_b.bias is not None or (dropout.training and getattr(dropout, "p", 0.0) > 0):
            return None
        out.append(LoraFactors(lora_a.weight.t()[None], lora_b.weight.t()[None], float(module.scaling[adapter])))
    return module.base_layer, out


def unwrap_param_wrappers(module: "nn.Module") -> "tuple[nn.Module, dict[str, tuple[LoraFactors, ...]]]":
    """(the module inside peft's nested ParamWrappers, {parameter name: its active LoRA factors})."""
    factors: dict = {}
    while is_param_wrapper(module):
        found = param_wrapper_factors(module)
        if found:
            factors[module.parameter_name] = factors.get(module.parameter_name, ()) + tuple(found)
        module = module.base_layer
    return module, factors


class _DropCpuKernelWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def silence_bitsandbytes_cpu_warning() -> None:
    """bitsandbytes logs a warning at import (on CPUs with AVX512-BF16) that its optional CPU 4-bit kernel
    package is missing. That kernel serves only bitsandbytes' AVX512-BF16 inference layout, which ossgym's NF4
    layers turn off (nf4.py; on the CPU they dequantize and multiply in torch), so that one message is dropped."""
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropCpuKernelWarning) for f in logger.filters):
        logger.addFilter(_DropCpuKernelWarning())
