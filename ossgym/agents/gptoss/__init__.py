"""Fast batched inference for gpt-oss in pure PyTorch: KV cache, attention with sinks, MoE, sampling.

``FastGptOss`` (engine.py) runs the weights of a Hugging Face ``GptOssForCausalLM`` (or a peft model
around one) without copying them; ``tokenizer.py`` builds the real gpt-oss tokenizer offline; ``tiny.py``
makes the embedded tiny model.
"""
