"""TEST-ONLY fake of the sandbox worker's ``ctx`` (issue 3 contract), with a deterministic fake clock.

It raises the real sandbox's ``CallTimeout``/``UserError``, so the harnesses see what the worker would
give them, without forking a worker. Time is simulated: each call costs ``call_cost_s`` of fake
time plus whatever the function "spends" with ``FakeCtx.spend``, so budget tests are exact, not timed.
"""

from __future__ import annotations

import copy


def sandbox_errors() -> tuple[type[BaseException], type[BaseException]]:
    """(CallTimeout, UserError) of the real sandbox."""
    from ossgym.sandbox import CallTimeout, UserError

    return CallTimeout, UserError


class FakeCtx:
    """Deterministic stand-in for the worker's ctx: call / clock / time_left / checkpoint."""

    def __init__(self, fn, total_s: float = 5.0, call_limit_s: float = 0.05, call_cost_s: float = 0.0):
        self.fn = fn
        self.total_s, self.call_limit_s, self.call_cost_s = total_s, call_limit_s, call_cost_s
        self.now = 0.0
        self.calls = 0
        self.last_call_s = 0.0
        self.last_call_cpu_s = 0.0
        self.checkpoints: list = []
        self._spent = 0.0
        self.CallTimeout, self.UserError = sandbox_errors()

    def spend(self, seconds: float) -> None:
        """Called by a test function to pretend it ran for ``seconds``."""
        self._spent += seconds

    def clock(self) -> float:
        return self.now

    def cpu_clock(self) -> float:
        return self.now  # one process doing nothing else: CPU time advances with the fake clock

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
        self.last_call_s = self.last_call_cpu_s = cost
        if cost > self.call_limit_s:
            self.now += self.call_limit_s
            raise self.CallTimeout(cost, self.call_limit_s)
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
