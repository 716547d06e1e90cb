"""The trusted matmul harness, driven by a fake sandbox ctx, and the trusted helpers its caller uses."""

import copy
import math

import numpy as np
import pytest

from fake_sandbox_ctx import FakeCtx, assert_plain
from ossgym.envs.code.harness_matmul import (
    check_matrix,
    check_speed_samples,
    compare,
    correctness_cases,
    harness,
    make_payload,
    naive_matmul,
    speed_inputs,
    verify_result,
)

SHAPE = (6, 5, 4)


def zip_matmul(A, B):
    cols = list(zip(*B))
    return [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]


def run(fn, seed=1, trials=4, shape=SHAPE, ctx_kwargs=None):
    cases = correctness_cases(seed)
    payload = make_payload(cases, speed_seed=seed + 100, trials=trials, shape=shape)
    ctx = FakeCtx(fn, **(ctx_kwargs or {}))
    out = harness(fn, payload, ctx)
    assert_plain(out)
    return out, cases, payload, ctx


def caller_verdict(out, cases, payload):
    """What the trusted caller does with the plain result."""
    correct, fast_ok, _why = verify_result(out, cases, payload)
    return correct and fast_ok


def test_correct_function_passes_everything():
    out, cases, payload, ctx = run(zip_matmul)
    assert all(c["status"] == "ok" for c in out["cases"])
    assert caller_verdict(out, cases, payload)
    trials = out["speed"]["trials"]
    assert [t["fn_first"] for t in trials] == [True, False, True, False]
    assert all(t["max_rel_err"] < 1e-12 for t in trials)
    assert len(ctx.checkpoints) == 1 and ctx.checkpoints[0]["speed"] is None


def test_naive_reference_is_correct_against_numpy():
    for A, B in correctness_cases(5):
        ref = naive_matmul(A, B)
        if B:
            assert np.allclose(np.array(ref), np.array(A) @ np.array(B), rtol=1e-12, atol=1e-12)
        else:
            assert ref == [[] for _ in A]


def test_correctness_cases_cover_required_shapes():
    shapes = [(len(A), len(B), len(B[0]) if B else 0) for A, B in correctness_cases(3)]
    assert any(n == 1 for n, _, _ in shapes) and any(m == 1 for _, _, m in shapes)
    assert any(k == 0 and B == [] for (_, k, _), (_, B) in zip(shapes, correctness_cases(3)))
    assert any(n != m for n, _, m in shapes)
    assert correctness_cases(3) == correctness_cases(3) and correctness_cases(3) != correctness_cases(4)


def test_every_trial_gets_fresh_objects_and_values():
    seen_ids, seen_first, held = set(), [], []

    def spy(A, B):
        held.append((A, B))  # keep them alive so ids cannot be recycled
        seen_ids.update({id(A), id(B)})
        seen_first.append(A[0][0] if A and A[0] else None)
        return zip_matmul(A, B)

    out, cases, payload, ctx = run(spy, trials=4)
    assert caller_verdict(out, cases, payload)
    assert len(seen_ids) == 2 * ctx.calls  # no object is handed out twice
    speed_firsts = seen_first[len(cases) :]
    assert len(set(speed_firsts)) == 4


def test_content_cache_never_hits():
    cache, hits = {}, []

    def caching(A, B):
        key = (tuple(map(tuple, A)), tuple(map(tuple, B)))
        if key in cache:
            hits.append(1)
            return cache[key]
        cache[key] = zip_matmul(A, B)
        return cache[key]

    out, cases, payload, _ = run(caching)
    assert hits == [] and caller_verdict(out, cases, payload)


def test_mutating_inputs_does_not_change_the_callers_cases():
    def vandal(A, B):
        C = zip_matmul(A, B)
        for row in A:
            row[:] = [0.0] * len(row)
        B.clear()
        return C

    cases = correctness_cases(2)
    before = [([r[:] for r in A], [r[:] for r in B]) for A, B in cases]
    payload = make_payload(cases, speed_seed=9, trials=2, shape=SHAPE)
    out = harness(vandal, payload, FakeCtx(vandal))
    assert cases == before and payload["cases"] == [[A, B] for A, B in before]
    assert caller_verdict(out, cases, payload)


def test_wrong_values_fail_the_caller_check_and_stop_speed():
    out, cases, payload, _ = run(lambda A, B: [[0.0] * (len(B[0]) if B else 0) for _ in A])
    assert all(c["status"] == "ok" for c in out["cases"])  # types fine: the caller judges values
    assert not caller_verdict(out, cases, payload)
    assert out["speed"]["stopped"] == "wrong" and len(out["speed"]["trials"]) == 1


def test_correct_on_small_garbage_on_big_is_caught_in_speed():
    def sneaky(A, B):
        if len(A) != 40:
            return zip_matmul(A, B)
        return [[1.0] * len(B[0]) for _ in A]

    out, cases, payload, _ = run(sneaky, shape=(40, 5, 4))
    assert out["speed"]["stopped"] == "wrong"
    assert not caller_verdict(out, cases, payload)


def test_rank_one_fake_with_true_marginals_is_caught():
    def marginals(A, B):
        # correct row and column sums, wrong entries: cheap to compute, but not the product
        C = zip_matmul(A, B)
        m = len(B[0]) if B else 0
        rows = [sum(r) for r in C]
        cols = [sum(C[i][j] for i in range(len(C))) for j in range(m)]
        total = sum(rows) or 1.0
        return [[rows[i] * cols[j] / total for j in range(m)] for i in range(len(C))]

    out, cases, payload, _ = run(marginals)
    assert not caller_verdict(out, cases, payload)


def test_caller_sample_check_catches_forged_samples():
    out, cases, payload, _ = run(zip_matmul)
    sp = payload["speed"]
    good = out["speed"]["trials"][1]["samples"]
    assert check_speed_samples(sp["seed"], tuple(sp["shape"]), 1, sp["positions"], good)
    assert not check_speed_samples(sp["seed"], tuple(sp["shape"]), 0, sp["positions"], good)  # wrong trial
    forged = [v + 1e-3 for v in good]
    assert not check_speed_samples(sp["seed"], tuple(sp["shape"]), 1, sp["positions"], forged)
    assert not check_speed_samples(sp["seed"], tuple(sp["shape"]), 1, sp["positions"], good[:-1])
    assert not check_speed_samples(sp["seed"], tuple(sp["shape"]), 1, sp["positions"], [True] * len(good))


class F(float):
    pass


class L(list):
    pass


@pytest.mark.parametrize(
    "make, word",
    [
        (lambda C: tuple(C), "a tuple"),
        (lambda C: [tuple(r) for r in C], "row 0 is a tuple"),
        (lambda C: L(C), "a list subclass"),
        (lambda C: [[F(v) for v in r] for r in C], "a float subclass"),
        (lambda C: [[np.float64(v) for v in r] for r in C], "a float subclass"),
        (lambda C: [[True for v in r] for r in C], "a bool"),
        (lambda C: [[str(v) for v in r] for r in C], "a str"),
        (lambda C: C[:-1], "rows, expected"),
        (lambda C: [r + [0.0] for r in C], "entries, expected"),
        (lambda C: np.array(C), "another type"),
    ],
)
def test_inexact_types_and_shapes_are_invalid_output(make, word):
    def bad(A, B):
        C = zip_matmul(A, B)
        return make(C) if len(A) > 1 and B else C

    out, _cases, _payload, _ = run(bad)
    statuses = [c["status"] for c in out["cases"]]
    assert "invalid_output" in statuses
    assert any(word in c["detail"] for c in out["cases"] if c["status"] == "invalid_output")
    assert out["speed"]["stopped"] == "correctness" and out["speed"]["trials"] == []


def test_errors_and_timeouts_are_recorded_per_case():
    holder = {"n": 0}

    def flaky(A, B):
        holder["n"] += 1
        if holder["n"] == 2:
            raise IndexError("list index out of range")
        if holder["n"] == 3:
            holder["ctx"].spend(10.0)
        return zip_matmul(A, B)

    cases = correctness_cases(1)
    ctx = FakeCtx(flaky, total_s=100.0)
    holder["ctx"] = ctx
    out = harness(flaky, make_payload(cases, speed_seed=1, trials=2, shape=SHAPE), ctx)
    assert out["cases"][1]["status"] == "error" and out["cases"][1]["error_type"] == "IndexError"
    assert out["cases"][2]["status"] == "timeout"
    assert out["speed"]["stopped"] == "correctness"


def test_error_in_a_speed_trial_stops_speed_without_credit():
    def fails_on_big(A, B):
        if len(A) == 30:
            raise MemoryError("too big")
        return zip_matmul(A, B)

    out, cases, payload, _ = run(fails_on_big, shape=(30, 5, 4))
    assert out["speed"]["stopped"] == "error" and out["speed"]["trials"] == []
    assert not caller_verdict(out, cases, payload)


def test_budget_stops_cases_and_trials():
    out, _c, _p, _ = run(zip_matmul, ctx_kwargs={"total_s": 0.35, "call_cost_s": 0.05})
    statuses = [c["status"] for c in out["cases"]]
    assert statuses[:5] == ["ok"] * 5 and set(statuses[5:]) == {"budget"}
    assert out["speed"]["stopped"] == "correctness"


def test_budget_during_speed_keeps_measured_trials():
    out, cases, payload, _ = run(zip_matmul, trials=200, ctx_kwargs={"total_s": 1.0, "call_cost_s": 0.01})
    assert out["speed"]["stopped"] == "budget"
    assert 50 < len(out["speed"]["trials"]) < 200
    assert all(t["fn_s"] == pytest.approx(0.01) for t in out["speed"]["trials"])


def test_compare_trusted_left_nan_inf_and_huge_ints():
    A, B = [[1.0, 2.0]], [[3.0], [4.0]]
    ref = naive_matmul(A, B)
    assert compare(ref, [[11.0]], A, B) == (True, 0.0)
    assert compare(ref, [[11]], A, B)[0]
    for bad in (math.nan, math.inf, -math.inf, 10**400, 11.001):
        ok, err = compare(ref, [[bad]], A, B)
        assert not ok and err > 0


def test_bad_payload_rejected():
    good = make_payload(correctness_cases(1), speed_seed=1, shape=SHAPE)
    for mutate in (
        lambda p: p.update(cases="x"),
        lambda p: p["speed"].update(trials=-1),
        lambda p: p["speed"].update(shape=[1, 2]),
        lambda p: p["speed"].update(positions=[[99, 0]]),
        lambda p: p.update(rtol=1),
    ):
        p = make_payload(correctness_cases(1), speed_seed=1, shape=SHAPE)
        mutate(p)
        with pytest.raises(ValueError):
            harness(zip_matmul, p, FakeCtx(zip_matmul))
    assert harness(zip_matmul, good, FakeCtx(zip_matmul))["speed"]["stopped"] is None


def test_speed_inputs_deterministic_and_distinct():
    a = speed_inputs(3, 0, (4, 3, 2))
    assert a == speed_inputs(3, 0, (4, 3, 2)) and a != speed_inputs(3, 1, (4, 3, 2))
    assert len(a[0]) == 4 and len(a[0][0]) == 3 and len(a[1]) == 3 and len(a[1][0]) == 2


def test_verify_result_reasons():
    cases = correctness_cases(1)
    payload = make_payload(cases, speed_seed=3, trials=2, shape=SHAPE)
    good = harness(zip_matmul, payload, FakeCtx(zip_matmul))
    assert verify_result(good, cases, payload) == (True, True, "correct, speed trials verified")
    assert verify_result(None, cases, payload)[:2] == (False, False)
    assert verify_result({"cases": good["cases"][:-1]}, cases, payload)[:2] == (False, False)
    forged = copy.deepcopy(good)
    forged["cases"][0]["value"][0][0] += 1.0
    ok, _, why = verify_result(forged, cases, payload)
    assert not ok and "case 0" in why and "wrong result" in why
    slow = copy.deepcopy(good)
    slow["speed"]["trials"][1]["samples"][0] += 1.0
    assert verify_result(slow, cases, payload)[:2] == (True, False)
    partial = copy.deepcopy(good)
    partial["speed"]["trials"].pop()
    assert verify_result(partial, cases, payload)[:2] == (True, False)
