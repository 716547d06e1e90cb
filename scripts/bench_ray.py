"""Completions scored per second: the local SandboxPool against RayPool with 1 and 2 actors, in one run.

    /work/main/.venv/bin/python scripts/bench_ray.py [--n 32] [--workers 2]

Two workloads of GptOss2048-v0 reference completions (one GRPO group of ``--n`` completions over 4 seeds):
``tiny`` (1 game of at most 10 moves: nearly all of the time is per-completion overhead: worker fork, Ray
round trip, pickling) and ``2048`` (2 games of at most 200 greedy moves: the sandbox's own work).
Every backend gets the same total sandbox slots (``--workers``); each first scores one warm-up batch (actor
start-up, template fork), not timed. The ``same`` column checks the rewards equal the local pool's.
``caller CPU`` is the scoring process's own CPU time per completion (locally it includes the drivers, i.e.
the trusted 2048 engine; with Ray the drivers run in the actors and it is submission, pickling and
unpickling only). Also prints the pickled size of one job (sent) and one (result, driver) pair (returned).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gymnasium as gym  # noqa: E402

import ossgym  # noqa: E402,F401
from ossgym.envs.code.base import score_batch  # noqa: E402
from ossgym.envs.code.references import as_completion  # noqa: E402
from ossgym.envs.code.strategy2048.references import REFERENCES_2048  # noqa: E402
from ossgym.sandbox import SandboxPool  # noqa: E402

WORKLOADS = {
    "tiny": (dict(num_games=1, max_moves=10), "constant_w"),
    "2048": (dict(num_games=2, max_moves=200), "greedy_merge"),
}


def timed(pool, task, completions, seeds, repeats: int) -> tuple[float, float, list]:
    """(completions/s of the best batch, caller CPU ms per completion, rewards)."""
    score_batch(task, completions[:4], seeds[:4], pool)  # warm-up
    best, cpu, rewards = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, cpu0 = time.perf_counter(), time.process_time()
        results = score_batch(task, completions, seeds, pool)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu0)
        rewards = [r.reward for r in results]
    return len(completions) / best, 1000 * cpu / len(completions), rewards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="completions per batch")
    ap.add_argument("--workers", type=int, default=2, help="sandbox slots per backend in total")
    ap.add_argument("--repeats", type=int, default=2, help="timed batches per cell (best kept)")
    args = ap.parse_args()
    import ray

    from ossgym.sandbox.ray_backend import RayPool

    root = os.path.dirname(os.path.dirname(os.path.abspath(ossgym.__file__)))
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    print(f"ray {ray.__version__}, {os.cpu_count()} cores visible, n={args.n}, {args.workers} sandbox slots per backend")
    tasks = {name: gym.make("GptOss2048-v0", **opts).unwrapped.task for name, (opts, _) in WORKLOADS.items()}
    seeds = [s for s in range(4) for _ in range(args.n // 4)]
    comps = {name: [as_completion(REFERENCES_2048[ref])] * len(seeds) for name, (_, ref) in WORKLOADS.items()}

    task = tasks["2048"]
    job = (comps["2048"][0], task.sandbox_task(0), task.driver(0))
    print(f"pickled job: {len(ray.cloudpickle.dumps(job))} B sent (driver of 2 games)")

    rows = []
    local = SandboxPool(args.workers)
    base = {}
    for name in WORKLOADS:
        rate, cpu, rewards = timed(local, tasks[name], comps[name], seeds, args.repeats)
        base[name] = (rate, rewards, cpu)
    rows.append(("local SandboxPool", {k: (v[0], v[2], True) for k, v in base.items()}))
    local.close()
    for actors in (1, 2):
        pool = RayPool(actors=actors, workers_per_actor=args.workers // actors, actor_cpus=args.workers / actors)
        cells = {}
        for name in WORKLOADS:
            rate, cpu, rewards = timed(pool, tasks[name], comps[name], seeds, args.repeats)
            cells[name] = (rate, cpu, rewards == base[name][1])
        if actors == 1:
            d = task.driver(0)
            back = pool.run_batch([(job[0], job[1], d)])[0]
            print(f"pickled return: {len(pickle.dumps((back, d)))} B (result + driver after 2 games)")
        rows.append((f"RayPool {actors} actor{'s' if actors > 1 else ''} x {args.workers // actors}", cells))
        pool.close()
    ray.shutdown()

    print()
    print("| backend | tiny: completions/s | vs local | caller CPU ms/compl. | 2048: completions/s | vs local "
          "| caller CPU ms/compl. | same rewards |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for label, cells in rows:
        parts = []
        for name in WORKLOADS:
            rate, cpu, _ = cells[name]
            parts += [f"{rate:.1f}", f"{rate / base[name][0]:.2f}x", f"{cpu:.1f}"]
        same = all(s for _, _, s in cells.values())
        print(f"| {label} | " + " | ".join(parts) + f" | {'yes' if same else 'NO'} |")
    tiny_local, tiny_ray = rows[0][1]["tiny"][0], rows[1][1]["tiny"][0]
    per = (1 / tiny_ray - 1 / tiny_local) * args.workers * 1000
    print(f"\nRay overhead per completion (tiny, 1 actor, per slot): {per:.1f} ms")


if __name__ == "__main__":
    main()
