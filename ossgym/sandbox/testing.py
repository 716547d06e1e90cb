"""Small trusted harnesses for tests, benchmarks and examples (``"ossgym.sandbox.testing:NAME"``)."""

from __future__ import annotations

from ossgym.sandbox.context import CallTimeout, HarnessContext, UserError


def call_once(fn, payload: object, ctx: HarnessContext) -> object:  # noqa: ANN001 - fn is untrusted
    """Call ``fn(payload)`` once and return its value."""
    return ctx.call(payload)


def call_reporting(fn, payload: object, ctx: HarnessContext) -> dict:  # noqa: ANN001
    """Call ``fn(payload)`` once and report a timeout or error as data instead of letting it escape."""
    try:
        return {"value": ctx.call(payload)}
    except CallTimeout:
        return {"error": "timeout"}
    except UserError as e:
        return {"error": e.type_name, "message": e.message}


def call_each(fn, payload: list, ctx: HarnessContext) -> list:  # noqa: ANN001
    """Call ``fn(arg)`` for each arg in ``payload``, checkpointing the values so far before each call."""
    out: list = []
    for arg in payload:
        ctx.checkpoint(out)
        out.append(ctx.call(arg))
    return out


def call_plain_once(fn, payload: object, ctx: HarnessContext) -> object:  # noqa: ANN001
    """Call ``fn(payload)`` once through ``ctx.call_plain`` (exact plain types required)."""
    return ctx.call_plain(payload)


def call_twice_same_args(fn, payload: object, ctx: HarnessContext) -> list:  # noqa: ANN001
    """Call ``fn(payload)`` twice with the same harness object and return both values and the object."""
    return [ctx.call(payload), ctx.call(payload), payload]


def call_timed(fn, payload: object, ctx: HarnessContext) -> list:  # noqa: ANN001
    """Call ``fn(payload)`` once; return ``[value, seconds the call itself took]`` (``ctx.last_call_s``)."""
    value = ctx.call(payload)
    return [value, ctx.last_call_s]


def answer_request(fn, request: object, ctx: HarnessContext) -> object:  # noqa: ANN001
    """Session handler: answer each request with ``fn(request)`` (exact plain types required)."""
    return ctx.call_plain(request)
