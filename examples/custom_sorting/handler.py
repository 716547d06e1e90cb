"""Worker side: one call of the untrusted ``sort_numbers(xs)`` per request ``{"xs": [...]}``."""

from ossgym.sandbox import CallTimeout, UserError


def handle(fn, request, ctx):
    xs = request["xs"]
    if type(xs) is not list or not all(type(v) is int for v in xs):
        raise ValueError("the request must be {'xs': [int, ...]}")
    try:
        value = ctx.call(list(xs))
    except CallTimeout:
        return {"fail": "timeout"}
    except UserError as exc:
        return {"fail": "error", "detail": str(exc.message)[:200]}
    if type(value) is not list or not all(type(v) is int for v in value):
        return {"fail": "invalid_output"}
    return list(value)
