"""Links and addresses over rtnetlink, in one network namespace.

This layer only speaks netlink: dump links and addresses into core values, add VIPs with our
ownership marks (create-or-replace, so a repeat is harmless), delete given addresses, create the
dummy interface. Links go through pyroute2's `AsyncIPRoute`; addresses go in packed batches over a
second netlink socket with the `agent.rtaddr` codec (see there why). Decisions live in `agent.core`;
sysctls live in `agent.sysctl`.

For a named namespace pyroute2 opens the sockets inside it (a short-lived helper process hands the
descriptor back) when the layer is entered; after that every request is asynchronous on the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import pyroute2.netns
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifinfmsg import IFF_NOARP, IFF_UP

from dsr_operator.agent import core, rtaddr

logger = logging.getLogger(__name__)

NETLINK_ROUTE = 0
BATCH_MESSAGES = 256
"""Address requests packed into one send (each is acknowledged; the acks must fit the receive buffer)."""
SOCKET_BUFFER = 4 * 1024 * 1024


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
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        # flags=0: never create the namespace by accident, fail if it does not exist.
        self._ipr = AsyncIPRoute(netns=self.netns, flags=0) if self.netns else AsyncIPRoute()
        await self._ipr.__aenter__()
        # Open both sockets now: for a named namespace pyroute2 forks a helper to create them, and a
        # helper forked after the caller installs signal handlers would share asyncio's wakeup fd and
        # could deliver its own SIGTERM to our loop.
        try:
            await self.links()
            await self._batch_socket()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
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

    async def gateways(self) -> list[str]:
        """The next hops of every route in the main table, both families (the node's gateways)."""
        found: list[str] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            async for msg in await self.ipr.route("dump", family=family):
                gateway = msg.get("RTA_GATEWAY")
                if gateway:
                    found.append(str(gateway))
        return found

    async def addresses(self, links: dict[int, Link] | None = None) -> list[core.HostAddress]:
        """Every address in the namespace (an RTM_GETADDR dump)."""
        names = {i: link.name for i, link in (links if links is not None else await self.links()).items()}
        async with self._lock:
            sock = await self._batch_socket()
            loop = asyncio.get_running_loop()
            seq = self._next_seq()
            await loop.sock_sendall(sock, rtaddr.dump_request(seq))
            found: list[core.HostAddress] = []
            while True:
                data = await loop.sock_recv(sock, SOCKET_BUFFER)
                for msg_type, _, msg_seq, payload in rtaddr.messages(data):
                    if msg_seq != seq:
                        continue
                    if msg_type == rtaddr.NLMSG_DONE:
                        return found
                    if msg_type == rtaddr.NLMSG_ERROR:
                        code = rtaddr.error_code(payload)
                        raise NetlinkError(code, f"address dump failed: {os.strerror(code)}")
                    if msg_type == rtaddr.RTM_NEWADDR:
                        msg = rtaddr.parse_address(payload)
                        found.append(core.HostAddress(
                            index=msg.index, ifname=names.get(msg.index, str(msg.index)), address=msg.address,
                            prefixlen=msg.prefixlen, family=msg.family, label=msg.label, proto=msg.proto,
                        ))  # fmt: skip

    async def add_vips(self, vips: Sequence[core.Vip], index: int, ifname: str) -> dict[str, str | None]:
        """Add (replace) each VIP on the interface with our marks; address -> error text (None: success)."""
        label = f"{ifname}{core.LABEL_SUFFIX}"
        requests = [
            (vip.address, functools.partial(
                rtaddr.address_request, msg_type=rtaddr.RTM_NEWADDR, family=vip.family, prefixlen=vip.prefixlen,
                index=index, address=vip.address, label=label if vip.family == socket.AF_INET else None,
                proto=core.OWNER_PROTO, nodad=vip.family == socket.AF_INET6, replace=True,
            ))
            for vip in vips
        ]  # fmt: skip
        return await self._batch(requests, ignore=())

    async def delete_addresses(self, addrs: Sequence[core.HostAddress]) -> dict[str, str | None]:
        """Delete exactly these addresses; an address already gone counts as success."""
        requests = [
            (f"{a.ifname}/{a.address}", functools.partial(
                rtaddr.address_request, msg_type=rtaddr.RTM_DELADDR, family=a.family, prefixlen=a.prefixlen,
                index=a.index, address=a.address,
            ))
            for a in addrs
        ]  # fmt: skip
        return await self._batch(requests, ignore=(errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV))

    def _next_seq(self) -> int:
        self._seq = (self._seq % 0x7FFFFFFF) + 1
        return self._seq

    async def _batch(
        self, requests: Sequence[tuple[str, Callable[..., bytes]]], ignore: tuple[int, ...]
    ) -> dict[str, str | None]:
        """Send address requests packed into few datagrams (as pyroute2's IPBatch does) and match the acks.

        One request per round trip costs a syscall pair each; a packed batch lets the kernel process
        hundreds of requests per send. Every request asks for an ack (NLM_F_ACK), so each result is
        known individually and one bad VIP never hides or blocks the others.
        """
        results: dict[str, str | None] = {}
        if not requests:
            return results
        async with self._lock:
            sock = await self._batch_socket()
            loop = asyncio.get_running_loop()
            for start in range(0, len(requests), BATCH_MESSAGES):
                pending: dict[int, str] = {}
                buffer = bytearray()
                for key, build in requests[start : start + BATCH_MESSAGES]:
                    seq = self._next_seq()
                    buffer += build(seq)
                    pending[seq] = key
                await loop.sock_sendall(sock, bytes(buffer))
                while pending:
                    data = await loop.sock_recv(sock, SOCKET_BUFFER)
                    for msg_type, _, seq, payload in rtaddr.messages(data):
                        if msg_type != rtaddr.NLMSG_ERROR or seq not in pending:
                            continue
                        code = rtaddr.error_code(payload)
                        key = pending.pop(seq)
                        results[key] = (
                            None if code == 0 or code in ignore else f"netlink error {code}: {os.strerror(code)}"
                        )
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
