"""The sandbox's own tests again, as an ordinary user (CI runs as root; most people who train do not).

As root, the test starts pytest in a child that drops to uid/gid 65534 (nobody) before it imports
anything, so the pool takes the unprivileged path: a user namespace instead of per-worker uids, and every
other layer the same. The child gets a private mount namespace in which only the Python installation under
/root stays reachable (this machine's Python lives in /root/.pyenv, and /root is mode 700); nothing else
about the environment changes.
"""

import ctypes
import ctypes.util
import os
import subprocess
import sys
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="already an ordinary user: the sandbox tests run "
                                "this path directly")

NOBODY = 65534
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000


def _as_nobody(keep: str) -> None:
    """preexec_fn: private mounts, keep ``keep`` (a path under a closed directory) reachable, drop to nobody."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise OSError(ctypes.get_errno(), what)

    check(libc.unshare(0x00020000), "unshare(CLONE_NEWNS)")
    check(libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "make / private")
    if keep:
        closed = os.path.dirname(keep)
        park = tempfile.mkdtemp()
        check(libc.mount(keep.encode(), park.encode(), None, _MS_BIND | _MS_REC, None), "bind")
        check(libc.mount(b"none", closed.encode(), b"tmpfs", 0, b"mode=755"), "tmpfs")
        os.mkdir(keep)
        check(libc.mount(park.encode(), keep.encode(), None, _MS_MOVE, None), "move")
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _python_under_closed_dir() -> str:
    """The top directory of this Python's installation below a directory others cannot enter, or ''."""
    real = os.path.realpath(sys.executable)
    parts = real.split(os.sep)
    for i in range(2, len(parts)):
        d = os.sep.join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return os.sep.join(parts[:i + 1])
    return ""


@pytest.fixture
def open_tmp():
    """A temporary directory nobody may use (pytest's own tmp_path sits below a directory of mode 700)."""
    import shutil

    d = tempfile.mkdtemp(prefix="ossgym-nonroot-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_sandbox_tests_pass_as_an_ordinary_user(open_tmp):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = os.path.join(open_tmp, "basetemp")
    keep = _python_under_closed_dir()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={base}",
           "tests/test_sandbox_session.py", "tests/test_sandbox_redteam.py", "tests/test_sandbox.py",
           "-k", "not nonroot"]
    env = {**os.environ, "HOME": open_tmp, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(cmd, cwd=here, env=env, preexec_fn=lambda: _as_nobody(keep), capture_output=True,
                       text=True, timeout=900)
    tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert " passed" in r.stdout and " failed" not in r.stdout, tail


def test_the_unprivileged_pool_has_every_layer(open_tmp):
    """Directly: the isolation an ordinary user's pool reports (the probe's metadata) misses nothing."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import json; from ossgym.sandbox import SandboxPool, SandboxTask\n"
            "from ossgym.sandbox.isolation import missing\n"
            "with SandboxPool(1, require_isolation=True) as p:\n"
            "    r = p.evaluate('def f(x):\\n    return x\\n', SandboxTask(entrypoint='f', "
            "harness='ossgym.sandbox.testing:call_once'), 3)\n"
            "print(json.dumps([r.value, r.metadata['isolation'].get('user_namespace'), missing(r.metadata['isolation'])]))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=here, env={**os.environ, "HOME": open_tmp},
                       preexec_fn=lambda: _as_nobody(_python_under_closed_dir()), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[3, true, {}]"
