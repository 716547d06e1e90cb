"""Benchmark of the code envs' scoring: completions scored per second for a GRPO batch, pooled vs one by one.

For each code env, a batch of 64 completions (the bundled references in turn, 8 evaluation seeds x 8
samples, as a GRPO step with 8 prompts and 8 samples each) is scored twice in one run:

* baseline: one by one, ``score(task, completion, seed, pool)`` in a loop (one worker busy at a time);
* pooled: ``score_batch(task, completions, seeds, pool)`` (every worker of the pool busy).

Both use the same warm SandboxPool; the table gives completions/s and the speedup over one by one.

Usage: python scripts/bench_code_envs.py [--batch 64] [--workers N] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ossgym.envs.code.base import score, score_batch  # noqa: E402
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask  # noqa: E402
from ossgym.envs.code.references import (MATMUL_CACHE_CHEATS, MATMUL_CORRECT, MATMUL_INCORRECT,  # noqa: E402
                                         REFERENCES_2048, as_completion)
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task  # noqa: E402
from ossgym.sandbox import SandboxPool  # noqa: E402


def code_tasks() -> dict[str, tuple[object, dict[str, str]]]:
    """Each env's task (defaults) and the reference sources mixed into its batch."""
    task_2048 = Strategy2048Task(Strategy2048Config())
    tasks = {
        "GptOss2048-v0": (task_2048, REFERENCES_2048),
        # without the one reference that plays for seconds: what the scoring path itself costs
        "GptOss2048-v0 (fast mix)": (task_2048, {k: v for k, v in REFERENCES_2048.items() if k != "expectimax2"}),
        "GptOssMatmul-v0": (MatmulTask(MatmulConfig()), {**MATMUL_CORRECT, **MATMUL_INCORRECT, **MATMUL_CACHE_CHEATS}),
    }
    return tasks


def batch(refs: dict[str, str], size: int) -> tuple[list[str], list[int]]:
    """``size`` completions cycling through the references; 8 samples share each evaluation seed."""
    names = list(refs)
    completions = [as_completion(refs[names[i % len(names)]]) for i in range(size)]
    return completions, [1000 + i // 8 for i in range(size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")
    parser.add_argument("--out", default=None, help="append the table to this Markdown file")
    args = parser.parse_args()
    rows = []
    with SandboxPool(args.workers) as pool:
        score(Strategy2048Task(Strategy2048Config(num_games=1)), "def strategy(board):\n    return 'W'\n", 0, pool)
        for env_id, (task, refs) in code_tasks().items():
            completions, seeds = batch(refs, args.batch)
            start = time.perf_counter()
            one = [score(task, c, s, pool) for c, s in zip(completions, seeds)]
            t_one = time.perf_counter() - start
            start = time.perf_counter()
            pooled = score_batch(task, completions, seeds, pool)
            t_pool = time.perf_counter() - start
            same = sum(a.reward == b.reward for a, b in zip(one, pooled))
            rows.append((env_id, "one by one (score in a loop), baseline", len(completions), t_one, 1.0, same))
            rows.append((env_id, f"pooled (score_batch, {pool.workers} workers)", len(completions), t_pool,
                         t_one / t_pool, same))
        workers = pool.workers
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    mix = ", ".join(f"{k}: {', '.join(v)}" for k, (_t, v) in code_tasks().items())
    lines = [
        f"python {platform.python_version()}, {os.cpu_count()} CPUs (load average after the run {load}), "
        f"SandboxPool({workers}), env defaults; "
        f"batch of {args.batch} = 8 seeds x 8 samples cycling through the references ({mix})",
        "",
        "| env | mode | completions | seconds | completions/s | x one by one | same reward in both modes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for env_id, mode, n, t, ratio, same in rows:
        lines.append(f"| {env_id} | {mode} | {n} | {t:.2f} | {n / t:.1f} | {ratio:.2f} | {same}/{n} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "python scripts/bench_code_envs.py " + " ".join(sys.argv[1:])
        with open(args.out, "a") as f:
            f.write(
                f"\n## Code envs scoring: GRPO batch pooled vs one by one (scripts/bench_code_envs.py)\n\n"
                f"- Date: {datetime.date.today().isoformat()}\n"
                f"- Machine: 2-core CPU dev machine (shared)\n"
                f"- Command: `{command.strip()}` (run as `/work/venv/bin/python ...` from the repository root)\n"
                f"- Both modes score the same 64 completions with the same warm pool. The last column counts\n"
                f"  completions whose reward was identical in both modes: rewards that depend on the machine's\n"
                f"  speed differ (matmul's measured speedup; a 2048 game cut by the wall-clock budget).\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    main()
