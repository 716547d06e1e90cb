"""The audit hook attacked alone: after install(), every gadget ends in a typed result (never a reward).

Each check runs in a fresh interpreter (a hook cannot be removed), plus end-to-end through a real pool with
a harness that hands the untrusted code a working gadget (policy and RestrictedPython cannot see it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ossgym.sandbox import Outcome, SandboxPool, SandboxTask
from ossgym.sandbox.audit import EXIT_AUDIT

from gadget_harnesses import GADGETS


def run_isolated(body: str) -> subprocess.CompletedProcess:
    prog = textwrap.dedent("""
        import sys; sys.path.insert(0, "tests")
        from ossgym.sandbox import audit
        from gadget_harnesses import GADGETS
        audit.install()
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_each_gadget_is_denied_after_install(name):
    p = run_isolated(f"""
        try:
            GADGETS[{name!r}]()
            print("ALLOWED")
        except audit.AuditDenied as e:
            print("DENIED", e)
        print(audit.denied())
    """)
    assert "DENIED" in p.stdout and "ALLOWED" not in p.stdout, (p.stdout, p.stderr)


def test_denial_is_not_catchable_as_exception_and_is_latched():
    p = run_isolated("""
        try:
            try:
                eval("1")
            except Exception:
                print("CAUGHT AS EXCEPTION")
        except BaseException as e:
            print("base", type(e).__name__)
        print(audit.override({"outcome": "ok", "message": "ok"})["outcome"])
    """)
    assert "CAUGHT" not in p.stdout and "base AuditDenied" in p.stdout and "policy_violation" in p.stdout


def test_second_denial_ends_the_process():
    p = run_isolated("""
        for _ in range(2):
            try:
                eval("1")
            except BaseException:
                pass
        print("STILL HERE")
    """)
    assert p.returncode == EXIT_AUDIT and "STILL HERE" not in p.stdout


def test_allowed_exec_is_the_one_module_only():
    p = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        from ossgym.sandbox import audit
        code = compile("y = 2", "<untrusted>", "exec")
        audit.install(code)
        g = {}
        exec(code, g)
        print("first", g["y"])
        try:
            exec(code, {})
        except audit.AuditDenied:
            print("second denied")
    """)], capture_output=True, text=True, timeout=60)
    assert "first 2" in p.stdout and "second denied" in p.stdout, p.stderr


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2) as p:
        yield p


@pytest.mark.parametrize("name", ["eval", "open", "import_new", "os_listdir", "socket", "getframe", "tb_frame",
                                  "get_referrers"])
def test_gadget_through_the_pool_is_a_policy_violation(pool, name):
    t = SandboxTask(entrypoint="f", harness="gadget_harnesses:with_gadget")
    src = "def f(g):\n    try:\n        return g()\n    except Exception:\n        return 'swallowed'\n"
    r = pool.evaluate(src, t, name)
    assert r.outcome is Outcome.POLICY_VIOLATION, (r.outcome, r.message)
    assert "denies" in r.message


def test_honest_code_runs_with_the_hook_on(pool):
    t = SandboxTask(entrypoint="f", harness="ossgym.sandbox.testing:call_once",
                    allowed_imports=frozenset({"math", "collections", "functools", "time", "random", "heapq"}))
    src = textwrap.dedent("""
        import collections, functools, heapq, math, random, time
        def f(x):
            class Node:
                pass
            def _score(v):
                return math.sqrt(v)
            start = time.perf_counter()
            seen = {Node() for _ in range(3)}
            h = []
            for i in range(10):
                heapq.heappush(h, (random.random(), i))
            c = collections.Counter('abca')
            total = functools.reduce(lambda a, b: a + b, [1, 2, 3])
            größe = len(seen) + total + c['a']
            return [größe, round(_score(16.0)), time.perf_counter() > start, repr(Node())]
    """)
    r = pool.evaluate(src, t, 0)
    assert r.ok, (r.outcome, r.message)
    assert r.value == [11, 4, True, "<Node object>"]


def test_gadget_in_a_caller_driven_session_ends_it_as_a_policy_violation(pool):
    t = SandboxTask(entrypoint="f", handler="gadget_harnesses:gadget_handler")
    src = "def f(g):\n    try:\n        return g()\n    except Exception:\n        return 'swallowed'\n"
    replies = []

    def driver(session):
        for name in ("eval", "open"):
            r = session.request(name)
            replies.append((r.ok, r.value))
        return "driver done"

    r = pool.run(src, t, driver)
    assert all(not ok for ok, _ in replies), replies  # never a value for a denied gadget
    assert r.outcome is Outcome.POLICY_VIOLATION and "denies" in r.message
