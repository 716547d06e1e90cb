"""The warm template process of a pool. It imports what workers need once (RestrictedPython, the trusted
harness modules, the allowed modules), moves itself into a new network namespace when the OS allows (so
every worker inherits a namespace without interfaces), and keeps a few *spare* workers forked in advance:
each spare isolates itself (process group, limits, a uid of its own) and then waits for exactly one request.
Fork cost is thus off the request path, and every evaluation still gets a fresh process.

The protocol is in protocol.py. Workers are reaped only when the pool asks, so the pool's kill of the
process group cannot hit a reused pid.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import sys
import tempfile

from ossgym.sandbox.protocol import EXIT_INTERNAL, frame, read_frame

log = logging.getLogger(__name__)

_PRELOAD = ("RestrictedPython", "ossgym.sandbox.worker")


class Template:
    """The fork server loop."""

    def __init__(self, socks: list[socket.socket]) -> None:
        from ossgym.sandbox.isolation import PR_SET_DUMPABLE, enter_namespaces, prctl

        # No PR_SET_PDEATHSIG here: it follows the *thread* that started this process, which may be any
        # short-lived caller thread. The pool's death closes every slot socket instead, and that ends serve().
        self.socks = {s.fileno(): s for s in socks}
        self.workdir = tempfile.mkdtemp(prefix="ossgym-sandbox-")
        os.chmod(self.workdir, 0o555)  # empty and not writable by the workers (they run as unprivileged uids)
        self.isolation = enter_namespaces(self.workdir)  # the workers' empty read-only root is mounted there
        self.isolation["template_not_dumpable"] = prctl(PR_SET_DUMPABLE, 0)
        self.userns = self.isolation.get("user_namespace") is True
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.loaded: set[str] = set()
        self.forked = 0
        self.target_spares = max(1, min(len(socks), 16))
        self.spares: list[tuple[int, socket.socket]] = []
        self.pidfds: dict[int, int] = {}  # pidfd -> pid of a dispatched worker
        self.reap_waiters: dict[int, socket.socket] = {}  # pid -> slot waiting for its status
        self.exited: dict[int, int | None] = {}  # pid -> pidfd of an exited worker nobody asked about yet
        self.polled: set[int] = set()  # dispatched workers watched by polling (no pidfd_open: Linux < 5.3)
        for name in _PRELOAD:
            importlib.import_module(name)
        self.settle()

    @staticmethod
    def settle() -> None:
        """Run the workers' trusted code paths here a few times (the interpreter specializes bytecode and
        fills caches in place), then freeze the heap: forked workers then write to far fewer shared pages."""
        from ossgym.sandbox.worker import warm_up

        for _ in range(8):
            warm_up()
        gc.collect()
        gc.freeze()

    # --- spares ----------------------------------------------------------------------------------------
    def fork_spare(self) -> None:
        from ossgym.sandbox.worker import FIRST_UID, UID_RANGE, spare_main

        self.forked += 1
        uid = FIRST_UID + self.forked % UID_RANGE
        mine, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            try:
                mine.close()
                spare_main(theirs, self.devnull, self.workdir, uid, self.userns)
            finally:
                os._exit(EXIT_INTERNAL)
        theirs.close()
        self.spares.append((pid, mine))

    def drop_spares(self) -> None:
        """Kill spares forked before a new module was imported here (they lack it)."""
        for pid, sock in self.spares:
            sock.close()
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (OSError, ChildProcessError):
                pass
        self.spares = []

    def preload(self, harness: str, modules: list[str]) -> str | None:
        """Import the trusted harness module and the allowed modules (and build their proxies) here, once,
        so workers start warm."""
        from ossgym.sandbox.restricted import module_proxy

        harness_module, _, harness_name = harness.partition(":")
        new = [n for n in (harness_module, *modules) if n not in self.loaded]
        for name in new:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - a missing allowed module fails in the worker instead
                if name == harness_module:
                    return f"cannot import the trusted module '{name}': {type(e).__name__}: {e}"
            self.loaded.add(name)
            if name in modules:
                try:
                    module_proxy(name)
                except Exception:  # noqa: BLE001 - reported by the worker's import instead
                    pass
        if new:
            self.settle()
            self.drop_spares()
        if not callable(getattr(sys.modules[harness_module], harness_name, None)):
            return f"trusted module '{harness_module}' has no function '{harness_name}'"
        return None

    # --- requests --------------------------------------------------------------------------------------
    def handle(self, sock: socket.socket) -> bool:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
        if not msg:
            return False
        if msg == b"E":
            raw_request = read_frame(sock)
            raw_payload = read_frame(sock)
            result_fd = fds[0]
            try:
                request = json.loads(raw_request)
                error = self.preload(request["trusted"], request["task"]["allowed_imports"])
                if error is not None:
                    sock.sendall(frame(json.dumps({"error": error}).encode()))
                    return True
                pid, layers = self.dispatch(result_fd, frame(raw_request) + frame(raw_payload))
            finally:
                os.close(result_fd)
            try:
                self.pidfds[os.pidfd_open(pid)] = pid
            except (AttributeError, OSError):
                self.polled.add(pid)
            isolation = {**self.isolation, **layers,
                         "empty_root": self.isolation.get("empty_root") is True and layers.get("chroot") is True}
            sock.sendall(frame(json.dumps({"pid": pid, "isolation": isolation}).encode()))
        elif msg == b"R":
            pid = json.loads(read_frame(sock))["pid"]
            self.reap_waiters[pid] = sock
            if pid in self.exited:  # already a zombie: reap it now
                self.reap(self.exited.pop(pid), pid)
        else:
            for fd in fds:
                os.close(fd)
            return False
        return True

    def dispatch(self, result_fd: int, data: bytes) -> tuple[int, dict]:
        """Hand one request to a spare worker (forking one if none is ready); return its pid and the layers
        it reported once isolated (before it had any untrusted code, so the report can be trusted)."""
        for _attempt in range(3):
            if not self.spares:
                self.fork_spare()
            pid, spare = self.spares.pop(0)
            try:
                spare.settimeout(30)
                layers = json.loads(read_frame(spare, 1 << 16))
                spare.settimeout(None)
                socket.send_fds(spare, [b"E"], [result_fd])
                spare.sendall(data)
                return pid, {k: v for k, v in layers.items() if k not in ("base_vsz", "rlimits")}
            except (OSError, EOFError, ValueError) as e:  # the spare died while waiting; use another one
                log.warning("sandbox template: spare %d unusable: %s", pid, e)
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except (OSError, ChildProcessError):
                    pass
            finally:
                spare.close()
        raise OSError("no spare worker could take the request")

    def exited_worker(self, pidfd: int | None, pid: int) -> None:
        """A dispatched worker exited. It stays a zombie (its pid and process group id stay taken) until the
        pool asks for its status, so the pool's kill of the group can never reach a process that reused it."""
        if pid in self.reap_waiters:
            self.reap(pidfd, pid)
        else:
            self.exited[pid] = pidfd

    def poll_workers(self) -> None:
        """The pidfd-less way to notice exits: waitid without reaping (WNOWAIT)."""
        for pid in list(self.polled):
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                info = True
            if info is not None:
                self.polled.discard(pid)
                self.exited_worker(None, pid)

    def reap(self, pidfd: int | None, pid: int) -> None:
        if pidfd is not None:
            os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            status = -1
        waiter = self.reap_waiters.pop(pid)
        try:
            waiter.sendall(frame(json.dumps({"status": status}).encode()))
        except OSError:
            pass

    def serve(self) -> None:
        try:
            while self.socks:
                need_spares = len(self.spares) < self.target_spares
                watch = [*self.socks, *self.pidfds]
                timeout = 0 if need_spares else (0.002 if self.polled else None)
                ready, _, _ = select.select(watch, [], [], timeout)
                if self.polled:
                    self.poll_workers()
                for fd in ready:
                    if fd in self.pidfds:
                        self.exited_worker(fd, self.pidfds.pop(fd))
                        continue
                    sock = self.socks[fd]
                    try:
                        alive = self.handle(sock)
                    except (BrokenPipeError, ConnectionResetError, EOFError):
                        alive = False  # the pool closed this slot
                    except (OSError, ValueError, KeyError) as e:
                        log.error("sandbox template: dropping a slot: %s", e)
                        alive = False
                    if not alive:
                        del self.socks[fd]
                        sock.close()
                if not ready and need_spares:
                    self.fork_spare()  # one at a time, so requests are never kept waiting for long
        finally:
            self.drop_spares()
            for pid in [*self.pidfds.values(), *self.exited, *self.polled]:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except OSError:
                    pass
            shutil.rmtree(self.workdir, ignore_errors=True)


BOOT = (
    "import sys, json, importlib.util\n"
    "cfg = json.loads(sys.argv[1]); sys.path[:] = cfg['path']\n"
    # Import the ossgym package without running its __init__ (environment registration pulls in gymnasium
    # and numpy): a small template forks several times faster.
    "spec = importlib.util.find_spec('ossgym'); sys.modules['ossgym'] = importlib.util.module_from_spec(spec)\n"
    "from ossgym.sandbox.zygote import main; main(cfg)\n"
)


def main(cfg: dict) -> None:
    """Entry point of the template process (started by SandboxPool with ``python -s -c BOOT CONFIG``)."""
    socks = [socket.socket(fileno=fd) for fd in cfg["fds"]]
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    Template(socks).serve()
