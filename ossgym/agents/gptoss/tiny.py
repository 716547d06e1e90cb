"""The embedded default model: the gpt-oss architecture at toy size, seeded random weights, no download.

Same building blocks as gpt-oss-20b (attention sinks, alternating sliding-window and full attention
layers, a routed mixture of experts with the clamped SwiGLU, YaRN rope) and the real 201,088-row
vocabulary, so the real tokenizer fits. Built in well under a second on CPU; nothing is cached.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ossgym.agents.gptoss.tokenizer import BOS_ID, CALL_ID, ENDOFTEXT_ID, RETURN_ID

if TYPE_CHECKING:
    from transformers import GptOssConfig, GptOssForCausalLM

MODEL_VOCAB_SIZE = 201_088  # embedding rows of every gpt-oss model
TINY_SEED = 0


def tiny_config(num_hidden_layers: int = 4) -> "GptOssConfig":
    """A gpt-oss config at toy size: 4 layers alternating sliding/full, 4 experts top-2, hidden 64, sinks."""
    from transformers import GptOssConfig

    return GptOssConfig(
        num_hidden_layers=num_hidden_layers,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=MODEL_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        head_dim=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=128,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_hidden_layers)],
        max_position_embeddings=131072,
        bos_token_id=BOS_ID,
        eos_token_id=[RETURN_ID, ENDOFTEXT_ID, CALL_ID],
        pad_token_id=ENDOFTEXT_ID,
        attn_implementation="eager",
    )


def _init_std(name: str, shape: torch.Size, config: "GptOssConfig") -> tuple[float, float]:
    """(mean, std) of a parameter: unit-variance activations, logits with a std of about 4."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if name.endswith("bias"):
        return 0.0, 0.1
    if name.endswith("sinks") or "embed_tokens" in name:
        return 0.0, 1.0
    if name.startswith("lm_head"):
        return 0.0, 0.5
    if name.endswith("experts.gate_up_proj"):
        return 0.0, 1.0 / math.sqrt(config.hidden_size)
    if name.endswith("experts.down_proj"):
        return 0.0, 1.0 / math.sqrt(config.intermediate_size)
    return 0.0, 1.0 / math.sqrt(shape[-1])  # nn.Linear weights: (out, in)


def tiny_model(seed: int = TINY_SEED, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               num_hidden_layers: int = 4) -> "GptOssForCausalLM":
    """The tiny gpt-oss model with deterministic weights: parameters filled in name order from one seeded generator."""
    from transformers import GptOssForCausalLM

    config = tiny_config(num_hidden_layers)
    model = GptOssForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            mean, std = _init_std(name, param.shape, config)
            param.copy_(torch.randn(param.shape, generator=generator) * std + mean)
    return model.to(device=device, dtype=dtype).eval()
