"""Trusted probe harnesses for tests, imported inside sandbox workers (never used by environments)."""

from __future__ import annotations

import ossgym.envs.code.harness2048  # noqa: F401  (what a worker of the 2048 env has imported)
from ossgym.envs.game2048 import engine


def engine_tables_ready(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Whether the 4x4 engine tables already exist in this worker before any game is played."""
    return {"tables_cached": engine.tables.cache_info().currsize}
