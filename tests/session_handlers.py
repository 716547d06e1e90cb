"""Trusted worker-side handlers for the Session tests (imported inside the worker)."""

import os


def call_each(fn, request, ctx):  # noqa: ANN001, ANN201
    """Call ``fn`` on each argument of the request; a timeout or error becomes a plain record."""
    out = []
    for x in request:
        try:
            out.append(ctx.call_plain(x))
        except BaseException as e:  # noqa: BLE001 - test handler: every failure as plain data
            if type(e).__name__ == "TotalTimeout":
                raise
            out.append({"fail": type(e).__name__})
    return out


def raw(fn, request, ctx):  # noqa: ANN001, ANN201
    """Call ``fn`` directly (no per-call limit) and return what it returns."""
    return fn(request)


def die(fn, request, ctx):  # noqa: ANN001, ANN201
    os._exit(3)
