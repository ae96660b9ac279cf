"""`dsr-operator host-agent`: a host outside Kubernetes that joins and leaves a registry-backed DsrService.

The same "VIP first, bind after" handshake as the node agent, through etcd instead of a DsrNodeConfig:

1. put the VIP on the loopback (the node agent's `Host` code: arp sysctls first, then the address);
2. only then register the host: one key under the prefix, a CoreDNS/SkyDNS record, on an etcd lease
   the agent keeps alive (a crashed host's lease expires, etcd deletes the key, NetScaler unbinds it);
3. while running, check the VIP every renewal: a host that lost it and cannot put it back
   deregisters (NetScaler must not send it traffic) and registers again once it holds it;
4. on SIGTERM or SIGINT, ask to leave (`"drain": true`): NetScaler disables the host gracefully and
   unbinds it; the agent waits `drain_seconds` (the DsrService's drainSeconds and a reconcile), then
   deregisters, and only then removes the VIP.

While etcd cannot be reached the agent keeps trying; if its lease ran out meanwhile it registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence

from dsr_operator import aio
from dsr_operator.agent import core, host
from dsr_operator.registry import etcd

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Registration:
    """What the host registers: where, as what, and how long the registry keeps it without renewal."""

    prefix: str
    name: str
    address: str
    port: int | None = None
    ttl: int = 10
    """Lease seconds: a host that stops renewing is gone this long after its last renewal."""
    drain_seconds: float = 40.0
    """How long a leaving host stays (registered as draining, VIP in place) before it deregisters."""

    @property
    def key(self) -> str:
        return f"{self.prefix.rstrip('/')}/{self.name}"

    def value(self, *, drain: bool = False) -> str:
        doc: dict[str, object] = {"host": self.address, "ttl": self.ttl, "name": self.name}
        if self.port is not None:
            doc["port"] = self.port
        if drain:
            doc["drain"] = True
        return json.dumps(doc, sort_keys=True)


class HostAgent:
    def __init__(self, registration: Registration, client: etcd.EtcdClient, the_host: host.Host,
                 vips: Sequence[core.Vip]) -> None:
        self.reg = registration
        self.client = client
        self.host = the_host
        self.vips = list(vips)
        self.lease: int | None = None
        self.registered = False

    async def _hold_vip(self) -> str | None:
        """Put the VIP on the loopback (idempotent); why not, if it cannot be held."""
        outcome = await self.host.apply(self.vips)
        missing = [v.address for v in self.vips if v.address not in outcome.applied]
        if outcome.error or missing:
            reasons = [f.error for f in outcome.failed] + ([outcome.error] if outcome.error else [])
            return f"VIP {', '.join(missing) or '?'} not held: {'; '.join(reasons) or 'unknown'}"
        return None

    async def _register(self, *, drain: bool = False) -> None:
        if self.lease is None:
            self.lease = await self.client.grant(self.reg.ttl)
        await self.client.put(self.reg.key, self.reg.value(drain=drain), lease=self.lease)
        if not self.registered or drain:
            log.info("Registered %s as %s%s", self.reg.address, self.reg.key, " (draining)" if drain else "")
        self.registered = True

    async def _deregister(self) -> None:
        if self.lease is not None:
            with contextlib.suppress(etcd.EtcdError):
                await self.client.revoke(self.lease)  # its key goes with it
        with contextlib.suppress(etcd.EtcdError):
            await self.client.delete(self.reg.key)
        self.lease = None
        self.registered = False
        log.info("Deregistered %s", self.reg.key)

    async def _renew(self) -> None:
        """One round: the VIP still held, the registration still there (registered again if it lapsed)."""
        problem = await self._hold_vip()
        if problem is not None:
            if self.registered:
                log.warning("%s: deregistering until it is held again", problem)
                await self._deregister()
            return
        if self.lease is not None and await self.client.keepalive(self.lease) > 0:
            if not self.registered:
                await self._register()
            return
        if self.lease is not None:
            log.warning("The lease of %s ran out (etcd was unreachable?); registering again", self.reg.key)
        self.lease = None
        self.registered = False
        await self._register()

    async def run(self, stop: asyncio.Event) -> int:
        """Join, stay, and leave gracefully when `stop` is set. 0 after a graceful leave."""
        problem = await self._hold_vip()
        if problem is not None:
            log.error("%s: not registering", problem)
            return 1
        interval = max(0.2, self.reg.ttl / 3)
        while not stop.is_set():
            try:
                await self._renew()
            except etcd.EtcdError as exc:
                log.warning("etcd: %s; trying again in %.1f s", exc, interval)
            await aio.wait(stop, interval)
        await self.leave()
        return 0

    async def leave(self) -> None:
        """Ask to drain, wait for NetScaler to take the host out, deregister, then drop the VIP."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reg.drain_seconds
        interval = max(0.2, self.reg.ttl / 3)
        if self.registered:
            with contextlib.suppress(etcd.EtcdError):
                await self._register(drain=True)
            log.info("Draining for %.0f s before leaving", self.reg.drain_seconds)
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(interval, left))
                if self.lease is not None:
                    with contextlib.suppress(etcd.EtcdError):
                        await self.client.keepalive(self.lease)
        await self._deregister()
        done = await self.host.uninstall()
        for line in done:
            log.info("%s", line)
