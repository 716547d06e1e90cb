"""Benchmark of ossgym.sandbox against its baselines, in one run.

1. latency of one evaluation end to end (policy check, compile, run a trivial function, result back):
   the sandbox pool vs a fresh ``subprocess`` per evaluation vs plain in-process ``exec`` (no isolation);
2. evaluations per second with the pool (batches over all workers);
3. cost per call of a list-heavy 2048 strategy inside the worker: restricted vs the same source as plain
   Python (and through ``ctx.call``, which adds the per-call timer).

Usage: python scripts/bench_sandbox.py [--workers N] [--n N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TRIVIAL = "def f(x):\n    return x + 1\n"

STRATEGY = '''
import math

def f(board):
    def move_left(rows):
        out = []
        score = 0
        for row in rows:
            tiles = [v for v in row if v]
            merged = []
            i = 0
            while i < len(tiles):
                if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
                    merged.append(tiles[i] * 2)
                    score += tiles[i] * 2
                    i += 2
                else:
                    merged.append(tiles[i])
                    i += 1
            merged += [0] * (len(row) - len(merged))
            out.append(merged)
        return out, score

    def rotate(rows):
        n = len(rows)
        return [[rows[n - 1 - j][i] for j in range(n)] for i in range(n)]

    best_key, best_value = "W", -1.0
    for turns, key in ((1, "S"), (2, "D"), (3, "W"), (0, "A")):
        rows = [row[:] for row in board]
        for _ in range(turns):
            rows = rotate(rows)
        moved, score = move_left(rows)
        if moved == rows:
            continue
        empty = sum(1 for row in moved for v in row if v == 0)
        corner = moved[0][0]
        value = score + 10.0 * empty + math.log2(corner + 1)
        if value > best_value:
            best_key, best_value = key, value
    return best_key
'''

BOARDS = [
    [[2, 0, 2, 4], [0, 4, 4, 8], [16, 0, 0, 2], [2, 2, 8, 8]],
    [[0, 0, 0, 2], [0, 0, 2, 2], [4, 8, 16, 32], [64, 0, 0, 0]],
    [[2, 4, 8, 16], [32, 64, 128, 256], [2, 4, 8, 16], [0, 2, 0, 2]],
    [[128, 64, 2, 0], [4, 4, 0, 0], [2, 0, 0, 0], [0, 0, 0, 2]],
]


def time_calls(fn, payload, ctx):  # noqa: ANN001, ANN201 - a trusted harness, run inside the worker
    """Per-call cost of the restricted ``fn`` vs the same source compiled as plain Python, in the worker."""
    n = payload["calls"]
    plain_globals: dict = {"__name__": "plain"}
    exec(compile(payload["source"], "<plain>", "exec"), plain_globals)  # noqa: S102 - fixed benchmark source
    plain = plain_globals["f"]
    boards = payload["boards"]
    calls = {"plain": plain, "restricted": fn, "restricted_ctx_call": ctx.call}
    out = {name: float("inf") for name in calls}
    for _ in range(7):  # interleaved rounds, best of each: fair on a machine shared with other work
        for name, call in calls.items():
            t0 = ctx.clock()
            for i in range(n):
                call(boards[i % len(boards)])
            out[name] = min(out[name], (ctx.clock() - t0) / n)
    out["same_answers"] = all(fn(b) == plain(b) for b in boards)
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_pool_latency(pool, task, n: int) -> list[float]:
    from ossgym.sandbox import Outcome

    out = []
    for i in range(n):
        t0 = time.perf_counter()
        r = pool.evaluate(TRIVIAL, task, i)
        out.append(time.perf_counter() - t0)
        assert r.outcome is Outcome.OK and r.value == i + 1, r
    return out


def bench_subprocess(n: int) -> list[float]:
    code = ("import json, sys\nsrc = sys.stdin.read()\ng = {}\nexec(compile(src, '<s>', 'exec'), g)\n"
            "print(json.dumps(g['f'](41)))\n")
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-I", "-c", code], input=TRIVIAL, capture_output=True, text=True,
                           timeout=30)
        assert json.loads(p.stdout) == 42
        out.append(time.perf_counter() - t0)
    return out


def bench_exec(n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        g: dict = {}
        exec(compile(TRIVIAL, "<s>", "exec"), g)  # noqa: S102 - the unisolated baseline
        assert json.loads(json.dumps(g["f"](i))) == i + 1
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=None, help="pool workers (default: one per usable core)")
    ap.add_argument("--n", type=int, default=400, help="evaluations per latency measurement")
    ap.add_argument("--batch", type=int, default=64, help="evaluations per batch in the throughput test")
    args = ap.parse_args()

    from ossgym.sandbox import SandboxPool, SandboxTask

    cores = len(os.sched_getaffinity(0))
    task = SandboxTask(entrypoint="f", harness="ossgym.sandbox.testing:call_once")
    rows = []
    with SandboxPool(args.workers) as pool:
        bench_pool_latency(pool, task, 20)  # start the template, warm up
        lat = bench_pool_latency(pool, task, args.n)
        items = [(TRIVIAL, i) for i in range(args.batch)]
        pool.evaluate_batch(items, task)
        rounds = max(3, (args.n * 2) // args.batch)
        t0 = time.perf_counter()
        for _ in range(rounds):
            results = pool.evaluate_batch(items, task)
            assert all(r.ok for r in results)
        eps = rounds * args.batch / (time.perf_counter() - t0)
        ctask = SandboxTask(entrypoint="f", harness="bench_sandbox:time_calls", call_timeout_s=1.0,
                            total_timeout_s=60.0)
        r = pool.evaluate(STRATEGY, ctask, {"calls": 2000, "boards": BOARDS, "source": STRATEGY})
        assert r.ok, r
        calls = r.value
        workers = pool.workers
    sub = bench_subprocess(max(20, args.n // 10))
    n_par = max(40, args.n // 5)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex_pool:  # the subprocess baseline, as parallel as the pool
        list(ex_pool.map(lambda _: bench_subprocess(1), range(n_par)))
    sub_eps = n_par / (time.perf_counter() - t0)
    ex = bench_exec(args.n)

    rows.append(("sandbox pool, one evaluation", pct(lat, 0.5) * 1e3, pct(lat, 0.99) * 1e3, 1 / statistics.mean(lat)))
    rows.append(("baseline: fresh subprocess", pct(sub, 0.5) * 1e3, pct(sub, 0.99) * 1e3, 1 / statistics.mean(sub)))
    rows.append(("baseline: in-process exec", pct(ex, 0.5) * 1e3, pct(ex, 0.99) * 1e3, 1 / statistics.mean(ex)))

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {cores} usable cores, "
          f"python {platform.python_version()}, pool workers {workers}, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine)")
    print()
    print("| latency, end to end | p50 ms | p99 ms | sequential evals/s |")
    print("|---|---:|---:|---:|")
    for name, p50, p99, rate in rows:
        print(f"| {name} | {p50:.2f} | {p99:.2f} | {rate:.0f} |")
    print(f"\npool p50 vs fresh subprocess: {pct(sub, 0.5) / pct(lat, 0.5):.1f}x faster "
          f"(target p50 <= 5 ms: {'met' if pct(lat, 0.5) <= 0.005 else 'NOT met'})")
    print()
    print("| throughput | evals/s |")
    print("|---|---:|")
    print(f"| sandbox pool, batches of {args.batch} over {workers} workers | {eps:.0f} |")
    print(f"| baseline: fresh subprocess per evaluation, {workers} at a time | {sub_eps:.0f} |")
    print(f"(target >= 200 evals/s: {'met' if eps >= 200 else 'NOT met'})")
    print()
    print("| 2048 strategy, per call inside the worker | us/call | vs plain |")
    print("|---|---:|---:|")
    for name in ("plain", "restricted", "restricted_ctx_call"):
        print(f"| {name} | {calls[name] * 1e6:.1f} | {calls[name] / calls['plain']:.2f}x |")
    ratio = calls["restricted"] / calls["plain"]
    print(f"(same answers: {calls['same_answers']}; target restricted <= 2x plain: {'met' if ratio <= 2 else 'NOT met'})")


if __name__ == "__main__":
    main()
