"""What to run in the sandbox: the entrypoint, the trusted harness, and the limits."""

from __future__ import annotations

from dataclasses import dataclass

from ossgym.errors import ConfigError

DEFAULT_IMPORTS = frozenset({"math", "random", "itertools", "functools", "collections", "heapq", "operator", "bisect"})

# The only modules a task may allow: reviewed for ways back to the interpreter (string-built attribute
# access, exec/eval of strings, files, processes, threads). Not here on purpose, among others: sys, os, gc,
# inspect, ctypes, signal, threading, subprocess, socket, importlib, builtins, types, dataclasses
# (exec of generated code from annotations), timeit (exec), pickle, io, numpy (files, ctypes), enum and
# abc (they hand out metaclasses, whose three-argument call builds classes with dunder methods).
# datetime and calendar are out too: datetime.now()/date.today() read the wall clock (a reward must not depend
# on it) and strptime imports lazily. A few members of allowed modules are removed from what the code sees
# (restricted._DROPPED); time and typing are stand-ins. The reasoning per module: docs/python_layer.md.
VETTED_IMPORTS = frozenset({
    "math", "cmath", "random", "itertools", "functools", "collections", "heapq", "operator", "bisect",
    "string", "re", "statistics", "fractions", "decimal", "numbers", "array", "struct",
    "time",  # a work-counting clock, not the real one (restricted.make_time_proxy)
    "json", "copy", "textwrap", "unicodedata", "zlib", "hashlib", "base64", "binascii",
    "typing",  # inert annotation names only (restricted.make_typing_proxy)
})


@dataclass(frozen=True)
class SandboxTask:
    """One kind of evaluation: the required function, the trusted harness that calls it, and limits.

    Exactly one of two modes. Caller-driven (``handler``, what the code tasks use): ``handler`` is
    ``"module.path:function"`` of trusted code imported inside the worker, called as
    ``handler(fn, request, ctx)`` for every request the caller's driver sends through its Session (see
    ``SandboxPool.run``); the caller keeps every secret and clock. Worker-driven (``harness``, the older
    mode): ``harness(fn, payload, ctx)`` is called once and returns plain data. ``call_timeout_s`` limits the CPU time of each
    call (so a loaded machine does not cause timeouts); ``total_timeout_s`` is wall clock for the whole
    evaluation. ``memory_mb`` is the address space the evaluation may add on top of the warm worker's own.
    ``seed`` seeds the ``random`` module the untrusted code sees.
    """

    entrypoint: str
    harness: str = ""
    allowed_imports: frozenset[str] = DEFAULT_IMPORTS
    call_timeout_s: float = 0.05
    total_timeout_s: float = 5.0
    memory_mb: int = 512
    max_output_bytes: int = 1 << 20
    max_source_bytes: int = 100_000
    seed: int = 0
    handler: str = ""

    @property
    def trusted_code(self) -> str:
        """The "module:function" of the trusted worker-side code (the handler, else the harness)."""
        return self.handler or self.harness

    def __post_init__(self) -> None:
        if type(self.entrypoint) is not str or not self.entrypoint.isidentifier() or self.entrypoint.startswith("_"):
            raise ConfigError("entrypoint", f"{self.entrypoint!r} is not a public identifier", "use e.g. 'strategy'")
        if type(self.harness) is not str or type(self.handler) is not str or bool(self.harness) == bool(self.handler):
            raise ConfigError("handler", "give exactly one of handler= (caller-driven sessions) and harness=",
                              "e.g. SandboxTask(entrypoint='strategy', handler='mypkg.worker_side:handle')")
        name = "handler" if self.handler else "harness"
        mod, sep, fn = self.trusted_code.partition(":")
        if not sep or not fn.isidentifier() or not all(p.isidentifier() for p in mod.split(".")):
            raise ConfigError(name, f"{self.trusted_code!r} is not 'module.path:function'",
                              "name trusted code importable in the worker, e.g. 'ossgym.sandbox.testing:call_once'")
        if not isinstance(self.allowed_imports, (frozenset, set, tuple, list)):
            raise ConfigError("allowed_imports", "must be a set of module names", "pass a frozenset of names")
        object.__setattr__(self, "allowed_imports", frozenset(self.allowed_imports))
        bad = self.allowed_imports - VETTED_IMPORTS
        if bad:
            raise ConfigError("allowed_imports", f"{sorted(bad)} are not among the vetted modules",
                              f"allow only modules from ossgym.sandbox.task.VETTED_IMPORTS: {sorted(VETTED_IMPORTS)}")
        for name in ("call_timeout_s", "total_timeout_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v <= 3600:
                raise ConfigError(name, f"{v!r} is not a number of seconds in (0, 3600]", "use e.g. 0.05")
        for name, lo in (("memory_mb", 16), ("max_output_bytes", 1024), ("max_source_bytes", 100)):
            v = getattr(self, name)
            if type(v) is not int or v < lo:
                raise ConfigError(name, f"{v!r} is not an int >= {lo}", f"use an int of at least {lo}")
        if type(self.seed) is not int:
            raise ConfigError("seed", f"{self.seed!r} is not an int", "use an int")
