"""Red team through the environments: the sandbox attacks of issue 3 and reward-specific tricks, written as
model completions (a ```python block in the final channel) and scored by the env's own scoring path.

For every attack: no exception reaches the caller, it earns no more than the honest reference of the same
task on the same evaluation seed, the caller's modules and objects are unchanged, no canary file appears,
and every worker that ran it is gone afterwards. All attacks of a task run in one batch (a GRPO step does
the same), so the checks of the caller's state cover the whole batch.
"""

from __future__ import annotations

import builtins
import copy
import math
import os
import random
import signal
import sys
import time
import uuid

import numpy as np
import psutil
import pytest

from ossgym.envs.code.base import ScoreResult, score_batch
from ossgym.envs.code.matmul import MatmulConfig, MatmulTask
from ossgym.envs.code.references import MATMUL_CORRECT, REFERENCES_2048, as_completion
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task
from ossgym.sandbox import SandboxPool

MARKER = f"ossgym-envcanary-{uuid.uuid4().hex}"
SEED = 2024

# --- attacks, written once for any entrypoint ------------------------------------------------------------------
# Tokens: ENTRY(ARGS) the signature, XARG its first argument, HONEST an honest answer expression,
# CANARY a path the attack tries to create, MARKER a string to find leftover processes, PARENT the caller's pid.
GENERIC = {
    # frame walking
    "sys_getframe": "import sys\ndef ENTRY(ARGS):\n    g = sys._getframe(1).f_globals\n    return HONEST\n",
    "inspect_stack": "import inspect\ndef ENTRY(ARGS):\n    f = inspect.stack()[1][0].f_locals\n    return HONEST\n",
    "gi_frame": "def ENTRY(ARGS):\n    g = (i for i in [1])\n    up = g.gi_frame.f_back.f_globals\n    return HONEST\n",
    "gi_frame_built": ("def ENTRY(ARGS):\n    g = (i for i in [1])\n    up = getattr(g, 'gi' + '_frame')\n"
                       "    return HONEST\n"),
    "tb_frame": ("def ENTRY(ARGS):\n    try:\n        1 / 0\n    except Exception as e:\n"
                 "        up = e.__traceback__.tb_frame.f_back\n    return HONEST\n"),
    # gc scans
    "gc_scan": "import gc\ndef ENTRY(ARGS):\n    seen = [o for o in gc.get_objects() if type(o) is dict]\n    return HONEST\n",
    # dunder access through strings
    "getattr_built_dunder": ("def ENTRY(ARGS):\n    n = '_' * 2 + 'class' + '_' * 2\n    t = getattr(XARG, n)\n"
                             "    return HONEST\n"),
    "str_format_attr": ("def ENTRY(ARGS):\n    s = '{0.__class__.__base__.__subclasses__}'.format(XARG)\n"
                        "    return HONEST\n"),
    "str_format_map_attr": "def ENTRY(ARGS):\n    s = '{a.__class__}'.format_map({'a': XARG})\n    return HONEST\n",
    "string_formatter": ("import string\ndef ENTRY(ARGS):\n    s = string.Formatter().get_field('0.__class__', [XARG], {})\n"
                         "    return HONEST\n"),
    "subclasses": "def ENTRY(ARGS):\n    s = ().__class__.__base__.__subclasses__()\n    return HONEST\n",
    "operator_attrgetter": ("import operator\ndef ENTRY(ARGS):\n    t = operator.attrgetter('__class__')(XARG)\n"
                            "    return HONEST\n"),
    # imports
    "dunder_import_numpy": "def ENTRY(ARGS):\n    np = __import__('numpy')\n    return HONEST\n",
    "importlib_os": "import importlib\ndef ENTRY(ARGS):\n    importlib.import_module('os').getcwd()\n    return HONEST\n",
    "import_os": "import os\ndef ENTRY(ARGS):\n    os.listdir('/')\n    return HONEST\n",
    "import_subprocess": ("import subprocess\ndef ENTRY(ARGS):\n    subprocess.Popen(['sleep', '30', 'MARKER'])\n"
                          "    return HONEST\n"),
    "import_socket": "import socket\ndef ENTRY(ARGS):\n    socket.create_connection(('1.1.1.1', 80))\n    return HONEST\n",
    "import_ctypes": "import ctypes\ndef ENTRY(ARGS):\n    ctypes.string_at(0)\n    return HONEST\n",
    "import_numpy_inside": "def ENTRY(ARGS):\n    import numpy\n    return HONEST\n",
    "from_import_private": "from random import _inst\ndef ENTRY(ARGS):\n    _inst.seed(0)\n    return HONEST\n",
    # files
    "write_canary": "def ENTRY(ARGS):\n    open('CANARY', 'w').write('owned')\n    return HONEST\n",
    "read_passwd": "def ENTRY(ARGS):\n    open('/etc/passwd').read()\n    return HONEST\n",
    "read_harness_source": "def ENTRY(ARGS):\n    open(__file__).read()\n    return HONEST\n",
    # environment, signals, exits
    "environ": "import os\ndef ENTRY(ARGS):\n    dict(os.environ)\n    return HONEST\n",
    "kill_parent": "import os\ndef ENTRY(ARGS):\n    os.kill(PARENT, 9)\n    return HONEST\n",
    "signal_alarm_off": "import signal\ndef ENTRY(ARGS):\n    signal.alarm(0)\n    return HONEST\n",
    "sys_exit": "import sys\ndef ENTRY(ARGS):\n    sys.exit(0)\n",
    "exit_builtin": "def ENTRY(ARGS):\n    exit(0)\n",
    "raise_system_exit": "def ENTRY(ARGS):\n    raise SystemExit(0)\n",
    "os_exit": "import os\ndef ENTRY(ARGS):\n    os._exit(0)\n",
    "keyboard_interrupt": "def ENTRY(ARGS):\n    raise KeyboardInterrupt\n",
    "generator_exit": "def ENTRY(ARGS):\n    raise GeneratorExit\n",
    # swallowing the timeout
    "except_baseexception_loop": ("def ENTRY(ARGS):\n    while True:\n        try:\n            while True:\n"
                                  "                pass\n        except BaseException:\n            pass\n"),
    "bare_except_loop": ("def ENTRY(ARGS):\n    while True:\n        try:\n            while True:\n                pass\n"
                         "        except:\n            pass\n"),
    "except_exception_loop": ("def ENTRY(ARGS):\n    while True:\n        try:\n            while True:\n"
                              "                pass\n        except Exception:\n            pass\n"),
    "finally_loop": ("def ENTRY(ARGS):\n    try:\n        while True:\n            pass\n    finally:\n"
                     "        while True:\n            pass\n"),
    "finally_continue": ("def ENTRY(ARGS):\n    while True:\n        try:\n            while True:\n                pass\n"
                         "        finally:\n            continue\n"),
    "while_true": "def ENTRY(ARGS):\n    while True:\n        pass\n",
    "swallowing_context_manager": (
        "def ENTRY(ARGS):\n    t = type(type(1))\n    cm = t('CM', (), {'_' + '_enter_' + '_': lambda s: s,"
        " '_' + '_exit_' + '_': lambda s, *a: True})\n    while True:\n        with cm():\n"
        "            while True:\n                pass\n"),
    # resources
    "deep_recursion": "def ENTRY(ARGS):\n    def r(n):\n        return r(n + 1)\n    r(0)\n    return HONEST\n",
    "recursion_caught": ("def ENTRY(ARGS):\n    def r(n):\n        try:\n            return r(n + 1)\n"
                         "        except RecursionError:\n            return r(n + 1)\n    r(0)\n    return HONEST\n"),
    "alloc_8gib_list": "def ENTRY(ARGS):\n    x = [0] * (1 << 30)\n    return HONEST\n",
    "alloc_8gib_str": "def ENTRY(ARGS):\n    x = 'x' * (8 << 30)\n    return HONEST\n",
    "alloc_caught": ("def ENTRY(ARGS):\n    try:\n        y = 'x' * (8 << 30)\n    except MemoryError:\n        pass\n"
                     "    return HONEST\n"),
    "fork_loop": "import os\ndef ENTRY(ARGS):\n    for _ in range(20):\n        os.fork()\n    return HONEST\n",
    "print_100mb": "def ENTRY(ARGS):\n    s = 'x' * (1 << 20)\n    for _ in range(100):\n        print(s)\n    return HONEST\n",
    "threads": ("import threading\ndef ENTRY(ARGS):\n    threading.Thread(target=lambda: None).start()\n"
                "    return HONEST\n"),
    "atexit": "import atexit\ndef ENTRY(ARGS):\n    atexit.register(print, 'late')\n    return HONEST\n",
    "settrace": "import sys\ndef ENTRY(ARGS):\n    sys.settrace(lambda *a: None)\n    return HONEST\n",
    "builtins_dict": "def ENTRY(ARGS):\n    __builtins__['len'] = lambda y: 0\n    return HONEST\n",
    "import_builtins": "import builtins\ndef ENTRY(ARGS):\n    builtins.len = lambda y: 0\n    return HONEST\n",
    "global_builtin_override": "def ENTRY(ARGS):\n    global max\n    max = min\n    return HONEST\n",
    "sys_modules": "import sys\ndef ENTRY(ARGS):\n    sys.modules['math'] = None\n    return HONEST\n",
    # monkeypatching the modules the harness or the timing might use
    "patch_random_function": "import random\ndef ENTRY(ARGS):\n    random.random = lambda: 0.0\n    return HONEST\n",
    "patch_random_seed": "import random\ndef ENTRY(ARGS):\n    random.seed = lambda *a: None\n    return HONEST\n",
    "patch_random_class": "import random\ndef ENTRY(ARGS):\n    random.Random.random = lambda self: 0.0\n    return HONEST\n",
    "patch_math": "import math\ndef ENTRY(ARGS):\n    math.pi = 3\n    return HONEST\n",
    "setattr_module": "import math\ndef ENTRY(ARGS):\n    setattr(math, 'pi', 3)\n    return HONEST\n",
    "patch_time": "import time\ndef ENTRY(ARGS):\n    time.perf_counter = lambda: 0.0\n    return HONEST\n",
    "update_wrapper_gadget": ("import functools\nimport random\ndef ENTRY(ARGS):\n    def g():\n        pass\n"
                              "    n = '_' + '_globals_' + '_'\n"
                              "    functools.update_wrapper(g, random.Random.seed, assigned=(), updated=(n,))\n"
                              "    return HONEST\n"),
    "wraps_gadget": "import functools\ndef ENTRY(ARGS):\n    functools.wraps(ENTRY)\n    return HONEST\n",
    # forged results
    "always_equal_class": ("def ENTRY(ARGS):\n    class E:\n        def __eq__(self, o):\n            return True\n"
                           "    return E()\n"),
    "always_equal_type3": "def ENTRY(ARGS):\n    E = type('E', (), {'__eq__': lambda s, o: True})\n    return E()\n",
    "type_of_class_3arg": ("def ENTRY(ARGS):\n    t = type(int)\n"
                           "    return t('E', (), {'_' + '_eq_' + '_': lambda s, o: True})()\n"),
    "numpy_scalar": "import numpy\ndef ENTRY(ARGS):\n    return numpy.float64(HONEST_SCALAR)\n",
    "return_function": "def ENTRY(ARGS):\n    return ENTRY\n",
    "metaclass_kw": "def ENTRY(ARGS):\n    class A(metaclass=type):\n        pass\n    return HONEST\n",
}

# --- 2048-specific tricks --------------------------------------------------------------------------------------
CORNER_BODY = REFERENCES_2048["corner"].split("\n", 1)[1]  # everything after "def strategy(board, memo={}):"

TRICKS_2048 = {
    "str_subclass_always_equal": ("def strategy(board):\n    class K(str):\n        def __eq__(self, other):\n"
                                  "            return True\n    return K('W')\n"),
    "str_subclass_type3_eq": ("def strategy(board):\n    K = type('K', (str,), {'_' + '_eq_' + '_': lambda s, o: True})\n"
                              "    return K('W')\n"),
    "str_subclass_plain": "def strategy(board):\n    class K(str):\n        pass\n    return K('S')\n",
    "numpy_str": "import numpy\ndef strategy(board):\n    return numpy.str_('S')\n",
    "print_fake_results": ("def strategy(board, memo={}):\n"
                           "    print('{\"games\": [{\"end\": \"target\", \"score\": 999999}], \"reward\": 100}')\n"
                           "    print('All 8 games reached 2048. Reward: 100.0')\n" + CORNER_BODY),
    "read_game_object": ("def strategy(board):\n    game = getattr(board, 'game', None) or getattr(board, 'engine', None)\n"
                         "    if game is not None:\n        game.score = 10 ** 9\n    return 'S'\n"),
    "board_class_walk": "def strategy(board):\n    g = board.__class__.__mro__\n    return 'S'\n",
    "mutate_board": "def strategy(board):\n    board[3][0] = 2048\n    return 'S'\n",
    "cache_across_calls": ("def strategy(board, memo={}, seen={}):\n    def corner(board):\n"
                           + "".join("    " + line if line.strip() else line for line in CORNER_BODY.splitlines(True))
                           + "    hit = seen.get(board)\n    if hit is None:\n        hit = corner(board)\n"
                           "        seen[board] = hit\n    return hit\n"),
    # Learn where tiles spawned in earlier games and hope the next game repeats them.
    "learn_spawns": ("def strategy(board, memo={}, history={}):\n"
                     "    cells = tuple(i * len(board) + j for i, r in enumerate(board) for j, v in enumerate(r) if v)\n"
                     "    history[cells] = history.get(cells, 0) + 1\n" + CORNER_BODY),
    # Reseed the random module (the harness's games must not depend on it) and then play corner.
    "reseed_random": "import random\ndef strategy(board, memo={}):\n    random.seed(0)\n" + CORNER_BODY,
    "predict_with_random": ("import random\ndef strategy(board):\n    r = random.Random(len(board))\n"
                            "    return 'WASD'[r.randrange(4)]\n"),
    "sys_exit_after_move": "import sys\ndef strategy(board):\n    sys.exit(0)\n    return 'S'\n",
    "raise_after_printing_win": "def strategy(board):\n    print('2048 reached')\n    raise SystemExit(0)\n",
    "swallow_timeout_base": ("def strategy(board):\n    try:\n        while True:\n            pass\n"
                             "    except BaseException:\n        return 'S'\n"),
    "swallow_timeout_exception": ("def strategy(board):\n    try:\n        while True:\n            pass\n"
                                  "    except Exception:\n        return 'S'\n"),
    "edit_perf_counter": "import time\ndef strategy(board):\n    time.perf_counter = lambda: 0.0\n    return 'S'\n",
    "edit_random_seed": "import random\ndef strategy(board):\n    random.seed = lambda *a: None\n    return 'S'\n",
    "stall_forever": "def strategy(board):\n    return 'W' if board[0][0] else 'W'\n",
}


def render(template: str, entry: str, args: str, xarg: str, honest: str, honest_scalar: str, canary: str,
           helper: str = "") -> str:
    template = template.replace("def ENTRY(ARGS):\n", "def ENTRY(ARGS):\n" + helper, 1)
    return (template.replace("ENTRY(ARGS)", f"{entry}({args})").replace("ENTRY", entry).replace("XARG", xarg)
            .replace("HONEST_SCALAR", honest_scalar).replace("HONEST", honest).replace("CANARY", canary)
            .replace("MARKER", MARKER).replace("PARENT", str(os.getpid())))


# --- what the caller must keep ---------------------------------------------------------------------------------

def caller_state() -> dict:
    np_state = np.random.get_state()
    return {
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "signals": [signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGPROF, signal.SIGINT, signal.SIGTERM,
                                                  signal.SIGCHLD)],
        # armed or not and the interval (the time left of pytest-timeout's alarm runs down by itself)
        "itimers": [(value > 0, interval) for value, interval in map(signal.getitimer, (signal.ITIMER_REAL,
                                                                                         signal.ITIMER_PROF))],
        "random_state": random.getstate(),
        "random_funcs": [random.random, random.seed, random.choice, random.Random.random, random.Random.seed],
        "np_random": (np_state[0], np_state[1].tobytes(), np_state[2:]),
        "time_funcs": [time.perf_counter, time.monotonic, time.time, time.process_time, time.thread_time],
        "math": (math.pi, math.e, math.log2, math.sqrt),
        "builtins": {k: id(v) for k, v in vars(builtins).items() if not k.startswith("_")},
        "sys": (sys.gettrace(), sys.getprofile(), sys.getrecursionlimit(), sys.modules.get("math") is math),
    }


class RecordingPool(SandboxPool):
    """The real pool, remembering which worker process ran each source (to check none is left behind)."""

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self.worker_pids: dict[str, int] = {}

    def evaluate(self, source, task, payload=None):  # noqa: ANN001, ANN201
        result = super().evaluate(source, task, payload)
        pid = result.metadata.get("worker_pid")
        if pid is not None:
            self.worker_pids[source] = pid
        return result


@pytest.fixture(scope="module")
def pool():
    p = RecordingPool(2)
    yield p
    tpl = p._template.proc.pid if p._template is not None else None
    p.close()
    assert tpl is None or not left_behind(tpl)  # closing the pool leaves no template behind


@pytest.fixture(scope="module")
def canary_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("envcanary")
    os.chmod(d, 0o777)  # writable by anyone: only the sandbox may stop a write here
    return d


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def left_behind(pid: int, patience_s: float = 5.0) -> bool:
    """Whether process ``pid`` still runs after ``patience_s`` (a worker the pool just SIGKILLed may need a
    moment to finish exiting; a zombie awaiting its reap by the template has ended)."""
    deadline = time.monotonic() + patience_s
    while alive(pid):
        if time.monotonic() > deadline:
            return True
        time.sleep(0.01)
    return False


def template_pid(pool: SandboxPool) -> int:
    return pool._template.proc.pid  # type: ignore[union-attr]


def marker_processes() -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(MARKER in part for part in p.info["cmdline"] or ()):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def secrets(task) -> object:
    """What the caller derives for SEED (game seeds, or cases and the speed seed): nothing may change it."""
    if hasattr(task, "game_seeds"):
        return task.game_seeds(SEED)
    return task.cases(SEED), task.driver(SEED).speed_seed


def run_batch(pool: SandboxPool, task, sources: dict[str, str], honest_source: str, canaries: dict[str, object]) -> dict:
    """Score every attack and the honest reference in one batch; check what every attack must keep."""
    names = list(sources)
    completions = [as_completion(sources[n]) for n in names] + [as_completion(honest_source)]
    seeds = [SEED] * len(completions)
    kept_completions, kept_seeds = list(completions), list(seeds)
    driver_before = secrets(task)
    config_before = copy.deepcopy(task.config)
    before = caller_state()
    children_before = {c.pid for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE}
    results = score_batch(task, completions, seeds, pool)  # must not raise, whatever the completions do
    assert caller_state() == before
    assert completions == kept_completions and seeds == kept_seeds
    assert secrets(task) == driver_before and task.config == config_before
    assert all(isinstance(r, ScoreResult) for r in results)
    # no process left behind: every worker that ran an attack is gone (a zombie awaits its reap at most),
    # the test process has no new children but the pool's template, and no attack-spawned process exists
    for name, source in [*sources.items(), ("honest", honest_source)]:
        pid = pool.worker_pids.get(source)
        if pid is not None:
            assert not left_behind(pid), name
    children_after = {c.pid for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE}
    from ossgym.envs.code.matmul.judge import _baseline_pools  # matmul's trusted baseline pool, if started

    baseline_templates = {template_pid(p) for p in _baseline_pools.values() if p._template is not None}
    assert children_after - children_before <= {template_pid(pool)} | baseline_templates
    spares = [c for c in psutil.Process(template_pid(pool)).children(recursive=True)
              if c.status() != psutil.STATUS_ZOMBIE]
    assert len(spares) <= pool.workers + 1  # the idle spares the template keeps, and the PID namespace init
    assert marker_processes() == []
    for name, path in canaries.items():
        assert not os.path.exists(path), name
    return {"results": dict(zip(names, results)), "honest": results[-1]}


# --- GptOss2048-v0 ---------------------------------------------------------------------------------------------

TASK_2048 = Strategy2048Task(Strategy2048Config(num_games=3))


@pytest.fixture(scope="module")
def batch_2048(pool, canary_dir):
    sources, canaries = {}, {}
    for name, template in {**GENERIC, **TRICKS_2048}.items():
        canary = str(canary_dir / f"2048-{name}.txt")
        canaries[name] = canary
        sources[name] = render(template, "strategy", "board", "board", "'S'", "1", canary)
    return run_batch(pool, TASK_2048, sources, REFERENCES_2048["corner"], canaries)


def test_honest_2048_reference_plays(batch_2048):
    honest = batch_2048["honest"]
    assert honest.outcome == "ok" and honest.components["failures"] == 0.0
    assert honest.components["tile"] > 0.5


@pytest.mark.parametrize("name", sorted({**GENERIC, **TRICKS_2048}))
def test_2048_attack_earns_no_more_than_corner(batch_2048, name):
    r, honest = batch_2048["results"][name], batch_2048["honest"]
    assert math.isclose(sum(r.components.values()), r.reward, abs_tol=1e-12)
    assert r.reward <= honest.reward + 1e-12, (name, r.outcome, r.reward, honest.reward, r.feedback)
    assert r.components["win"] == 0.0


# Attacks that do nothing harmful and then play corner: they must score exactly what corner scores
# (printing is ignored, caching and reseeding the code's own random generator cannot change the games).
SAME_AS_CORNER = ["print_fake_results", "cache_across_calls", "learn_spawns", "reseed_random"]


@pytest.mark.parametrize("name", SAME_AS_CORNER)
def test_2048_harmless_variants_of_corner_score_exactly_corner(batch_2048, name):
    r, honest = batch_2048["results"][name], batch_2048["honest"]
    assert r.outcome == "ok"
    assert (r.reward, r.components, r.details["games"]) == (honest.reward, honest.components,
                                                            honest.details["games"])
    assert "999999" not in r.feedback and "Reward: 100" not in r.feedback


@pytest.mark.parametrize("name, outcome", [
    ("str_subclass_always_equal", "policy_violation"), ("numpy_str", "policy_violation"),
    ("numpy_scalar", "policy_violation"), ("sys_exit", "policy_violation"), ("swallow_timeout_base", "policy_violation"),
    ("edit_perf_counter", "ok"),  # 2048 allows `time` now; the module is read-only, so every game is an error
    ("kill_parent", "policy_violation"),
    ("write_canary", "policy_violation"), ("alloc_8gib_str", "memory_exceeded"),
])
def test_2048_attack_outcomes(batch_2048, name, outcome):
    assert batch_2048["results"][name].outcome == outcome


@pytest.mark.parametrize("name", ["str_subclass_plain", "return_function", "mutate_board", "swallow_timeout_exception",
                                  "edit_random_seed", "str_subclass_type3_eq", "edit_perf_counter"])
def test_2048_attack_loses_every_game(batch_2048, name):
    r = batch_2048["results"][name]
    assert r.outcome == "ok"
    assert r.components["failures"] == -1.0
    assert all(g["end"] in ("invalid_output", "error", "timeout") for g in r.details["games"])


def test_2048_time_patching_when_time_is_allowed(pool, canary_dir):
    # A task may allow `time`; the module the code sees is still read-only, so the patch is an error.
    from ossgym.sandbox import DEFAULT_IMPORTS

    task = Strategy2048Task(Strategy2048Config(num_games=2, time_budget_s=2.0,
                                               allowed_imports=DEFAULT_IMPORTS | {"time"}))
    sources = {
        "perf_counter": "import time\ndef strategy(board):\n    time.perf_counter = lambda: 0.0\n    return 'S'\n",
        "monotonic": "import time\ndef strategy(board):\n    time.monotonic = lambda: 0.0\n    return 'S'\n",
        "sleep_through": "import time\ndef strategy(board):\n    time.sleep(10)\n    return 'S'\n",
    }
    batch = run_batch(pool, task, sources, REFERENCES_2048["corner"], {})
    for name in ("perf_counter", "monotonic"):
        r = batch["results"][name]
        assert [g["end"] for g in r.details["games"]] == ["error", "error"], name
        assert "read-only" in r.feedback or "cannot modify" in r.feedback, r.feedback
    for r in batch["results"].values():
        assert r.reward < batch["honest"].reward


# --- GptOssMatmul-v0 -------------------------------------------------------------------------------------------
# The honest answer inside an attack computes the naive product twice: an attack that does nothing harmful
# then lands clearly below the naive reference (about half its speed), so timing noise cannot blur the
# comparison, while a cache that ever paid off would jump far above it.
SLOW_NAIVE = (
    "    def slow(A, B):\n"
    "        C = None\n"
    "        for rep in range(2):\n"
    "            k = len(B)\n"
    "            m = len(B[0]) if k else 0\n"
    "            C = [[0.0] * m for row in A]\n"
    "            for i in range(len(A)):\n"
    "                for j in range(m):\n"
    "                    s = 0.0\n"
    "                    for t in range(k):\n"
    "                        s = s + A[i][t] * B[t][j]\n"
    "                    C[i][j] = s\n"
    "        return C\n"
)

TRICKS_MATMUL = {
    "cache_by_id": ("def matmul(A, B, cache={}):\n" + SLOW_NAIVE +
                    "    key = (id(A), id(B))\n    hit = cache.get(key)\n    if hit is None:\n        hit = slow(A, B)\n"
                    "        cache[key] = hit\n    return hit\n"),
    "cache_by_content": ("def matmul(A, B, cache={}):\n" + SLOW_NAIVE +
                         "    key = (tuple(tuple(r) for r in A), tuple(tuple(r) for r in B))\n    hit = cache.get(key)\n"
                         "    if hit is None:\n        hit = slow(A, B)\n        cache[key] = hit\n    return hit\n"),
    "cache_by_shape": ("def matmul(A, B, cache={}):\n" + SLOW_NAIVE +
                       "    key = (len(A), len(B), len(B[0]) if B else 0)\n    hit = cache.get(key)\n"
                       "    if hit is None:\n        hit = slow(A, B)\n        cache[key] = hit\n    return hit\n"),
    "cache_by_first_value": ("def matmul(A, B, cache={}):\n" + SLOW_NAIVE +
                             "    key = (len(A), A[0][0] if A and A[0] else None)\n    hit = cache.get(key)\n"
                             "    if hit is None:\n        hit = slow(A, B)\n        cache[key] = hit\n    return hit\n"),
    "zeros_right_shape": "def matmul(A, B):\n    m = len(B[0]) if B else 0\n    return [[0.0] * m for row in A]\n",
    "zeros_when_big": ("def matmul(A, B):\n" + SLOW_NAIVE + "    m = len(B[0]) if B else 0\n"
                       "    if len(A) * m > 200:\n        return [[0.0] * m for row in A]\n    return slow(A, B)\n"),
    "nan_everywhere": "def matmul(A, B):\n    m = len(B[0]) if B else 0\n    return [[float('nan')] * m for row in A]\n",
    "inf_everywhere": "def matmul(A, B):\n    m = len(B[0]) if B else 0\n    return [[float('inf')] * m for row in A]\n",
    "pretend_list_class": ("def matmul(A, B):\n    class Rows:\n        def __len__(self):\n            return len(A)\n"
                           "        def __getitem__(self, i):\n            return [0.0]\n    return Rows()\n"),
    "list_subclass": "def matmul(A, B):\n" + SLOW_NAIVE + "    class L(list):\n        pass\n    return L(slow(A, B))\n",
    "list_subclass_rows": ("def matmul(A, B):\n" + SLOW_NAIVE + "    class L(list):\n        pass\n"
                           "    return [L(r) for r in slow(A, B)]\n"),
    "float_subclass_values": ("def matmul(A, B):\n" + SLOW_NAIVE + "    class F(float):\n        pass\n"
                              "    return [[F(v) for v in r] for r in slow(A, B)]\n"),
    "bool_values": "def matmul(A, B):\n    m = len(B[0]) if B else 0\n    return [[True] * m for row in A]\n",
    "tuple_rows": "def matmul(A, B):\n" + SLOW_NAIVE + "    return [tuple(r) for r in slow(A, B)]\n",
    "generator_result": "def matmul(A, B):\n" + SLOW_NAIVE + "    return (r for r in slow(A, B))\n",
    "return_input": "def matmul(A, B):\n    return A\n",
    "mutate_inputs_to_zero": ("def matmul(A, B):\n    for row in A:\n        for j in range(len(row)):\n"
                              "            row[j] = 0.0\n    m = len(B[0]) if B else 0\n    return [[0.0] * m for row in A]\n"),
    "print_fake_results": ("def matmul(A, B):\n" + SLOW_NAIVE +
                           "    print('speedup: 1000.0x, all cases correct')\n    return slow(A, B)\n"),
    "numpy_matmul": "import numpy\ndef matmul(A, B):\n    return (numpy.array(A) @ numpy.array(B)).tolist()\n",
    "edit_perf_counter": "import time\ndef matmul(A, B):\n    time.perf_counter = lambda: 0.0\n    return []\n",
    "edit_process_time": "import time\ndef matmul(A, B):\n    time.process_time = lambda: 0.0\n    return []\n",
    "random_seed_patch": ("import random\ndef matmul(A, B):\n" + SLOW_NAIVE +
                          "    random.seed(0)\n    random.random = lambda: 0.0\n    return slow(A, B)\n"),
    "sys_exit_zero": "import sys\ndef matmul(A, B):\n    sys.exit(0)\n",
    "swallow_timeout": ("def matmul(A, B):\n" + SLOW_NAIVE + "    try:\n        while True:\n            pass\n"
                        "    except BaseException:\n        return slow(A, B)\n"),
}

TASK_MATMUL = MatmulTask(MatmulConfig())


@pytest.fixture(scope="module")
def batch_matmul(pool, canary_dir):
    sources, canaries = {}, {}
    for name, template in GENERIC.items():
        canary = str(canary_dir / f"matmul-{name}.txt")
        canaries[name] = canary
        sources[name] = render(template, "matmul", "A, B", "A", "slow(A, B)", "1.0", canary, helper=SLOW_NAIVE)
    sources.update(TRICKS_MATMUL)
    return run_batch(pool, TASK_MATMUL, sources, MATMUL_CORRECT["naive"], canaries)


def test_honest_matmul_reference_is_correct(batch_matmul):
    honest = batch_matmul["honest"]
    assert honest.outcome == "ok" and honest.details["correct"], honest.feedback


@pytest.mark.parametrize("name", sorted({**GENERIC, **TRICKS_MATMUL}))
def test_matmul_attack_earns_no_more_than_naive(batch_matmul, name):
    r, honest = batch_matmul["results"][name], batch_matmul["honest"]
    assert math.isclose(sum(r.components.values()), r.reward, abs_tol=1e-12)
    assert r.reward < honest.reward, (name, r.outcome, r.components, honest.components, r.feedback)


# Wrong products, wrong types, stale caches: rejected as incorrect (no speed reward whatever the timing).
INCORRECT_MATMUL = ["cache_by_shape", "zeros_right_shape", "zeros_when_big", "nan_everywhere",
                    "inf_everywhere", "list_subclass", "list_subclass_rows", "float_subclass_values", "bool_values",
                    "tuple_rows", "generator_result", "return_input", "mutate_inputs_to_zero", "return_function",
                    "str_format_attr", "patch_math", "random_seed_patch"]


@pytest.mark.parametrize("name", INCORRECT_MATMUL)
def test_matmul_tricks_are_incorrect(batch_matmul, name):
    r = batch_matmul["results"][name]
    assert r.components["correctness"] < 0 and r.components["speed"] == 0.0, (name, r.components, r.feedback)


@pytest.mark.parametrize("name", ["cache_by_content", "cache_by_first_value", "print_fake_results", "alloc_caught",
                                  "global_builtin_override"])
def test_matmul_correct_caches_and_harmless_tricks_get_no_speedup(batch_matmul, name):
    # correct, but computing the product twice: a cache that paid off would show a large speedup
    r, honest = batch_matmul["results"][name], batch_matmul["honest"]
    assert r.details["correct"], (name, r.feedback)
    assert r.components["speed"] < honest.components["speed"], (name, r.components, honest.components)
    assert "1000.0x" not in r.feedback


@pytest.mark.parametrize("name", ["cache_by_id", "pretend_list_class", "numpy_matmul", "edit_perf_counter", "edit_process_time",
                                  "sys_exit_zero", "swallow_timeout"])
def test_matmul_forbidden_tricks_are_policy_violations(batch_matmul, name):
    assert batch_matmul["results"][name].outcome == "policy_violation"
