"""Fast batched inference for gpt-oss in pure PyTorch: KV cache, attention with sinks, MoE, sampling."""
