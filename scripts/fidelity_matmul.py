"""Reward fidelity of GptOssMatmul-v0: every bundled reference scored on many seeds, as a markdown table.

    PYTHONPATH=$PWD python scripts/fidelity_matmul.py --seeds 100 --workers 2

Prints one row per reference (mean reward, standard error, min, max, fraction correct, median speedup over
the triple loop) and whether the fidelity bar holds: naive < zip < fast_map with gaps > 3 standard errors,
every incorrect or policy-violating reference below every correct run, cache cheats below zip.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from tqdm import tqdm

from ossgym.envs.code.base import score_batch
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask
from ossgym.envs.code.references import (MATMUL_CACHE_CHEATS, MATMUL_CORRECT, MATMUL_INCORRECT,
                                         MATMUL_POLICY_VIOLATIONS, as_completion)
from ossgym.sandbox import SandboxPool

GROUPS = {"correct": MATMUL_CORRECT, "cache cheat": MATMUL_CACHE_CHEATS, "incorrect": MATMUL_INCORRECT,
          "policy violation": MATMUL_POLICY_VIOLATIONS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    args = parser.parse_args()
    task = MatmulTask(MatmulConfig())
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows: dict[str, tuple[str, list]] = {}
    start = time.monotonic()
    with SandboxPool(args.workers) as pool:
        for group, sources in GROUPS.items():
            for name, source in tqdm(sources.items(), desc=group):
                rows[name] = (group, score_batch(task, [as_completion(source)] * len(seeds), seeds, pool))
    elapsed = time.monotonic() - start
    stats = {}
    print("| reference | kind | mean reward | SE | min | max | correct | median speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (group, results) in rows.items():
        rewards = [r.reward for r in results]
        mean, se = statistics.mean(rewards), statistics.stdev(rewards) / math.sqrt(len(rewards))
        stats[name] = (mean, se, min(rewards), max(rewards))
        speedups = [r.details["speedup"] for r in results if r.details.get("speedup") is not None]
        correct = sum(bool(r.details.get("correct")) for r in results) / len(results)
        speed = f"{statistics.median(speedups):.2f}x" if speedups else "-"
        print(f"| {name} | {group} | {mean:+.3f} | {se:.3f} | {min(rewards):+.3f} | {max(rewards):+.3f} | "
              f"{correct:.0%} | {speed} |")
    order = list(MATMUL_CORRECT)
    gaps = [(stats[b][0] - stats[a][0]) / math.hypot(stats[a][1], stats[b][1]) for a, b in zip(order, order[1:])]
    worst_correct = min(stats[n][2] for n in order)
    below = all(stats[n][3] < worst_correct for n in (*MATMUL_INCORRECT, *MATMUL_POLICY_VIOLATIONS))
    cheats = all(stats[n][0] < stats["zip"][0] for n in MATMUL_CACHE_CHEATS)
    print(f"\n{len(seeds)} seeds, {args.workers} workers, {elapsed:.0f} s. Gaps between consecutive correct "
          f"references in standard errors: {', '.join(f'{g:.1f}' for g in gaps)}; incorrect/policy below every "
          f"correct run: {below}; cache cheats below zip: {cheats}.")


if __name__ == "__main__":
    main()
