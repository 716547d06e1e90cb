"""Reward fidelity of a code env: the bundled reference completions scored on many evaluation seeds.

Prints a Markdown table per group of references (mean reward, standard error, gap to the previous reference
in standard errors, games that reached the target, the mean of every reward component, outcomes) and
whether the bar of issue 4 holds:

- GptOss2048-v0: invalid < constant W < random < greedy < corner < one-ply expectimax < two-ply
  expectimax, each gap > 3 standard errors, random never reaching the target, and every game of the
  one-ply expectimax finished (none cut by the CPU budget);
- GptOssMatmul-v0: naive < zip < fast, each gap > 3 standard errors; every incorrect or policy-violating
  run below every correct run; cache cheats (correct) below zip.

Usage: python scripts/reward_fidelity.py --env GptOss2048-v0 [--seeds 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossgym.envs.code import references as refs  # noqa: E402
from ossgym.envs.code.fidelity import evaluate_references, format_table, ordering_problems  # noqa: E402
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask  # noqa: E402
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task  # noqa: E402
from ossgym.sandbox import SandboxPool  # noqa: E402


def check_2048(groups: dict, config: Strategy2048Config, seeds: int) -> list[str]:
    """The 2048 bar: strict order with gaps > 3 SE, random never wins."""
    stats = groups["references"]
    problems = ordering_problems(stats)
    random_wins = next(s.wins for s in stats if s.name == "random")
    if random_wins:
        problems.append(f"random reached {config.target} in {random_wins} of {seeds * config.num_games} games")
    for s in stats:
        if s.name == "expectimax1" and s.components.get("failures", 0.0) < 0:
            problems.append("the one-ply expectimax had games cut or failed (failures component < 0)")
    return problems


def check_matmul(groups: dict, config: MatmulConfig, seeds: int) -> list[str]:
    """The matmul bar: correct ones ordered, incorrect and violations below every correct run, cheats below zip."""
    correct = groups["correct"]
    problems = ordering_problems(correct)
    worst_correct = min(min(s.rewards) for s in correct)
    for s in groups["incorrect"] + groups["policy violation"]:
        if max(s.rewards) >= worst_correct:
            problems.append(f"{s.name} scored {max(s.rewards):+.3f}, not below every correct run ({worst_correct:+.3f})")
    zip_mean = next(s.mean for s in correct if s.name == "zip")
    problems += [f"cache cheat {s.name} ({s.mean:+.3f}) is not below zip ({zip_mean:+.3f})"
                 for s in groups["cache cheat"] if not s.mean < zip_mean]
    return problems


ENVS = {
    "GptOss2048-v0": (Strategy2048Config, Strategy2048Task, {"references": refs.REFERENCES_2048}, check_2048),
    "GptOssMatmul-v0": (MatmulConfig, MatmulTask, {"correct": refs.MATMUL_CORRECT, "cache cheat": refs.MATMUL_CACHE_CHEATS,
                                                   "incorrect": refs.MATMUL_INCORRECT,
                                                   "policy violation": refs.MATMUL_POLICY_VIOLATIONS}, check_matmul),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=sorted(ENVS), default="GptOss2048-v0")
    parser.add_argument("--seeds", type=int, default=100, help="evaluation seeds per reference (0..N-1)")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")
    args = parser.parse_args()
    config_cls, task_cls, groups, check = ENVS[args.env]
    config = config_cls()
    task = task_cls(config)
    start = time.monotonic()
    with SandboxPool(args.workers) as pool:
        stats = {name: evaluate_references(task, sources, range(args.seeds), pool) for name, sources in groups.items()}
    took = time.monotonic() - start
    print(f"{args.env} with default options; evaluation seeds 0..{args.seeds - 1}; "
          f"{sum(len(s) for s in stats.values()) * args.seeds} evaluations in {took:.0f} s "
          f"({pool.workers} workers, python {platform.python_version()})\n")
    for name, group in stats.items():
        print(f"{name}:\n\n{format_table(group)}\n")
    problems = check(stats, config, args.seeds)
    print("fidelity bar: " + ("holds" if not problems else "FAILS: " + "; ".join(problems)))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
