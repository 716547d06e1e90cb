"""Red-team suite: every attack from issue 3 runs through the sandbox. Each test asserts that the caller is
unaffected, that no canary file or process appears, and that the result is a typed failure or a harmless
success. Three depths:

* full sandbox (policy + restricted compile + worker): what a model's completion meets;
* ``unchecked``: the restricted compiler and guards alone, without the static policy;
* ``escaped_*``: trusted code acting as an attacker who beat every Python-level layer, against the
  process layer alone (limits, own uid, chroot, network namespace, the caller's kill).
"""

import os
import random
import signal
import time
import uuid

import pytest

from ossgym.errors import ConfigError
from ossgym.sandbox import Outcome, SandboxPool, SandboxTask

P, S, R, T, M, I, C, OK = (Outcome.POLICY_VIOLATION, Outcome.SYNTAX_ERROR, Outcome.RUNTIME_ERROR, Outcome.TIMEOUT,
                           Outcome.MEMORY_EXCEEDED, Outcome.INVALID_OUTPUT, Outcome.CRASHED, Outcome.OK)
MARKER = f"ossgym-canary-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2) as p:
        yield p


@pytest.fixture(scope="module")
def canary_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("canary")
    os.chmod(d, 0o777)  # writable by anyone: only the sandbox may stop a write here
    return d


def _caller_state():
    return (os.getpid(), os.getcwd(), dict(os.environ),
            [signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)])


def _marker_processes():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if MARKER.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def attack(pool, canary_dir, source, allowed, payload=None, harness="ossgym.sandbox.testing:call_once",
           empty_canary_ok=False, **kw):
    """Run one attack and check the invariants every attack must keep."""
    canary = canary_dir / "owned.txt"
    before = _caller_state()
    task = SandboxTask(entrypoint="f", harness=harness, **{"total_timeout_s": 2.0, **kw})
    payload = {"canary": str(canary), "marker": MARKER, "caller_pid": os.getpid()} if payload is None else payload
    r = pool.evaluate(source, task, payload)
    assert r.outcome in allowed, (r.outcome, r.message)
    assert _caller_state() == before
    if empty_canary_ok and canary.exists():  # without root there is no chroot: RLIMIT_FSIZE=0 keeps it empty
        assert canary.stat().st_size == 0
        canary.unlink()
    assert not canary.exists()
    assert _marker_processes() == []
    return r


# --- full sandbox: what a completion meets --------------------------------------------------------------------
ATTACKS = {
    # frame walking
    "sys_getframe": ("import sys\ndef f(x):\n    return sys._getframe(1).f_globals\n", {P}),
    "inspect_stack": ("import inspect\ndef f(x):\n    return inspect.stack()[1][0].f_locals\n", {P}),
    "gi_frame": ("def f(x):\n    g = (i for i in [1])\n    return g.gi_frame.f_back.f_globals\n", {P}),
    "gi_frame_built": ("def f(x):\n    g = (i for i in [1])\n    n = 'gi' + '_frame'\n    return getattr(g, n)\n", {P}),
    "tb_frame": ("def f(x):\n    try:\n        1 / 0\n    except Exception as e:\n"
                 "        return e.__traceback__.tb_frame.f_back\n", {P}),
    # gc object scans
    "gc_scan": ("import gc\ndef f(x):\n    return [o for o in gc.get_objects() if type(o) is dict]\n", {P}),
    # dunder access through strings
    "getattr_built_dunder": ("def f(x):\n    n = '_' * 2 + 'class' + '_' * 2\n    return getattr(x, n)\n", {P}),
    "str_format_attr": ("def f(x):\n    return '{0.__class__.__base__.__subclasses__}'.format(x)\n", {R}),
    "str_format_map_attr": ("def f(x):\n    return '{a.__class__}'.format_map({'a': x})\n", {R}),
    "str_format_via_class": ("def f(x):\n    return str.format('{0.__class__}', x)\n", {R}),
    "string_formatter": ("import string\ndef f(x):\n    return string.Formatter().get_field('0.__class__', [x], {})\n",
                         {P}),
    "subclasses": ("def f(x):\n    return ().__class__.__base__.__subclasses__()\n", {P}),
    # imports
    "dunder_import_numpy": ("def f(x):\n    return __import__('numpy').zeros(1)\n", {P}),
    "importlib_os": ("import importlib\ndef f(x):\n    return importlib.import_module('os').getcwd()\n", {P}),
    "import_os": ("import os\ndef f(x):\n    return os.listdir('/')\n", {P}),
    "import_subprocess": ("import subprocess\ndef f(x):\n    subprocess.Popen(['sleep', '30', x['marker']])\n", {P}),
    "import_socket": ("import socket\ndef f(x):\n    return socket.create_connection(('1.1.1.1', 80))\n", {P}),
    "import_ctypes": ("import ctypes\ndef f(x):\n    return ctypes.string_at(0)\n", {P}),
    "import_numpy_inside": ("def f(x):\n    import numpy\n    return numpy.zeros(1)\n", {P}),
    "from_import_private": ("from random import _inst\ndef f(x):\n    return _inst.random()\n", {P}),
    # files
    "write_canary": ("def f(x):\n    open(x['canary'], 'w').write('owned')\n", {P}),
    "read_passwd": ("def f(x):\n    return open('/etc/passwd').read()\n", {P}),
    "read_harness_source": ("def f(x):\n    return open(__file__).read()\n", {P}),
    # environment, signals, exits
    "environ": ("import os\ndef f(x):\n    return dict(os.environ)\n", {P}),
    "kill_parent": ("import os\ndef f(x):\n    os.kill(x['caller_pid'], 9)\n", {P}),
    "signal_alarm_off": ("import signal\ndef f(x):\n    signal.alarm(0)\n    while True:\n        pass\n", {P}),
    "sys_exit": ("import sys\ndef f(x):\n    sys.exit(0)\n", {P}),
    "exit_builtin": ("def f(x):\n    exit(0)\n", {P}),
    "raise_system_exit": ("def f(x):\n    raise SystemExit(0)\n", {P}),
    "os_exit": ("import os\ndef f(x):\n    os._exit(0)\n", {P}),
    "keyboard_interrupt": ("def f(x):\n    raise KeyboardInterrupt\n", {P}),
    "generator_exit": ("def f(x):\n    raise GeneratorExit\n", {P}),
    # swallowing the timeout
    "except_baseexception_loop": ("def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                                  "        except BaseException:\n            pass\n", {P}),
    "bare_except_loop": ("def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                         "        except:\n            pass\n", {P}),
    "except_exception_loop": ("def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                              "        except Exception:\n            pass\n", {T}),
    "finally_loop": ("def f(x):\n    try:\n        while True:\n            pass\n    finally:\n        while True:\n"
                     "            pass\n", {T}),
    "finally_continue": ("def f(x):\n    while True:\n        try:\n            while True:\n                pass\n"
                         "        finally:\n            continue\n", {P}),
    "while_true": ("def f(x):\n    while True:\n        pass\n", {T}),
    # resources
    "deep_recursion": ("def f(x):\n    def r(n):\n        return r(n + 1)\n    return r(0)\n", {R}),
    "recursion_caught": ("def f(x):\n    def r(n):\n        try:\n            return r(n + 1)\n        except RecursionError:\n"
                         "            return r(n + 1)\n    return r(0)\n", {R, T}),
    "alloc_8gib_list": ("def f(x):\n    return len([0] * (1 << 30))\n", {M}),
    "alloc_8gib_str": ("def f(x):\n    return len('x' * (8 << 30))\n", {M}),
    "alloc_caught": ("def f(x):\n    try:\n        y = 'x' * (8 << 30)\n    except MemoryError:\n        return 'survived'\n",
                     {OK}),
    "fork_loop": ("import os\ndef f(x):\n    for _ in range(20):\n        os.fork()\n", {P}),
    "print_100mb": ("def f(x):\n    s = 'x' * (1 << 20)\n    for _ in range(100):\n        print(s)\n    return 1\n", {OK, T}),
    "threads": ("import threading\ndef f(x):\n    threading.Thread(target=lambda: None).start()\n", {P}),
    "atexit": ("import atexit\ndef f(x):\n    atexit.register(print, 'late')\n", {P}),
    "settrace": ("import sys\ndef f(x):\n    sys.settrace(lambda *a: None)\n", {P}),
    "builtins_dict": ("def f(x):\n    __builtins__['len'] = lambda y: 0\n", {P}),
    "import_builtins": ("import builtins\ndef f(x):\n    builtins.len = lambda y: 0\n", {P}),
    "sys_modules": ("import sys\ndef f(x):\n    sys.modules['math'] = None\n", {P}),
    # monkeypatching modules
    "patch_random_function": ("import random\ndef f(x):\n    random.random = lambda: 0.0\n", {R}),
    "patch_random_class": ("import random\ndef f(x):\n    random.Random.random = lambda self: 0.0\n", {R}),
    "patch_math": ("import math\ndef f(x):\n    math.pi = 3\n", {R}),
    "patch_via_from_import": ("from collections import Counter\ndef f(x):\n    Counter.most_common = None\n", {R}),
    "setattr_module": ("import math\ndef f(x):\n    setattr(math, 'pi', 3)\n", {P}),
    "update_wrapper_globals": ("import functools\nimport random\ndef f(x):\n    def g():\n        pass\n"
                               "    functools.update_wrapper(g, random.Random.seed, assigned=(), updated=('_' + '_globals_' + '_',))\n"
                               "    return sorted(g.__globals__)\n", {P}),
    "update_wrapper_gadget": ("import functools\nimport random\ndef f(x):\n    def g():\n        pass\n"
                              "    n = '_' + '_globals_' + '_'\n"
                              "    functools.update_wrapper(g, random.Random.seed, assigned=(), updated=(n,))\n"
                              "    return 1\n", {R}),
    "wraps_gadget": ("import functools\ndef f(x):\n    return functools.wraps(f)\n", {R}),
    "operator_attrgetter": ("import operator\ndef f(x):\n    return operator.attrgetter('__class__')(x)\n", {R}),
    # forged results
    "return_str_subclass": ("def f(x):\n    class S(str):\n        pass\n    return S('W')\n", {I}),
    "always_equal_class": ("def f(x):\n    class E:\n        def __eq__(self, o):\n            return True\n"
                           "    return E()\n", {P}),
    "always_equal_type3": ("def f(x):\n    E = type('E', (), {'__eq__': lambda s, o: True})\n    return E()\n", {R}),
    "type_of_class_3arg": ("def f(x):\n    t = type(int)\n    return t('E', (), {'_' + '_eq_' + '_': lambda s, o: True})()\n",
                           {R}),
    "swallowing_context_manager": ("def f(x):\n    t = type(type(1))\n    cm = t('CM', (), {'_' + '_enter_' + '_': lambda s: s,"
                                   " '_' + '_exit_' + '_': lambda s, *a: True})\n    while True:\n        with cm():\n"
                                   "            while True:\n                pass\n", {R}),
    "numpy_scalar": ("import numpy\ndef f(x):\n    return numpy.int64(3)\n", {P}),
    "return_function": ("def f(x):\n    return f\n", {I}),
    "metaclass_kw": ("def f(x):\n    class A(metaclass=type):\n        pass\n", {P}),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_full_sandbox(pool, canary_dir, name):
    source, allowed = ATTACKS[name]
    attack(pool, canary_dir, source, allowed)


@pytest.mark.parametrize("module", ["dataclasses", "timeit", "numpy", "os", "inspect", "enum", "abc"])
def test_unvetted_modules_cannot_be_allowed(module):
    with pytest.raises(ConfigError):
        SandboxTask(entrypoint="f", harness="ossgym.sandbox.testing:call_once", allowed_imports=frozenset({module}))


def test_time_module_is_read_only_when_allowed(pool, canary_dir):
    src = "import time\ndef f(x):\n    time.monotonic = lambda: 0.0\n"
    r = attack(pool, canary_dir, src, {R}, allowed_imports=frozenset({"time"}))
    assert "read-only" in r.message


def test_reseeding_random_does_not_touch_the_harness_generator(pool, canary_dir):
    src = "import random\ndef f(x):\n    random.seed(0)\n    return [random.random() for _ in range(5)]\n"
    r = attack(pool, canary_dir, src, {OK}, payload=123, harness="redteam_harnesses:random_after_call")
    rng = random.Random(123)
    assert r.value == rng.random()


def test_overriding_builtins_stays_local(pool, canary_dir):
    src = "def f(x):\n    global max\n    max = min\n    return max([1, 2])\n"
    assert attack(pool, canary_dir, src, {OK}).value == 1
    assert attack(pool, canary_dir, "def f(x):\n    return max([1, 2])\n", {OK}).value == 2


def test_print_flood_is_capped(pool, canary_dir):
    r = attack(pool, canary_dir, ATTACKS["print_100mb"][0], {OK, T}, max_output_bytes=1 << 16, call_timeout_s=5.0)
    assert len(r.stdout) < (1 << 16) + 200


# --- the restricted compiler and guards alone (static policy skipped) ------------------------------------------
UNCHECKED = {
    "gi_frame_built": "def f():\n    g = (i for i in [1])\n    return getattr(g, 'gi' + '_frame')\n",
    "dunder_built": "def f():\n    return getattr((), '_' * 2 + 'class' + '_' * 2)\n",
    "format_attr": "def f():\n    return '{0.__class__}'.format(1)\n",
    "import_os": "def f():\n    import os\n    return os.getcwd()\n",
    "patch_math": "import math\ndef f():\n    math.pi = 3\n",
    "type3": "def f():\n    return type('E', (), {'__eq__': lambda s, o: True})()\n",
    "open_file": "def f():\n    return open('/etc/passwd').read()\n",
    "except_base_loop": "def f():\n    while True:\n        try:\n            while True:\n                pass\n"
                        "        except BaseException:\n            pass\n",
    "type_of_class_3arg": "def f():\n    return type(type(1))('E', (), {})\n",
    "getattr_str_subclass": "def f():\n    class S(str):\n        def startswith(self, p):\n            return False\n"
                            "    return getattr((), S('__class__'))\n",
}


@pytest.mark.parametrize("name", sorted(UNCHECKED))
def test_attack_restricted_layer_alone(pool, canary_dir, name):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {R, T},
               payload={"source": UNCHECKED[name]}, harness="redteam_harnesses:unchecked")
    assert r.outcome is R or r.timeout_kind == "call"


UNCHECKED_COMPILE = {
    "dunder_import": "def f():\n    return __import__('os')\n",
    "subclasses": "def f():\n    return ().__class__.__base__.__subclasses__()\n",
    "gi_frame": "def f():\n    g = (i for i in [1])\n    return g.gi_frame\n",
    "tb_frame": "def f():\n    try:\n        1 / 0\n    except Exception as e:\n        return e.__traceback__\n",
    "builtins_dict": "def f():\n    __builtins__['len'] = None\n",
    "guard_rebinding": "def f():\n    global _getattr_\n    _getattr_ = None\n",
}


@pytest.mark.parametrize("name", sorted(UNCHECKED_COMPILE))
def test_restricted_compiler_alone_rejects(pool, canary_dir, name):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {OK}, payload={"source": UNCHECKED_COMPILE[name]},
               harness="redteam_harnesses:unchecked")
    assert "compile_error" in r.value


@pytest.mark.parametrize("module", ["gc", "sys", "os", "inspect", "importlib", "numpy", "ctypes", "socket"])
def test_restricted_import_alone_refuses(pool, canary_dir, module):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {R}, payload={"source": f"def f():\n    import {module}\n"},
               harness="redteam_harnesses:unchecked")
    assert r.error_type == "ImportError"


def test_bare_except_without_policy_still_ends_by_the_hard_kill(pool, canary_dir):
    src = "def f():\n    while True:\n        try:\n            while True:\n                pass\n        except:\n            pass\n"
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {T}, payload={"source": src},
               harness="redteam_harnesses:unchecked", total_timeout_s=0.5)
    assert r.timeout_kind == "total"


# --- the process layer alone (attacker already escaped Python) --------------------------------------------------
def test_escaped_attacker_is_contained(pool, canary_dir):
    """The same layers hold for root and for an ordinary user (tests/test_sandbox_nonroot.py runs this
    file again as one)."""
    from ossgym.sandbox.isolation import missing

    root = os.getuid() == 0
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {OK}, harness="redteam_harnesses:escaped_probe")
    probe = r.value
    assert missing(r.metadata["isolation"]) == {}
    assert probe["env"] == {}
    assert probe["cwd_listing"] == []
    for attempt in ("write_file", "fork", "connect", "make_socket", "signal_caller", "read_passwd"):
        assert probe[attempt].startswith("blocked"), attempt
    assert set(probe["interfaces"]) <= {"lo"}
    if root:  # root gives every worker a uid of its own
        assert probe["uid"] >= 200_000 and r.metadata["worker"]["layers"]["chroot"] is True
        again = attack(pool, canary_dir, "def f(x):\n    return 0\n", {OK}, harness="redteam_harnesses:escaped_probe")
        assert again.value["uid"] != probe["uid"]


@pytest.mark.parametrize("how", ["os", "sys"])
def test_escaped_early_exit_is_not_success(pool, canary_dir, how):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {C}, payload=how, harness="redteam_harnesses:escaped_exit")
    assert r.value == {"progress": 1}


def test_escaped_timer_disabled_is_killed_by_the_caller(pool, canary_dir):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {T}, payload=0,
               harness="redteam_harnesses:escaped_no_timeout", total_timeout_s=0.5)
    assert r.timeout_kind == "total" and r.metadata["killed_at_deadline"] and r.value == {"spinning": True}


def test_escaped_threads_die_with_the_worker(pool, canary_dir):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {OK, R}, payload=0,
               harness="redteam_harnesses:escaped_threads")
    # RLIMIT_NPROC=0 under an unprivileged uid already stops the thread; where it does not, the group kill ends it
    assert r.value == "returned" or "can't start new thread" in r.message
    pid = r.metadata["worker_pid"]
    for _ in range(200):  # the worker's process group was SIGKILLed; wait until it is gone or a zombie
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] in "ZX":
                    break
        except OSError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("worker still running after its result was read")


def test_escaped_fd_flood_goes_nowhere(pool, canary_dir, capfd):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {OK, T}, payload=0,
               harness="redteam_harnesses:escaped_fd_flood")
    out, err = capfd.readouterr()
    assert len(out) + len(err) < 1000 and r.stdout == ""


@pytest.mark.parametrize("how", ["deep", "huge", "fake_ok"])
def test_escaped_forged_frames_are_typed(pool, canary_dir, how):
    r = attack(pool, canary_dir, "def f(x):\n    return 0\n", {I, OK}, payload=how,
               harness="redteam_harnesses:escaped_forged_frames")
    if r.outcome is OK:  # a forged record is still only plain data; scoring re-derives everything from it
        assert how == "fake_ok" and r.value == "forged"


def test_typing_offers_annotation_names_only(pool, canary_dir):
    t = frozenset({"typing"})
    ok = "from typing import List, Tuple\ndef f(x: List[int]) -> Tuple[int, int]:\n    return (1, 2)\n"
    assert attack(pool, canary_dir, ok, {OK}, allowed_imports=t).value == (1, 2)
    for name in ("get_type_hints", "ForwardRef", "NamedTuple", "TypedDict"):
        src = f"import typing\ndef f(x):\n    return typing.{name}\n"
        assert "has no attribute" in attack(pool, canary_dir, src, {R}, allowed_imports=t).message


def test_mutating_the_board_it_was_handed_changes_nothing_outside_the_call(pool, canary_dir):
    src = "def f(board):\n    board[0][0] = 2048\n    board.clear()\n    return 'W'\n"
    r = attack(pool, canary_dir, src, {OK}, payload=[[2, 0], [0, 2]], harness="ossgym.sandbox.testing:call_twice_same_args")
    assert r.value == ["W", "W", [[2, 0], [0, 2]]]
