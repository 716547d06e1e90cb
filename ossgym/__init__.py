"""ossgym: Gymnasium environments for language models that write code, with rewards that cannot be gamed.

``import ossgym`` registers every environment with Gymnasium::

    import gymnasium, ossgym
    env = gymnasium.make("Game2048-v0")
    env = gymnasium.make("GptOss2048-v0")

``gymnasium.make("ossgym:Game2048-v0")`` also works without the import (Gymnasium imports the module
named before the colon).
"""

from ossgym.registration import register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["__version__", "register_envs", "evaluate"]


def __getattr__(name: str):
    if name == "evaluate":  # imported on first use: keeps ``import ossgym`` light
        from ossgym.evaluation import evaluate

        return evaluate
    raise AttributeError(f"module 'ossgym' has no attribute {name!r}")
