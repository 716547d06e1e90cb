"""peft in one place: telling a peft-wrapped model from a plain one and reaching the model inside.

The agent, the fast engine, the GRPO run and the warm start all need the Hugging Face model under a
``peft.PeftModel`` (its LoRA layers stay in place inside it); they call :func:`base_model` instead of each
testing ``hasattr(model, "get_base_model")`` on its own. peft itself is not imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def is_peft(model: "torch.nn.Module") -> bool:
    """True when ``model`` is a peft ``PeftModel`` (any subclass, e.g. ``PeftModelForCausalLM``)."""
    return any(cls.__name__ == "PeftModel" for cls in type(model).__mro__)


def base_model(model: "torch.nn.Module") -> "torch.nn.Module":
    """The model inside a peft ``PeftModel`` (LoRA layers injected, unmerged), or ``model`` itself."""
    return model.get_base_model() if is_peft(model) else model
