"""GptOssMatmul-v0 as one folder: ``env`` (config, task, Gymnasium env), ``judge`` (caller side: inputs,
expected products, CPU timing), ``handler`` (worker side: one ``matmul(A, B)`` call per request) and
``references`` (reference sources, and the trusted naive baseline)."""

from ossgym.envs.code.matmul.env import GptOssMatmulEnv, MatmulConfig, MatmulTask

__all__ = ["GptOssMatmulEnv", "MatmulConfig", "MatmulTask"]
