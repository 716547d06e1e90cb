"""Running untrusted model-written Python: static policy, restricted compilation, isolated worker pool.

    from ossgym.sandbox import SandboxTask, default_pool
    task = SandboxTask(entrypoint="strategy", harness="mypkg.harnesses:play_games")
    result = default_pool().evaluate(source, task, payload)   # a typed SandboxResult, never an exception

The harness is trusted code, ``harness(fn, payload, ctx) -> plain data``, imported inside the worker; it
calls the untrusted ``fn`` through ``ctx.call``/``ctx.call_plain`` (per-call limit, trusted clock,
``ctx.checkpoint`` for partial results). See context.HarnessContext for the rules a harness follows.

Layers, each of which holds on its own (tests/test_sandbox_redteam.py attacks each one alone):

1. policy.py, AST policy (in the worker, with line/column messages): only imports of allowed modules
   and the one entrypoint at top level; no ``_``/dunder names or attributes, no frame/code/generator
   internals, no eval/exec/compile/open/globals/locals/vars/dir/input/breakpoint/setattr/exit, no
   non-literal getattr, no bare ``except``/``BaseException``, no return/break/continue in ``finally``,
   no async. Stops almost every attack in the issue's list with a message a model can learn from.
2. restricted.py, RestrictedPython with lean guards: the same name rules at compile time; runtime
   guards for ``getattr`` (no ``_`` names, no frame attributes, exact ``str`` names), field-free
   ``str.format``/``format_map``, writes that refuse modules, proxies and foreign classes; safe
   builtins only (``type`` never hands out a metaclass); allowed modules are read-only proxies without
   their string-attribute gadgets (operator.attrgetter/methodcaller, functools.update_wrapper/wraps,
   string.Formatter); ``random`` is a private generator seeded from the task.
3. context.py, trusted calls: periodic timers (CPU time for the per-call limit, wall clock for the total)
   raise an exception type the code cannot name inside it (again on every tick after the deadline), the
   trusted clock is checked after every call, and
   exceptions cross into the harness only as strings (UserError).
4. worker.py/zygote.py, the process: a fresh fork of a warm template per evaluation, in its own
   process group, network, IPC and UTS namespaces (when the OS allows), an empty chroot and a uid of its
   own (when started as root), no environment, no inherited file descriptors, limits (RLIMIT_AS, CPU,
   FSIZE=0, NOFILE, NPROC=0, CORE=0), stdout/stderr captured with a cap. Results leave only as framed JSON (plain types by construction).
5. pool.py, the caller: kills the worker's process group at the wall-clock deadline, re-validates every
   value with exact types and size caps, turns everything into a typed SandboxResult, replaces a dead
   template. ``SandboxResult.metadata`` says which isolation layers were applied.
"""

from ossgym.sandbox.context import CallTimeout, HarnessContext, InvalidOutput, TotalTimeout, UserError
from ossgym.sandbox.policy import check_policy
from ossgym.sandbox.pool import Reply, SandboxPool, Session, default_pool
from ossgym.sandbox.result import (Outcome, PlainDataError, SandboxResult, Violation, decode_plain, encode_plain,
                                   validate_plain)
from ossgym.sandbox.task import DEFAULT_IMPORTS, SandboxTask

__all__ = [
    "CallTimeout", "DEFAULT_IMPORTS", "HarnessContext", "InvalidOutput", "Outcome", "PlainDataError", "Reply", "Session",
    "SandboxPool", "SandboxResult", "SandboxTask", "TotalTimeout", "UserError", "Violation", "check_policy",
    "decode_plain", "default_pool", "encode_plain", "validate_plain",
]
