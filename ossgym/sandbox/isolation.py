"""The OS layers of the sandbox, each small and separately testable (google/nsjail's habit).

The template process enters its namespaces once (every worker it forks inherits them); each worker then
takes its own process-level layers before it sees a request:

=================== ===================================================================================
layer               how
=================== ===================================================================================
user namespace      ordinary users: ``unshare(CLONE_NEWUSER)`` with the caller's uid mapped to 0 inside
                    (the only mapping an unprivileged process may write). Root keeps the host's users
                    and gives every worker a uid of its own instead.
network namespace   a new one without interfaces: no socket reaches anything
IPC, UTS            new namespaces: no shared memory or semaphores of the host, no hostname to set
mount namespace     a new, private one: the workers' root is a read-only, empty tmpfs mounted there
empty root          ``chroot`` into that tmpfs: no file of the host, no /proc of the caller
capabilities        dropped to none (bounding set too) once the worker is in its root, so it can neither
                    chroot again nor mount; ``no_new_privs`` set
seccomp             seccomp.py: a BPF filter that denies sockets, ptrace, process_vm_*, signals outside
                    the worker's own process, mount/unshare/setns/chroot, keyctl, bpf, perf_event_open,
                    io_uring, userfaultfd and the like
not dumpable        the template and every worker (nobody of the same uid may ptrace or read their memory)
rlimits             worker.py: address space, CPU, no file writes, few fds, no new processes, no cores
=================== ===================================================================================

The pool probes what it got (``Template.isolation``), logs one warning naming any missing layer and why,
puts the layers into every result's metadata, and with ``require_isolation=True`` refuses to run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 1, 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
_PR_CAPBSET_READ = 23
_LAST_CAP = 63

#: the layers every worker must get; ``require_isolation=True`` refuses a pool that lacks one
REQUIRED_LAYERS = ("user_separation", "network_namespace", "ipc_namespace", "uts_namespace", "mount_namespace",
                   "empty_root", "capabilities_dropped", "seccomp", "no_new_privs", "not_dumpable")

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def _err() -> str:
    return os.strerror(ctypes.get_errno())


def prctl(option: int, arg: int) -> bool:
    """Call prctl(2); False where it is not available."""
    return _libc is not None and _libc.prctl(option, arg, 0, 0, 0) == 0


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def enter_namespaces(workdir: str) -> dict:
    """Move the template into its namespaces and mount the workers' empty read-only root at ``workdir``.

    Returns the layers got (and, for each one missed, ``<layer>_error`` saying why)."""
    got: dict[str, object] = {}
    if _libc is None:
        return {"namespaces_error": "no libc"}
    root = os.geteuid() == 0
    flags = CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(flags | (0 if root else CLONE_NEWUSER)) == 0:
        if not root:
            try:
                _write("/proc/self/setgroups", "deny")
                _write("/proc/self/uid_map", f"0 {uid} 1")
                _write("/proc/self/gid_map", f"0 {gid} 1")
            except OSError as e:
                return {"user_namespace_error": f"cannot map ids: {e}"}
        got.update(network_namespace=True, ipc_namespace=True, uts_namespace=True, mount_namespace=True,
                   user_namespace=not root)
    else:
        why = _err()
        for name in ("network_namespace", "ipc_namespace", "uts_namespace", "mount_namespace"):
            got[name] = False
            got[f"{name}_error"] = f"unshare: {why}" + ("" if root else " (user namespaces may be disabled: "
                                                          "sysctl kernel.unprivileged_userns_clone=1, or a container"
                                                          " started with --security-opt seccomp=unconfined)")
        return got
    # A private mount tree, then an empty read-only tmpfs as the workers' root: even the owner of the
    # directory underneath (an ordinary user's own temp dir) can write nothing there.
    if _libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        got["empty_root"], got["empty_root_error"] = False, f"mount --make-rprivate /: {_err()}"
        return got
    if _libc.mount(b"none", workdir.encode(), b"tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                   b"size=4k,mode=555") != 0:
        got["empty_root"], got["empty_root_error"] = False, f"mount tmpfs: {_err()}"
        return got
    got["empty_root"] = True
    return got


def drop_bounding_set() -> None:
    """Empty the capability bounding set (needs CAP_SETPCAP: call it before giving up root)."""
    if _libc is not None:
        for cap in range(_LAST_CAP + 1):
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last capability: fine


def drop_capabilities() -> bool:
    """Drop every capability (bounding set, then effective/permitted/inheritable); True when none is left."""
    if _libc is None:
        return False
    drop_bounding_set()

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    if _libc.capset(ctypes.byref(header), ctypes.byref(data)) != 0:
        return False
    left = (Data * 2)()
    if _libc.capget(ctypes.byref(header), ctypes.byref(left)) != 0:
        return False
    bounding = any(_libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1 for cap in range(_LAST_CAP + 1))
    return not bounding and all(d.effective == d.permitted == d.inheritable == 0 for d in left)


def missing(layers: dict) -> dict[str, str]:
    """The required layers ``layers`` lacks, each with why (empty when every layer is there)."""
    return {name: str(layers.get(f"{name}_error", "not applied")) for name in REQUIRED_LAYERS
            if layers.get(name) is not True}
