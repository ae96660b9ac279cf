"""Links and addresses over rtnetlink (pyroute2's `AsyncIPRoute`), one socket per network namespace.

This layer only speaks netlink: dump links and addresses into core values, add VIPs with our
ownership marks (`replace`, so a repeat is harmless), delete given addresses, create the dummy
interface. Decisions live in `agent.core`; sysctls live in `agent.sysctl`.

For a named namespace pyroute2 opens the socket inside it (a short-lived helper process hands the
descriptor back) on first use; after that every request is asynchronous on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
import struct
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import pyroute2.netlink
import pyroute2.netns
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELADDR, RTM_NEWADDR
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_NOARP, IFF_UP

from dsr_operator.agent import core

logger = logging.getLogger(__name__)

IFA_F_NODAD = 0x02
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
BATCH_MESSAGES = 256
"""Address requests packed into one send (each is acknowledged; the acks must fit the receive buffer)."""
SOCKET_BUFFER = 4 * 1024 * 1024
_HEADER = struct.Struct("=IHHII")
_ERROR = struct.Struct("=i")


@dataclasses.dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    """IFLA_INFO_KIND (`dummy`, `veth`...); None for lo and physical NICs."""
    flags: int

    @property
    def up_noarp(self) -> bool:
        return bool(self.flags & IFF_UP) and bool(self.flags & IFF_NOARP)


class LinkTypeUnsupported(Exception):
    """The kernel has no such link type (e.g. `dummy` without the module)."""


def kernel_keeps_ifa_proto(release: str | None = None) -> bool:
    """IFA_PROTO is stored and reported by Linux 6.1 and later."""
    text = release if release is not None else os.uname().release
    parts = []
    for piece in text.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    while len(parts) < 2:
        parts.append(0)
    return (parts[0], parts[1]) >= (6, 1)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"netlink error {exc.code}: {os.strerror(exc.code) if exc.code else exc}"
    return str(exc) or type(exc).__name__


class Netlink:
    """rtnetlink of one network namespace (None: the agent's own); use as `async with`."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: Any = None
        self._sock: socket.socket | None = None
        self._seq = 0

    async def __aenter__(self) -> Self:
        # flags=0: never create the namespace by accident, fail if it does not exist.
        self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        await self._ipr.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._ipr is not None:
            await self._ipr.__aexit__(exc_type, exc, tb)
            self._ipr = None

    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            raise RuntimeError("Netlink used outside `async with`")
        return self._ipr

    async def links(self) -> dict[int, Link]:
        """Every link by index."""
        result: dict[int, Link] = {}
        async for msg in await self.ipr.link("dump"):
            kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            index = int(msg["index"])
            result[index] = Link(index=index, name=str(msg.get("ifname")), kind=kind, flags=int(msg["flags"]))
        return result

    async def addresses(self, links: dict[int, Link] | None = None) -> list[core.HostAddress]:
        names = {i: link.name for i, link in (links if links is not None else await self.links()).items()}
        found: list[core.HostAddress] = []
        async for msg in await self.ipr.addr("dump"):
            index = int(msg["index"])
            found.append(
                core.HostAddress(
                    index=index,
                    ifname=names.get(index, str(index)),
                    address=str(msg.get("address")),
                    prefixlen=int(msg["prefixlen"]),
                    family=int(msg["family"]),
                    label=msg.get("label"),
                    proto=msg.get("proto"),
                )
            )
        return found

    async def add_vips(self, vips: Sequence[core.Vip], index: int, ifname: str) -> dict[str, str | None]:
        """Add (replace) each VIP on the interface with our marks; address -> error text (None: success)."""
        requests = []
        for vip in vips:
            attrs: list[tuple[str, Any]] = [("IFA_LOCAL", vip.address), ("IFA_ADDRESS", vip.address)]
            if vip.family == socket.AF_INET:
                attrs.append(("IFA_LABEL", f"{ifname}{core.LABEL_SUFFIX}"))
            else:
                attrs.append(("IFA_FLAGS", IFA_F_NODAD))
            attrs.append(("IFA_PROTO", core.OWNER_PROTO))
            flags = pyroute2.netlink.NLM_F_CREATE | pyroute2.netlink.NLM_F_REPLACE
            requests.append((vip.address, RTM_NEWADDR, flags, vip.family, vip.prefixlen, index, attrs))
        return await self._batch(requests, ignore=())

    async def delete_addresses(self, addrs: Sequence[core.HostAddress]) -> dict[str, str | None]:
        """Delete exactly these addresses; an address already gone counts as success."""
        requests = []
        for addr in addrs:
            attrs: list[tuple[str, Any]] = [("IFA_LOCAL", addr.address), ("IFA_ADDRESS", addr.address)]
            if addr.family == socket.AF_INET6:
                attrs = [("IFA_ADDRESS", addr.address)]
            requests.append(
                (f"{addr.ifname}/{addr.address}", RTM_DELADDR, 0, addr.family, addr.prefixlen, addr.index, attrs)
            )
        return await self._batch(requests, ignore=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV))

    async def _batch(
        self, requests: list[tuple[str, int, int, int, int, int, list[tuple[str, Any]]]], ignore: tuple[int, ...]
    ) -> dict[str, str | None]:
        """Send address requests packed into few datagrams (as pyroute2's IPBatch does) and match the acks.

        One request per round trip costs a syscall pair and pyroute2's per-request machinery; a
        packed batch lets the kernel process hundreds of requests per send. Each request asks for an
        ack (NLM_F_ACK), so every result is known individually.
        """
        results: dict[str, str | None] = {}
        if not requests:
            return results
        sock = await self._batch_socket()
        loop = asyncio.get_running_loop()
        for start in range(0, len(requests), BATCH_MESSAGES):
            chunk = requests[start : start + BATCH_MESSAGES]
            pending: dict[int, str] = {}
            buffer = bytearray()
            for key, msg_type, flags, family, prefixlen, index, attrs in chunk:
                self._seq = (self._seq % 0x7FFFFFFF) + 1
                msg = ifaddrmsg()
                msg["family"] = family
                msg["prefixlen"] = prefixlen
                msg["index"] = index
                msg["attrs"] = attrs
                msg["header"]["type"] = msg_type
                msg["header"]["flags"] = pyroute2.netlink.NLM_F_REQUEST | pyroute2.netlink.NLM_F_ACK | flags
                msg["header"]["sequence_number"] = self._seq
                msg.encode()
                buffer += msg.data
                pending[self._seq] = key
            await loop.sock_sendall(sock, bytes(buffer))
            while pending:
                data = await loop.sock_recv(sock, SOCKET_BUFFER)
                offset = 0
                while offset + _HEADER.size <= len(data):
                    length, msg_type, _, seq, _ = _HEADER.unpack_from(data, offset)
                    if length < _HEADER.size:
                        break
                    if msg_type == NLMSG_ERROR and seq in pending:
                        (code,) = _ERROR.unpack_from(data, offset + _HEADER.size)
                        key = pending.pop(seq)
                        if code == 0 or -code in ignore:
                            results[key] = None
                        else:
                            results[key] = f"netlink error {-code}: {os.strerror(-code)}"
                    offset += (length + 3) & ~3
        return results

    async def _batch_socket(self) -> socket.socket:
        if self._sock is None:
            # pyroute2 opens the socket inside the namespace (via a helper process): keep it off the loop.
            sock = await asyncio.to_thread(
                pyroute2.netns.create_socket,
                self.netns,
                socket.AF_NETLINK,
                socket.SOCK_RAW,
                NETLINK_ROUTE,
                flags=0,
            )
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.bind((0, 0))
            sock.setblocking(False)
            self._sock = sock
        return self._sock

    async def create_dummy(self, name: str) -> None:
        """Create a dummy link; raise LinkTypeUnsupported when the kernel lacks the type."""
        try:
            await self.ipr.link("add", ifname=name, kind="dummy")
        except NetlinkError as exc:
            if exc.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                raise LinkTypeUnsupported(f"the kernel has no dummy link type ({_error_text(exc)})") from exc
            if exc.code != errno.EEXIST:
                raise

    async def set_up_noarp(self, index: int) -> None:
        await self.ipr.link("set", index=index, state="up", arp=False)

    async def delete_link(self, index: int) -> None:
        try:
            await self.ipr.link("del", index=index)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise

    async def probe_dummy(self, name: str) -> bool:
        """Whether the kernel can create dummy links: create a throwaway one and delete it."""
        try:
            await self.create_dummy(name)
        except LinkTypeUnsupported:
            return False
        for index, link in (await self.links()).items():
            if link.name == name:
                await self.delete_link(index)
        return True
