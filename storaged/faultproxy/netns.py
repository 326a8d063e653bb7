"""Sockets inside a named network namespace (``ip netns add NAME``), from a process that stays in
its own namespace.

A socket belongs to the namespace of the thread that created it, for its whole life. So a helper
thread enters the namespace (``setns``), creates the socket and exits, and the event loop then uses
the socket like any other. Linux only, needs CAP_SYS_ADMIN (root). Python 3.11 has no
``os.setns``, hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in_netns(netns: str, family: int = socket.AF_INET,
                    type: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket in network namespace ``netns`` (a name under /run/netns, or a path)."""
    path = netns if "/" in netns else os.path.join(NETNS_DIR, netns)
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)  # only this thread moves; it exits right after
            finally:
                os.close(fd)
            result.append(socket.socket(family, type))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result.append(exc)

    t = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    got = result[0]
    if isinstance(got, BaseException):
        raise got
    return got
