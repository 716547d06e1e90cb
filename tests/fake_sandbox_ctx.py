"""TEST-ONLY fake of the sandbox worker's ``ctx`` (issue 3 contract), with a deterministic fake clock.

The real sandbox was not on this branch when the harnesses were written. ``sandbox_errors`` returns the
real ``CallTimeout``/``UserError`` when ``ossgym.sandbox`` imports, else registers stand-ins under that
name so the harnesses' lazy import finds them. Time is simulated: each call costs ``call_cost_s`` of fake
time plus whatever the function "spends" with ``FakeCtx.spend``, so budget tests are exact, not timed.
"""

from __future__ import annotations

import copy
import importlib
import sys
import types


class _StandInCallTimeout(BaseException):
    """Stand-in for ossgym.sandbox.CallTimeout."""


class _StandInUserError(BaseException):
    """Stand-in for ossgym.sandbox.UserError(type_name, message, traceback)."""

    def __init__(self, type_name: str, message: str, traceback: str | None = None):
        super().__init__(type_name, message)
        self.type_name, self.message, self.traceback = type_name, message, traceback


def sandbox_errors() -> tuple[type[BaseException], type[BaseException]]:
    """(CallTimeout, UserError): the real ones if the sandbox exists, else stand-ins registered for import."""
    try:
        mod = importlib.import_module("ossgym.sandbox")
        return mod.CallTimeout, mod.UserError
    except ImportError:
        fake = types.ModuleType("ossgym.sandbox")
        fake.CallTimeout, fake.UserError = _StandInCallTimeout, _StandInUserError
        sys.modules["ossgym.sandbox"] = fake
        return _StandInCallTimeout, _StandInUserError


def _new_timeout(cls: type[BaseException]) -> BaseException:
    try:
        return cls()
    except TypeError:
        return cls.__new__(cls)  # real class with a constructor we do not know: attributes are unused


class FakeCtx:
    """Deterministic stand-in for the worker's ctx: call / clock / time_left / checkpoint."""

    def __init__(self, fn, total_s: float = 5.0, call_limit_s: float = 0.05, call_cost_s: float = 0.0):
        self.fn = fn
        self.total_s, self.call_limit_s, self.call_cost_s = total_s, call_limit_s, call_cost_s
        self.now = 0.0
        self.calls = 0
        self.checkpoints: list = []
        self._spent = 0.0
        self.CallTimeout, self.UserError = sandbox_errors()

    def spend(self, seconds: float) -> None:
        """Called by a test function to pretend it ran for ``seconds``."""
        self._spent += seconds

    def clock(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Trusted (reference) work costs fake time too."""
        self.now += seconds

    def time_left(self) -> float:
        return self.total_s - self.now

    def checkpoint(self, data) -> None:
        assert_plain(data)
        self.checkpoints.append(copy.deepcopy(data))

    def call(self, *args):
        self.calls += 1
        self._spent = 0.0
        try:
            result = self.fn(*args)
        except Exception as exc:  # the real worker turns user exceptions into UserError
            self.now += self.call_cost_s + self._spent
            raise self.UserError(type(exc).__name__, str(exc), f'File "<strategy>", line 1\n{type(exc).__name__}: {exc}')
        cost = self.call_cost_s + self._spent
        if cost > self.call_limit_s:
            self.now += self.call_limit_s
            raise _new_timeout(self.CallTimeout)
        self.now += cost
        return result


_PLAIN_SCALARS = (type(None), bool, int, float, str)


def assert_plain(x, depth: int = 0) -> None:
    """Exact plain data only (None, bool, int, float, str, list, tuple, dict with str keys)."""
    assert depth < 50
    t = type(x)
    if t in _PLAIN_SCALARS:
        return
    assert t in (list, tuple, dict), f"not plain data: {t}"
    if t is dict:
        for k, v in x.items():
            assert type(k) is str, f"non-str key {k!r}"
            assert_plain(v, depth + 1)
    else:
        for v in x:
            assert_plain(v, depth + 1)
