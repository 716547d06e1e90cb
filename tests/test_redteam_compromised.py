"""Invariant 1 under a fully broken Python layer: the sandbox's compromised-worker mode runs each attack as
ordinary unrestricted Python (real builtins, any import the worker has) inside the real OS isolation.

For each task: reading the whole heap and every frame, forging frames on the worker's pipes, rewriting the
trusted handler, and lying about time all earn no more than the honest reference the attack plays or
computes, and the caller's result metadata is untouched. The attacker sees everything the worker holds;
what decides the reward is in the caller.
"""

import math

import pytest

from ossgym.envs.code.base import score_batch
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask
from ossgym.envs.code.references import MATMUL_CORRECT, REFERENCES_2048, as_completion
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task

SEED = 2024


@pytest.fixture(scope="module")
def pool():
    from ossgym.sandbox import SandboxPool

    if not hasattr(SandboxPool, "run_batch"):
        pytest.skip("the sandbox's caller-driven Session API is not on this branch yet")
    try:
        p = SandboxPool(2, compromised_for_tests=True)
    except TypeError:
        pytest.skip("the sandbox has no compromised-worker switch on this branch")
    yield p
    p.close()


def _indent(src: str) -> str:
    return "\n".join("    " + line if line else line for line in src.splitlines())


# The honest reference each attack falls back to, as a nested function the attack calls after its tricks.
CORNER_BODY = REFERENCES_2048["corner"].replace("def strategy(board, memo={}):", "def honest(board, memo={}):")
NAIVE_BODY = MATMUL_CORRECT["naive"].replace("def matmul(A, B):", "def honest(A, B):")

HEAP_2048 = '''
import gc, sys
found = {"games": 0, "generators": 0}
def scan():
    for o in gc.get_objects():
        name = type(o).__name__
        if name in ("Game2048", "GameRecord", "GamesDriver"):
            found["games"] += 1
        if name in ("Generator", "PCG64", "Random"):
            found["generators"] += 1
    frame = sys._getframe()
    while frame is not None:  # every frame and its locals
        for v in list(frame.f_locals.values()):
            if type(v).__name__ in ("Game2048", "GamesDriver"):
                found["games"] += 1
        frame = frame.f_back
HONEST
def strategy(board):
    if not found.get("done"):
        scan()
        found["done"] = True
    if found["games"]:
        return "W" * 2  # would only be reached if a game object were in the worker; invalid on purpose
    return honest(board)
'''

FORGE_FRAMES_2048 = '''
import os, struct, json
def forge():
    record = json.dumps({"outcome": "ok", "message": "ok", "metadata": {"isolation": {"forged": True}}}).encode()
    value = json.dumps([{"end": "target", "max_tile": 4096, "score": 10**9}]).encode()
    for fd in range(3, 64):
        for kind, body in ((b"v", value), (b"r", record), (b"c", value)):
            try:
                os.write(fd, kind + struct.pack(">I", len(body)) + body)
            except OSError:
                pass
HONEST
state = {}
def strategy(board):
    if not state:
        state[1] = True
        forge()
    return honest(board)
'''

REWRITE_HANDLER_2048 = '''
import sys
def forged_handle(fn, request, ctx):
    return [{"end": "target", "max_tile": 2048, "score": 10**9} for b in request["boards"]]
for name, mod in list(sys.modules.items()):
    if name.endswith("strategy2048.handler") and hasattr(mod, "handle"):
        mod.handle = forged_handle
HONEST
def strategy(board):
    return honest(board)
'''

LIE_ABOUT_TIME_2048 = '''
import time, sys
for name in ("thread_time", "process_time", "monotonic", "perf_counter", "time"):
    setattr(time, name, lambda: 0.0)
for name, mod in list(sys.modules.items()):
    if name.startswith("ossgym.sandbox") and hasattr(mod, "_cpu"):
        mod._cpu = lambda: 0.0
        mod._clock = lambda: 0.0
HONEST
def strategy(board):
    x = 0
    for i in range(4000000):  # well over the 0.05 s per-move limit on any machine
        x += i
    return honest(board)
'''


def _src(template: str, honest: str) -> str:
    return template.replace("HONEST", honest)


def test_2048_attacks_earn_no_more_than_the_honest_reference(pool):
    task = Strategy2048Task(Strategy2048Config(num_games=3))
    attacks = {"heap_and_frames": HEAP_2048, "forge_frames": FORGE_FRAMES_2048,
               "rewrite_handler": REWRITE_HANDLER_2048, "lie_about_time": LIE_ABOUT_TIME_2048}
    sources = {"honest": REFERENCES_2048["corner"], **{k: _src(v, CORNER_BODY) for k, v in attacks.items()}}
    results = dict(zip(sources, score_batch(task, [as_completion(s) for s in sources.values()],
                                            [SEED] * len(sources), pool)))
    honest = results.pop("honest")
    assert honest.outcome == "ok" and honest.components["failures"] == 0, honest.feedback
    for name, r in results.items():
        assert r.reward <= honest.reward + 1e-9, (name, r.reward, honest.reward, r.feedback)
        assert r.details.get("wins", 0) == 0, name
    # reading the heap found no game and no generator of the caller's: it played corner exactly
    assert results["heap_and_frames"].reward == honest.reward
    assert results["lie_about_time"].components["failures"] < 0  # the caller's clock caught it


FORGE_MATMUL = '''
import os, struct, json, gc, sys
def attack(A, B):
    # forge frames carrying a "fast" product and timing, read every object the worker holds
    body = json.dumps({"fn_s": 1e-9, "value": [[0.0]]}).encode()
    for fd in range(3, 64):
        try:
            os.write(fd, b"v" + struct.pack(">I", len(body)) + body)
        except OSError:
            pass
    return [o for o in gc.get_objects() if type(o).__name__ in ("MatmulDriver", "speed_set")]
HONEST
def matmul(A, B, seen={}):
    if not seen:
        seen["objects"] = attack(A, B)
    if seen["objects"]:
        return [[0.0]]
    return honest(A, B)
'''

HEAP_MATMUL = FORGE_MATMUL.replace("    for fd in range(3, 64):", "    for fd in range(0):")

LIE_MATMUL = '''
import time, sys, threading
for name in ("thread_time", "process_time", "monotonic", "perf_counter"):
    setattr(time, name, lambda: 0.0)
for name, mod in list(sys.modules.items()):
    if name.startswith("ossgym.sandbox") and hasattr(mod, "_cpu"):
        mod._cpu = lambda: 0.0
HONEST
def matmul(A, B):
    out = {}
    def half(rows):
        out[rows] = honest([A[i] for i in rows], B)
    n = len(A)
    parts = [tuple(range(0, n // 2)), tuple(range(n // 2, n))]
    try:  # work in threads: the caller counts the whole process's CPU time
        ts = [threading.Thread(target=half, args=(p,)) for p in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    except Exception:
        for p in parts:
            half(p)
    return [row for p in parts for row in out[p]]
'''


def test_matmul_attacks_earn_no_more_than_the_honest_reference(pool):
    task = MatmulTask(MatmulConfig(speed_trials=5))
    sources = {"honest_naive": MATMUL_CORRECT["naive"],
               "forge_and_heap": _src(FORGE_MATMUL, NAIVE_BODY), "heap": _src(HEAP_MATMUL, NAIVE_BODY),
               "lie_about_time": _src(LIE_MATMUL, NAIVE_BODY)}
    results = dict(zip(sources, score_batch(task, [as_completion(s) for s in sources.values()],
                                            [SEED] * len(sources), pool)))
    naive = results["honest_naive"]
    assert naive.details["correct"]
    for name in ("forge_and_heap", "heap", "lie_about_time"):
        r = results[name]
        # each computes the naive product: no more than the honest naive reference earns, up to the speed
        # measurement's noise. Margin 1.0 = a factor 2 in speed: under two CPU burners one measurement's
        # spread is about 0.3 in log2 (BENCHMARKS.md), so two independent ones differ by more than 1.0 in
        # under 1 run in 1000; a forged or lied time would reach the speed cap (+4.0, a factor 16).
        assert r.reward <= naive.reward + 1.0, (name, r.reward, naive.reward, r.feedback)
        # (in this mode every completion runs unrestricted, so an honest naive one measures above 1x against
        # the trusted, restricted baseline too: compare with it, not with 1x)
        assert r.components["speed"] <= naive.components["speed"] + 1.0, (name, r.feedback, naive.feedback)
    assert results["heap"].details["correct"]  # no driver or expected output in the worker's heap
    # a forged frame is at most a (wrong) reply or a dead worker: never a correct, timed product
    assert not results["forge_and_heap"].details["correct"]


def test_caller_metadata_is_untouched_by_a_forging_worker(pool):
    task = Strategy2048Task(Strategy2048Config(num_games=1))
    from ossgym.envs.code.base import run_drivers

    jobs = [(src, task.sandbox_task(SEED), task.driver(SEED))
            for src in (REFERENCES_2048["corner"], _src(FORGE_FRAMES_2048, CORNER_BODY))]
    honest, forged = run_drivers(pool, jobs)
    assert "forged" not in str({k: v for k, v in forged.metadata.items() if k != "worker"})
    assert forged.metadata.get("isolation") == honest.metadata.get("isolation")
    assert not math.isnan(forged.wall_time_s)


def test_same_completion_and_seed_same_reward_in_another_pool_and_under_load():
    """Invariant 6 through the real sandbox: two pools, one of them busy with other work, same rewards."""
    from ossgym.sandbox import SandboxPool

    task = Strategy2048Task(Strategy2048Config(num_games=2))
    completions = [as_completion(REFERENCES_2048[n]) for n in ("random", "greedy_merge", "corner")]
    with SandboxPool(1) as a, SandboxPool(2) as b:
        first = [r.reward for r in score_batch(task, completions, [5] * 3, a)]
        # the second pool scores them beside a batch of busy-looping completions (load on the same cores)
        busy = [as_completion("def strategy(board):\n    n = 0\n    for i in range(100000):\n        n = n + i\n    return 'S'\n")] * 3
        second = [r.reward for r in score_batch(task, completions + busy, [5] * 6, b)][:3]
    assert first == second
