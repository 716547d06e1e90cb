"""The gpt-oss agent (gptoss/) and the GRPO adapter (grpo.py)."""

from ossgym.agents.peft_util import silence_bitsandbytes_cpu_warning

silence_bitsandbytes_cpu_warning()  # before anything imports peft (which imports bitsandbytes)
