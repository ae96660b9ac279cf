"""Named network namespaces (`ip netns add NAME`): the one way in, with setns(2), without a helper process.

A thread belongs to one network namespace at a time, and a socket to the one it was created in, for
its whole life. So the event loop thread never changes namespace:

- `enter(name)` moves the calling thread in for good (the initializer of a worker thread that does
  all of its work there, such as the agent's sysctl thread);
- `run_inside(name, fn)` calls `fn` in a short-lived thread that enters the namespace and leaves it
  again, and hands back its result or its exception;
- `socket_in(name, ...)` is a socket created there (it keeps working from any thread).

(pyroute2 has its own way in for netlink: `AsyncIPRoute(netns=...)`; shell commands use `ip netns exec`.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pathlib
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

NETNS_DIR = pathlib.Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns into network namespace {what}: {os.strerror(errno)}")


def enter(name: str) -> None:
    """Move the calling thread into network namespace `name`, for good."""
    fd = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd, repr(name))
    finally:
        os.close(fd)


def run_inside(name: str | None, fn: Callable[[], T]) -> T:
    """`fn()` called inside network namespace `name` (None: right here, in this thread's namespace).

    It runs in a thread of its own that enters the namespace and goes back before it ends; the
    calling thread waits for it (from asyncio, call this through `asyncio.to_thread`)."""
    if name is None:
        return fn()
    result: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                enter(name)
                try:
                    result.append(fn())
                finally:
                    _setns(own, "of this thread (going back)")
            finally:
                os.close(own)
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=work, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if result:  # made: going back matters little to a thread that ends now
        return result[0]
    raise failure[0]


def socket_in(name: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A new socket created in network namespace `name` (None: this process's namespace)."""
    return run_inside(name, lambda: socket.socket(family, kind, proto))
