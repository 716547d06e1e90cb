"""Reference completions: they pass the sandbox policy, extract cleanly, and rank as the fidelity bar needs.

The sources are exec'd here in-process ONLY to sanity-check them in tests (library code never does this;
the envs run them through the sandbox). Games are played by the real caller-side driver and worker-side
handler through an in-process session (tests/session_fake.py).
"""

import ast
import random

import numpy as np
import pytest
from RestrictedPython import compile_restricted_exec

from session_fake import FakeSession
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask
from ossgym.envs.code.matmul.judge import correctness_cases, naive_matmul
from ossgym.envs.code.strategy2048.judge import GamesDriver
from ossgym.envs.code.base import make_sandbox_task
from ossgym.envs.code.extract import extract_code
from ossgym.envs.code.references import (
    MATMUL_CACHE_CHEATS,
    MATMUL_CORRECT,
    MATMUL_INCORRECT,
    MATMUL_POLICY_VIOLATIONS,
    REFERENCES_2048,
    as_completion,
)
from ossgym.envs.game2048 import engine as ENGINE

ALLOWED = {"math", "random", "itertools", "functools", "collections", "heapq", "operator", "bisect"}


def policy_problems(source: str, entrypoint: str) -> list[str]:
    """Test-side approximation of the sandbox policy (the real check_policy is also used when present)."""
    problems = []
    result = compile_restricted_exec(source)
    problems.extend(result.errors)
    tree = ast.parse(source)
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if [d.name for d in defs] != [entrypoint]:
        problems.append(f"top-level functions {[d.name for d in defs]}")
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.Import, ast.ImportFrom)):
            problems.append(f"top-level {type(node).__name__}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            problems.extend(a.name for a in node.names if a.name.split(".")[0] not in ALLOWED)
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] not in ALLOWED:
                problems.append(node.module)
        elif isinstance(node, ast.Name) and node.id.startswith("_"):
            problems.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            problems.append(node.attr)
        elif isinstance(node, ast.Name) and node.id in {"eval", "exec", "compile", "open", "getattr", "globals", "vars"}:
            problems.append(node.id)
    try:  # the real policy, once the sandbox is on this branch
        from ossgym.sandbox import SandboxTask, check_policy
    except ImportError:
        return problems
    problems.extend(v.message for v in check_policy(source, make_sandbox_task(entrypoint=entrypoint, handler="x:y")))
    return problems


@pytest.mark.parametrize("name", list(REFERENCES_2048))
def test_2048_references_pass_policy_and_extract(name):
    src = REFERENCES_2048[name]
    assert policy_problems(src, "strategy") == []
    for style in ("raw", "decoded", "plain"):
        assert extract_code(as_completion(src, style), "strategy").source == src


@pytest.mark.parametrize("name", list(MATMUL_CORRECT) + list(MATMUL_INCORRECT) + list(MATMUL_CACHE_CHEATS))
def test_matmul_references_pass_policy_and_extract(name):
    src = {**MATMUL_CORRECT, **MATMUL_INCORRECT, **MATMUL_CACHE_CHEATS}[name]
    assert policy_problems(src, "matmul") == []
    assert extract_code(as_completion(src), "matmul").source == src


@pytest.mark.parametrize("name", list(MATMUL_POLICY_VIOLATIONS))
def test_policy_violations_are_caught(name):
    assert policy_problems(MATMUL_POLICY_VIOLATIONS[name], "matmul") != []


def test_as_completion_rejects_unknown_style():
    with pytest.raises(ValueError):
        as_completion("x", "html")


def load(source: str, entrypoint: str):
    namespace: dict = {}
    exec(compile(source, f"<{entrypoint}>", "exec"), namespace)  # test-only sanity check, see module doc
    return namespace[entrypoint]


def play(fn, seeds, max_moves):
    """Play the games with the caller-side driver; the worker side is the real handler, in-process."""
    driver = GamesDriver(list(seeds), max_moves=max_moves, time_budget_s=1e9)
    driver(FakeSession(fn, "ossgym.envs.code.strategy2048.handler:handle", call_limit_s=1e9))
    return [g.score for g in driver.games], [g.max_tile for g in driver.games], driver.games


def test_2048_references_are_ordered_on_a_handful_of_seeds():
    random.seed(1234)  # random and greedy use the module generator
    seeds = list(range(11, 31))  # 20 seeds: every gap is over 3 standard errors at this size
    means = {}
    for name, src in REFERENCES_2048.items():
        scores, tiles, games = play(load(src, "strategy"), seeds, max_moves=600)
        means[name] = float(np.mean(scores))
        if name == "invalid_output":
            assert all(g.end == "invalid_output" and g.moves == 0 for g in games)
        if name == "constant_w":
            assert all(g.end == "stalled" for g in games)
        if name == "random":
            assert max(tiles) < 2048
    ordered = list(REFERENCES_2048)
    assert [means[n] for n in ordered] == sorted(means.values()), means
    assert len(set(means.values())) == len(means), means


def _matmul_driver(fn, seed=7):
    task = MatmulTask(MatmulConfig(speed_trials=2, speed_shape=(24, 16, 12)))
    driver = task.driver(seed, paired=False)
    driver(FakeSession(fn, task.handler, call_limit_s=1e9))
    return task, driver


def test_matmul_references_verified_by_caller():
    for name, src in {**MATMUL_CORRECT, **MATMUL_CACHE_CHEATS}.items():
        assert _matmul_driver(load(src, "matmul"))[1].correct, name
    for name, src in MATMUL_INCORRECT.items():
        assert not _matmul_driver(load(src, "matmul"))[1].correct, name


def test_cache_cheat_never_hits_in_speed_trials():
    fn = load(MATMUL_CACHE_CHEATS["content_cache"], "matmul")
    task, driver = _matmul_driver(fn)
    cache = fn.__defaults__[0]
    assert len(cache) == len(driver.cases) + 2  # every call missed: nothing was ever served from the cache


def restricted_load(source: str, entrypoint: str):
    """Compile and run with RestrictedPython's stock guards (an approximation of the sandbox's restricted mode)."""
    from RestrictedPython import safe_builtins
    from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
    from RestrictedPython.Guards import full_write_guard, guarded_iter_unpack_sequence, guarded_unpack_sequence, safer_getattr

    def guarded_import(name, *args, **kwargs):
        if name not in ALLOWED:
            raise ImportError(name)
        return __import__(name, *args, **kwargs)

    extra = (sum, map, min, max, list, tuple, dict, set, enumerate, zip, any, all, sorted, reversed, range, len, repr)
    builtins = dict(safe_builtins, __import__=guarded_import, **{f.__name__: f for f in extra})
    glb = {
        "__builtins__": builtins,
        "__name__": "untrusted",
        "_getattr_": safer_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_write_": full_write_guard,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_apply_": lambda f, *a, **kw: f(*a, **kw),
    }
    result = compile_restricted_exec(source)
    assert not result.errors, result.errors
    exec(result.code, glb)
    return glb[entrypoint]


@pytest.mark.parametrize("name", list(REFERENCES_2048))
def test_2048_references_run_restricted_like_plain(name):
    plain, restricted = load(REFERENCES_2048[name], "strategy"), restricted_load(REFERENCES_2048[name], "strategy")
    game = ENGINE.Game2048(size=4, rng=np.random.default_rng(5))
    for _ in range(40):
        board = tuple(tuple(r) for r in game.tiles())
        random.seed(3)
        a = plain(board)
        random.seed(3)
        assert restricted(board) == a
        if a not in ENGINE.KEY_TO_ACTION or game.is_over():
            break
        game.step(ENGINE.KEY_TO_ACTION[a])


@pytest.mark.parametrize("name", list(MATMUL_CORRECT) + list(MATMUL_CACHE_CHEATS))
def test_matmul_references_run_restricted_like_plain(name):
    src = {**MATMUL_CORRECT, **MATMUL_CACHE_CHEATS}[name]
    plain, restricted = load(src, "matmul"), restricted_load(src, "matmul")
    for A, B in correctness_cases(4):
        assert restricted(A, B) == plain(A, B)


def test_bundled_baseline_is_the_naive_reference():
    naive = load(MATMUL_CORRECT["naive"], "matmul")
    for A, B in correctness_cases(9):
        assert naive(A, B) == naive_matmul(A, B)  # same float operations in the same order
