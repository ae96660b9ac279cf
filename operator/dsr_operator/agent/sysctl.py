"""Kernel parameters through /proc/sys, in the agent's network namespace, off the event loop.

/proc/sys/net shows the network namespace of the thread that opens the file. For the host namespace
we use `asyncio.to_thread`; for a named namespace (`--netns`) we keep one dedicated worker thread
that enters the namespace once, at start (`dsr_operator.netns.enter`), and does every read and
write of this module there. The event loop thread never changes namespace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import pathlib
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self, TypeVar

from dsr_operator import netns as netns_

logger = logging.getLogger(__name__)

# A container's /proc/sys is read-only: the DaemonSet mounts the host's /proc/sys/net under /host/proc/sys.
PROC_SYS = pathlib.Path(os.environ.get("DSR_AGENT_PROC_SYS", "/proc/sys"))

T = TypeVar("T")


class SysctlError(Exception):
    """A sysctl could not be read or written."""


def _path(key: str) -> pathlib.Path:
    # sysctl(8) naming: dots separate levels, a slash stands for a dot inside a name (eth0/100).
    return PROC_SYS.joinpath(*(part.replace("/", ".") for part in key.split(".")))


def _read(keys: tuple[str, ...]) -> dict[str, int | None]:
    values: dict[str, int | None] = {}
    for key in keys:
        try:
            values[key] = int(_path(key).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            values[key] = None
    return values


def _write(values: Mapping[str, int]) -> None:
    for key, value in values.items():
        try:
            _path(key).write_text(f"{value}\n")
        except OSError as exc:
            raise SysctlError(f"cannot set {key}={value}: {exc.strerror or exc}") from exc


def _rp_filter() -> dict[str, int]:
    conf = PROC_SYS / "net/ipv4/conf"
    values: dict[str, int] = {}
    for entry in sorted(conf.iterdir()):
        if entry.name == "default":
            continue
        try:
            values[entry.name] = int((entry / "rp_filter").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            continue
    return values


class Sysctls:
    """Reads and writes `net.*` sysctls of one network namespace (None: the agent's own)."""

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Self:
        if self._netns is not None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix=f"sysctl-{self._netns}",
                initializer=netns_.enter,
                initargs=(self._netns,),
            )
            await self._run(lambda: None)  # fail now if the namespace cannot be entered
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._netns is None:
            return await asyncio.to_thread(fn)
        if self._executor is None:
            raise RuntimeError("Sysctls used outside `async with`")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except concurrent.futures.BrokenExecutor as exc:
            raise SysctlError(f"cannot enter network namespace {self._netns!r}") from exc

    async def read(self, keys: tuple[str, ...] | list[str]) -> dict[str, int | None]:
        """Current values; None for a key that does not exist (e.g. an interface that is gone)."""
        return await self._run(functools.partial(_read, tuple(keys)))

    async def write(self, values: Mapping[str, int]) -> None:
        await self._run(functools.partial(_write, dict(values)))

    async def rp_filter(self) -> dict[str, int]:
        """net.ipv4.conf.<if>.rp_filter for `all` and every interface (the effective value is the max)."""
        return await self._run(_rp_filter)
