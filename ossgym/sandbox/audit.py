"""The worker's last Python-level line: a ``sys.addaudithook`` installed after the trusted handler is
imported and the untrusted source is compiled, just before the untrusted module body runs.

Why: the static policy and RestrictedPython close the gadget classes we know (see docs/python_layer.md);
this hook makes a gadget found later end in a typed result instead of an escape. Every interesting thing an
escape needs raises an audit event in CPython before it happens: ``exec``/``compile`` of strings, ``import``
of a module not yet loaded, ``open``, ``os.*``, ``socket.*``, ``subprocess.Popen``, ``ctypes.*``,
``sys._getframe``, the frame and code attributes (``object.__getattr__`` for ``tb_frame``, ``gi_frame``,
``f_code``...), ``gc.get_referrers``/``get_objects``, ``sys.settrace``, ``code.__new__``, ``marshal``,
``pickle.find_class``, ``time.sleep``, ``builtins.id``...

Policy: an allowlist, not a denylist. After ``install`` the only events that pass are
``exec`` of exactly the compiled untrusted module (once), and ``object.__setattr__``/``__delattr__`` on
classes the untrusted code defined (ordinary class attributes). Every other event is denied, including ones
CPython adds in later versions. A denial:

* raises :class:`AuditDenied`, a ``BaseException`` the untrusted code can neither name nor catch (the policy
  forbids bare ``except`` and ``BaseException``), and
* is latched: :func:`denied` keeps every denied event, the worker turns any evaluation with a denial into a
  ``policy_violation`` result (:func:`override`) whatever the code did with the exception (a gadget that
  swallowed it inside stdlib code still fails), and from the second denial on the hook ends the process at
  once (``os._exit(EXIT_AUDIT)``): a typed crash for the caller, never a second try.

Audit hooks cannot be removed (``sys.addaudithook`` itself raises an event, denied here), and they see
events from C code as well as Python code. They are not a sandbox on their own (an attacker with arbitrary
memory writes, e.g. through ctypes, could bypass them; ctypes is never importable after install); the OS
layers (namespaces, seccomp, rlimits) are what holds if this falls.
"""

from __future__ import annotations

import os
import sys
from types import CodeType

import contextlib
from collections.abc import Iterator

__all__ = ["AuditDenied", "EXIT_AUDIT", "install", "installed", "denied", "override", "trusted"]

#: Exit status of a worker ended by a second denied event (after the first one raised AuditDenied).
EXIT_AUDIT = 79


class AuditDenied(BaseException):
    """An audited operation the untrusted code may not do (the event name is the message)."""


class _State:
    installed = False
    allowed_code: CodeType | None = None
    exec_used = False
    denied: list[str] = []
    extra: frozenset[str] = frozenset()
    is_user_class = staticmethod(lambda obj: False)
    suspended = 0


def _hook(event: str, args: tuple) -> None:
    if not _State.installed or _State.suspended:
        return
    if event == "exec" and not _State.exec_used and args and args[0] is _State.allowed_code:
        _State.exec_used = True
        return
    if event in ("object.__setattr__", "object.__delattr__") and args and _State.is_user_class(args[0]):
        return
    if event in _State.extra:
        return
    _deny(event, args)


def _deny(event: str, args: tuple) -> None:
    what = event
    if event in ("object.__getattr__", "object.__setattr__", "object.__delattr__") and len(args) > 1:
        what = f"{event}({type(args[0]).__name__}, {str(args[1])[:40]!r})"
    _State.denied.append(what)
    if len(_State.denied) > 1:
        os._exit(EXIT_AUDIT)
    raise AuditDenied(f"the sandbox denied '{what}'")


def install(code: CodeType | None = None, allow: tuple[str, ...] = ()) -> None:
    """Install the hook (once per process; it cannot be removed). ``code`` is the compiled untrusted module,
    the one ``exec`` allowed afterwards; ``allow`` names further events the trusted worker needs after this
    point (keep it empty: do file, import and socket set-up before installing)."""
    if _State.installed:
        raise RuntimeError("the audit hook is already installed")
    from ossgym.sandbox import restricted  # already loaded in any worker; imported here to avoid a cycle

    user_classes = restricted._user_classes
    _State.is_user_class = staticmethod(lambda obj: type(obj) is not object and obj in user_classes
                                        if isinstance(obj, type) else False)
    _State.allowed_code = code
    _State.extra = frozenset(allow)
    sys.addaudithook(_hook)
    _State.installed = True


@contextlib.contextmanager
def trusted() -> Iterator[None]:
    """Let trusted worker code do audited things (e.g. read a traceback's frames) for a moment. Only around
    code that runs no untrusted code; the untrusted code cannot reach this module (it is never importable
    and no object it holds refers to it)."""
    _State.suspended += 1
    try:
        yield
    finally:
        _State.suspended -= 1


def installed() -> bool:
    """Whether the hook is active in this process."""
    return _State.installed


def denied() -> tuple[str, ...]:
    """Every event denied so far in this process (the first one raised AuditDenied)."""
    return tuple(_State.denied)


def override(record: dict) -> dict:
    """The worker's result record, turned into a policy violation when any event was denied (whatever the
    code did with the AuditDenied exception)."""
    events = denied()
    if not events:
        return record
    message = f"the code attempted an operation the sandbox denies: {events[0]}"
    kept = {k: record[k] for k in ("stdout", "stderr", "metadata") if k in record}
    return {**kept, "outcome": "policy_violation", "message": message, "audit_denied": list(events),
            "violations": [[1, 0, message]]}
