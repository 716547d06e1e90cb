"""A seccomp-BPF filter for the workers: deny what no task needs, allow the rest.

Why a small BPF program of our own instead of the libseccomp bindings: those bindings are not on PyPI
(Debian ships them as python3-seccomp, built against the system's libseccomp), and the filter is one
short list. It is a deny list on purpose: the worker runs a CPython interpreter whose exact system calls
vary with the libc and the Python version, while what must never happen is short and stable. Denied calls
fail with EPERM (so the worker's Python sees an OSError, a typed result); a foreign architecture (x32 or
i386 entry points) kills the process.

Denied: every way to make a socket or reach one (socket, connect, bind, listen, accept, socketpair),
ptrace and process_vm_readv/writev, kcmp, signals to any process but the worker itself (kill, tkill,
tgkill allowed only for its own pid or process group; rt_sigqueueinfo, pidfd_*), new processes and
programs (clone, clone3, fork, vfork, execve, execveat), namespaces and mounts (unshare, setns, mount,
umount2, pivot_root, chroot, the new mount API, open_tree), keyctl/add_key/request_key, bpf,
perf_event_open, io_uring, userfaultfd, open_by_handle_at, module loading, kexec, reboot, clock and
time setting, swap, quotactl, acct, personality, iopl/ioperm, syslog.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from ossgym.sandbox.isolation import PR_SET_NO_NEW_PRIVS, _libc

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_RET_KILL_PROCESS, _RET_ALLOW = 0x80000000, 0x7FFF0000
_RET_EPERM = 0x00050000 | errno.EPERM
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2

# x86_64 system call numbers
_DENIED = {
    "socket": 41, "connect": 42, "accept": 43, "bind": 49, "listen": 50, "socketpair": 53, "accept4": 288,
    "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "clone3": 435,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "pidfd_send_signal": 424, "pidfd_open": 434,
    "pidfd_getfd": 438,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442,
    "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "userfaultfd": 323,
    "open_by_handle_at": 304, "name_to_handle_at": 303,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
    "reboot": 169, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159, "clock_adjtime": 305,
    "swapon": 167, "swapoff": 168, "quotactl": 179, "acct": 163, "personality": 135, "iopl": 172,
    "ioperm": 173, "syslog": 103, "uselib": 134, "vhangup": 153,
}
_SIGNALS = (62, 200, 234)  # kill, tkill, tgkill: allowed for the worker's own pid / process group only


class _Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_Insn))]


def program(pid: int) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) instructions, for a worker whose pid (and process group) is ``pid``."""
    mine, group = pid & 0xFFFFFFFF, (-pid) & 0xFFFFFFFF
    code: list[tuple[int, int | str, int | str, int]] = [
        (_LD_W_ABS, 0, 0, 4),                     # the architecture
        (_JEQ_K, 0, "kill", _AUDIT_ARCH_X86_64),
        (_LD_W_ABS, 0, 0, 0),                     # the system call number
        (_JGE_K, "eperm", 0, _X32_BIT),           # x32 entry points
    ]
    code += [(_JEQ_K, "eperm", 0, nr) for nr in sorted(set(_DENIED.values()))]
    code += [(_JEQ_K, "signal", 0, nr) for nr in _SIGNALS]
    labels = {"allow": len(code)}
    code.append((_RET_K, 0, 0, _RET_ALLOW))
    labels["signal"] = len(code)
    code += [(_LD_W_ABS, 0, 0, 16),               # args[0] (pid_t: its low 32 bits)
             (_JEQ_K, "allow_signal", 0, mine), (_JEQ_K, "allow_signal", 0, group), (_JEQ_K, "allow_signal", 0, 0)]
    labels["eperm"] = len(code)
    code.append((_RET_K, 0, 0, _RET_EPERM))
    labels["allow_signal"] = len(code)
    code.append((_RET_K, 0, 0, _RET_ALLOW))
    labels["kill"] = len(code)
    code.append((_RET_K, 0, 0, _RET_KILL_PROCESS))

    def resolve(target: int | str, at: int) -> int:
        return target if isinstance(target, int) else labels[target] - at - 1  # BPF jumps forward only

    return [(c, resolve(jt, i), resolve(jf, i), k) for i, (c, jt, jf, k) in enumerate(code)]


def install(pid: int | None = None) -> bool:
    """Install the filter on this process (no_new_privs first, as an unprivileged process must); True
    when it is in place. Irreversible: call it last, once the worker no longer needs what it denies."""
    if _libc is None or platform.machine() != "x86_64":
        return False
    insns = program(os.getpid() if pid is None else pid)
    arr = (_Insn * len(insns))(*[_Insn(*i) for i in insns])
    prog = _Prog(len(insns), ctypes.cast(arr, ctypes.POINTER(_Insn)))
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0
