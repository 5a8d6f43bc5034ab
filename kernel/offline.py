"""Cut a run off the network, to prove it needs no internet (as on Kaggle).

`block_network()` first moves the process into a new, empty network namespace (Linux `unshare(CLONE_NEWNET)`; as
an unprivileged user inside a new user namespace, as `unshare -rn` does). There the only interface is a loopback
that is down, so every connection, datagram and host look-up fails, from Python, from native code (FFmpeg under
PyAV/decord/OpenCV, torch) and from subprocesses alike. It must run before the process starts a second thread
(torch, numpy and OpenCV start theirs on import): `python -m kernel --block-network` calls it first.

Where the OS refuses a namespace (no user namespaces, a seccomp filter, another OS) or threads already run, only
Python's `socket` API is blocked, and the decode backends open local files only (`dfdc_core.video.local_file`);
native code that opens its own sockets, and subprocesses, are then NOT covered. `NetworkBlock.describe()` says
which case holds; the kernel logs it.
"""
from __future__ import annotations

import ctypes
import os
import socket
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


class NetworkBlocked(OSError):
    """Raised by any attempt to connect or resolve a host through Python's socket API after `block_network()`."""


@dataclass(frozen=True)
class NetworkBlock:
    """How the network was blocked: `namespace` is True when native code and subprocesses are covered too."""

    namespace: bool
    how: str

    def describe(self) -> str:
        if self.namespace:
            return (f"network blocked: {self.how}; no interface but a loopback that is down, so Python, native code "
                    "and subprocesses all get 'network unreachable'")
        return (f"network blocked for Python's socket API only ({self.how}); decoders open local files only. NOT "
                "covered: native code opening its own sockets (raw _socket, C libraries) and subprocesses")


def _refuse(*args, **kwargs):
    raise NetworkBlocked("network access is blocked (--block-network): the kernel must run offline")


def block_python_sockets() -> None:
    """Make Python socket connects, sends to an address and host look-ups raise `NetworkBlocked`."""
    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.socket.sendto = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse


def thread_count() -> int:
    """Threads of this process (Linux), or 0 where /proc cannot tell."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def enter_empty_network_namespace() -> str:
    """Move this process into a new network namespace; return how, or raise `OSError` saying why not."""
    if thread_count() != 1:
        raise OSError(f"the process runs {thread_count() or 'an unknown number of'} threads; a namespace is only "
                      "entered before the first thread starts")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "unshare"):
        raise OSError("this C library has no unshare()")
    if libc.unshare(CLONE_NEWNET) == 0:
        return "new network namespace (unshare CLONE_NEWNET, privileged)"
    privileged_error = os.strerror(ctypes.get_errno())
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
        raise OSError(f"unshare(CLONE_NEWNET): {privileged_error}; with a user namespace: "
                      f"{os.strerror(ctypes.get_errno())}")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as handle:  # same uid/gid inside: files are created as before
            handle.write(text)
    return "new user and network namespace (unshare CLONE_NEWUSER|CLONE_NEWNET, unprivileged)"


def block_network(namespace: bool = True) -> NetworkBlock:
    """Block the network for the rest of the process: a new network namespace if `namespace` and the OS allow it,
    and in every case Python's socket API (so Python code gets a clear `NetworkBlocked`)."""
    block_python_sockets()
    if not namespace:
        return NetworkBlock(False, "namespace not requested")
    try:
        return NetworkBlock(True, enter_empty_network_namespace())
    except OSError as error:
        return NetworkBlock(False, f"no network namespace: {error}")
