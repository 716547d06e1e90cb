"""A third code task written from docs/custom_tasks.md alone: the model writes ``sort_numbers(xs)``."""

from custom_sorting.env import SortConfig, SortEnv, SortTask

__all__ = ["SortConfig", "SortEnv", "SortTask"]
