"""GptOssMatmul-v0's caller side (MatmulDriver + judge) and worker side (handler), with in-process sessions."""

import math

import pytest

from session_fake import FakeSession, HostileSession, run_local
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask
from ossgym.envs.code.matmul.handler import handle
from ossgym.envs.code.matmul.judge import compare, correctness_cases, naive_matmul, speed_set
from ossgym.envs.code.matmul.matrices import pack_matrix, unpack_matrix


def inputs(request):
    n, k, m = request["shape"]
    return unpack_matrix(request["A"], n, k), (unpack_matrix(request["B"], k, m) if k else [])


def product(request):
    """What an honest worker returns for a request: the packed naive product."""
    return pack_matrix(naive_matmul(*inputs(request)))
from ossgym.envs.code.references import MATMUL_CORRECT, MATMUL_INCORRECT
from ossgym.sandbox import Outcome, SandboxResult

HANDLER = "ossgym.envs.code.matmul.handler:handle"
OK = SandboxResult(Outcome.OK, None)


def source_fn(src):
    ns = {}
    exec(src, ns)  # trusted reference source
    return ns["matmul"]


def task(**kw):
    return MatmulTask(MatmulConfig(**kw))


def test_correct_references_pass_every_case_and_trial_and_naive_measures_one():
    t = task()
    for name, src in MATMUL_CORRECT.items():
        (components, feedback, details), d, _ = run_local(t, source_fn(src), 3)
        assert details["correct"], (name, feedback)
        assert d.case_status == ["ok"] * len(t.cases(3)) and len(d.trial_cpu_s) == t.config.speed_trials
        assert components["correctness"] == 1.0


def test_incorrect_references_are_caught_by_the_callers_own_products():
    t = task()
    for name, src in MATMUL_INCORRECT.items():
        (components, feedback, details), _, _ = run_local(t, source_fn(src), 3)
        assert not details["correct"] and components["correctness"] == -1.0 and components["speed"] == 0.0, name


def test_speed_is_baseline_cpu_over_function_cpu_measured_by_the_caller():
    t = task(speed_trials=3)
    d, base = t.driver(1, paired=False), t.driver(1, baseline=True)
    fn = source_fn(MATMUL_CORRECT["fast_map"])
    d(FakeSession(fn, HANDLER, call_limit_s=0.1, cost_s=0.001))
    base(FakeSession(source_fn(MATMUL_CORRECT["naive"]), HANDLER, call_limit_s=0.1, cost_s=0.004))
    components, feedback, details = t.judge(OK, d, base)
    assert details["speedup"] == pytest.approx(4.0) and components["speed"] == pytest.approx(2.0)
    assert base.cases == [] and base.correct


def test_a_worker_cannot_report_its_own_time():
    """The driver reads only session.last_cpu_s (the caller's measurement); a reply claiming times is data."""
    t = task(speed_trials=2)
    cases = {}

    def respond(request):
        return product(request), 0.004  # correct, at the naive speed

    d = t.driver(2, paired=False)
    d(HostileSession(respond))
    base = t.driver(2, baseline=True)
    base(HostileSession(respond))
    components, _, details = t.judge(OK, d, base)
    assert details["speedup"] == pytest.approx(1.0)
    # forged "fast" replies carrying a timing field are not a matrix: incorrect
    d = t.driver(2, paired=False)
    d(HostileSession(lambda r: ({"fn_s": 1e-9, "value": product(r)}, 1e-4)))
    assert t.judge(OK, d, base)[0]["correctness"] == -1.0


def test_the_worker_never_gets_an_expected_output_or_a_seed():
    t = task(speed_trials=2)
    seen = []
    d = t.driver(4, paired=False)
    d(HostileSession(lambda r: (seen.append(r) or product(r), 1e-4)))
    assert all(set(r) == {"A", "B", "shape"} for r in seen)
    assert len(seen) == len(t.cases(4)) + 2


def test_slow_call_and_budget_are_caller_measured():
    t = task(call_time_limit_s=0.05, time_budget_s=0.5)
    d = t.driver(0, paired=False)
    d(HostileSession(lambda r: (product(r), 0.2)))  # each request costs 0.2 s of CPU
    assert not d.correct and "timed out" in d.problem
    d = t.driver(0, paired=False)
    d(HostileSession(lambda r: (product(r), 0.06)))  # within the call limit, over the total
    assert not d.correct and "more than its 0.5 s" in d.problem


def test_failed_session_is_a_crash_and_incorrect():
    t = task()
    d = t.driver(0, paired=False)
    d(HostileSession(lambda r: (None, 1e-4), fail="crash"))
    components, feedback, _ = t.judge(OK, d, None)
    assert components["crash"] == t.weights.crash and components["correctness"] == -1.0


class SimpleCtx:
    """The handler's view of ctx: ``call`` (the real one adds the per-call CPU limit)."""

    def __init__(self, fn):
        self.fn = fn

    def call(self, *args):
        return self.fn(*args)


def test_handler_checks_exact_types_and_reports_errors_as_records():
    A, B = [[1.0, 2.0]], [[3.0], [4.0]]
    req = {"A": pack_matrix(A), "B": pack_matrix(B), "shape": [1, 2, 1]}
    for fn, expect in [(lambda a, b: [[11.0]], [[11.0]]), (lambda a, b: [[11]], [[11.0]])]:
        assert unpack_matrix(handle(fn, req, SimpleCtx(fn)), 1, 1) == expect
    for bad in (lambda a, b: [(11.0,)], lambda a, b: [[True]], lambda a, b: ((11.0,),), lambda a, b: [[10**400]]):
        assert handle(bad, req, SimpleCtx(bad))["fail"] == "invalid_output"
    seen = []
    handle(lambda a, b: seen.append((a, b)) or [[0.0]], req, SimpleCtx(lambda a, b: seen.append((a, b)) or [[0.0]]))
    assert seen == [(A, B)] and all(type(v) is float for r in seen[0][0] for v in r)
    for bad in ({**req, "A": "x"}, {**req, "shape": [1, 3, 1]}, {**req, "A": A}, {"A": "", "B": ""}):
        with pytest.raises(ValueError):
            handle(None, bad, SimpleCtx(None))
    k0 = {"A": pack_matrix([[], []]), "B": pack_matrix([]), "shape": [2, 0, 0]}
    assert unpack_matrix(handle(lambda a, b: [[], []], k0, SimpleCtx(lambda a, b: [[], []])), 2, 0) == [[], []]


def test_speed_set_is_cached_per_seed_and_correct():
    a = speed_set(5, 2, (4, 3, 2))
    assert a is speed_set(5, 2, (4, 3, 2))
    for A, B, C in a:
        assert compare(naive_matmul(A, B), C, A, B)[0]
    assert all(len(case) == 2 for case in correctness_cases(1))
    assert math.isfinite(sum(v for _, _, C in a for r in C for v in r))
