"""The sandbox's public API: policy, plain-data codec, typed outcomes, checkpoints, batches, recovery."""

import math
import os
import signal
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossgym.errors import ConfigError, SandboxError
from ossgym.sandbox import (Outcome, PlainDataError, SandboxPool, SandboxTask, Violation, check_policy,
                            decode_plain, default_pool, encode_plain, validate_plain)

ONCE = "ossgym.sandbox.testing:call_once"
EACH = "ossgym.sandbox.testing:call_each"


def task(harness=ONCE, **kw):
    return SandboxTask(entrypoint="f", harness=harness, **kw)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2) as p:
        yield p


# --- static policy ---------------------------------------------------------------------------------------
def test_policy_accepts_ordinary_code():
    src = (
        '"""doc"""\nimport math\nfrom collections import deque\n'
        "def f(board):\n"
        "    def helper(row):\n        return sum(row)\n"
        "    best = max(range(4), key=lambda i: helper(board[i]))\n"
        "    for _ in range(2):\n        best += 1\n"
        "    try:\n        x = 1 / best\n    except (ZeroDivisionError, ValueError):\n        x = 0\n"
        "    return [best, math.floor(x), f'{best:03d}']\n"
    )
    assert check_policy(src, task()) == []


def test_policy_reports_every_violation_with_location():
    src = (
        "import os\n"                                      # 1: import not allowed
        "x = 1\n"                                          # 2: top-level statement
        "def f(b):\n"
        "    a = b.__class__\n"                            # 4: dunder attribute
        "    g = getattr(b, 'x' + 'y')\n"                  # 5: non-literal getattr
        "    try:\n        pass\n    except:\n        pass\n"  # 8: bare except
        "    eval('1')\n"                                  # 10: eval
        "    while True:\n        try:\n            pass\n        finally:\n            break\n"  # 15
        "def g():\n    pass\n"                            # 16: second top-level function
    )
    found = {(v.line, v.message.split(":")[0].split(" ")[0]) for v in check_policy(src, task())}
    lines = {line for line, _ in found}
    assert {1, 2, 4, 5, 8, 10, 15, 16} <= lines, found
    for v in check_policy(src, task()):
        assert isinstance(v, Violation) and type(v.line) is int and type(v.col) is int and v.message


def test_policy_requires_the_entrypoint():
    assert any("define a top-level function named 'f'" in v.message for v in check_policy("def g(): pass", task()))
    assert check_policy("def f(:", task())[0].message.startswith("syntax error")


@pytest.mark.parametrize("snippet", [
    "except BaseException:", "sys", "__import__('os')", "open('x')", "globals()", "vars()", "breakpoint()",
    "compile('1','x','exec')", "exec('1')", "x.gi_frame", "x.f_back", "x._private", "gc", "inspect",
    "signal", "threading", "ctypes", "getattr(x, '__class__')", "g = getattr", "list(map(getattr, [x], ['real']))",
    "match x:\n        case [a]:\n            pass",
])
def test_policy_forbidden_constructs(snippet):
    body = f"    try:\n        pass\n    {snippet}\n        pass\n" if snippet.startswith("except") else f"    {snippet}\n"
    violations = check_policy(f"def f(x):\n{body}", task())
    assert violations and not violations[0].message.startswith("syntax error"), (snippet, violations)


def test_task_validation():
    with pytest.raises(ConfigError):
        task(call_timeout_s=0)
    with pytest.raises(ConfigError):
        task(allowed_imports=frozenset({"os"}))
    with pytest.raises(ConfigError):
        SandboxTask(entrypoint="f", harness="no-colon")
    with pytest.raises(ConfigError):
        task(memory_mb=1.5)


# --- plain data --------------------------------------------------------------------------------------------
plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=3) | st.integers(), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(plain)
def test_plain_round_trip_keeps_exact_types(value):
    back = decode_plain(encode_plain(value, 1 << 20), 1 << 20)
    assert back == value
    assert repr(back) == repr(value)  # tuples stay tuples, bools stay bools


def test_plain_tag_collisions_round_trip():
    for value in ({"__tuple__": [1]}, {"__dict__": []}, {1: "a", (1, 2): None}, [(), {}]):
        assert decode_plain(encode_plain(value, 1 << 10), 1 << 10) == value


class S(str):
    pass


class AlwaysEqual:
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("bad", [S("W"), np.int64(3), np.float64(1.0), AlwaysEqual(), [1, S("x")], {"k": {1, 2}},
                                 b"bytes", {S("k"): 1}])
def test_plain_rejects_non_plain(bad):
    with pytest.raises(PlainDataError):
        validate_plain(bad)


def test_plain_caps_size_and_depth():
    with pytest.raises(PlainDataError):
        encode_plain("x" * 2000, 1000)
    nested = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(PlainDataError):
        validate_plain(nested)
    with pytest.raises(PlainDataError):
        decode_plain(b"[" * 100_000 + b"]" * 100_000, 1 << 20)


# --- evaluation ----------------------------------------------------------------------------------------------
def test_ok_returns_plain_value(pool):
    r = pool.evaluate("def f(x):\n    return [x + 1, (True, 2.5), {'k': None}]\n", task(), 41)
    assert r.outcome is Outcome.OK and r.ok
    assert r.value == [42, (True, 2.5), {"k": None}]
    assert type(r.value[1][0]) is bool and type(r.value[1]) is tuple
    assert r.wall_time_s > 0 and r.outcome.value == "ok"


def test_runtime_error_has_trimmed_traceback(pool):
    src = "def f(x):\n    def inner(y):\n        return y / 0\n    return inner(x)\n"
    r = pool.evaluate(src, task(), 1)
    assert r.outcome is Outcome.RUNTIME_ERROR and r.error_type == "ZeroDivisionError"
    assert "line 3, in inner" in r.traceback and "return y / 0" in r.traceback
    assert "ossgym" not in r.traceback and ".py" not in r.traceback
    assert r.value is None


def test_syntax_and_policy_outcomes(pool):
    r = pool.evaluate("def f(x):\n    return (\n", task(), 1)
    assert r.outcome is Outcome.SYNTAX_ERROR and r.violations and r.violations[0].line >= 1
    r = pool.evaluate("import os\ndef f(x):\n    return os.getcwd()\n", task(), 1)
    assert r.outcome is Outcome.POLICY_VIOLATION and r.violations[0] == Violation(1, 0, r.violations[0].message)


def test_call_timeout_keeps_checkpoint(pool):
    src = "def f(x):\n    while x == 3:\n        pass\n    return x * 10\n"
    r = pool.evaluate(src, task(EACH), [1, 2, 3, 4])
    assert r.outcome is Outcome.TIMEOUT and r.timeout_kind == "call"
    assert r.value == [10, 20]


def test_total_timeout_kills_uninterruptible_code_and_keeps_checkpoint(pool):
    src = "def f(x):\n    if x == 3:\n        return sum(range(10 ** 13))\n    return x\n"
    t0 = time.monotonic()
    r = pool.evaluate(src, task(EACH, call_timeout_s=5.0, total_timeout_s=0.5), [1, 2, 3])
    assert r.outcome is Outcome.TIMEOUT and r.timeout_kind == "total"
    assert r.value == [1, 2]
    assert r.metadata["killed_at_deadline"] is True
    assert time.monotonic() - t0 < 30  # generous: only says that the caller did not hang


def test_total_timeout_inside_worker(pool):
    src = "def f(x):\n    while True:\n        pass\n"
    r = pool.evaluate(src, task(EACH, call_timeout_s=10.0, total_timeout_s=0.3), [1])
    assert r.outcome is Outcome.TIMEOUT and r.timeout_kind == "total"
    assert r.metadata["killed_at_deadline"] is False


def test_harness_may_handle_errors_itself(pool):
    t = task("ossgym.sandbox.testing:call_reporting")
    assert pool.evaluate("def f(x):\n    raise ValueError('no')\n", t, 1).value == {"error": "ValueError", "message": "no"}
    assert pool.evaluate("def f(x):\n    while True:\n        pass\n", t, 1).value == {"error": "timeout"}


def test_memory_exceeded(pool):
    r = pool.evaluate("def f(x):\n    return len([0] * (1 << 31))\n", task(memory_mb=64), 1)
    assert r.outcome is Outcome.MEMORY_EXCEEDED


def test_invalid_output_exact_types(pool):
    r = pool.evaluate("def f(x):\n    class S(str):\n        pass\n    return S('W')\n", task(), 1)
    assert r.outcome is Outcome.INVALID_OUTPUT and "not plain data" in r.message
    r = pool.evaluate("def f(x):\n    return {1, 2}\n", task(), 1)
    assert r.outcome is Outcome.INVALID_OUTPUT
    r = pool.evaluate("def f(x):\n    return 'x' * 5000\n", task(max_output_bytes=1024), 1)
    assert r.outcome is Outcome.INVALID_OUTPUT


def test_stdout_is_captured_and_capped(pool):
    r = pool.evaluate("def f(x):\n    print('hello', x)\n    print('y' * 5000)\n    return 1\n",
                      task(max_output_bytes=1024), 7)
    assert r.ok and r.stdout.startswith("hello 7\n") and "characters dropped" in r.stdout
    assert len(r.stdout) < 1200


def test_random_is_seeded_per_task(pool):
    src = "import random\ndef f(x):\n    return [random.random() for _ in range(3)]\n"
    a, b = pool.evaluate(src, task(seed=1), 0), pool.evaluate(src, task(seed=1), 0)
    c = pool.evaluate(src, task(seed=2), 0)
    assert a.ok and a.value == b.value != c.value


def test_each_evaluation_has_fresh_state(pool):
    src = ("import math\ndef f(x):\n    global seen\n    try:\n        seen.append(x)\n"
           "    except NameError:\n        seen = [x]\n    return seen\n")
    assert pool.evaluate(src, task(), 1).value == [1]
    assert pool.evaluate(src, task(), 2).value == [2]


def test_batch_keeps_order(pool):
    src = "def f(x):\n    return x * x\n"
    items = [(src, i) for i in range(24)] + [("def f(x):\n    return 1/0\n", 0)]
    results = pool.evaluate_batch(items, task())
    assert [r.value for r in results[:-1]] == [i * i for i in range(24)]
    assert results[-1].outcome is Outcome.RUNTIME_ERROR


def test_batch_items_may_carry_their_own_task(pool):
    src = "import random\ndef f(x):\n    return random.random()\n"
    items = [(src, None, task(seed=s)) for s in (1, 2, 1)]
    a, b, c = (r.value for r in pool.evaluate_batch(items))
    assert a == c and a != b  # the task's seed seeds the code's random, per item
    with pytest.raises(ConfigError, match="task"):
        pool.evaluate_batch([(src, None)])


def test_last_call_time_is_measured_by_the_trusted_side(pool):
    src = "def f(x):\n    t = 0\n    for i in range(x):\n        t += i\n    return t\n"
    r = pool.evaluate(src, task("ossgym.sandbox.testing:call_timed"), 200000)
    assert r.ok, r.message
    value, elapsed = r.value
    assert value == sum(range(200000)) and 0.0 < elapsed < 5.0


def test_pool_recovers_after_template_dies():
    with SandboxPool(1) as p:
        assert p.evaluate("def f(x):\n    return x\n", task(), 1).value == 1
        os.kill(p._template.proc.pid, signal.SIGKILL)
        p._template.proc.wait()
        r = p.evaluate("def f(x):\n    return x\n", task(), 2)
        assert r.value == 2 and p.restarts == 1


def test_worker_crash_is_typed_and_pool_continues(pool):
    r = pool.evaluate("def f(x):\n    return x\n", task("redteam_harnesses:escaped_crash"), 1)
    assert r.outcome is Outcome.CRASHED and "SIGSEGV" in r.message
    assert pool.evaluate("def f(x):\n    return x\n", task(), 3).value == 3


def test_bad_harness_or_payload_is_the_callers_error(pool):
    with pytest.raises(SandboxError):
        pool.evaluate("def f(x):\n    return x\n", task("no_such_module_xyz:h"), 1)
    with pytest.raises(SandboxError):
        pool.evaluate("def f(x):\n    return x\n", task("ossgym.sandbox.testing:no_such_harness"), 1)
    with pytest.raises(ConfigError):
        pool.evaluate("def f(x):\n    return x\n", task(), {1, 2})


def test_default_pool_is_shared():
    assert default_pool() is default_pool()
    assert default_pool().evaluate("import math\ndef f(x):\n    return math.floor(x)\n", task(), 2.5).value == 2


def test_floats_survive_exactly(pool):
    values = [0.1, -0.0, 1e308, math.inf, 5e-324]
    r = pool.evaluate("def f(x):\n    return x\n", task(), values)
    assert r.ok and r.value == values and all(type(v) is float for v in r.value)


def test_call_plain_rejects_objects(pool):
    t = task("ossgym.sandbox.testing:call_plain_once")
    assert pool.evaluate("def f(x):\n    return [x, 'W']\n", t, 1).value == [1, "W"]
    r = pool.evaluate("def f(x):\n    class S(str):\n        pass\n    return S('W')\n", t, 1)
    assert r.outcome is Outcome.INVALID_OUTPUT and "returned" in r.message


def test_pathological_source_is_typed(pool):
    deep = "def f(x):\n    return " + "-" * 50_000 + "x\n"
    assert pool.evaluate(deep, task(), 1).outcome in (Outcome.SYNTAX_ERROR, Outcome.POLICY_VIOLATION, Outcome.OK)
    assert pool.evaluate("def f(x):\n    return 1\x00\n", task(), 1).outcome is Outcome.SYNTAX_ERROR
    assert pool.evaluate("x" * 200_000, task(), 1).outcome is Outcome.POLICY_VIOLATION


def test_hash_order_is_the_same_across_pools():
    src = "def f(x):\n    return list({'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta'})\n"
    with SandboxPool(1) as a, SandboxPool(1) as b:
        assert a.evaluate(src, task(), 0).value == b.evaluate(src, task(), 0).value


def test_template_outlives_the_thread_that_started_it():
    import threading

    with SandboxPool(1) as p:
        t = threading.Thread(target=lambda: p.evaluate("def f(x):\n    return x\n", task(), 1))
        t.start()
        t.join()
        time.sleep(0.2)  # a parent-death signal tied to that thread would have fired by now
        assert p.evaluate("def f(x):\n    return x\n", task(), 2).value == 2
        assert p.restarts == 0


def test_no_orphans_when_the_caller_is_killed():
    import subprocess
    import sys

    code = (
        "import sys, threading\n"
        "from ossgym.sandbox import SandboxPool, SandboxTask\n"
        "p = SandboxPool(1)\n"
        "t = SandboxTask(entrypoint='f', harness='ossgym.sandbox.testing:call_once', call_timeout_s=60, total_timeout_s=60)\n"
        "p.evaluate('def f(x):\\n    return x\\n', t, 1)\n"
        "print(p._template.proc.pid, flush=True)\n"
        "p.evaluate('def f(x):\\n    while True:\\n        pass\\n', t, 1)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    template_pid = int(proc.stdout.readline())
    time.sleep(0.3)  # the spinning worker is running
    children = [int(x) for x in open(f"/proc/{template_pid}/task/{template_pid}/children").read().split()]
    assert children
    proc.kill()
    proc.wait()
    for pid in [template_pid, *children]:
        for _ in range(500):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ")[1][0] in "ZX":
                        break
            except OSError:
                break
            time.sleep(0.01)
        else:
            pytest.fail(f"process {pid} survived its caller")


def test_call_limit_is_cpu_time_and_total_is_wall_clock(pool):
    # the code's own time.sleep does not exist (its clock counts work); a trusted harness hands it one
    t = task("redteam_harnesses:call_with_sleeper", total_timeout_s=0.4)
    r = pool.evaluate("def f(sleep, s):\n    sleep(s)\n    return 5\n", t, 0.1)
    assert r.ok and r.value == 5  # 0.1 s asleep is more than the 0.05 s limit in wall time, not in CPU time
    r = pool.evaluate("def f(sleep, s):\n    sleep(30)\n", t, 30)
    assert r.outcome is Outcome.TIMEOUT and r.timeout_kind == "total" and not r.metadata["killed_at_deadline"]


def test_a_template_that_cannot_start_is_a_sandbox_error(monkeypatch):
    import ossgym.sandbox.pool as pool_module

    monkeypatch.setattr(pool_module, "BOOT", "import sys; sys.exit(3)")
    with SandboxPool(1) as p, pytest.raises(SandboxError):
        p.evaluate("def f(x):\n    return x\n", task(), 1)


def test_template_without_pidfd_still_reaps_by_polling(monkeypatch):
    import ossgym.sandbox.pool as pool_module

    monkeypatch.setattr(pool_module, "BOOT", "import os\ndel os.pidfd_open\n" + pool_module.BOOT)
    with SandboxPool(1) as p:
        for i in range(3):
            assert p.evaluate("def f(x):\n    return x\n", task(), i).value == i
        r = p.evaluate("def f(x):\n    return x\n", task("redteam_harnesses:escaped_crash"), 1)
        assert r.outcome is Outcome.CRASHED and "SIGSEGV" in r.message


def test_default_pool_in_a_forked_child_is_its_own():
    parent = default_pool()
    assert parent.evaluate("def f(x):\n    return x\n", task(), 1).value == 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a new default pool; the parent's must refuse to be used here
        ok = False
        try:
            try:
                parent.evaluate("def f(x):\n    return x\n", task(), 1)
            except SandboxError:
                child = default_pool()
                ok = child is not parent and child.evaluate("def f(x):\n    return x\n", task(), 2).value == 2
                child.close()
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.waitpid(pid, 0)
    assert parent.evaluate("def f(x):\n    return x\n", task(), 3).value == 3


def test_function_cannot_mutate_the_harness_arguments(pool):
    src = "def f(board):\n    first = board[0][0]\n    board[0][0] = 2048\n    board.append('x')\n    return first\n"
    r = pool.evaluate(src, task("ossgym.sandbox.testing:call_twice_same_args"), [[2, 4], [8, 16]])
    assert r.value == [2, 2, [[2, 4], [8, 16]]]


def test_pool_is_shared_not_copied(pool):
    import copy

    assert copy.deepcopy({"pool": pool})["pool"] is pool


@pytest.mark.parametrize("reach", ["Exception.mro()[1]", "getattr(Exception, 'mro')()[1]", "type(x).mro()[-2]"])
def test_the_timer_cannot_be_caught_through_mro(reach):
    # Exception.mro() hands out BaseException (the name itself is forbidden) and with it 'except' clauses
    # that swallow the worker's timer interrupt: an endless loop then ran until the wall-clock kill.
    src = f"def f(x):\n    B = {reach}\n    try:\n        return 1\n    except B:\n        return 2\n"
    assert any("mro" in v.message for v in check_policy(src, task()))


def test_mro_is_not_reachable_at_run_time():
    from ossgym.sandbox.restricted import guarded_getattr

    with pytest.raises(AttributeError):
        guarded_getattr(ValueError, "mro")
