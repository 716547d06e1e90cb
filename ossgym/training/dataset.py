"""The training dataset: one row per task instance (chat prompt, evaluation seed, reasoning effort).

A *prompt function* ``prompt_fn(seed) -> list[{"role", "content"}]`` gives the chat messages of one task
(for an ossgym env: what ``reset`` shows for that evaluation seed). TRL's sampler repeats each row
``num_generations`` times, so every completion of a group answers the same task and is scored on the same
seed; the reward functions read the ``seed`` column (``GRPOConfig.remove_unused_columns=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from ossgym.errors import ConfigError
from ossgym.harmony import REASONING_EFFORTS

Messages = list[dict[str, str]]


def build_dataset(
    prompt_fn: Callable[[int], Messages], num_rows: int, seed: int, reasoning_effort: str = "low"
):
    """A ``datasets.Dataset`` of rows (prompt: chat messages, seed, reasoning_effort) with distinct seeds.

    Row seeds are drawn without repetition from a generator seeded with ``seed``; ``prompt_fn(row_seed)``
    gives the row's messages (for an ossgym env: ``env.reset(seed=s)[1]["messages"]``). The
    ``reasoning_effort`` column records the effort for the reward functions and logs; generation takes it
    from ``GRPOConfig.chat_template_kwargs`` (TRL hands no row column to generation).
    """
    import datasets

    if num_rows < 1:
        raise ConfigError("num_rows", f"must be at least 1, got {num_rows}", "Pass num_rows=1 or more.")
    if reasoning_effort not in REASONING_EFFORTS:
        raise ConfigError(
            "reasoning_effort", f"is {reasoning_effort!r}", f"Use one of {', '.join(REASONING_EFFORTS)}."
        )
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.choice(2**31 - 1, size=num_rows, replace=False)]
    prompts = []
    for row_seed in seeds:
        messages = prompt_fn(row_seed)
        if not messages or not all(isinstance(m, Mapping) and {"role", "content"} <= set(m) for m in messages):
            raise ValueError(f"prompt_fn({row_seed}) must return a non-empty list of {{'role', 'content'}} dicts")
        prompts.append([{"role": str(m["role"]), "content": str(m["content"])} for m in messages])
    return datasets.Dataset.from_dict(
        {"prompt": prompts, "seed": seeds, "reasoning_effort": [reasoning_effort] * num_rows}
    )
