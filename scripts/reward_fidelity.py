"""Reward fidelity of GptOss2048-v0: the bundled reference strategies on many evaluation seeds.

Prints a Markdown table (mean reward, standard error, gap to the previous reference in standard errors,
games that reached the target, the mean of every reward component, outcomes) and whether the bar of issue 4
holds: means strictly ordered worst to best with gaps > 3 standard errors, random never reaching the target.

Usage: python scripts/reward_fidelity.py [--seeds 100] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossgym.envs.code.fidelity import evaluate_references, format_table, ordering_problems  # noqa: E402
from ossgym.envs.code.references import REFERENCES_2048  # noqa: E402
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task  # noqa: E402
from ossgym.sandbox import SandboxPool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="evaluation seeds per reference (0..N-1)")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")
    args = parser.parse_args()
    config = Strategy2048Config()
    task = Strategy2048Task(config)
    start = time.monotonic()
    with SandboxPool(args.workers) as pool:
        stats = evaluate_references(task, REFERENCES_2048, range(args.seeds), pool)
    took = time.monotonic() - start
    print(f"GptOss2048-v0 defaults ({config.size}x{config.size}, target {config.target}, {config.num_games} games "
          f"per evaluation, {config.move_time_limit_s:g} s per move, {config.time_budget_s:g} s budget); "
          f"evaluation seeds 0..{args.seeds - 1}; {len(stats) * args.seeds} evaluations in {took:.0f} s "
          f"({pool.workers} workers, python {platform.python_version()})\n")
    print(format_table(stats))
    problems = ordering_problems(stats)
    random_wins = next(s.wins for s in stats if s.name == "random")
    print()
    print("ordering: " + ("strictly ordered, every gap > 3 SE" if not problems else "; ".join(problems)))
    print(f"random reached {config.target}: {random_wins} times in {args.seeds * config.num_games} games")
    sys.exit(1 if problems or random_wins else 0)


if __name__ == "__main__":
    main()
