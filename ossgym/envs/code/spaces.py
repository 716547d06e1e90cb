"""A Gymnasium space for completion text: any Unicode string, empty, spaces and newlines included.

Gymnasium's ``Text`` space holds only strings over a fixed charset (by default alphanumeric ASCII), so a
real completion (spaces, newlines, code punctuation, non-ASCII) is not ``in`` it. ``CompletionSpace``
accepts every ``str`` up to an optional ``max_length`` and samples from a charset that looks like code
and prose (letters, digits, punctuation, whitespace, a few non-ASCII characters).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from gymnasium.spaces import Space

from ossgym.errors import ConfigError

__all__ = ["CompletionSpace", "DEFAULT_SAMPLE_CHARSET"]

_WHITESPACE_WEIGHT = {" ": 10.0, "\n": 4.0}
DEFAULT_SAMPLE_CHARSET = string.ascii_letters + string.digits + string.punctuation + " \n\t" + "éüßλπ中文🙂"


class CompletionSpace(Space[str]):
    """Every Unicode string (up to ``max_length`` characters, if given) is a member.

    Sampling draws a length uniformly from ``[0, sample_max_length]`` and characters uniformly from
    ``sample_charset`` (spaces and newlines weighted up); sampling never restricts membership. ``mask`` for :meth:`sample` is
    ``(length or None, np.int8 mask over sample_charset or None)`` as for Gymnasium's ``Text``.
    """

    def __init__(
        self,
        max_length: int | None = None,
        *,
        sample_charset: str = DEFAULT_SAMPLE_CHARSET,
        sample_max_length: int = 64,
        seed: int | np.random.Generator | None = None,
    ):
        if max_length is not None and (type(max_length) is not int or max_length < 0):
            raise ConfigError("max_length", f"must be None or an int >= 0, got {max_length!r}", "Pass e.g. max_length=32768.")
        if type(sample_max_length) is not int or sample_max_length < 0:
            raise ConfigError("sample_max_length", f"must be an int >= 0, got {sample_max_length!r}", "Pass e.g. 64.")
        if not isinstance(sample_charset, str) or not sample_charset:
            raise ConfigError("sample_charset", "must be a non-empty str", "Pass e.g. string.printable.")
        self.max_length = max_length
        self.sample_max_length = sample_max_length if max_length is None else min(sample_max_length, max_length)
        # One entry per distinct character, in first-seen order, so masks index a stable list.
        self.sample_chars: tuple[str, ...] = tuple(dict.fromkeys(sample_charset))
        # Unmasked sampling favours spaces and newlines, as real text does.
        w = np.array([_WHITESPACE_WEIGHT.get(c, 1.0) for c in self.sample_chars])
        self._default_weights = w / w.sum()
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        """Strings of any length cannot be flattened to a fixed-size Box."""
        return False

    def contains(self, x: Any) -> bool:
        """Any ``str`` (length at most ``max_length`` when set) is a member."""
        return isinstance(x, str) and (self.max_length is None or len(x) <= self.max_length)

    def sample(self, mask: Any | None = None, probability: Any | None = None) -> str:
        """A random string from ``sample_charset`` (seeded by :meth:`seed`)."""
        if mask is not None and probability is not None:
            raise ValueError("Pass only one of mask and probability.")
        length, weights = None, None
        given = mask if mask is not None else probability
        if given is not None:
            if not (isinstance(given, tuple) and len(given) == 2):
                raise ValueError("mask/probability must be a tuple (length or None, np.ndarray or None).")
            length, weights = given
            if weights is not None:
                weights = np.asarray(weights, dtype=np.float64)
                if weights.shape != (len(self.sample_chars),) or np.any(weights < 0):
                    raise ValueError(f"mask/probability must have shape ({len(self.sample_chars)},) and be >= 0.")
                total = weights.sum()
                weights = None if total == 0 else weights / total
                if total == 0:
                    return ""
        if length is None:
            length = int(self.np_random.integers(0, self.sample_max_length + 1))
        elif type(length) is not int or length < 0 or (self.max_length is not None and length > self.max_length):
            raise ValueError(f"length must be an int in [0, {self.max_length}], got {length!r}")
        if length == 0:
            return ""
        p = self._default_weights if weights is None else weights
        idx = self.np_random.choice(len(self.sample_chars), size=length, p=p)
        return "".join(self.sample_chars[i] for i in idx)

    def to_jsonable(self, sample_n: Iterable[str]) -> list[str]:
        """Strings are already JSON values."""
        return [str(s) for s in sample_n]

    def from_jsonable(self, sample_n: Sequence[str]) -> list[str]:
        """Inverse of :meth:`to_jsonable`."""
        return [str(s) for s in sample_n]

    def __repr__(self) -> str:
        return f"CompletionSpace(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CompletionSpace)
            and self.max_length == other.max_length
            and self.sample_max_length == other.sample_max_length
            and self.sample_chars == other.sample_chars
        )

    def __hash__(self) -> int:
        return hash((CompletionSpace, self.max_length, self.sample_max_length, self.sample_chars))
