"""Reward fidelity: score reference completions on many evaluation seeds and check that the reward ranks them.

Used by ``tests/test_fidelity_*.py`` (the bar of issue 4) and ``scripts/reward_fidelity.py`` (the table in
docs/rewards.md). Every reference is scored exactly as a model's completion would be: wrapped as a gpt-oss
completion and sent through :func:`~ossgym.envs.code.base.score_batch`, all references and seeds in one batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ossgym.envs.code.base import CodeTask, ScoreResult, score_batch
from ossgym.envs.code.references import as_completion
from ossgym.sandbox import SandboxPool

__all__ = ["ReferenceStats", "evaluate_references", "ordering_problems", "format_table"]


@dataclass(frozen=True)
class ReferenceStats:
    """Mean reward of one reference over the seeds, its standard error, wins and mean components."""

    name: str
    rewards: tuple[float, ...]
    mean: float
    se: float
    wins: int  # games that reached the target (tasks that report ``details["wins"]``), else 0
    components: dict[str, float]
    outcomes: dict[str, int]


def _stats(name: str, results: Sequence[ScoreResult]) -> ReferenceStats:
    rewards = tuple(r.reward for r in results)
    n = len(rewards)
    mean = sum(rewards) / n
    var = sum((x - mean) ** 2 for x in rewards) / (n - 1) if n > 1 else 0.0
    components = {k: sum(r.components[k] for r in results) / n for k in results[0].components}
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    wins = sum(int(r.details.get("wins", 0)) for r in results)
    return ReferenceStats(name, rewards, mean, math.sqrt(var / n), wins, components, outcomes)


def evaluate_references(
    task: CodeTask, references: Mapping[str, str], seeds: Sequence[int], pool: SandboxPool | None = None
) -> list[ReferenceStats]:
    """Score every reference source on every evaluation seed (one batch through the pool), in the given order."""
    names = list(references)
    completions = [as_completion(references[name]) for name in names for _ in seeds]
    all_seeds = [int(s) for _ in names for s in seeds]
    results = score_batch(task, completions, all_seeds, pool)
    n = len(seeds)
    return [_stats(name, results[i * n : (i + 1) * n]) for i, name in enumerate(names)]


def ordering_problems(stats: Sequence[ReferenceStats], k: float = 3.0) -> list[str]:
    """Why ``stats`` (worst to best) is not strictly ordered with gaps > ``k`` standard errors ([] when it is).

    The standard error of a gap is that of the difference of two independent means, sqrt(se_a^2 + se_b^2).
    """
    problems = []
    for a, b in zip(stats, stats[1:]):
        gap, se = b.mean - a.mean, math.sqrt(a.se**2 + b.se**2)
        if not gap > k * se:
            problems.append(f"{a.name} -> {b.name}: gap {gap:+.4f} is not > {k:g} x SE {se:.4f}")
    return problems


def format_table(stats: Sequence[ReferenceStats]) -> str:
    """A Markdown table: mean, SE, gap to the previous row in SEs, wins, and the mean of every component."""
    names = list(stats[0].components)
    head = "| reference | mean | SE | gap / SE | wins | " + " | ".join(names) + " | outcomes |"
    rows = [head, "|" + "---|" * (6 + len(names))]
    prev = None
    for s in stats:
        gap = "" if prev is None else f"{(s.mean - prev.mean) / max(math.sqrt(s.se**2 + prev.se**2), 1e-12):.1f}"
        comps = " | ".join(f"{s.components[c]:+.3f}" for c in names)
        outs = ", ".join(f"{k} {v}" for k, v in sorted(s.outcomes.items()))
        rows.append(f"| {s.name} | {s.mean:.4f} | {s.se:.4f} | {gap} | {s.wins} | {comps} | {outs} |")
        prev = s
    return "\n".join(rows)
