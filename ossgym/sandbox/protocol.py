"""The wire between the caller, the template and the workers: one module both sides import.

Template socket (one per pool slot): ``E`` + frame(request JSON) + frame(payload) with the worker's channel
attached (SCM_RIGHTS) -> frame ``{"pid": ..., "isolation": {...}}`` or ``{"error": ...}``; ``R`` +
frame ``{"pid": ...}`` -> frame ``{"status": waitpid status}``.

Worker channel (a socket pair end; kinded frames: one kind byte, a 4-byte big-endian length, the body):

====== ============ ==================================================================================
kind   direction    body
====== ============ ==================================================================================
``c``  worker->     a checkpoint (encoded plain data; worker-driven harnesses only)
``v``  worker->     the harness's return value, or the reply to one request (encoded plain data)
``e``  worker->     a failed request: JSON ``{"kind": ..., "message": ...}`` (the session goes on)
``l``  worker->     the untrusted code is loaded; the worker now answers requests (sessions only)
``r``  worker->     the final result record (JSON); the worker exits after it
``q``  ->worker     one request of a session (encoded plain data)
====== ============ ==================================================================================
"""

from __future__ import annotations

import os
import socket
import struct

EXIT_OK = 0
EXIT_INTERNAL = 70
EXIT_MEMORY = 77

FROM_WORKER = frozenset({b"c", b"v", b"e", b"l", b"r"})
REQUEST = b"q"


def read_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly n bytes or raise EOFError."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("socket closed")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    """Read one length-prefixed frame."""
    (n,) = struct.unpack(">I", read_exact(sock, 4))
    if n > limit:
        raise EOFError("frame too large")
    return read_exact(sock, n)


def frame(data: bytes) -> bytes:
    """Length-prefix ``data``."""
    return struct.pack(">I", len(data)) + data


def write_kinded(fd: int, kind: bytes, body: bytes) -> None:
    """Write one kinded frame to ``fd`` in full."""
    data = memoryview(kind + struct.pack(">I", len(body)) + body)
    while data:
        data = data[os.write(fd, data):]


def read_kinded(fd: int, cap: int) -> tuple[bytes, bytes] | None:
    """Read one kinded frame from ``fd`` (blocking); None at EOF. Raises EOFError on a frame over ``cap``."""
    head = _read_fd(fd, 5)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head[1:5])
    if n > cap:
        raise EOFError(f"frame of {n} bytes over the cap of {cap}")
    body = _read_fd(fd, n) if n else b""
    if body is None:
        return None
    return head[:1], body


def _read_fd(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
