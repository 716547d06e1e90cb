"""GptOssMatmul-v0: the env end to end through the real sandbox (a module-scoped pool of 2 workers).

Correctness outcomes are deterministic and asserted exactly. The reward-fidelity test is the issue's bar
(reference means strictly ordered with gaps > 3 standard errors); speed is measured in the worker's CPU
time, so the ordering holds on a loaded machine, and no assertion compares a time against a constant.
"""

import dataclasses
import math
import re
import statistics

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import ossgym  # noqa: F401  (registers the envs)
from ossgym.envs.code.base import derived_seed, score_batch
from ossgym.envs.code.matmul import GptOssMatmulEnv, MatmulConfig, MatmulTask
from ossgym.envs.code.matmul.judge import correctness_cases
from ossgym.envs.code.references import (
    MATMUL_CACHE_CHEATS,
    MATMUL_CORRECT,
    MATMUL_INCORRECT,
    MATMUL_POLICY_VIOLATIONS,
    as_completion,
)
from ossgym.errors import ConfigError
from ossgym.sandbox import Outcome, SandboxPool, SandboxResult

FIDELITY_SEEDS = 24  # per correct reference; deterministic outcomes use fewer
NON_SPEED = ("format", "policy", "correctness", "crash")


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2) as p:
        yield p


@pytest.fixture(scope="module")
def task():
    return MatmulTask(MatmulConfig())


def run(task, pool, sources, seeds):
    """Score each source for each seed; {name: [ScoreResult per seed]}."""
    names = list(sources)
    results = score_batch(task, [as_completion(sources[n]) for s in seeds for n in names],
                          [s for s in seeds for _ in names], pool)
    return {n: results[i::len(names)] for i, n in enumerate(names)}


def mean_se(values):
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


# --- the Gymnasium interface ------------------------------------------------------------------------------

def test_check_env_and_spec(pool):
    env = gymnasium.make("GptOssMatmul-v0")  # random sample actions hold no code: nothing reaches a sandbox
    assert isinstance(env.unwrapped, GptOssMatmulEnv)
    check_env(env.unwrapped, skip_render_check=False)
    env = GptOssMatmulEnv(pool=pool)
    obs, info = env.reset(seed=3)
    assert "def matmul(A, B)" in obs and "k = 0" in obs and "matmul([[], []], []) == [[], []]" in obs
    assert [m["role"] for m in info["messages"]] == ["system", "user"]
    _, reward, terminated, truncated, info = env.step(as_completion(MATMUL_CORRECT["zip"]))
    assert terminated and not truncated and info["outcome"] == "ok"
    assert set(info["reward_components"]) == {"format", "policy", "correctness", "speed", "crash"}
    assert math.isclose(sum(info["reward_components"].values()), reward)
    assert info["reward_components"]["correctness"] == 1.0 and "Speed on 48x48 times 48x48" in info["feedback"]


def test_prompt_states_the_rules(task):
    text = task.instructions()
    for needle in ("pure Python", "n x k", "k x m", "list of n rows", "1 x N and N x 1", "non-square",
                   "when k = 0", "`B` is []", "no bools",
                   "you may import only bisect, collections, functools, heapq, itertools, math, operator, random",
                   "0.1 s of CPU time", "3 s", "fresh", "triple loop", "7 trials", "new values in every trial",
                   "No numpy"):
        assert needle in text, needle


# --- determinism and seeds -----------------------------------------------------------------------------------

def test_cases_come_one_way_from_the_eval_seed(task):
    assert task.cases(5) == task.cases(5) != task.cases(6)
    assert task.cases(5) == correctness_cases(derived_seed("ossgym.GptOssMatmul", "cases", 5), 12)
    assert task.cases(5) != correctness_cases(5, 12)  # not the raw evaluation seed
    speed_seed = task.driver(5).speed_seed
    assert speed_seed == derived_seed("ossgym.GptOssMatmul", "speed", 5)
    assert len({speed_seed, derived_seed("ossgym.GptOssMatmul", "cases", 5), task.sandbox_task(5).seed}) == 3


def test_same_seed_and_completion_give_the_same_correctness(task, pool):
    sources = {"fast": MATMUL_CORRECT["fast_map"], "wrong": MATMUL_INCORRECT["off_by_one"],
               "late": MATMUL_INCORRECT["zeros_when_big"]}
    first, second = run(task, pool, sources, [11, 12]), run(task, pool, sources, [11, 12])
    for name in sources:
        for a, b in zip(first[name], second[name]):
            assert {k: a.components[k] for k in NON_SPEED} == {k: b.components[k] for k in NON_SPEED}
            assert a.outcome == b.outcome and a.details["correct"] == b.details["correct"]
        if name != "fast":
            assert [r.feedback for r in first[name]] == [r.feedback for r in second[name]]


# --- reward fidelity (the bar) ------------------------------------------------------------------------

def test_reward_fidelity_ordering(task, pool):
    seeds = list(range(100, 100 + FIDELITY_SEEDS))
    timed = run(task, pool, {**MATMUL_CORRECT, **MATMUL_CACHE_CHEATS}, seeds)
    failing = run(task, pool, {**MATMUL_INCORRECT, **MATMUL_POLICY_VIOLATIONS}, seeds[:3])
    means = {}
    for name, results in timed.items():
        assert all(r.details["correct"] and r.details["speedup"] is not None for r in results), name
        means[name] = mean_se([r.reward for r in results])
    order = list(MATMUL_CORRECT)  # naive, zip, fast_map
    for worse, better in zip(order, order[1:]):
        # paired by seed: each seed's matrices set both rewards' scale, so the per-seed gap is what is compared
        # (unpaired, that shared spread entered the standard error twice)
        gap, gap_se = mean_se([b.reward - w.reward for w, b in zip(timed[worse], timed[better])])
        assert means[better][0] > means[worse][0] and gap > 3 * gap_se, (worse, better, gap, gap_se, means)
    worst_correct = min(r.reward for n in order for r in timed[n])
    for name, results in failing.items():
        assert all(r.reward < worst_correct for r in results), name
        assert all(r.components["speed"] == 0.0 for r in results), name
    for name in MATMUL_CACHE_CHEATS:  # correct, but caching cannot beat the plain function it wraps
        (mc, sec), (mz, sez) = means[name], means["zip"]
        assert mc < mz, (name, means)


# --- incorrect, cheating and mistyped answers ---------------------------------------------------------------

CASE_NAME = re.compile(r"case \d+ \(\d+x\d+ times \d+x\d+\)")


def test_incorrect_references_are_rejected_with_the_failing_case_named(task, pool):
    results = run(task, pool, MATMUL_INCORRECT, [21])
    for name, (r,) in results.items():
        assert r.components["correctness"] == -1.0 and r.components["speed"] == 0.0, name
        assert "No speed reward" in r.feedback, name
        assert CASE_NAME.search(r.feedback) or re.search(r"speed trial \d+: ", r.feedback), (name, r.feedback)
    assert "max relative error" in results["off_by_one"][0].feedback
    assert "row 0 is a tuple" in results["tuple_rows"][0].feedback
    assert "IndexError" in results["raises"][0].feedback and "line 2, in matmul" in results["raises"][0].feedback
    # Right on the small cases, wrong on the bigger speed inputs: the trials are checked too.
    for name in ("zeros_when_big", "last_result_replay"):
        assert "all 9 correctness cases passed" in results[name][0].feedback, name


BOOLS = '''
def matmul(A, B):
    cols = list(zip(*B))
    return [[sum(a * b for a, b in zip(row, col)) > 0 for col in cols] for row in A]
'''

FLOAT_SUBCLASS = '''
def matmul(A, B):
    class F(float):
        pass
    cols = list(zip(*B))
    return [[F(sum(a * b for a, b in zip(row, col))) for col in cols] for row in A]
'''

def test_exact_types_are_required(task, pool):
    results = run(task, pool, {"bools": BOOLS, "float_subclass": FLOAT_SUBCLASS}, [31])
    assert "is a bool" in results["bools"][0].feedback
    assert "a float subclass" in results["float_subclass"][0].feedback
    for name, (r,) in results.items():
        assert r.components["correctness"] == -1.0 and r.details["cases_ok"] < len(task.cases(31)), name
    # A numpy float (or any subclass) that reached the caller would be refused by the caller's own check too.
    from ossgym.envs.code.matmul.judge import check_matrix

    for bad in (np.float64(0.5), True, 1.0 + 0j):
        assert check_matrix([[bad]], 1, 1) is not None, bad


MUTATES_AND_LIES = '''
def matmul(A, B):
    m = len(B[0]) if B else 0
    for row in A:
        for t in range(len(row)):
            row[t] = 0.0
    for row in B:
        for t in range(len(row)):
            row[t] = 0.0
    return [[0.0] * m for row in A]
'''

MUTATES_AFTER = '''
def matmul(A, B):
    cols = list(zip(*B))
    C = [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
    A.clear()
    B.reverse()
    return C
'''

ID_CACHE = '''
def matmul(A, B, memo={}):
    key = (id(A), id(B))
    hit = memo.get(key)
    if hit is not None:
        return hit
    cols = list(zip(*B))
    C = [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
    memo[key] = C
    return C
'''

SPY = '''
def matmul(A, B, seen=[]):
    for old in seen:
        if old is A or old is B or (A and old == A):
            return "seen before"
    seen.append(A)
    seen.append(B)
    cols = list(zip(*B))
    return [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
'''


def test_inputs_are_fresh_objects_and_mutation_gains_nothing(task, pool):
    seeds = [41, 42, 43]
    results = run(task, pool, {"spy": SPY, "mutates_and_lies": MUTATES_AND_LIES, "mutates_after": MUTATES_AFTER,
                               "id_cache": ID_CACHE, "zip": MATMUL_CORRECT["zip"]}, seeds)
    # Every call (cases and trials) got objects and values it had never seen: the spy stays correct.
    assert all(r.details["correct"] for r in results["spy"])
    # Zeroing the inputs cannot make the reference agree with a zero result: the caller holds its own products.
    assert all(r.components["correctness"] == -1.0 for r in results["mutates_and_lies"])
    assert all(r.details["correct"] for r in results["mutates_after"])
    # Caching by id either returns a stale product (wrong) or never hits: it never beats plain zip by the
    # margin a working cache would give (log2 speedup capped at 4 vs. zip's ~0.3).
    zip_mean = statistics.mean(r.reward for r in results["zip"])
    assert all(r.reward < zip_mean + 0.5 for r in results["id_cache"])


# --- shapes ------------------------------------------------------------------------------------------------

def test_empty_inner_dimension(task, pool):
    k0 = [i for i, (A, B) in enumerate(task.cases(51)) if B == []]
    assert len(k0) == 1 and all(row == [] for row in task.cases(51)[k0[0]][0])
    n = len(task.cases(51)[k0[0]][0])
    flat_empty = MATMUL_CORRECT["zip"].replace("def matmul(A, B):\n", "def matmul(A, B):\n    if not B:\n        return []\n")
    len_b0 = MATMUL_CORRECT["zip"].replace("def matmul(A, B):\n", "def matmul(A, B):\n    m = len(B[0])\n")
    results = run(task, pool, {"flat_empty": flat_empty, "len_b0": len_b0, "fast": MATMUL_CORRECT["fast_map"]}, [51])
    name = f"case {k0[0]} ({n}x0 times 0x0)"
    assert results["flat_empty"][0].components["correctness"] == -1.0
    assert f"{name}: invalid result, returned 0 rows, expected {n}" in results["flat_empty"][0].feedback
    assert f"{name}: raised IndexError" in results["len_b0"][0].feedback
    assert results["fast"][0].details["correct"]  # the references handle k = 0 (n empty rows)


def test_timeouts_and_errors_never_earn(task, pool):
    slow_when_big = MATMUL_CORRECT["zip"].replace(
        "def matmul(A, B):\n", "def matmul(A, B):\n    while len(A) > 40:\n        A = A + []\n")
    raises_when_big = MATMUL_CORRECT["zip"].replace(
        "def matmul(A, B):\n", "def matmul(A, B):\n    if len(A) > 40:\n        raise ValueError('big')\n")
    results = run(task, pool, {"slow": slow_when_big, "raises": raises_when_big}, [61])
    slow, raises = results["slow"][0], results["raises"][0]
    assert slow.components["correctness"] == -1.0 and slow.components["speed"] == 0.0
    assert "speed trial 0: timed out" in slow.feedback
    assert raises.components["correctness"] == -1.0 and raises.components["speed"] == 0.0
    assert "ValueError: big" in raises.feedback


# --- batch scoring -------------------------------------------------------------------------------------------

def test_score_batch_keeps_order_and_agrees_with_step(pool):
    env = GptOssMatmulEnv(pool=pool)
    completions = [as_completion(MATMUL_CORRECT["fast_map"]), as_completion(MATMUL_INCORRECT["off_by_one"]),
                   "no code here", as_completion(MATMUL_POLICY_VIOLATIONS["numpy_import"]),
                   as_completion(MATMUL_CORRECT["naive"])]
    seeds = [81, 82, 83, 84, 85]
    batch = env.score_batch(completions, seeds)
    assert [r.outcome for r in batch] == ["ok", "ok", "no_code", "policy_violation", "ok"]
    assert [r.components["correctness"] for r in batch] == [1.0, -1.0, 0.0, 0.0, 1.0]
    assert batch[0].components["speed"] > batch[4].components["speed"]
    for completion, seed, expected in zip(completions, seeds, batch):
        env.reset(options={"eval_seed": seed})
        _, reward, _, _, info = env.step(completion)
        assert {k: info["reward_components"][k] for k in NON_SPEED} == {k: expected.components[k] for k in NON_SPEED}
        assert info["feedback"].splitlines()[0][:40] == expected.feedback.splitlines()[0][:40]


# --- configuration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("case_max_dim", 2), ("speed_shape", (48, 0, 48)), ("speed_shape", (48, 48)), ("speed_trials", 0),
    ("rtol", 0.5), ("rtol", 1), ("call_time_limit_s", 0), ("time_budget_s", 0.1),
    ("correct_weight", 0.0), ("speed_weight", -1.0), ("speed_max_log2", math.inf),
    ("speed_min_log2", -3.0),  # a slow correct function would fall to an incorrect one's reward
    ("speed_shape", (48, 2.0, 48)), ("speed_shape", "48,48,48"), ("liveness_wall_s", 0.5),
    ("allowed_imports", "math"), ("allowed_imports", {"math", "subprocess"}),
])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        MatmulConfig(**{field: value})
    assert err.value.field == field and field in str(err.value)


def test_bad_options_through_make():
    with pytest.raises(ConfigError) as err:
        gymnasium.make("GptOssMatmul-v0", speed_trails=3)
    assert err.value.field == "speed_trails" and "Did you mean speed_trials?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        gymnasium.make("GptOssMatmul-v0", speed_min_log2=1.0, speed_max_log2=0.5)
    assert err.value.field == "speed_min_log2"


# --- work deferred past the timed call ------------------------------------------------------------------------

DEFERRED = '''
def matmul(A, B):
    cols = list(zip(*B))
    if len(A) <= 40:
        return [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
    rows = list(A)
    C = [[] for row in rows]
    def later():
        try:
            yield 1
        finally:
            for i in range(len(rows)):
                out = C[i]
                for col in cols:
                    out.append(sum(a * b for a, b in zip(rows[i], col)))
    g = later()
    next(g)
    A.append(g)
    return C
'''


def test_work_deferred_to_a_finalizer_is_timed_or_too_late(task, pool):
    """A function that returns empty rows and fills them in from a generator's ``finally`` once its argument
    is freed (or, in a cycle, once a gc runs) must not look fast: the freed arguments are dropped inside the
    timed call, and the harness snapshots the result before any gc."""
    cyclic = DEFERRED.replace("    rows = list(A)\n", "    rows = A\n").replace("range(len(rows))", "range(len(rows) - 1)")
    results = run(task, pool, {"deferred": DEFERRED, "cyclic": cyclic, "zip": MATMUL_CORRECT["zip"]}, [91, 92])
    zip_mean = statistics.mean(r.reward for r in results["zip"])
    assert all(r.details["correct"] and r.reward < zip_mean + 0.5 for r in results["deferred"])
    assert all(r.details["speedup"] < 4 for r in results["deferred"])  # the deferred work was on the clock
    for r in results["cyclic"]:
        assert r.components["correctness"] == -1.0 and "speed trial 0: invalid result, row 0 has 0 entries" in r.feedback


HANGS_IN_GC = '''
def matmul(A, B):
    cols = list(zip(*B))
    C = [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
    if len(A) > 40:
        def later():
            try:
                yield 1
            finally:
                n = 0
                while True:
                    n = n + 1
        g = later()
        next(g)
        box = [g]
        box.append(box)
    return C
'''


def test_work_left_to_a_finalizer_earns_nothing_extra(task, pool):
    """Code that leaves a hang in a finalizer: if a gc runs it inside a request, the caller's CPU clock counts
    it (the call times out or the liveness limit ends the worker: incorrect); if no gc runs it, it never
    runs at all. Either way the function earns at most what its plain products earn (it is zip)."""
    results = run(task, pool, {"hangs": HANGS_IN_GC, "zip": MATMUL_CORRECT["zip"]}, [93])
    (r,), (z,) = results["hangs"], results["zip"]
    assert r.details["correct"] or (r.components["correctness"] == -1.0 and r.components["speed"] == 0.0)
    assert r.components["speed"] <= z.components["speed"] + 0.5


def test_options_and_revisions_across_turns(pool):
    env = GptOssMatmulEnv(pool=pool, max_turns=2, speed_trials=3, speed_shape=[16, 24, 8])
    assert env.task.config.speed_shape == (16, 24, 8)
    obs, _ = env.reset(options={"eval_seed": 94})
    assert "3 trials with 16 x 24 times 24 x 8 matrices" in obs
    _, r1, terminated, _, info1 = env.step(as_completion(MATMUL_INCORRECT["off_by_one"]))
    assert not terminated and info1["reward_components"]["correctness"] == -1.0
    obs, r2, terminated, _, info2 = env.step(as_completion(MATMUL_CORRECT["zip"]))
    assert terminated and "Feedback on your attempt 1" in obs and "max relative error" in obs
    assert info2["reward_components"]["correctness"] == 2.0  # from -1 to +1: a revision pays what it improves
    assert math.isclose(r1 + r2, info2["attempt_reward"])


# --- the sandbox red-team attacks, as matmul completions ----------------------------------------------------

def test_redteam_attacks_as_completions_earn_less_than_honest(task, pool):
    """Every red-team attack, written as ``matmul``, scores below the honest naive reference on the same seed,
    and the caller's process is unaffected."""
    import os
    import signal

    from test_sandbox_redteam import ATTACKS

    def state():
        return (os.getpid(), os.getcwd(), dict(os.environ),
                [signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)])

    before = state()
    sources = {name: src.replace("def f(x):", "def matmul(x, B):").replace("return f\n", "return matmul\n")
               for name, (src, _allowed) in ATTACKS.items()}
    assert all("def matmul(x, B):" in s for s in sources.values())
    results = run(task, pool, {**sources, "honest_naive": MATMUL_CORRECT["naive"]}, [95])
    honest = results.pop("honest_naive")[0]
    assert honest.details["correct"]
    for name, (r,) in results.items():
        assert r.reward < honest.reward and r.components["speed"] <= 0.0, (name, r.components, r.feedback)
    assert state() == before
