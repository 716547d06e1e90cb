"""The gpt-oss agent (agent.py) and its fast inference engine (gptoss/); training lives in ossgym.training."""
