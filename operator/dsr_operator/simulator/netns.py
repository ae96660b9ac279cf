"""Sockets inside a named network namespace (`ip netns add NAME`), without a helper process.

A socket belongs to the namespace it was created in, for its whole life. `socket_in` creates it in a
short-lived thread that enters the namespace with setns(2) and leaves it again, so the calling
thread (often an asyncio event loop) never changes namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def socket_in(netns: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket created in network namespace `netns` (None: this process's namespace)."""
    if netns is None:
        return socket.socket(family, kind, proto)
    result: list[socket.socket | BaseException] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            try:
                target = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
                try:
                    _setns(target)
                    try:
                        result.append(socket.socket(family, kind, proto))
                    finally:
                        _setns(own)
                finally:
                    os.close(target)
            finally:
                os.close(own)
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
