"""The reference completions of every code task (re-exported from each task's folder) and ``as_completion``.

The references are SOURCES (strings); an env scores them exactly as it scores a model's completion, so they
only ever run inside the sandbox.
"""

from __future__ import annotations

from ossgym.envs.code.matmul.references import (MATMUL_CACHE_CHEATS, MATMUL_CORRECT, MATMUL_INCORRECT,
                                                MATMUL_POLICY_VIOLATIONS, NAIVE_SOURCE)
from ossgym.envs.code.strategy2048.references import REFERENCES_2048

__all__ = [
    "REFERENCES_2048",
    "MATMUL_CORRECT",
    "MATMUL_INCORRECT",
    "MATMUL_CACHE_CHEATS",
    "MATMUL_POLICY_VIOLATIONS",
    "NAIVE_SOURCE",
    "as_completion",
]


def as_completion(source: str, style: str = "raw", reasoning: str = "I will write the function.") -> str:
    """Wrap ``source`` as a gpt-oss completion: ``raw`` special tokens, ``decoded`` (tokens stripped) or ``plain``."""
    answer = f"Here is the function.\n\n```python\n{source.rstrip()}\n```"
    if style == "raw":
        return (
            f"<|channel|>analysis<|message|>{reasoning}<|end|>"
            f"<|start|>assistant<|channel|>final<|message|>{answer}<|return|>"
        )
    if style == "decoded":
        return f"analysis{reasoning}assistantfinal{answer}"
    if style == "plain":
        return answer
    raise ValueError(f"style must be 'raw', 'decoded' or 'plain', got {style!r}")
