"""Harnesses for the red-team suite, imported inside sandbox workers (never used by environments).

``unchecked``: runs ``payload["source"]`` through the restricted compiler and guards WITHOUT the static
policy, to show that the second layer holds on its own.
``escaped_*``: trusted code that behaves like an attacker who got past every Python-level restriction,
to show that the process layer (limits, own uid, chroot, namespaces, kill) holds on its own.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import sys
import threading
import time

from ossgym.sandbox.context import guarded_call
from ossgym.sandbox.restricted import compile_untrusted, load_untrusted

# These harnesses attack one layer alone (they compile, exec and escape on purpose), so the worker does not
# install the audit hook for them; tests/test_audit.py attacks the hook alone.
SANDBOX_AUDIT_HOOK = False
from ossgym.sandbox.task import DEFAULT_IMPORTS


def unchecked(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Compile payload["source"] with RestrictedPython only (no AST policy), call f(), return its value."""
    code, violations = compile_untrusted(ast.parse(payload["source"], "<untrusted>"))
    if code is None:
        return {"compile_error": [v.message for v in violations]}
    lines = payload["source"].splitlines()
    g = guarded_call(load_untrusted, (code, DEFAULT_IMPORTS, 0, "f"), 1.0, ctx.clock() + ctx.time_left(), lines)
    return guarded_call(g, (), 0.5, ctx.clock() + ctx.time_left(), lines)


def _attempt(action):  # noqa: ANN001, ANN202
    try:
        action()
        return "done"
    except BaseException as e:  # noqa: BLE001
        return f"blocked: {type(e).__name__}"


def _interfaces():  # noqa: ANN202
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:  # seccomp: no socket may be made, not even to list interfaces
        return []


def escaped_probe(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Report what an escaped attacker could do from inside a worker."""
    canary = payload["canary"]

    def write_file():
        with open(canary, "w") as f:
            f.write("x" * 100)
            f.flush()

    def fork():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def connect():
        s = socket.create_connection((payload.get("host", "127.0.0.1"), payload.get("port", 22)), timeout=0.2)
        s.close()

    def kill_parent():
        os.kill(payload["caller_pid"], 0)

    def read_passwd():
        with open("/etc/passwd") as f:
            f.read(10)

    return {
        "uid": os.getuid(),
        "env": dict(os.environ),
        "cwd_listing": os.listdir("."),
        "write_file": _attempt(write_file),
        "fork": _attempt(fork),
        "connect": _attempt(connect),
        "signal_caller": _attempt(kill_parent),
        "read_passwd": _attempt(read_passwd),
        "interfaces": _interfaces(),
        "make_socket": _attempt(lambda: socket.socket(socket.AF_UNIX).close()),
        "open_fds": sorted(int(x) for x in os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else [],
    }


def escaped_exit(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Fake success by leaving the process early: os._exit(0) or sys.exit(0)."""
    ctx.checkpoint({"progress": 1})
    if payload == "os":
        os._exit(0)
    sys.exit(0)


def escaped_no_timeout(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Disable the per-call timer (signal.alarm(0), SIG_IGN) and spin: only the caller's kill can stop it."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.alarm(0)
    ctx.checkpoint({"spinning": True})
    while True:
        pass


def escaped_threads(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Start a thread that would outlive the call, then return."""
    threading.Thread(target=lambda: time.sleep(60), daemon=False).start()
    return "returned"


def escaped_crash(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Crash the worker with a segmentation fault."""
    import ctypes

    ctypes.string_at(0)


def escaped_fd_flood(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Write 100 MB straight to file descriptors 1 and 2."""
    chunk = b"x" * (1 << 20)
    for _ in range(100):
        os.write(1, chunk)
        os.write(2, chunk)
    return "flooded"


def random_after_call(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Seed the module-level generator, let the untrusted code run, then draw: reseeding must not reach here."""
    import random

    rng = random.Random(payload)
    ctx.call(payload)
    return rng.random()


def escaped_forged_frames(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Write hand-made frames straight to the worker's channel: a deeply nested record, or a huge frame."""
    import struct

    fd = max(int(x) for x in os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    if fd is None:  # chroot: no /proc; the channel is the only socket above 2
        fd = next(f for f in range(3, 8) if _is_socket(f))
    if payload == "deep":
        body = b"[" * 200_000 + b"]" * 200_000
        os.write(fd, b"r" + struct.pack(">I", len(body)) + body)
    elif payload == "huge":
        os.write(fd, b"c" + struct.pack(">I", 1 << 31))
    elif payload == "fake_ok":
        value = b'"forged"'
        record = b'{"outcome": "ok", "message": "ok"}'
        os.write(fd, b"v" + struct.pack(">I", len(value)) + value + b"r" + struct.pack(">I", len(record)) + record)
    os._exit(0)


def _is_socket(fd):  # noqa: ANN001, ANN202
    import stat

    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def call_with_sleeper(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Hands the code a trusted sleep (untrusted code has none: its time module counts work)."""
    return ctx.call(time.sleep, payload)
