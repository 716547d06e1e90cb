"""Benchmark of the code envs' scoring: this checkout against a baseline checkout, in the same run.

For each env, a GRPO-like batch (the bundled references in turn, 8 evaluation seeds x 8 samples) is scored
with ``score_batch`` through a warm ``SandboxPool`` twice per checkout, in a fresh subprocess per checkout
(so each imports its own ``ossgym``): once one completion at a time (``score`` in a loop: the latency of
one default evaluation) and once pooled. The baseline is e.g. a worktree of the commit before the
caller-driven rewrite (``git worktree add /tmp/ossgym-base c362b5e``).

The matmul part also reports the spread of the measured speedup of one completion scored repeatedly, on a
quiet machine and with ``--load N`` CPU burners running beside it (the stability of the speed reward).

Usage: python scripts/bench_code_envs.py [--baseline /tmp/ossgym-base] [--batch 64] [--workers N]
                                         [--load 2] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a subprocess whose sys.path starts with one checkout; prints one JSON line of timings.
_CHILD = r'''
import json, sys, time, statistics
sys.path.insert(0, sys.argv[1])
args = json.loads(sys.argv[2])
from ossgym.envs.code.base import score, score_batch
from ossgym.envs.code import references as R
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task
from ossgym.sandbox import SandboxPool

def batch(refs, size):
    names = list(refs)
    return ([R.as_completion(refs[names[i % len(names)]]) for i in range(size)], [1000 + i // 8 for i in range(size)])

t2048 = Strategy2048Task(Strategy2048Config())
tasks = {
    "GptOss2048-v0": (t2048, R.REFERENCES_2048),
    "GptOss2048-v0 (fast mix)": (t2048, {k: v for k, v in R.REFERENCES_2048.items() if not k.startswith("expectimax")}),
    "GptOssMatmul-v0": (MatmulTask(MatmulConfig()), {**R.MATMUL_CORRECT, **R.MATMUL_INCORRECT, **R.MATMUL_CACHE_CHEATS}),
}
out = {"rows": [], "speedups": {}}
with SandboxPool(args["workers"]) as pool:
    score(Strategy2048Task(Strategy2048Config(num_games=1)), R.as_completion("def strategy(board):\n    return 'W'\n"), 0, pool)
    for env_id, (task, refs) in tasks.items():
        completions, seeds = batch(refs, args["batch"])
        one = args["one"]
        start = time.perf_counter()
        singles = [score(task, c, s, pool) for c, s in list(zip(completions, seeds))[:one]]
        t_one = (time.perf_counter() - start) / one
        start = time.perf_counter()
        pooled = score_batch(task, completions, seeds, pool)
        t_pool = time.perf_counter() - start
        means = {}
        for name in refs:
            rs = [r.reward for c, r in zip(completions, pooled) if c == R.as_completion(refs[name])]
            means[name] = sum(rs) / len(rs)
        out["rows"].append({"env": env_id, "n": len(completions), "one_s": t_one, "pool_s": t_pool,
                            "workers": pool.workers, "means": means})
    mt = MatmulTask(MatmulConfig())
    for name in ("naive", "fast_map"):
        rs = score_batch(mt, [R.as_completion(R.MATMUL_CORRECT[name])] * args["repeats"], [7] * args["repeats"], pool)
        out["speedups"][name] = [r.details.get("speedup") for r in rs]
print(json.dumps(out))
'''


def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


def run_checkout(path: str, args: argparse.Namespace, load: int = 0) -> dict:
    """Time one checkout in a fresh interpreter, optionally with ``load`` CPU burners beside it."""
    burners = [multiprocessing.Process(target=_burn, args=(time.time() + 3600,)) for _ in range(load)]
    for b in burners:
        b.start()
    try:
        cfg = json.dumps({"workers": args.workers, "batch": args.batch, "one": args.one, "repeats": args.repeats})
        proc = subprocess.run([sys.executable, "-c", _CHILD, path, cfg], capture_output=True, text=True, cwd=path)
    finally:
        for b in burners:
            b.kill()
    if proc.returncode:
        raise SystemExit(f"{path}: the benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spread(xs: list) -> str:
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return "n/a"
    import math

    logs = [math.log2(x) for x in xs]
    return f"median {statistics.median(xs):.2f}x, min {min(xs):.2f}x, max {max(xs):.2f}x, SD of log2 {statistics.stdev(logs):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="a checkout of the baseline commit (optional)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--one", type=int, default=8, help="completions scored one by one (latency)")
    parser.add_argument("--repeats", type=int, default=16, help="matmul completions scored for the speed spread")
    parser.add_argument("--workers", type=int, default=None, help="sandbox workers (default: one per core)")
    parser.add_argument("--load", type=int, default=2, help="CPU burners for the under-load speed spread (0: skip)")
    parser.add_argument("--out", default=None, help="append the tables to this Markdown file")
    args = parser.parse_args()
    runs = {"this checkout": run_checkout(ROOT, args)}
    if args.baseline:
        runs["baseline"] = run_checkout(os.path.abspath(args.baseline), args)
    loaded = run_checkout(ROOT, args, load=args.load) if args.load else None
    lines = [
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average after the run "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; env defaults; batch of {args.batch} = 8 seeds x 8 "
        "samples cycling through the references",
        "",
        "| env | checkout | s per completion, one by one | batch s (pooled) | completions/s | x baseline (one by one) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    base_rows = {r["env"]: r for r in runs.get("baseline", {"rows": []})["rows"]}
    for name, run in runs.items():
        for r in run["rows"]:
            b = base_rows.get(r["env"])
            ratio = f"{r['one_s'] / b['one_s']:.2f}" if b else ""
            lines.append(f"| {r['env']} | {name} | {r['one_s']:.3f} | {r['pool_s']:.2f} | {r['n'] / r['pool_s']:.1f} | {ratio} |")
    lines += ["", "Mean reward per reference in the pooled batch:", ""]
    for name, run in runs.items():
        for r in run["rows"]:
            lines.append(f"- {name}, {r['env']}: " + ", ".join(f"{k} {v:+.3f}" for k, v in r["means"].items()))
    lines += ["", f"Matmul speedup of one completion scored {args.repeats} times (seed 7):", ""]
    for label, run in [("quiet", runs["this checkout"])] + ([(f"{args.load} CPU burners", loaded)] if loaded else []):
        for ref, xs in run["speedups"].items():
            lines.append(f"- {label}, {ref}: {spread(xs)}")
    if "baseline" in runs:
        for ref, xs in runs["baseline"]["speedups"].items():
            lines.append(f"- baseline (quiet), {ref}: {spread(xs)}")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = "python scripts/bench_code_envs.py " + " ".join(sys.argv[1:])
        with open(args.out, "a") as f:
            f.write(f"\n## Code envs scoring: caller-driven tasks vs baseline (scripts/bench_code_envs.py)\n\n"
                    f"- Date: {datetime.date.today().isoformat()}\n- Machine: {platform.machine()}, "
                    f"{os.cpu_count()} CPUs (shared)\n- Command: `{command.strip()}`\n\n{table}\n")


if __name__ == "__main__":
    main()
