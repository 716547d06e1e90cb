"""The gpt-oss agent (gptoss/) and the GRPO adapter (grpo.py)."""
