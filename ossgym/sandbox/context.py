"""What a trusted harness gets inside the worker: ``ctx`` (time-limited calls, trusted clock, checkpoints)
and the exceptions it may see. All of them derive from ``BaseException`` and live in trusted modules the
untrusted code cannot import, so it can neither catch them (the policy forbids bare ``except`` and
``BaseException``) nor raise them.
"""

from __future__ import annotations

import signal
import time
import traceback as _traceback
from collections.abc import Callable

from ossgym.sandbox import audit
from ossgym.sandbox.restricted import FILENAME
from ossgym.sandbox.result import PlainDataError, encode_plain, validate_plain

_clock = time.monotonic  # bound when the worker module loads, long before untrusted code exists
# CPU time of the worker, bound likewise. The worker runs one thread (no threading module, NPROC=0), so
# this is the process's CPU time; thread_time because while ITIMER_PROF is armed Linux serves the
# process clock from a counter updated at scheduler ticks (4 ms steps), the thread clock exactly.
_cpu = time.thread_time
_MAX_TB_FRAMES = 20


class CallTimeout(BaseException):
    """A call of the untrusted function used more than ``call_timeout_s`` of CPU time."""

    def __init__(self, elapsed_s: float, limit_s: float) -> None:
        super().__init__(f"a call used {elapsed_s:.4f}s of CPU time, more than the limit of {limit_s:.4f}s")
        self.elapsed_s, self.limit_s = elapsed_s, limit_s


class TotalTimeout(BaseException):
    """The evaluation ran past ``total_timeout_s``."""


class UserError(BaseException):
    """The untrusted code raised; carries only strings (type name, message, trimmed traceback)."""

    def __init__(self, type_name: str, message: str, traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.message, self.traceback = type_name, message, traceback


class InvalidOutput(BaseException):
    """Data meant for the caller is not plain data within the size cap."""


class _Interrupt(BaseException):
    """Raised by the timer signal inside untrusted code; no name for it is reachable from that code."""


class _TimerState:
    active = False
    cpu_deadline = 0.0
    wall_deadline = 0.0


def _on_tick(signum: int, frame: object) -> None:
    if _TimerState.active and (_cpu() >= _TimerState.cpu_deadline or _clock() >= _TimerState.wall_deadline):
        raise _Interrupt


def install_timer(call_timeout_s: float) -> float:
    """Start the worker's tickers (before any untrusted code runs) and return their period in seconds.

    Periodic timers instead of one armed per call: a call costs no system call, a timeout is seen within a
    period, and after a deadline every tick raises again, so a loop in 'finally' ends too. One ticks with
    the process's CPU time (the per-call limit is CPU time, so a loaded machine does not cause timeouts),
    one with the wall clock (for the total limit, also while the process sleeps).
    """
    period = max(0.001, min(0.005, call_timeout_s / 10))
    for sig, timer, every in ((signal.SIGPROF, signal.ITIMER_PROF, period),
                              (signal.SIGALRM, signal.ITIMER_REAL, 2 * period)):
        signal.signal(sig, _on_tick)
        signal.setitimer(timer, every, every)
    return period


def _describe(exc: BaseException, source_lines: list[str]) -> UserError:
    """Turn an exception from untrusted code into a UserError holding only trimmed strings."""
    type_name = type(exc).__name__
    try:
        message = str(exc)[:1000]
    except BaseException:  # noqa: BLE001 - a hostile str() must not escape the worker's own handling
        message = "<unprintable>"
    with audit.trusted():  # extract_tb reads tb_frame (an audited event) and runs no untrusted code
        frames = [f for f in _traceback.extract_tb(exc.__traceback__) if f.filename == FILENAME]
    omitted = max(0, len(frames) - _MAX_TB_FRAMES)
    lines = [f"  ... {omitted} more frames" if omitted else ""]
    for f in frames[-_MAX_TB_FRAMES:]:
        text = source_lines[f.lineno - 1].strip() if f.lineno and 0 < f.lineno <= len(source_lines) else ""
        lines.append(f"  line {f.lineno}, in {f.name}\n    {text[:200]}")
    tb = "Traceback (most recent call last):\n" + "\n".join(x for x in lines if x) + f"\n{type_name}: {message}"
    return UserError(type_name, message, tb)


def guarded_call(fn: Callable, args: tuple | list, limit_s: float, deadline: float, source_lines: list[str]) -> object:
    """Call untrusted ``fn`` with a per-call CPU-time limit and the wall-clock total deadline.

    ``args`` given as a list is emptied right after the call, still under the limit: code the function
    attached to its arguments (a suspended generator whose ``finally`` runs when it is freed) then runs
    inside the limited, timed call instead of after it.
    """
    start_cpu = _cpu()
    if _clock() >= deadline:
        raise TotalTimeout
    _TimerState.cpu_deadline = start_cpu + limit_s
    _TimerState.wall_deadline = deadline
    try:
        _TimerState.active = True
        value = fn(*args)
        if type(args) is list:
            args.clear()
        _TimerState.active = False
    except _Interrupt:
        _TimerState.active = False
        if _clock() >= deadline:
            raise TotalTimeout from None
        raise CallTimeout(_cpu() - start_cpu, limit_s) from None
    except BaseException as e:  # noqa: BLE001 - everything the untrusted code raises becomes a UserError
        _TimerState.active = False
        raise _describe(e, source_lines) from None
    used = _cpu() - start_cpu
    if used > limit_s:  # the trusted clock decides, whatever happened inside the call
        raise CallTimeout(used, limit_s)
    if _clock() >= deadline:
        raise TotalTimeout
    return value


def _fresh(value: object) -> object:
    """A deep copy of the containers in plain data (scalars and other objects are shared)."""
    t = type(value)
    if t is list:
        return [_fresh(v) for v in value]  # type: ignore[union-attr]
    if t is dict:
        return {k: _fresh(v) for k, v in value.items()}  # type: ignore[union-attr]
    if t is tuple:
        return tuple([_fresh(v) for v in value])  # type: ignore[union-attr]
    return value


class HarnessContext:
    """``ctx`` of a harness: ``call`` the untrusted function, read the trusted ``clock``, ``checkpoint``.

    Harness rules: pass plain data (``call`` hands the function deep copies, so it cannot change the
    harness's objects), check the exact type of what it returns before using it (``call_plain`` does),
    and import everything at module import time (workers run in an empty chroot where nothing more can
    be imported).
    """

    def __init__(self, fn: Callable, call_timeout_s: float, deadline: float, max_output_bytes: int,
                 send_checkpoint: Callable[[bytes], None], source_lines: list[str]) -> None:
        self._fn, self._limit, self._deadline = fn, call_timeout_s, deadline
        self._max_bytes, self._send, self._lines = max_output_bytes, send_checkpoint, source_lines
        self.calls = 0
        self.last_call_s = 0.0  # wall time of the last call itself (the argument copy excluded)
        self.last_call_cpu_s = 0.0  # CPU time of the worker during the last call itself (likewise)

    def call(self, *args: object) -> object:
        """Call the untrusted function on fresh copies of the arguments (lists, dicts and tuples are copied
        deeply, so it cannot change the harness's objects) with the per-call limit (CPU time). Raises
        CallTimeout or UserError (and TotalTimeout when the wall-clock total runs out: let that escape)."""
        self.calls += 1
        args = [_fresh(a) for a in args]  # the only reference to the copies: guarded_call drops them in time
        start, start_cpu = _clock(), _cpu()
        try:
            return guarded_call(self._fn, args, self._limit, self._deadline, self._lines)
        finally:
            self.last_call_cpu_s = _cpu() - start_cpu
            self.last_call_s = _clock() - start

    def call_plain(self, *args: object) -> object:
        """``call``, then require plain data with exact types (InvalidOutput otherwise). Use it unless the
        harness checks the value's exact type itself: a returned object may run untrusted code when used."""
        value = self.call(*args)
        try:
            validate_plain(value)
        except PlainDataError as e:
            raise InvalidOutput(f"the function returned {e}") from None
        return value

    @staticmethod
    def clock() -> float:
        """Trusted monotonic clock in seconds, bound before the untrusted code was loaded."""
        return _clock()

    @staticmethod
    def cpu_clock() -> float:
        """Trusted CPU time of the worker (its one thread) in seconds, for timing a busy machine does not skew."""
        return _cpu()

    def time_left(self) -> float:
        """Seconds left of the evaluation's total_timeout_s."""
        return self._deadline - _clock()

    def checkpoint(self, data: object) -> None:
        """Send partial plain data to the caller; it becomes the result's value if the worker dies later."""
        try:
            encoded = encode_plain(data, self._max_bytes)
        except PlainDataError as e:
            raise InvalidOutput(f"checkpoint: {e}") from None
        self._send(encoded)
