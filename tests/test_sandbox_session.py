"""Caller-driven sessions (SandboxPool.run): the driver runs in the caller, the worker only answers plain
requests, and the caller measures the worker's CPU time itself."""

import threading

import pytest

from ossgym.errors import ConfigError
from ossgym.sandbox import Outcome, SandboxPool, SandboxTask

LOOP = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i\n    return s\n"


def task(handler="session_handlers:call_each", **kw):
    kw.setdefault("call_timeout_s", 0.5)
    kw.setdefault("total_timeout_s", 5.0)
    return SandboxTask(entrypoint="f", handler=handler, **kw)


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2) as p:
        yield p


def test_requests_and_replies_are_plain_and_cpu_is_measured_by_the_caller(pool):
    seen = []

    def driver(session):
        for n in (10, 300_000):
            reply = session.request([n])
            seen.append((reply.ok, reply.value, session.last_cpu_s))
        return "done"

    r = pool.run(LOOP, task(), driver)
    assert r.outcome is Outcome.OK and r.value == "done" and r.metadata["requests"] == 2
    assert [s[:2] for s in seen] == [(True, [45]), (True, [sum(range(300_000))])]
    assert seen[1][2] > 10 * seen[0][2] > 0  # the longer call took measurably more of the worker's CPU
    assert r.metadata["worker_cpu_s"] >= seen[1][2]


def test_code_that_does_not_load_never_reaches_the_driver(pool):
    called = []
    r = pool.run("import os\ndef f(n):\n    return 1\n", task(), lambda s: called.append(1))
    assert r.outcome is Outcome.POLICY_VIOLATION and not called
    r = pool.run("def f(n):\n    return (\n", task(), lambda s: called.append(1))
    assert r.outcome is Outcome.SYNTAX_ERROR and not called


def test_a_call_over_its_limit_is_a_typed_reply_and_the_session_goes_on(pool):
    spin = "def f(n):\n    while n:\n        pass\n    return 0\n"

    def driver(session):
        return [session.request([1]).value, session.request([0]).value]

    r = pool.run(spin, task(call_timeout_s=0.05), driver)
    assert r.outcome is Outcome.OK and r.value == [[{"fail": "CallTimeout"}], [0]]


def test_a_worker_past_the_liveness_limit_is_killed_and_later_requests_fail_at_once(pool):
    spin = "def f(n):\n    while True:\n        pass\n"

    def driver(session):
        first = session.request(1)
        second = session.request(1)
        return [first.ok, first.kind, second.ok, second.kind]

    r = pool.run(spin, task(handler="session_handlers:raw", total_timeout_s=0.5), driver)
    assert r.value == [False, "timeout", False, "timeout"]
    assert r.outcome is Outcome.TIMEOUT and r.metadata["killed_at_deadline"] is True


def test_a_worker_that_dies_mid_session_is_a_crash(pool):
    r = pool.run(LOOP, task(handler="session_handlers:die"), lambda s: s.request([1]).kind)
    assert r.outcome is Outcome.CRASHED and r.value == "crash"


def test_a_broken_driver_is_a_typed_result_not_an_exception(pool):
    def driver(session):
        raise RuntimeError("bug")

    r = pool.run(LOOP, task(), driver)
    assert r.outcome is Outcome.CRASHED and "RuntimeError" in r.message


def test_mode_and_task_mismatches_are_config_errors(pool):
    with pytest.raises(ConfigError, match="handler"):
        pool.run(LOOP, SandboxTask(entrypoint="f", harness="ossgym.sandbox.testing:call_once"), lambda s: 0)
    with pytest.raises(ConfigError, match="caller-driven"):
        pool.evaluate(LOOP, task(), None)
    with pytest.raises(ConfigError, match="exactly one"):
        SandboxTask(entrypoint="f")


def test_the_deadline_starts_at_dispatch_not_in_the_slot_queue():
    """4 threads on a 2-slot pool, each evaluation ~0.4 s of a 0.7 s liveness limit: none is cut, although
    the last ones wait ~0.8 s for a slot (today's pool started the clock before the wait)."""
    results = []

    def driver(session):
        import time

        t = time.monotonic()
        while time.monotonic() - t < 0.4:
            session.request([1])
        return "ok"

    with SandboxPool(2) as p:
        threads = [threading.Thread(target=lambda: results.append(p.run(LOOP, task(total_timeout_s=0.7), driver)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.outcome for r in results] == [Outcome.OK] * 4


def test_one_completion_killing_its_worker_leaves_its_batch_mates_correct(pool):
    honest = (LOOP, task(), lambda s: s.request([100]).value)
    killer = ("import os, signal\ndef f(n):\n    os.killpg(0, signal.SIGKILL)\n", task(), lambda s: s.request([1]).kind)
    with SandboxPool(2, compromised_for_tests=True) as p:
        results = p.run_batch([honest, killer, honest, killer, honest])
    assert [r.value for r in results[::2]] == [[4950]] * 3
    assert all(r.outcome is Outcome.CRASHED for r in results[1::2])


def test_a_compromised_worker_cannot_change_the_callers_metadata_or_clock():
    """Arbitrary Python in the worker writes forged frames and burns CPU while claiming nothing: the
    caller's measurement and metadata stand."""
    forge = (
        "import os, struct, json\n"
        "def f(n):\n"
        "    rec = json.dumps({'outcome': 'ok', 'message': 'ok', 'metadata': {'isolation': 'forged',"
        " 'worker_cpu_s': 0.0}}).encode()\n"
        "    s = 0\n"
        "    for i in range(2_000_000):\n"
        "        s += i\n"
        "    for fd in range(3, 16):\n"
        "        try:\n"
        "            os.write(fd, b'r' + struct.pack('>I', len(rec)) + rec)\n"
        "        except OSError:\n"
        "            pass\n"
        "    return 0\n"
    )
    with SandboxPool(1, compromised_for_tests=True) as p:
        r = p.run(forge, task(handler="session_handlers:raw"), lambda s: (s.request(1).kind, s.last_cpu_s))
    kind, cpu = r.value
    assert kind == "crash" and r.outcome is Outcome.CRASHED
    assert cpu > 0.02 and r.metadata["isolation"] != "forged" and r.metadata["worker_cpu_s"] >= cpu
    assert "worker" not in r.metadata or r.metadata["worker"].get("isolation") != r.metadata["isolation"]
