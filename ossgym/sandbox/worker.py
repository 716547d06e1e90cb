"""The code that runs in a sandbox worker process (a fork of the template): isolation and limits first,
then policy check, restricted compile, load, the trusted harness, and results back as framed plain data.

Frames on the worker's channel are described in protocol.py. In a caller-driven session the worker sends
``l`` once the code is loaded, then answers each ``q`` request with ``v`` (the handler's plain reply) or
``e`` (a typed failure), until the caller closes the channel.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable

from ossgym.sandbox import audit
from ossgym.sandbox.context import (CallTimeout, HarnessContext, InvalidOutput, TotalTimeout, UserError,
                                    _clock, _Interrupt, guarded_call, install_timer)
from ossgym.sandbox import seccomp
from ossgym.sandbox.isolation import PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, drop_bounding_set, drop_capabilities, landlock_deny_all, prctl
from ossgym.sandbox.policy import analyze
from ossgym.sandbox.restricted import compile_untrusted, load_untrusted
from ossgym.sandbox.result import Outcome, PlainDataError, decode_plain, encode_plain
from ossgym.sandbox.task import SandboxTask
from ossgym.sandbox.protocol import EXIT_INTERNAL, EXIT_MEMORY, EXIT_OK, REQUEST, frame, read_frame, read_kinded, write_kinded
from ossgym.sandbox.restricted import FILENAME
FIRST_UID = 200_000  # workers started as root run as uids from here on, one per worker (no account needed)
UID_RANGE = 60_000
_MAX_OPEN_FILES = 8
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


def prepare(ctrl_fd: int, devnull_fd: int, workdir: str, uid: int, userns: bool) -> dict:
    """Isolate a spare worker before it has a request: own process group, no inherited fds, no
    environment, the empty read-only root (chroot), a uid of its own (as root) or the user namespace's one
    id (as an ordinary user), no capabilities, not dumpable, no file writes, no new processes, few fds, and
    last the seccomp filter (isolation.py lists the layers). Returns what was applied: the template reports
    it to the caller before any untrusted code exists in this process."""
    layers: dict[str, object] = {}
    os.setsid()
    layers["pdeathsig"] = prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    layers["no_new_privs"] = prctl(PR_SET_NO_NEW_PRIVS, 1)
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
    layers["chroot"] = layers["user_separation"] = False
    if os.getuid() == 0:  # real root, or root of the template's user namespace
        # Everything the worker runs is imported by now (the template preloads harness and allowed modules),
        # so the file system can go: the root becomes the empty directory.
        os.chroot(workdir)
        os.chdir("/")
        layers["chroot"] = True
        if not userns:  # real root: a uid of its own, so it shares no uid with the caller or another worker
            drop_bounding_set()
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        layers["user_separation"] = True  # (as an ordinary user: the user namespace maps one id, the caller's)
    layers["uid"] = os.getuid()
    layers["capabilities_dropped"] = drop_capabilities()
    layers["not_dumpable"] = prctl(PR_SET_DUMPABLE, 0)
    layers["rlimits"] = limits
    layers["landlock"], why = landlock_deny_all()
    if why:
        layers["landlock_error"] = why
    layers["seccomp"] = seccomp.install()
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
    code = None
    if not request.get("compromised"):  # the test-only mode skips every Python-level layer
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
    module, _, name = request["trusted"].partition(":")
    trusted_module = importlib.import_module(module)
    trusted = getattr(trusted_module, name)
    if not request.get("compromised") and getattr(trusted_module, "SANDBOX_AUDIT_HOOK", True):
        # pylayer: from here on exec/compile/import/open/os.*/frames... are denied (ossgym/sandbox/audit.py);
        # off in the compromised test mode and for test harnesses that attack one layer alone
        audit.install(code)  # type: ignore[arg-type]
    return _run_loaded(request, task, code, lines, trusted, payload, send, deadline)


def _load_unrestricted(source: str, entrypoint: str) -> Callable:
    """TEST-ONLY (the pool's ``compromised_for_tests``): the source as ordinary Python with real builtins,
    as if every Python-level layer had been escaped; the OS layers still hold."""
    namespace: dict = {"__name__": "untrusted"}
    exec(compile(source, FILENAME, "exec", dont_inherit=True), namespace)  # noqa: S102 - the point of the mode
    return namespace[entrypoint]


def _run_loaded(request: dict, task: SandboxTask, code: object, lines: list[str], trusted: Callable,
                payload: object, send: Callable[[bytes, bytes], None], deadline: float) -> dict:
    """Load the compiled untrusted module, then run the harness once or answer the session's requests."""
    try:
        if request.get("compromised"):
            fn = guarded_call(_load_unrestricted, (request["source"], task.entrypoint), task.total_timeout_s,
                              deadline, lines)
        else:
            fn = guarded_call(load_untrusted, (code, task.allowed_imports, task.seed, task.entrypoint),
                              task.total_timeout_s, deadline, lines)
        ctx = HarnessContext(fn, task.call_timeout_s, deadline, task.max_output_bytes,
                             lambda data: send(b"c", data), lines)
        if task.handler:
            return _serve(trusted, fn, ctx, task, send)
        value = trusted(fn, payload, ctx)
        encoded = encode_plain(value, task.max_output_bytes)
    except BaseException as e:  # noqa: BLE001 - every way the evaluation can end becomes a typed record
        return _failure_record(e)
    send(b"v", encoded)
    return _record(Outcome.OK, "ok")


def _failure_record(e: BaseException) -> dict:
    """The typed record of an evaluation ended by ``e``."""
    if isinstance(e, CallTimeout):
        return _record(Outcome.TIMEOUT, str(e), timeout_kind="call")
    if isinstance(e, (TotalTimeout, _Interrupt)):
        kind = "total" if isinstance(e, TotalTimeout) else "call"
        return _record(Outcome.TIMEOUT, f"the evaluation ran past its {kind} time limit", timeout_kind=kind)
    if isinstance(e, UserError):
        outcome = Outcome.MEMORY_EXCEEDED if e.type_name == "MemoryError" else Outcome.RUNTIME_ERROR
        return _record(outcome, f"{e.type_name}: {e.message}", error_type=e.type_name, traceback=e.traceback)
    if isinstance(e, (InvalidOutput, PlainDataError)):
        return _record(Outcome.INVALID_OUTPUT, f"invalid output: {e}")
    if isinstance(e, MemoryError):
        return _record(Outcome.MEMORY_EXCEEDED, "the evaluation ran out of memory")
    if isinstance(e, RecursionError):
        return _record(Outcome.RUNTIME_ERROR, f"harness: RecursionError: {e}", error_type="RecursionError")
    if isinstance(e, (SystemExit, KeyboardInterrupt, GeneratorExit)):
        return _record(Outcome.CRASHED, f"the evaluation ended by {type(e).__name__}")
    # a harness error (e.g. on odd user data) is a typed result too
    return _record(Outcome.RUNTIME_ERROR, f"harness raised {type(e).__name__}: {str(e)[:500]}",
                   error_type=type(e).__name__)


def _serve(handler: Callable, fn: Callable, ctx: HarnessContext, task: SandboxTask,
           send: Callable[[bytes, bytes], None]) -> dict:
    """Answer the caller's requests with ``handler(fn, request, ctx)`` until it closes the channel.

    A failed request is answered with an ``e`` frame and the session goes on; running out of memory ends it.
    """
    send(b"l", b"")
    cap = 4 * task.max_output_bytes + (64 << 10)
    while True:
        got = read_kinded(_CHANNEL[0], cap)
        if got is None or got[0] != REQUEST:
            return _record(Outcome.OK, "session closed")
        try:
            request = decode_plain(got[1], cap)
            body = encode_plain(handler(fn, request, ctx), task.max_output_bytes)
        except BaseException as e:  # noqa: BLE001 - typed per request
            record = _failure_record(e)
            if record["outcome"] == Outcome.MEMORY_EXCEEDED.value:
                return record
            if audit.denied():  # a gadget was tried: the session ends as a policy violation
                return audit.override(record)
            kind = {"timeout": "timeout", "invalid_output": "invalid", "crashed": "crash"}.get(record["outcome"], "error")
            send(b"e", json.dumps({"kind": kind, "message": record["message"][:2000]}).encode())
            continue
        send(b"v", body)


_CHANNEL = [-1]  # the worker's channel fd (set in spare_main before anything runs)


_WARM_SOURCE = "import math\ndef f(board, n=1):\n    for row in board:\n        x = row[0] + 1\n    return [x, 'W']\n"


def warm_up() -> None:
    """Touch the policy, compiler and codec paths once while idle, so their copy-on-write page faults
    happen before a request arrives. Runs no untrusted code and leaves no state behind."""
    task = SandboxTask(entrypoint="f", handler="x:y")
    tree, _ = analyze(_WARM_SOURCE, task)
    code = compile_untrusted(tree)[0] if tree is not None else None
    if code is not None:
        load_untrusted(code, task.allowed_imports, 0, "f")
    json.loads(json.dumps(_record(Outcome.OK, "warm", violations=[[1, 0, "x"]])))
    decode_plain(encode_plain({"a": [1, 2.5, (3, "s")]}, 1 << 10), 1 << 10)


def spare_main(ctrl: socket.socket, devnull_fd: int, workdir: str, uid: int, userns: bool) -> None:
    """Entry point of a spare worker forked by the template: isolate, wait for one request, evaluate it,
    send the record, and exit (never returns)."""
    code = EXIT_INTERNAL
    try:
        layers = prepare(ctrl.fileno(), devnull_fd, workdir, uid, userns)
        warm_up()
        ctrl.sendall(frame(json.dumps(layers).encode()))  # to the template, before any untrusted code exists
        msg, fds, _flags, _addr = socket.recv_fds(ctrl, 1, 1)
        if msg != b"E" or len(fds) != 1:
            os._exit(EXIT_OK)  # the template is gone or dropped this spare
        result_fd = _CHANNEL[0] = fds[0]
        raw_request, raw_payload = read_frame(ctrl), read_frame(ctrl)
        ctrl.close()
        request = json.loads(raw_request)
        task = SandboxTask(**request["task"])
        limit(task, layers, len(raw_request) + len(raw_payload))
        layers["tick_s"] = install_timer(task.call_timeout_s)
        sys.stdout = out = CappedText(task.max_output_bytes)
        sys.stderr = err = CappedText(task.max_output_bytes)

        def send(kind: bytes, body: bytes) -> None:
            write_kinded(result_fd, kind, body)

        try:
            payload = decode_plain(raw_payload, len(raw_payload))
            record = audit.override(evaluate(request, payload, send))
        except MemoryError:
            record = _record(Outcome.MEMORY_EXCEEDED, "the evaluation ran out of memory")
        record["stdout"], record["stderr"] = out.text(), err.text()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        record["metadata"] = {"layers": layers, "worker_cpu_s": usage.ru_utime + usage.ru_stime,
                              "worker_page_faults": usage.ru_minflt}
        write_kinded(result_fd, b"r", json.dumps(record).encode())
        code = EXIT_OK
    except MemoryError:
        code = EXIT_MEMORY
    finally:
        os._exit(code)
