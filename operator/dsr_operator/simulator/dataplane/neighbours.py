"""Backend MACs for the dataplane: the namespace's neighbour table, kept fresh by soliciting.

An address that is missing is resolved by sending it a datagram from the namespace (the kernel ARPs,
or does neighbour discovery), as the appliance learns MACs from its monitors; present ones are
solicited now and then so the kernel revalidates them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable, Iterable

from dsr_operator import netns as netns_
from dsr_operator.simulator.dataplane.commands import CommandError, run

logger = logging.getLogger(__name__)

NEIGH_REFRESH_SECONDS = 1.0


class Neighbours:
    """The learnt MACs of the addresses in `wanted`, on DEV in network namespace `netns`."""

    def __init__(self, netns: str, dev: str, on_change: Callable[[], None]) -> None:
        self.netns = netns
        self.dev = dev
        self.macs: dict[str, str] = {}
        self.wanted: set[str] = set()
        """The addresses whose MACs are wanted (services and probe targets)."""
        self._on_change = on_change
        self._udp: socket.socket | None = None
        self._udp6: socket.socket | None = None

    async def open(self, *, ipv6: bool) -> None:
        """The sockets that solicit (IPv6 too when DEV has a global IPv6 address)."""
        self._udp = await asyncio.to_thread(netns_.socket_in, self.netns, socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setblocking(False)
        if ipv6:
            self._udp6 = await asyncio.to_thread(netns_.socket_in, self.netns, socket.AF_INET6, socket.SOCK_DGRAM)
            self._udp6.setblocking(False)

    def close(self) -> None:
        for udp in (self._udp, self._udp6):
            if udp is not None:
                udp.close()

    async def table(self) -> dict[str, str]:
        """The neighbour table's usable entries: IP → MAC."""
        rows = json.loads(await run("ip", "-n", self.netns, "-j", "neigh", "show", "dev", self.dev) or "[]")
        return {
            r["dst"]: r["lladdr"]
            for r in rows
            if "lladdr" in r and not {"FAILED", "INCOMPLETE"} & set(r.get("state", ()))
        }

    def solicit(self, ips: Iterable[str]) -> None:
        for ip in ips:
            udp = self._udp6 if ":" in ip else self._udp
            if udp is None:
                continue
            with contextlib.suppress(OSError):
                udp.sendto(b"", (ip, 9))  # the kernel resolves the MAC first (ARP or neighbour discovery)

    async def run(self) -> None:
        """Follow the table; `on_change` when the learnt MACs of the wanted addresses change."""
        rounds = 0
        while True:
            try:
                found = await self.table()
            except (CommandError, ValueError) as exc:
                logger.warning("Cannot read the neighbour table of %s: %s", self.netns, exc)
                found = {}
            wanted = self.wanted
            macs = {ip: mac for ip, mac in found.items() if ip in wanted}
            missing = wanted - macs.keys()
            # Missing entries at once; present ones now and then, so the kernel revalidates them.
            self.solicit(missing if rounds % 5 else wanted)
            if macs != self.macs:
                self.macs = macs
                self._on_change()
            rounds += 1
            await asyncio.sleep(0.2 if missing else NEIGH_REFRESH_SECONDS)

    async def mac_of(self, ip: str, wait: float) -> str | None:
        """The MAC of `ip`, soliciting it for up to `wait` seconds; None if it never answers."""
        deadline = time.monotonic() + wait
        while True:
            mac = self.macs.get(ip)
            if mac is not None:
                return mac
            self.solicit([ip])
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.1)
            with contextlib.suppress(CommandError, ValueError):
                mac = (await self.table()).get(ip)
                if mac is not None:
                    return mac
