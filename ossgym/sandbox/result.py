"""Typed results of a sandbox evaluation, and the plain-data codec used at the process boundary.

Only plain data crosses the boundary: ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``, ``tuple``
and ``dict`` (keys: ``None``/``bool``/``int``/``float``/``str``/tuple of those), checked with exact types
(``type(x) is int``: subclasses, numpy scalars and objects with a custom ``__eq__`` are rejected). The
wire format is JSON, which can only decode to plain types; tuples and non-string dict keys are tagged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

MAX_DEPTH = 64
_TUPLE_TAG = "__tuple__"
_DICT_TAG = "__dict__"
_SCALARS = (type(None), bool, int, float, str)


class Outcome(str, Enum):
    """How an evaluation ended. Values are the lowercase names."""

    OK = "ok"
    POLICY_VIOLATION = "policy_violation"
    SYNTAX_ERROR = "syntax_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY_EXCEEDED = "memory_exceeded"
    CRASHED = "crashed"
    INVALID_OUTPUT = "invalid_output"


@dataclass(frozen=True)
class Violation:
    """One static-policy finding: where it is and a message a model can learn from."""

    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, col {self.col}: {self.message}"


@dataclass(frozen=True)
class SandboxResult:
    """The typed result of one evaluation; never carries an object from the untrusted code.

    ``value`` is the harness's return for OK, otherwise the last checkpoint (or None). ``metadata`` holds
    plain data about the run: ``isolation`` (network_namespace, ipc_namespace, uts_namespace, and why not),
    ``layers`` (chroot, uid, rlimits, no_new_privs, pdeathsig, dumpable_off, tick_s), ``worker_pid``,
    ``killed_at_deadline``, ``exit_status`` (when the worker gave no record), ``worker_cpu_s`` and
    ``worker_page_faults``. Keys that need a worker are absent when it was never reached.
    """

    outcome: Outcome
    value: object = None
    message: str = ""
    violations: tuple[Violation, ...] = ()
    error_type: str | None = None
    traceback: str | None = None
    timeout_kind: str | None = None
    stdout: str = ""
    stderr: str = ""
    wall_time_s: float = 0.0
    metadata: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the harness returned a value (outcome OK)."""
        return self.outcome is Outcome.OK


class PlainDataError(ValueError):
    """A value is not plain data (wrong exact type, too deep, too large, non-finite where refused)."""


def _check(value: object, depth: int, budget: list[int], path: str) -> None:
    if depth > MAX_DEPTH:
        raise PlainDataError(f"{path}: nested deeper than {MAX_DEPTH}")
    budget[0] -= 1
    if budget[0] < 0:
        raise PlainDataError("too many elements")
    t = type(value)
    if t in _SCALARS:
        return
    if t is list or t is tuple:
        for i, item in enumerate(value):  # type: ignore[arg-type]
            _check(item, depth + 1, budget, f"{path}[{i}]")
        return
    if t is dict:
        for k, v in value.items():  # type: ignore[union-attr]
            _check_key(k, path)
            _check(v, depth + 1, budget, f"{path}[{k!r}]")
        return
    raise PlainDataError(f"{path}: {t.__module__}.{t.__qualname__} is not plain data "
                         "(allowed: exactly None, bool, int, float, str, list, tuple, dict)")


def _check_key(key: object, path: str) -> None:
    t = type(key)
    if t in _SCALARS:
        return
    if t is tuple and all(type(k) in _SCALARS for k in key):  # type: ignore[union-attr]
        return
    raise PlainDataError(f"{path}: dict key of type {t.__qualname__} is not plain data")


def validate_plain(value: object, max_items: int = 10_000_000) -> None:
    """Raise PlainDataError unless ``value`` is plain data with exact types (no subclasses)."""
    _check(value, 0, [max_items], "value")


def _to_json(value: object) -> object:
    t = type(value)
    if t is list:
        return [_to_json(v) for v in value]  # type: ignore[union-attr]
    if t is tuple:
        return {_TUPLE_TAG: [_to_json(v) for v in value]}  # type: ignore[union-attr]
    if t is dict:
        if all(type(k) is str for k in value) and not (  # type: ignore[union-attr]
                len(value) == 1 and (_TUPLE_TAG in value or _DICT_TAG in value)):  # type: ignore[operator,arg-type]
            return {k: _to_json(v) for k, v in value.items()}  # type: ignore[union-attr]
        return {_DICT_TAG: [[_to_json(k), _to_json(v)] for k, v in value.items()]}  # type: ignore[union-attr]
    return value


def _from_json(obj: dict) -> object:
    if len(obj) == 1:
        if _TUPLE_TAG in obj:
            items = obj[_TUPLE_TAG]
            if type(items) is not list:
                raise PlainDataError("malformed tuple tag")
            return tuple(items)
        if _DICT_TAG in obj:
            pairs = obj[_DICT_TAG]
            if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
                raise PlainDataError("malformed dict tag")
            out = {}
            for k, v in pairs:
                _check_key(k, "key")
                out[k] = v
            return out
    return obj


def encode_plain(value: object, max_bytes: int) -> bytes:
    """Check ``value`` is plain data (exact types) and encode it; PlainDataError if not or too large."""
    validate_plain(value)
    try:
        data = json.dumps(_to_json(value), separators=(",", ":"), allow_nan=True).encode()
    except (ValueError, RecursionError, OverflowError) as e:  # e.g. int too large to print
        raise PlainDataError(f"cannot encode: {e}") from None
    if len(data) > max_bytes:
        raise PlainDataError(f"{len(data)} bytes, more than the cap of {max_bytes}")
    return data


def decode_plain(data: bytes, max_bytes: int) -> object:
    """Decode bytes from ``encode_plain`` and re-validate exact types; PlainDataError if anything is off."""
    if len(data) > max_bytes:
        raise PlainDataError(f"{len(data)} bytes, more than the cap of {max_bytes}")
    try:
        value = json.loads(data, object_hook=_from_json)
    except (ValueError, RecursionError, TypeError) as e:
        raise PlainDataError(f"cannot decode: {e}") from None
    validate_plain(value)
    return value

