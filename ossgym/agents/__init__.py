"""The gpt-oss agent (agent.py) and its fast inference engine (gptoss/); training lives in ossgym.training."""

from ossgym.agents.peft_utils import silence_bitsandbytes_cpu_warning

silence_bitsandbytes_cpu_warning()  # before anything imports peft (which imports bitsandbytes)
