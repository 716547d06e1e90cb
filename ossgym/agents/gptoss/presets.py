"""gpt-oss-20b's real architecture, for benchmarks that build it with random weights (speed and memory do
not depend on weight values; real weights cannot be downloaded in tests)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ossgym.agents.gptoss.tokenizer import BOS_ID, CALL_ID, ENDOFTEXT_ID, RETURN_ID

if TYPE_CHECKING:
    from transformers import GptOssConfig, GptOssForCausalLM

GPT_OSS_20B = dict(  # openai/gpt-oss-20b config.json
    num_hidden_layers=24,
    num_local_experts=32,
    num_experts_per_tok=4,
    vocab_size=201088,
    hidden_size=2880,
    intermediate_size=2880,
    head_dim=64,
    num_attention_heads=64,
    num_key_value_heads=8,
    sliding_window=128,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    swiglu_limit=7.0,
    attention_bias=True,
    tie_word_embeddings=False,
    layer_types=["sliding_attention", "full_attention"] * 12,
    rope_parameters={
        "rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
        "truncate": False, "original_max_position_embeddings": 4096,
    },
)


def gpt_oss_20b_config(**overrides: object) -> "GptOssConfig":
    """gpt-oss-20b's config (eager attention; the tokenizer's special ids when the vocabulary holds them),
    with ``overrides`` applied."""
    from transformers import GptOssConfig

    values = {**GPT_OSS_20B, **overrides}
    if values["vocab_size"] > RETURN_ID:
        values = {"bos_token_id": BOS_ID, "eos_token_id": [RETURN_ID, ENDOFTEXT_ID, CALL_ID],
                  "pad_token_id": ENDOFTEXT_ID, **values}
    config = GptOssConfig(**values)
    config._attn_implementation = "eager"
    return config


def random_model(config: "GptOssConfig", device: str | torch.device, seed: int = 0) -> "GptOssForCausalLM":
    """A model of ``config`` with random bf16 weights allocated directly on ``device`` (no fp32 copy ever exists)."""
    from transformers import GptOssForCausalLM

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = GptOssForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(torch.bfloat16).eval()
