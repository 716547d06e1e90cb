"""Running untrusted model-written Python: static policy, restricted compilation, isolated worker pool.

    from ossgym.sandbox import SandboxTask, default_pool
    task = SandboxTask(entrypoint="strategy", harness="ossgym.sandbox.testing:call_once")
    result = default_pool().evaluate(source, task, payload)   # a typed SandboxResult, never an exception

Layers, outermost last: the AST policy (policy.py), RestrictedPython with lean guards and read-only module
proxies (restricted.py), a trusted harness calling the code with per-call limits (context.py), and a
forked worker process with resource limits, no network, no environment, as user nobody, killed with its
process group on the wall-clock deadline (worker.py, zygote.py, pool.py).
"""

from ossgym.sandbox.context import CallTimeout, HarnessContext, InvalidOutput, TotalTimeout, UserError
from ossgym.sandbox.policy import check_policy
from ossgym.sandbox.pool import SandboxPool, default_pool
from ossgym.sandbox.result import (Outcome, PlainDataError, SandboxResult, Violation, decode_plain, encode_plain,
                                   validate_plain)
from ossgym.sandbox.task import DEFAULT_IMPORTS, SandboxTask

__all__ = [
    "CallTimeout", "DEFAULT_IMPORTS", "HarnessContext", "InvalidOutput", "Outcome", "PlainDataError",
    "SandboxPool", "SandboxResult", "SandboxTask", "TotalTimeout", "UserError", "Violation", "check_policy",
    "decode_plain", "default_pool", "encode_plain", "validate_plain",
]
