"""The code that runs in a sandbox worker process (a fork of the template): isolation and limits first,
then policy check, restricted compile, load, the trusted harness, and results back as framed plain data.

Frames on the result pipe: one kind byte, a 4-byte big-endian length, the body. ``c`` = checkpoint
(encoded plain data), ``v`` = the harness's return value, ``r`` = the result record (JSON, last frame).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import io
import json
import os
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable

from ossgym.sandbox import audit
from ossgym.sandbox.context import (CallTimeout, HarnessContext, InvalidOutput, TotalTimeout, UserError,
                                    _clock, _Interrupt, guarded_call, install_timer)
from ossgym.sandbox.policy import analyze
from ossgym.sandbox.restricted import compile_untrusted, load_untrusted
from ossgym.sandbox.result import Outcome, PlainDataError, decode_plain, encode_plain
from ossgym.sandbox.task import SandboxTask
from ossgym.sandbox.zygote import read_frame

EXIT_OK = 0
EXIT_MEMORY = 77
EXIT_INTERNAL = 70
FIRST_UID = 200_000  # workers started as root run as uids from here on, one per worker (no account needed)
UID_RANGE = 60_000
_MAX_OPEN_FILES = 8
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_NO_NEW_PRIVS = 1, 4, 38
_CLONE_NEWNET, _CLONE_NEWIPC, _CLONE_NEWUTS = 0x40000000, 0x08000000, 0x04000000

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - no libc (not Linux)
    _libc = None


def prctl(option: int, arg: int) -> bool:
    """Call prctl(2); False where it is not available."""
    return _libc is not None and _libc.prctl(option, arg, 0, 0, 0) == 0


def unshare_namespaces() -> dict:
    """Move this process into new network (no interfaces), IPC and UTS namespaces, as far as the OS allows;
    return which ones were applied (and why not)."""
    if _libc is None:
        return {"network_namespace": False, "network_namespace_error": "no libc"}
    if _libc.unshare(_CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS) == 0:
        return {"network_namespace": True, "ipc_namespace": True, "uts_namespace": True}
    if _libc.unshare(_CLONE_NEWNET) == 0:
        return {"network_namespace": True, "ipc_namespace": False, "uts_namespace": False}
    return {"network_namespace": False, "network_namespace_error": os.strerror(ctypes.get_errno())}


class CappedText(io.TextIOBase):
    """A text stream that keeps at most ``cap`` characters and counts what it dropped."""

    def __init__(self, cap: int) -> None:
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        s = str(s)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
            self.size += min(len(s), room)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def text(self) -> str:
        out = "".join(self.parts).encode("utf-8", "replace")[: self.cap].decode("utf-8", "ignore")
        return out + (f"\n[... {self.dropped} characters dropped]" if self.dropped else "")


def _write_frame(fd: int, kind: bytes, body: bytes) -> None:
    data = memoryview(kind + struct.pack(">I", len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def prepare(ctrl_fd: int, devnull_fd: int, workdir: str, uid: int) -> dict:
    """Isolate a spare worker before it has a request: own process group, no inherited fds, empty cwd
    (as root: an empty chroot), no environment, no file writes, no new processes, few fds, and (as root)
    a uid of its own, so it can neither signal nor trace the caller, the template or another worker.
    Returns what was applied (it goes into the result's metadata)."""
    layers: dict[str, object] = {}
    os.setsid()
    layers["pdeathsig"] = prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    layers["no_new_privs"] = prctl(_PR_SET_NO_NEW_PRIVS, 1)
    for fd in (0, 1, 2):
        os.dup2(devnull_fd, fd)
    os.closerange(3, ctrl_fd)
    os.closerange(ctrl_fd + 1, 1 << 16)
    os.chdir(workdir)
    os.environ.clear()
    with open("/proc/self/statm", "rb") as f:
        layers["base_vsz"] = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limits = {"RLIMIT_FSIZE": 0, "RLIMIT_NOFILE": _MAX_OPEN_FILES, "RLIMIT_CORE": 0, "RLIMIT_NPROC": 0}
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file write fails with EFBIG instead of killing
    if os.getuid() == 0:
        # Everything the worker runs is imported by now (the template preloads harness and allowed modules),
        # so the file system can go: the root becomes the empty directory.
        os.chroot(workdir)
        os.chdir("/")
        layers["chroot"] = True
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    layers["uid"] = os.getuid()
    layers["dumpable_off"] = prctl(_PR_SET_DUMPABLE, 0)
    layers["rlimits"] = limits
    return layers


def limit(task: SandboxTask, layers: dict, request_bytes: int) -> None:
    """The per-task limits, set once the request is known: address space and CPU time."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(usage.ru_utime + usage.ru_stime + task.total_timeout_s) + 2
    space = layers["base_vsz"] + 4 * request_bytes + (task.memory_mb << 20)  # type: ignore[operator]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (space, space))
    layers["rlimits"] = {**layers["rlimits"], "RLIMIT_CPU": cpu, "RLIMIT_AS": space}  # type: ignore[dict-item]


def _record(outcome: Outcome, message: str = "", **fields: object) -> dict:
    return {"outcome": outcome.value, "message": message, **fields}


def evaluate(request: dict, payload: object, send: Callable[[bytes, bytes], None]) -> dict:
    """Run one evaluation in this (already isolated) process; return the result record."""
    task = SandboxTask(**request["task"])
    source: str = request["source"]
    deadline = _clock() + task.total_timeout_s
    tree, violations = analyze(source, task)
    as_list = [[v.line, v.col, v.message] for v in violations]
    if tree is None:
        is_syntax = bool(violations) and violations[0].message.startswith("syntax error")
        return _record(Outcome.SYNTAX_ERROR if is_syntax else Outcome.POLICY_VIOLATION,
                       "; ".join(str(v) for v in violations[:5]), violations=as_list)
    if violations:
        return _record(Outcome.POLICY_VIOLATION, "; ".join(str(v) for v in violations[:5]), violations=as_list)
    try:
        code, violations = compile_untrusted(tree)
    except (RecursionError, MemoryError, ValueError, SyntaxError) as e:  # pathological nesting or size
        return _record(Outcome.POLICY_VIOLATION, f"the code could not be compiled: {type(e).__name__}",
                       violations=[[1, 0, f"the code is too deeply nested or too large ({type(e).__name__})"]])
    if code is None:
        return _record(Outcome.POLICY_VIOLATION, "; ".join(str(v) for v in violations[:5]),
                       violations=[[v.line, v.col, v.message] for v in violations])
    lines = source.splitlines()
    module, _, name = request["harness"].partition(":")
    harness_module = importlib.import_module(module)
    harness = getattr(harness_module, name)
    if getattr(harness_module, "SANDBOX_AUDIT_HOOK", True):  # off only for test harnesses of single layers
        audit.install(code)  # from here on exec/compile/import/open/os.*/frames... are denied (audit.py)
    try:
        fn = guarded_call(load_untrusted, (code, task.allowed_imports, task.seed, task.entrypoint),
                          task.total_timeout_s, deadline, lines)
        ctx = HarnessContext(fn, task.call_timeout_s, deadline, task.max_output_bytes,
                             lambda data: send(b"c", data), lines)
        value = harness(fn, payload, ctx)
        encoded = encode_plain(value, task.max_output_bytes)
    except CallTimeout as e:
        return _record(Outcome.TIMEOUT, str(e), timeout_kind="call")
    except (TotalTimeout, _Interrupt) as e:
        kind = "total" if isinstance(e, TotalTimeout) else "call"
        return _record(Outcome.TIMEOUT, f"the evaluation ran past its {kind} time limit", timeout_kind=kind)
    except UserError as e:
        outcome = Outcome.MEMORY_EXCEEDED if e.type_name == "MemoryError" else Outcome.RUNTIME_ERROR
        return _record(outcome, f"{e.type_name}: {e.message}", error_type=e.type_name, traceback=e.traceback)
    except (InvalidOutput, PlainDataError) as e:
        return _record(Outcome.INVALID_OUTPUT, f"invalid output: {e}")
    except MemoryError:
        return _record(Outcome.MEMORY_EXCEEDED, "the evaluation ran out of memory")
    except RecursionError as e:
        return _record(Outcome.RUNTIME_ERROR, f"harness: RecursionError: {e}", error_type="RecursionError")
    except Exception as e:  # noqa: BLE001 - a harness error (e.g. on odd user data) is a typed result too
        return _record(Outcome.RUNTIME_ERROR, f"harness raised {type(e).__name__}: {str(e)[:500]}",
                       error_type=type(e).__name__)
    send(b"v", encoded)
    return _record(Outcome.OK, "ok")


_WARM_SOURCE = "import math\ndef f(board, n=1):\n    for row in board:\n        x = row[0] + 1\n    return [x, 'W']\n"


def warm_up() -> None:
    """Touch the policy, compiler and codec paths once while idle, so their copy-on-write page faults
    happen before a request arrives. Runs no untrusted code and leaves no state behind."""
    task = SandboxTask(entrypoint="f", harness="x:y")
    tree, _ = analyze(_WARM_SOURCE, task)
    code = compile_untrusted(tree)[0] if tree is not None else None
    if code is not None:
        load_untrusted(code, task.allowed_imports, 0, "f")
    json.loads(json.dumps(_record(Outcome.OK, "warm", violations=[[1, 0, "x"]])))
    decode_plain(encode_plain({"a": [1, 2.5, (3, "s")]}, 1 << 10), 1 << 10)


def spare_main(ctrl: socket.socket, devnull_fd: int, workdir: str, uid: int) -> None:
    """Entry point of a spare worker forked by the template: isolate, wait for one request, evaluate it,
    send the record, and exit (never returns)."""
    code = EXIT_INTERNAL
    try:
        layers = prepare(ctrl.fileno(), devnull_fd, workdir, uid)
        warm_up()
        msg, fds, _flags, _addr = socket.recv_fds(ctrl, 1, 1)
        if msg != b"E" or len(fds) != 1:
            os._exit(EXIT_OK)  # the template is gone or dropped this spare
        result_fd = fds[0]
        raw_request, raw_payload = read_frame(ctrl), read_frame(ctrl)
        ctrl.close()
        request = json.loads(raw_request)
        task = SandboxTask(**request["task"])
        limit(task, layers, len(raw_request) + len(raw_payload))
        layers["tick_s"] = install_timer(task.call_timeout_s)
        sys.stdout = out = CappedText(task.max_output_bytes)
        sys.stderr = err = CappedText(task.max_output_bytes)

        def send(kind: bytes, body: bytes) -> None:
            _write_frame(result_fd, kind, body)

        try:
            payload = decode_plain(raw_payload, len(raw_payload))
            record = audit.override(evaluate(request, payload, send))
        except MemoryError:
            record = _record(Outcome.MEMORY_EXCEEDED, "the evaluation ran out of memory")
        record["stdout"], record["stderr"] = out.text(), err.text()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record["metadata"] = {"layers": layers, "worker_cpu_s": usage.ru_utime + usage.ru_stime,
                              "worker_page_faults": usage.ru_minflt}
        _write_frame(result_fd, b"r", json.dumps(record).encode())
        code = EXIT_OK
    except MemoryError:
        code = EXIT_MEMORY
    finally:
        os._exit(code)
