"""Configuration fields that carry their own help text and checks: one mechanism for every config dataclass.

A field is declared with :func:`option` (its default, its meaning, and what values it accepts); the
dataclass's ``__post_init__`` calls :func:`check_options` once, which checks every declared field against
its declaration and raises :class:`ossgym.errors.ConfigError` naming the first field that cannot work. The
command line reads the same declarations (:func:`option_help`), so ``--help`` shows what a field means and
which values it takes::

    @dataclass
    class Config:
        steps: int = option(20, "optimizer steps of the run", min=1)
        top_p: float = option(1.0, "nucleus-sampling mass", min=0.0, min_open=True, max=1.0)
        mode: str = option("fast", "how to generate", choices=("fast", "trl"))

        def __post_init__(self):
            check_options(self)          # then only the checks that relate several fields

Types are those of the default (an ``int`` field refuses ``True`` and ``2.5``; a ``float`` field accepts an
``int`` and refuses NaN and infinities); ``none_ok=True`` also admits ``None``. Collections: a ``tuple``
field takes a list or tuple, a ``frozenset`` field a list, tuple or set (never a ``str``), of ``item``
values (``str`` by default); for them ``choices``, ``min`` and ``max`` apply to every item. A subclass that
changes a default keeps the declaration with :func:`redefault`, and :func:`check_keys` refuses unknown
option names with the closest ones. This module imports nothing heavy, so configs stay cheap to build and a
CLI parser stays light.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ossgym.errors import ConfigError

_KEY = "ossgym_option"


@dataclasses.dataclass(frozen=True)
class Option:
    """What a config field means and accepts (kept in the field's metadata under ``ossgym_option``)."""

    help: str
    kind: type | None = None  # the value's type; None: the default's type
    item: type = str  # the type of the items of a tuple or frozenset field
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself excluded
    max_open: bool = False  # max itself excluded
    none_ok: bool = False
    fix: str | None = None  # what to tell the user instead of the generated advice
    cli: bool = True  # shown as a command-line flag

    def accepted(self) -> str:
        """The accepted values in words, e.g. ``"an int >= 1"`` or ``"one of low, medium, high"``."""
        if self.kind in _COLLECTIONS:  # the choices, if any, are named where an item is refused
            text = "a list of " + ("names" if self.item is str else _WORDS.get(self.item, "values"))
        elif self.choices is not None:
            text = "one of " + ", ".join(str(c) for c in self.choices)
        else:
            text = {int: "an int", float: "a finite number", bool: "true or false", str: "a text",
                    dict: "a mapping"}.get(self.kind, f"a {getattr(self.kind, '__name__', '?')}")
        if self.choices is None:
            low = None if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"
            high = None if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"
            if low and high:
                text += f" in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}{')' if self.max_open else ']'}"
            elif low or high:
                text += " " + (low or high)
        return text + (" (or none)" if self.none_ok else "")


_COLLECTIONS = (tuple, frozenset)
_WORDS = {int: "ints", float: "numbers", bool: "booleans"}


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
           kind: type | None = None, item: type = str, choices: Sequence | None = None, min: float | None = None,
           max: float | None = None, min_open: bool = False, max_open: bool = False, none_ok: bool = False,
           fix: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help text and the checks :func:`check_options` applies to it."""
    if not help:
        raise TypeError("option() needs a help text")
    if kind is None:
        sample = default_factory() if default is dataclasses.MISSING and callable(default_factory) else default
        kind = type(sample) if sample is not None and sample is not dataclasses.MISSING else None
    meta = Option(help=help, kind=kind, item=item, choices=tuple(choices) if choices is not None else None, min=min, max=max,
                  min_open=min_open, max_open=max_open, none_ok=none_ok or default is None, fix=fix, cli=cli)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={_KEY: meta})
    return dataclasses.field(default=default, metadata={_KEY: meta})


def redefault(cls: type, name: str, default: Any) -> Any:
    """The option ``name`` of dataclass ``cls`` with another default (for a subclass that changes it)."""
    return dataclasses.field(default=default, metadata=cls.__dataclass_fields__[name].metadata)


def check_keys(keys: Iterable[str], known: Iterable[str], owner: str) -> None:
    """Raise ConfigError naming the first of ``keys`` not in ``known`` (the options of ``owner``), with the
    closest known name and the list of them."""
    known = sorted(known)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"Did you mean {close[0]}?" if close else ""
            listed = f"The options are: {', '.join(known)}." if len(known) <= 40 else f"See {owner}'s documentation."
            raise ConfigError(str(key), f"is not an option of {owner}", f"{hint} {listed}".strip())


def option_of(f: dataclasses.Field) -> Option | None:
    """The :class:`Option` declared for a dataclass field, or None for a field declared without :func:`option`."""
    return f.metadata.get(_KEY)


def option_help(f: dataclasses.Field) -> str:
    """``--help`` text of a field: its meaning, the values it accepts and its default."""
    meta = option_of(f)
    if meta is None:
        return ""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if isinstance(default, (tuple, frozenset)):
        default = ",".join(map(str, sorted(default) if isinstance(default, frozenset) else default)) or "none"
    return f"{meta.help} [{meta.accepted()}; default: {default}]"


def _type_ok(value: Any, kind: type | None) -> bool:
    if kind is None:
        return True
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def _value_ok(value: Any, meta: Option) -> bool:
    """``value`` (one value, or one item of a collection) has the declared type, choice and range."""
    if not _type_ok(value, meta.item if meta.kind in _COLLECTIONS else meta.kind):
        return False
    if meta.choices is not None and value not in meta.choices:
        return False
    if meta.min is not None and not (value > meta.min if meta.min_open else value >= meta.min):
        return False
    return meta.max is None or (value < meta.max if meta.max_open else value <= meta.max)


def check_options(config: Any) -> None:
    """Check every :func:`option` field of the dataclass instance ``config``; ConfigError names the first bad one.

    Lists given for tuple fields become tuples, and lists, tuples and sets given for frozenset fields become
    frozensets, first (so configs built from JSON, YAML or the CLI compare equal).
    """
    for f in dataclasses.fields(config):
        meta = option_of(f)
        if meta is None:
            continue
        value = getattr(config, f.name)
        if meta.kind in _COLLECTIONS and type(value) is not meta.kind and isinstance(
                value, (list, tuple, set, frozenset) if meta.kind is frozenset else list):
            value = meta.kind(value)
            object.__setattr__(config, f.name, value)
        if value is None and meta.none_ok:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        fix = meta.fix or (f"Use {'names from' if meta.kind in _COLLECTIONS else 'one of'} "
                           f"{', '.join(map(str, meta.choices))}." if meta.choices is not None
                           else f"Pass {meta.accepted()}" + (f", e.g. {f.name}={default!r}." if default is not None
                                                             else "."))
        if meta.kind in _COLLECTIONS and isinstance(value, meta.kind):
            bad = [v for v in (sorted(value, key=repr) if meta.kind is frozenset else value) if not _value_ok(v, meta)]
            if bad:
                what = "allowed" if meta.choices is not None else dataclasses.replace(meta, kind=meta.item).accepted()
                raise ConfigError(f.name, f"has {', '.join(map(repr, bad))}, which {'is' if len(bad) == 1 else 'are'}"
                                  f" not {what}", fix)
        elif not (_type_ok(value, meta.kind) if meta.kind in _COLLECTIONS else _value_ok(value, meta)):
            raise ConfigError(f.name, f"must be {meta.accepted()}, got {value!r}", fix)


__all__ = ["Option", "option", "option_of", "option_help", "check_options", "check_keys", "redefault"]
