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


def test_missing_layers_are_named_and_require_isolation_refuses(monkeypatch, caplog):
    import ossgym.sandbox.pool as pool_module

    with SandboxPool(1) as p:
        r = p.evaluate("def f(x):\n    return x\n", SandboxTask(entrypoint="f", harness="ossgym.sandbox.testing:call_once"), 1)
        assert r.value == 1 and pool_module.missing(r.metadata["isolation"]) == {} and p.isolation == r.metadata["isolation"]
    real = pool_module.missing
    monkeypatch.setattr(pool_module, "missing", lambda iso: {**real(iso), "seccomp": "pretend the kernel lacks it"})
    with SandboxPool(1) as p:
        with caplog.at_level("WARNING"):
            assert p.run(LOOP, task(), lambda s: s.request([3]).value).value == [3]
        assert "seccomp: pretend the kernel lacks it" in caplog.text
    called = []
    with SandboxPool(1, require_isolation=True) as p:
        with pytest.raises(Exception, match="seccomp.*Fix"):
            p.run(LOOP, task(), lambda s: called.append(1))
    assert not called


ESCAPED_REACH = '''
import ctypes, os, socket
def f(caller):
    out = {}
    def attempt(name, action):
        try:
            action()
            out[name] = "done"
        except OSError as e:
            out[name] = "blocked"
    def read(path):
        with open(path, "rb") as fh:
            fh.read(1)
    attempt("caller_environ", lambda: read(f"/proc/{caller}/environ"))
    attempt("caller_mem", lambda: read(f"/proc/{caller}/mem"))
    attempt("signal_caller", lambda: os.kill(caller, 0))
    attempt("signal_init", lambda: os.kill(1, 0))
    attempt("signal_any", lambda: [os.kill(p, 0) for p in range(2, 400) if p != os.getpid()] and None)
    attempt("socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    attempt("write_host_file", lambda: open("/tmp/ossgym-escaped-" + str(os.getpid()), "w").write("x"))
    attempt("mkdir_root", lambda: os.mkdir("/owned"))
    libc = ctypes.CDLL(None, use_errno=True)
    local = (ctypes.c_char * 8)()
    iov = (ctypes.c_void_p * 2)(ctypes.addressof(local), 8)
    rc = libc.syscall(310, caller, iov, 1, iov, 1, 0)  # process_vm_readv of the caller
    out["process_vm_readv"] = "done" if rc >= 0 else "blocked"
    out["ptrace_attach"] = "done" if libc.syscall(101, 16, caller, 0, 0) == 0 else "blocked"
    out["unshare_user"] = "done" if libc.syscall(272, 0x10000000) == 0 else "blocked"
    return out
'''


def test_an_escaped_worker_reaches_no_process_file_or_socket_of_the_host():
    """Arbitrary Python (compromised-worker mode) as root and, through test_sandbox_nonroot.py, as an
    ordinary user: the caller's /proc, memory and signals, other processes, sockets and host files are
    all out of reach."""
    import os

    with SandboxPool(1, compromised_for_tests=True) as p:
        r = p.run(ESCAPED_REACH, task(handler="session_handlers:raw"), lambda s: s.request(os.getpid()).value)
    assert r.outcome is Outcome.OK and r.value and set(r.value.values()) == {"blocked"}, r.value


SPIN = "def f(n):\n    while True:\n        pass\n"
SLEEP = "import time\ndef f(n):\n    time.sleep(3600)\n"


def test_the_caller_enforces_cpu_limits_itself_even_when_the_worker_has_no_timer():
    """Compromised mode, handler without any in-worker limit: the caller's own CPU reading ends the worker,
    per request (cpu_limit_s) and for the whole session (cpu_budget_s), long before the liveness cap."""
    def per_request(s):
        r = s.request(1, cpu_limit_s=0.2)
        return [r.kind, s.last_cpu_s >= 0.2, s.request(1).kind]

    def whole(s):
        s.cpu_budget_s = 0.2
        return s.request(1).kind

    with SandboxPool(1, compromised_for_tests=True) as p:
        a = p.run(SPIN, task(handler="session_handlers:raw", total_timeout_s=120.0), per_request)
        b = p.run(SPIN, task(handler="session_handlers:raw", total_timeout_s=120.0), whole)
    assert a.value == ["timeout", True, "timeout"] and a.outcome is Outcome.TIMEOUT and a.timeout_kind == "call"
    assert "CPU" in a.message and a.metadata["cpu_exceeded"]
    assert b.value == "timeout" and b.outcome is Outcome.TIMEOUT and b.timeout_kind == "total" and "CPU" in b.message


def test_completions_that_hang_or_sleep_leave_their_batch_mates_correct(pool):
    honest = (LOOP, task(), lambda s: s.request([100]).value)
    spin = (SPIN, task(handler="session_handlers:raw", total_timeout_s=1.0), lambda s: s.request(1).kind)
    sleep = (SLEEP, task(handler="session_handlers:raw", total_timeout_s=1.0), lambda s: s.request(1).kind)
    with SandboxPool(2, compromised_for_tests=True) as p:
        results = p.run_batch([honest, spin, honest, sleep, honest])
    assert [r.value for r in results[::2]] == [[4950]] * 3 and all(r.ok for r in results[::2])
    assert [r.value for r in results[1::2]] == ["timeout", "timeout"]
    assert all(r.outcome is Outcome.TIMEOUT for r in results[1::2])


def test_threads_calling_evaluate_on_a_small_pool_lose_no_budget():
    """The worker-driven API too: 4 threads on a 2-slot pool, each evaluation several tenths of a second
    of CPU under a 1 s limit; the ones that wait for a slot start their clock at dispatch."""
    busy = "def f(n):\n    s = 0\n    for i in range(n):\n        s += i\n    return s\n"
    t = SandboxTask(entrypoint="f", harness="ossgym.sandbox.testing:call_once", call_timeout_s=5.0,
                    total_timeout_s=1.0)
    results = []
    with SandboxPool(2) as p:
        p.evaluate(busy, t, 10)  # the template is up; the first evaluation below gets the same budget anyway
        threads = [threading.Thread(target=lambda: results.append(p.evaluate(busy, t, 1_000_000))) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert [r.outcome for r in results] == [Outcome.OK] * 4
