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


GPT_OSS_120B = {**GPT_OSS_20B, "num_hidden_layers": 36, "num_local_experts": 128,  # openai/gpt-oss-120b config.json
                "layer_types": ["sliding_attention", "full_attention"] * 18}


def gpt_oss_120b_config(**overrides: object) -> "GptOssConfig":
    """gpt-oss-120b's config (as `gpt_oss_20b_config`)."""
    return gpt_oss_20b_config(**{**GPT_OSS_120B, **overrides})


@torch.no_grad()
def random_mxfp4_model(config: "GptOssConfig", device: str | torch.device, seed: int = 0) -> "GptOssForCausalLM":
    """A model of ``config`` built directly on ``device`` with ossgym's MXFP4 experts (random nibbles, E8M0 scales
    119-121, i.e. weights of std ~0.02) and random bf16 weights elsewhere: gpt-oss-120b's 61 GiB without a
    checkpoint on disk or a dense copy anywhere."""
    from transformers import GptOssForCausalLM

    from ossgym.agents.gptoss.mxfp4 import OssExperts, expert_modules

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = GptOssForCausalLM(config)
            for _, mlp in expert_modules(model):
                mlp.experts = OssExperts(config, "mxfp4", device="meta")
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("_blocks"):
            tensor.random_(0, 256, generator=g)
        elif name.endswith("_scales"):
            tensor.random_(119, 122, generator=g)
        elif name.endswith("norm.weight"):
            tensor.fill_(1.0)
        elif tensor.is_floating_point():
            tensor.normal_(0.0, 0.02, generator=g)
    with torch.device(device):  # non-persistent rope frequencies are computed
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval()
