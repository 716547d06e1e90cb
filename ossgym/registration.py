"""Registers ossgym's environments with Gymnasium (entry points are strings, so nothing heavy is imported)."""

from __future__ import annotations

import gymnasium

ENVS: dict[str, dict] = {
    "Game2048-v0": {
        "entry_point": "ossgym.envs.game2048.env:Game2048Env",
        "vector_entry_point": "ossgym.envs.game2048.vector:Game2048VectorEnv",
    },
    "GptOss2048-v0": {"entry_point": "ossgym.envs.code.strategy2048:GptOss2048Env"},
    "GptOssMatmul-v0": {"entry_point": "ossgym.envs.code.matmul:GptOssMatmulEnv"},
}


def register_envs() -> None:
    """Register every ossgym environment once (safe to call again)."""
    for env_id, kwargs in ENVS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, **kwargs)
