"""GptOss2048-v0 as one folder: ``env`` (config, task, Gymnasium env), ``judge`` (caller side: the games,
their generators and the CPU budget), ``handler`` (worker side: ``strategy(board) -> move``) and
``references`` (reference strategies for the fidelity ladder)."""

from ossgym.envs.code.strategy2048.env import GptOss2048Env, Strategy2048Config, Strategy2048Task

__all__ = ["GptOss2048Env", "Strategy2048Config", "Strategy2048Task"]
