"""Harnesses that hand untrusted code a stand-in for a gadget not yet found (a trusted callable that evals,
opens, imports...), with the audit hook ON: the hook alone must turn its use into a typed result."""

from __future__ import annotations

import gc
import os
import socket
import sys

GADGETS = {
    "eval": lambda: eval("1 + 1"),  # noqa: S307
    "exec": lambda: exec("x = 1"),  # noqa: S102
    "compile": lambda: compile("1", "<s>", "eval"),
    "open": lambda: open("/etc/hostname").read(),  # noqa: SIM115
    "import_new": lambda: __import__("wave"),
    "os_listdir": lambda: os.listdir("/"),
    "os_system": lambda: os.system("true"),  # noqa: S605
    "socket": lambda: socket.socket(),
    "getframe": lambda: sys._getframe(1).f_back,
    "get_referrers": lambda: gc.get_referrers(GADGETS),
    "tb_frame": lambda: _tb().tb_frame,
    "gi_frame": lambda: (i for i in [1]).gi_frame,
    "settrace": lambda: sys.settrace(None),
    "addaudithook": lambda: sys.addaudithook(lambda *a: None),
}


def _tb():  # noqa: ANN202
    try:
        raise ValueError
    except ValueError as e:
        return e.__traceback__


def with_gadget(fn, payload, ctx):  # noqa: ANN001, ANN201
    """Call ``fn(gadget)`` where gadget is GADGETS[payload]; the code may catch what it raises."""
    return ctx.call(GADGETS[payload])


def gadget_handler(fn, request, ctx):  # noqa: ANN001, ANN201
    """Session handler: ``fn(gadget)`` for GADGETS[request]."""
    return ctx.call(GADGETS[request])
