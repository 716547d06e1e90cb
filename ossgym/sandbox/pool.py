"""The caller's side: a bounded pool that sends evaluations to a warm template process, reads framed plain
data back from each forked worker, kills the worker's whole process group on the wall-clock deadline, and
turns whatever happened into a typed SandboxResult. A dead template is replaced; nothing here raises
because of the untrusted code, and nothing waits without a deadline.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ossgym.errors import ConfigError, SandboxError
from ossgym.sandbox.result import (Outcome, PlainDataError, SandboxResult, Violation, decode_plain,
                                   encode_plain)
from ossgym.sandbox.task import SandboxTask
from ossgym.sandbox.isolation import PR_SET_DUMPABLE, missing, prctl
from ossgym.sandbox.protocol import EXIT_MEMORY, FROM_WORKER, REQUEST, frame, read_frame
from ossgym.sandbox.zygote import BOOT

log = logging.getLogger(__name__)

# The template's whole environment (nothing is inherited). A fixed hash seed keeps str/set iteration order,
# and so the untrusted code's behaviour, the same across pools and machines (invariant 5).
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_REPLY_TIMEOUT_S = 60.0  # a reply from the template (fork or reap); longer only while it imports a harness
_MAX_PAYLOAD_BYTES = 256 << 20
_STR_CAP = 10_000


def grace_s(task: SandboxTask) -> float:
    """Extra wall-clock time the caller allows past total_timeout_s before it kills the worker."""
    return 0.25 + 0.1 * task.total_timeout_s


class _Template:
    """One running template process and one socket per pool slot."""

    def __init__(self, slots: int) -> None:
        pairs = [socket.socketpair() for _ in range(slots)]
        # The caller's import path, made absolute, so the same trusted harness modules are found there.
        cfg = {"path": [os.path.abspath(p) for p in sys.path], "fds": [b.fileno() for _, b in pairs]}
        self.proc = subprocess.Popen(
            [sys.executable, "-s", "-c", BOOT, json.dumps(cfg)], pass_fds=cfg["fds"], env=_ENV,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        for _, b in pairs:
            b.close()
        self.conns = [a for a, _ in pairs]
        self.reap_pending = [False] * slots
        self.served = False
        for c in self.conns:
            c.settimeout(_REPLY_TIMEOUT_S)
        self.dead = False

    def close(self) -> None:
        self.dead = True
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def _kill_group(pid: int) -> None:
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class _Frames:
    """Incremental parser of the worker's result frames, with a per-frame size cap."""

    def __init__(self, cap: int) -> None:
        self.cap, self.buf = cap, bytearray()
        self.checkpoint: bytes | None = None
        self.value: bytes | None = None
        self.record: bytes | None = None
        self.messages: collections.deque[tuple[bytes, bytes]] = collections.deque()  # session frames v/e/l
        self.eof = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 5 and self.record is None:
            kind = bytes(self.buf[:1])
            (n,) = struct.unpack(">I", self.buf[1:5])
            if n > self.cap or kind not in FROM_WORKER:
                raise PlainDataError(f"worker sent a frame of {n} bytes (cap {self.cap}) or of unknown kind")
            if len(self.buf) < 5 + n:
                return
            body = bytes(self.buf[5:5 + n])
            del self.buf[:5 + n]
            if kind == b"c":
                self.checkpoint = body
            elif kind == b"r":
                self.record = body
            else:
                if kind == b"v":
                    self.value = body
                self.messages.append((kind, body))


def _str(record: dict, key: str, cap: int = _STR_CAP) -> str | None:
    v = record.get(key)
    if v is None:
        return None
    if type(v) is not str:
        raise PlainDataError(f"field {key} is not a str")
    return v[:cap]


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


@dataclass(frozen=True)
class Reply:
    """One reply of a :class:`Session`: ``ok`` and the handler's plain ``value``, or a failure ``kind``
    ("timeout", "memory", "crash", "invalid", "error") with a ``message``."""

    ok: bool
    value: object = None
    kind: str = ""
    message: str = ""


_REPLY_KINDS = frozenset({"timeout", "memory", "crash", "invalid", "error"})
_FATAL_KIND = {Outcome.TIMEOUT: "timeout", Outcome.MEMORY_EXCEEDED: "memory", Outcome.INVALID_OUTPUT: "invalid"}


class Session:
    """The caller's handle on one worker running one untrusted program (``SandboxPool.run`` gives it to the
    driver): plain requests in, plain replies out, re-validated with exact types and size caps.

    ``cpu_s`` (since dispatch) and ``last_cpu_s`` (the last request) are the worker's CPU time read by the
    caller from the kernel (the worker process's CPU clock), never a number the worker reports. A session
    that dies (timeout at the liveness deadline, memory, crash, malformed frames) answers every further
    request with a failed :class:`Reply` at once; ``fatal`` says how it died. Never raises because of the
    worker.

    CPU budgets are enforced here, by the caller, from the same kernel clock (a worker that disables its
    own timers, or runs threads, is still stopped): the whole session may use ``cpu_budget_s`` of worker
    CPU (default ``task.total_timeout_s`` plus :func:`grace_s`: the worker's own timers are meant to stop it
    first, with a typed result and its checkpoints; the caller is the backstop), and ``request(data, cpu_limit_s=x)`` ends the worker when that
    one request uses more than ``x``. Either kills the worker's process group; the session then ends as
    a timeout. The wall-clock deadline is only a liveness cap for a worker that sleeps or is stuck.
    """

    _POLL_S = 0.05  # how often a waiting caller re-reads the worker's CPU clock

    def __init__(self, sock: socket.socket, pid: int, task: SandboxTask, deadline: float) -> None:
        self._sock, self._fd, self.pid, self.task, self._deadline = sock, sock.fileno(), pid, task, deadline
        self._cap = 13 * task.max_output_bytes + (64 << 10)
        self.frames = _Frames(self._cap)
        self.killed, self.bad, self.loaded, self.closed = False, None, False, False
        self.fatal: tuple[Outcome, str, str | None] | None = None
        self.requests = 0
        self._cpu_clock = (~pid << 3) | 2  # CPUCLOCK_SCHED of the whole process (clock_getcpuclockid(pid))
        self._cpu0 = self._worker_cpu() or 0.0
        self.cpu_s = 0.0
        self.last_cpu_s = 0.0
        self.cpu_budget_s: float = task.total_timeout_s + grace_s(task)
        self._request_cpu_limit: tuple[float, float] | None = None  # (CPU at request start, limit)
        self.cpu_exceeded: str | None = None

    def _over_cpu(self) -> bool:
        """True (and the worker killed) when the worker's CPU time is past the session's or request's budget."""
        now = self._worker_cpu()
        if now is None:
            return False
        if now - self._cpu0 > self.cpu_budget_s:
            self.cpu_exceeded = f"killed by the caller after {self.cpu_budget_s}s of worker CPU time (total)"
        elif self._request_cpu_limit is not None and now - self._request_cpu_limit[0] > self._request_cpu_limit[1]:
            self.cpu_exceeded = (f"killed by the caller after {self._request_cpu_limit[1]}s of worker CPU time "
                                 "in one request")
        else:
            return False
        self._kill()
        return True

    def _worker_cpu(self) -> float | None:
        try:
            return time.clock_gettime(self._cpu_clock)
        except OSError:  # already reaped
            return None

    def _kill(self) -> None:
        _kill_group(self.pid)

    def _pump(self) -> bool:
        """Read until a session message (v/e/l) is queued; False when the worker ended, broke the protocol
        or ran past the deadline (then it is killed)."""
        frames = self.frames
        while not frames.messages:
            if frames.record is not None or frames.eof or self.bad is not None:
                return False
            left = self._deadline - time.monotonic()
            if left <= 0:
                self.killed = True
                self._kill()
                self._drain()
                return False
            ready, _, _ = select.select([self._fd], [], [], min(left, self._POLL_S))
            if not ready:
                if self._over_cpu():
                    return False
                continue
            try:
                chunk = os.read(self._fd, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                frames.eof = True
                return False
            try:
                frames.feed(chunk)
            except PlainDataError as e:
                self.bad = str(e)
                self._kill()
                return False
        return True

    def _drain(self) -> None:
        """After a kill at the deadline: keep what the worker had already sent (e.g. a checkpoint that a busy
        caller had not read yet)."""
        while True:
            ready, _, _ = select.select([self._fd], [], [], 0.2)
            try:
                chunk = os.read(self._fd, 1 << 20) if ready else b""
            except OSError:
                return
            if not chunk:
                return
            try:
                self.frames.feed(chunk)
            except PlainDataError:
                return

    def wait_loaded(self) -> bool:
        """Wait for the worker to load the code; False if it ended instead (policy, syntax, load error)."""
        if not self._pump():
            return False
        kind, _ = self.frames.messages.popleft()
        if kind != b"l":
            self.bad = "the worker answered before it was asked"
            self._kill()
            return False
        self.loaded = True
        return True

    def wait_for_record(self) -> None:
        """Worker-driven mode: read until the final record, EOF or the deadline."""
        while self._pump():
            self.frames.messages.clear()  # a harness sends only c/v frames: v is kept in frames.value

    def _die(self) -> Reply:
        """Record how the session died (once) and the failed reply that says so."""
        if self.fatal is None:
            if self.cpu_exceeded is not None:
                self.fatal = (Outcome.TIMEOUT, self.cpu_exceeded,
                              "call" if "one request" in self.cpu_exceeded else "total")
            elif self.killed:
                self.fatal = (Outcome.TIMEOUT, f"killed at the liveness limit of {self.task.total_timeout_s}s "
                              "(wall clock)", "total")
            elif self.bad is not None:
                self.fatal = (Outcome.INVALID_OUTPUT, f"invalid output: {self.bad}", None)
            elif self.frames.record is not None:
                self.fatal = self._record_failure()
            else:
                self.fatal = (Outcome.CRASHED, "the worker died during the session", None)
            self._kill()
        outcome, message, _ = self.fatal
        return Reply(False, None, _FATAL_KIND.get(outcome, "crash"), message)

    def _record_failure(self) -> tuple[Outcome, str, str | None]:
        try:
            record = json.loads(self.frames.record)  # type: ignore[arg-type]
            outcome = Outcome(record["outcome"])
            message = record.get("message")
            kind = record.get("timeout_kind")
            return (Outcome.CRASHED if outcome is Outcome.OK else outcome,
                    message[:_STR_CAP] if type(message) is str else "", kind if kind in ("call", "total") else None)
        except Exception:  # noqa: BLE001 - a hostile record is typed too
            return (Outcome.INVALID_OUTPUT, "invalid output: a malformed final record", None)

    def request(self, data: object, cpu_limit_s: float | None = None) -> Reply:
        """Send plain ``data`` to the worker-side handler and wait for its reply (or the session's end).

        ``cpu_limit_s``: the most worker CPU time this request may use, measured and enforced by the caller
        (past it the worker is killed and the session ends as a timeout)."""
        if self.closed or self.fatal is not None or not self.loaded:
            return self._die() if not self.closed else Reply(False, None, "crash", "the session is closed")
        try:
            body = encode_plain(data, _MAX_PAYLOAD_BYTES)
        except PlainDataError as e:
            raise ConfigError("data", str(e), "send plain data (None, bool, int, float, str, list, tuple, dict)") from None
        start = self._worker_cpu()
        self._request_cpu_limit = (start, float(cpu_limit_s)) if cpu_limit_s is not None and start is not None else None
        self.requests += 1
        try:
            self._sock.settimeout(max(0.001, self._deadline - time.monotonic()))
            self._sock.sendall(REQUEST + struct.pack(">I", len(body)) + body)
        except TimeoutError:
            self.killed = True
            return self._after(start, self._die())
        except OSError:
            self.frames.eof = True
        if not self._pump():
            return self._after(start, self._die())
        kind, body = self.frames.messages.popleft()
        try:
            if kind == b"v":
                return self._after(start, Reply(True, decode_plain(body, self._cap)))
            if kind == b"e":
                info = json.loads(body)
                k, msg = info.get("kind"), info.get("message")
                if k in _REPLY_KINDS and type(msg) is str:
                    return self._after(start, Reply(False, None, k, msg[:_STR_CAP]))
            raise PlainDataError(f"an unexpected frame of kind {kind!r}")
        except (Exception, RecursionError) as e:  # noqa: BLE001 - malformed replies end the session
            self.bad = f"a malformed reply ({e})"[:500]
            return self._after(start, self._die())

    def _after(self, start: float | None, reply: Reply) -> Reply:
        now = self._worker_cpu()
        if now is not None:
            self.last_cpu_s = now - start if start is not None else 0.0
            self.cpu_s = now - self._cpu0
        return reply

    def close(self) -> None:
        """End the worker (its whole process group) and the channel."""
        if not self.closed:
            self.closed = True
            now = self._worker_cpu()
            if now is not None:
                self.cpu_s = now - self._cpu0
            self._kill()
            self._sock.close()


class SandboxPool:
    """A bounded, thread-safe pool of sandbox workers (forked per evaluation from one warm template).

    ``workers`` bounds how many evaluations run at once (default: the number of CPU cores). Use as a
    context manager or call ``close()``. The pool checks the isolation of every worker it dispatches: a
    missing layer (isolation.REQUIRED_LAYERS) is logged once as a warning naming it and why, and with
    ``require_isolation=True`` the evaluation is refused with a SandboxError instead (nothing untrusted
    runs). Every result's ``metadata["isolation"]`` holds the layers its worker got.

    ``protect_caller`` (default True) makes the calling process not dumpable (prctl PR_SET_DUMPABLE 0) when
    the pool is created: no process of the same uid may then ptrace it or read its /proc/<pid>/mem or
    environ (a second wall behind the workers' own namespaces and seccomp filter). Its cost: no core dumps
    of the trainer, and a debugger or profiler attaching to it needs root. Pass False to keep those.
    """

    def __init__(self, workers: int | None = None, *, require_isolation: bool = False,
                 compromised_for_tests: bool = False, protect_caller: bool = True) -> None:
        if workers is None:
            workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        if type(workers) is not int or workers < 1:
            raise ConfigError("workers", f"{workers!r} is not a positive int", "use e.g. 2, or None for one per core")
        self.workers = workers
        #: TEST-ONLY: run untrusted sources as ordinary Python (no policy, no RestrictedPython) inside the
        #: same OS isolation, to show that an escaped Python layer still earns and reaches nothing.
        self.compromised_for_tests = compromised_for_tests is True
        #: refuse to run untrusted code in a worker that lacks any layer of isolation.REQUIRED_LAYERS
        self.require_isolation = require_isolation is True
        self._caller_not_dumpable = protect_caller is not False and prctl(PR_SET_DUMPABLE, 0)
        #: the layers the last worker got (the template's and the worker's own report, made before the
        #: worker had any untrusted code); None before the first evaluation
        self.isolation: dict | None = None
        self._warned = False
        self._lock = threading.Lock()
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(workers):
            self._slots.put(i)
        self._template: _Template | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        self._pid = os.getpid()
        self.restarts = 0

    # --- lifecycle ---------------------------------------------------------------------------------
    def _get_template(self) -> _Template:
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox pool is closed; create a new SandboxPool")
            if os.getpid() != self._pid:
                raise SandboxError("this sandbox pool was created in another process (before a fork); "
                                   "create pools after forking, or use default_pool() in each process")
            if self._template is None or self._template.dead or self._template.proc.poll() is not None:
                if self._template is not None:
                    self.restarts += 1
                    log.warning("sandbox template process died; starting a new one")
                    self._template.close()
                self._template = _Template(self.workers)
            return self._template

    def _template_failed(self, tpl: _Template, why: str) -> None:
        log.warning("sandbox template failed (%s); it will be replaced", why)
        with self._lock:
            tpl.dead = True
            try:
                tpl.proc.kill()
            except OSError:
                pass

    def close(self) -> None:
        """Stop the template process (and with it any running worker)."""
        with self._lock:
            self._closed = True
            tpl, self._template = self._template, None
            ex, self._executor = self._executor, None
        if os.getpid() != self._pid:  # a forked copy: the template belongs to the parent process
            return
        if ex is not None:
            ex.shutdown(wait=False, cancel_futures=True)
        if tpl is not None:
            tpl.close()

    def __deepcopy__(self, memo: dict) -> SandboxPool:
        """A pool is a shared service, not data: copies of an env's kwargs (gymnasium's check_env) share it."""
        return self

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- evaluation --------------------------------------------------------------------------------
    def _refuse(self, source: object, task: object, start: float) -> SandboxResult | None:
        """A typed result for a source that is not a str or too long (checked before anything is sent)."""
        if not isinstance(task, SandboxTask):
            raise ConfigError("task", f"{type(task).__name__} is not a SandboxTask", "pass a SandboxTask")
        if type(source) is not str or len(source) > task.max_source_bytes:
            why = "the source must be a str" if type(source) is not str else \
                f"the source is longer than {task.max_source_bytes} bytes"
            return SandboxResult(Outcome.POLICY_VIOLATION, None, why, (Violation(1, 0, why),),
                                 wall_time_s=time.monotonic() - start)
        return None

    def _request(self, source: str, task: SandboxTask) -> bytes:
        fields = asdict(task)
        fields["allowed_imports"] = sorted(task.allowed_imports)
        return json.dumps({"source": source, "task": fields, "trusted": task.trusted_code,
                           "compromised": self.compromised_for_tests}).encode()

    def evaluate(self, source: str, task: SandboxTask, payload: object = None) -> SandboxResult:
        """Run ``source`` under a worker-driven ``task`` (a harness) with ``payload`` in a fresh worker;
        always a typed result."""
        start = time.monotonic()
        refused = self._refuse(source, task, start)
        if refused is not None:
            return refused
        if task.handler:
            raise ConfigError("task", "a task with a handler is caller-driven", "use pool.run(source, task, driver)")
        try:
            payload_bytes = encode_plain(payload, _MAX_PAYLOAD_BYTES)
        except PlainDataError as e:
            raise ConfigError("payload", str(e), "pass plain data (None, bool, int, float, str, list, tuple, dict)") from None
        request = self._request(source, task)
        slot = self._slots.get()
        try:
            return self._run(slot, request, payload_bytes, task, start, None)
        finally:
            self._slots.put(slot)

    def run(self, source: str, task: SandboxTask, driver: Callable[[Session], object]) -> SandboxResult:
        """Load ``source`` in a fresh worker beside ``task.handler`` and run ``driver(session)`` HERE, in the
        caller: the driver keeps every secret and clock and sends the worker plain requests
        (:meth:`Session.request`). The result's ``value`` is what the driver returned; its outcome is OK
        unless the code did not load (policy, syntax, load error) or the session died (timeout, memory,
        crash). The driver is not called when the code did not load. Always a typed result."""
        start = time.monotonic()
        refused = self._refuse(source, task, start)
        if refused is not None:
            return refused
        if not task.handler:
            raise ConfigError("task", "pool.run needs a caller-driven task",
                              "give the SandboxTask a handler='module:function'")
        request = self._request(source, task)
        slot = self._slots.get()
        try:
            return self._run(slot, request, encode_plain(None, 64), task, start, driver)
        finally:
            self._slots.put(slot)

    def run_batch(self, jobs: Sequence[tuple[str, SandboxTask, Callable[[Session], object]]]) -> list[SandboxResult]:
        """:meth:`run` for many ``(source, task, driver)`` jobs at once, across the pool; results in order."""
        return self._map(lambda job: self.run(job[0], job[1], job[2]), list(jobs))

    def evaluate_batch(self, items: Sequence[tuple], task: SandboxTask | None = None) -> list[SandboxResult]:
        """Evaluate items in parallel across the pool; results in the same order.

        Each item is ``(source, payload)``, run under ``task``, or ``(source, payload, task)`` with a task
        of its own (e.g. its own ``seed``).
        """
        jobs = []
        for item in items:
            if len(item) == 3:
                jobs.append(tuple(item))
            elif task is None:
                raise ConfigError("task", "an item (source, payload) needs the batch's task",
                                  "pass task=SandboxTask(...) or items (source, payload, task)")
            else:
                jobs.append((item[0], item[1], task))
        return self._map(lambda job: self.evaluate(job[0], job[2], job[1]), jobs)

    def _map(self, fn: Callable, jobs: list) -> list:
        if not jobs:
            return []
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="ossgym-sandbox")
            ex = self._executor
        return list(ex.map(fn, jobs))

    def _run(self, slot: int, request: bytes, payload: bytes, task: SandboxTask, start: float,
             driver: Callable[[Session], object] | None) -> SandboxResult:
        tpl = self._get_template()
        conn = tpl.conns[slot]
        mine, theirs = socket.socketpair()
        try:
            if tpl.reap_pending[slot]:  # the status of this slot's previous worker (normally already here)
                tpl.reap_pending[slot] = False
                read_frame(conn)
            try:
                socket.send_fds(conn, [b"E"], [theirs.fileno()])
                conn.sendall(frame(request) + frame(payload))
            finally:
                theirs.close()
            reply = json.loads(read_frame(conn))
            tpl.served = True
        except (OSError, EOFError, ValueError) as e:
            mine.close()
            self._template_failed(tpl, f"no reply to a request: {e}")
            if not tpl.served:  # it never worked: a broken installation, not a bad evaluation
                raise SandboxError(f"the sandbox template process failed to start ({e}); its error output "
                                   "went to this process's stderr") from None
            return SandboxResult(Outcome.CRASHED, None, "the sandbox template process failed; it was replaced",
                                 wall_time_s=time.monotonic() - start)
        if "error" in reply:
            mine.close()
            raise SandboxError(str(reply["error"]))
        pid, isolation = int(reply["pid"]), reply.get("isolation", {})
        if isinstance(isolation, dict):
            isolation = {**isolation, "caller_not_dumpable": self._caller_not_dumpable}
        # The evaluation's time starts now, at dispatch: not while it waited for a slot or for the template.
        session = Session(mine, pid, task, time.monotonic() + task.total_timeout_s + grace_s(task))
        driven, driver_error = None, None
        refusal = self._check_isolation(isolation)
        try:
            if refusal is not None:
                pass
            elif driver is None:
                session.wait_for_record()
            elif session.wait_loaded():
                try:
                    driven = driver(session)
                except Exception as e:  # noqa: BLE001 - a trusted driver's bug must not take the batch down
                    log.exception("sandbox: the caller-side driver raised")
                    driver_error = f"the caller-side driver raised {type(e).__name__}: {e}"
        finally:
            session.close()
        frames, bad_frames = session.frames, session.bad
        killed_at_deadline = session.killed or session.cpu_exceeded is not None  # both: a timeout
        status = None
        try:
            conn.sendall(b"R" + frame(json.dumps({"pid": pid}).encode()))
            if frames.record is None:  # the exit status is needed to say what happened
                status = json.loads(read_frame(conn))["status"]
            else:  # read it at the slot's next use, off this evaluation's path
                tpl.reap_pending[slot] = True
        except (OSError, EOFError, ValueError, KeyError) as e:
            self._template_failed(tpl, f"no reap reply: {e}")
        if refusal is not None:
            raise SandboxError(refusal)
        wall = time.monotonic() - start
        meta = {"isolation": isolation, "worker_pid": pid, "worker_uid": reply.get("uid"), "killed_at_deadline": killed_at_deadline,
                "exit_status": status, "worker_cpu_s": session.cpu_s, "cpu_exceeded": session.cpu_exceeded}
        if driver is None:
            return self._build(frames, bad_frames, killed_at_deadline, status, task, wall, meta)
        meta["requests"] = session.requests
        if not session.loaded:  # the code never loaded: policy, syntax, load error, or the worker died
            return self._build(frames, bad_frames, killed_at_deadline, status, task, wall, meta)
        if driver_error is not None:
            return SandboxResult(Outcome.CRASHED, driven, driver_error, wall_time_s=wall, metadata=meta)
        failure = session.fatal
        if failure is None:
            return SandboxResult(Outcome.OK, driven, "ok", wall_time_s=wall, metadata=meta)
        outcome, message, timeout_kind = failure
        return SandboxResult(outcome, driven, message, timeout_kind=timeout_kind, wall_time_s=wall, metadata=meta)

    def _check_isolation(self, isolation: dict) -> str | None:
        """Warn once about missing layers; with require_isolation, the refusal message (else None)."""
        self.isolation = isolation
        gaps = missing(isolation)
        if not gaps:
            return None
        listed = "; ".join(f"{name}: {why}" for name, why in gaps.items())
        if not self._warned:
            self._warned = True
            log.warning("sandbox workers run without these isolation layers: %s", listed)
        if not self.require_isolation:
            return None
        return (f"the sandbox refuses to run untrusted code without these isolation layers: {listed}. Fix: run "
                "on Linux with unprivileged user namespaces allowed (sysctl kernel.unprivileged_userns_clone=1 /"
                " user.max_user_namespaces > 0; in a container, allow unshare/clone/mount in its seccomp "
                "profile), or pass require_isolation=False to accept the risk")

    def _build(self, frames: _Frames, bad: str | None, killed: bool, status: int | None, task: SandboxTask,
               wall: float, meta: dict) -> SandboxResult:
        cap = task.max_output_bytes
        checkpoint = None
        if frames.checkpoint is not None:
            try:
                checkpoint = decode_plain(frames.checkpoint, cap)
            except PlainDataError as e:
                bad = bad or f"checkpoint: {e}"
        if bad is not None:
            return SandboxResult(Outcome.INVALID_OUTPUT, checkpoint, f"invalid output: {bad}", wall_time_s=wall,
                                 metadata=meta)
        if frames.record is not None:
            try:
                return self._from_record(frames, checkpoint, cap, wall, meta)
            except (Exception, RecursionError) as e:  # noqa: BLE001 - the worker may be hostile: any flaw is typed
                return SandboxResult(Outcome.INVALID_OUTPUT, checkpoint, f"malformed result from the worker: {e}",
                                     wall_time_s=wall, metadata=meta)
        if killed:
            return SandboxResult(Outcome.TIMEOUT, checkpoint, f"killed after the total limit of "
                                 f"{task.total_timeout_s}s (wall clock)", timeout_kind="total",
                                 wall_time_s=wall, metadata=meta)
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return SandboxResult(Outcome.TIMEOUT, checkpoint, "killed after its CPU time limit",
                                     timeout_kind="total", wall_time_s=wall, metadata=meta)
            hint = " (possibly out of memory)" if sig == signal.SIGKILL else ""
            return SandboxResult(Outcome.CRASHED, checkpoint, f"the worker was killed by {_signal_name(sig)}{hint}",
                                 wall_time_s=wall, metadata=meta)
        if status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_MEMORY:
            return SandboxResult(Outcome.MEMORY_EXCEEDED, checkpoint, "the worker ran out of memory",
                                 wall_time_s=wall, metadata=meta)
        code = os.WEXITSTATUS(status) if status is not None and os.WIFEXITED(status) else None
        return SandboxResult(Outcome.CRASHED, checkpoint, f"the worker exited (code {code}) without a result",
                             wall_time_s=wall, metadata=meta)

    @staticmethod
    def _from_record(frames: _Frames, checkpoint: object, cap: int, wall: float, meta: dict) -> SandboxResult:
        record = json.loads(frames.record)  # type: ignore[arg-type]
        if type(record) is not dict:
            raise PlainDataError("the record is not a dict")
        outcome = Outcome(record["outcome"])
        value = checkpoint
        if outcome is Outcome.OK:
            if frames.value is None:
                raise PlainDataError("ok without a value")
            value = decode_plain(frames.value, cap)
        violations = []
        for item in record.get("violations") or []:
            line, col, msg = item
            if type(line) is not int or type(col) is not int or type(msg) is not str:
                raise PlainDataError("malformed violation")
            violations.append(Violation(line, col, msg[:1000]))
        timeout_kind = _str(record, "timeout_kind")
        if timeout_kind not in (None, "call", "total"):
            raise PlainDataError("bad timeout_kind")
        worker_meta = record.get("metadata") or {}
        if type(worker_meta) is not dict:
            raise PlainDataError("metadata is not a dict")
        return SandboxResult(
            outcome=outcome, value=value, message=_str(record, "message") or "", violations=tuple(violations[:200]),
            error_type=_str(record, "error_type", 200), traceback=_str(record, "traceback"),
            timeout_kind=timeout_kind, stdout=_str(record, "stdout", 4 * cap) or "",
            stderr=_str(record, "stderr", 4 * cap) or "", wall_time_s=wall,
            metadata={**meta, "worker": {k: v for k, v in worker_meta.items() if type(k) is str}})


_default: SandboxPool | None = None
_default_lock = threading.Lock()


def default_pool() -> SandboxPool:
    """The process-wide pool (one worker per core), created on first use (again in a forked child) and
    closed at exit."""
    global _default
    with _default_lock:
        if _default is None or _default._closed or _default._pid != os.getpid():
            _default = SandboxPool()
            atexit.register(_default.close)
        return _default
