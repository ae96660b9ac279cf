"""The dataplane's process: it follows the store (through `nitro.queries`), applies the ruleset, runs
the probes and publishes what it sees (probe verdicts, live flows, packet counters).

Backends are named as `model.py` names them: a service by its name, a service-group member as
`<servicegroup>/<servername>:<port>`, in `newFlows`, `serving`, probes, flows and counters alike.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from dsr_operator import aio
from dsr_operator.simulator.dataplane.commands import CommandError, host_cidr, run
from dsr_operator.simulator.dataplane.model import Desired, ProbeSpec, desired_state, probe_specs
from dsr_operator.simulator.dataplane.neighbours import Neighbours
from dsr_operator.simulator.dataplane.nft import (
    COUNTED,
    FLOW_TIMEOUT,
    TABLE,
    WILDCARD_PORT,
    Names,
    flows,
    render,
    rule_counts,
)
from dsr_operator.simulator.dataplane.prober import Prober, ProbeState
from dsr_operator.simulator.nitro import queries

logger = logging.getLogger(__name__)

RENDER_POLL_SECONDS = 0.25
FLOWS_POLL_SECONDS = 1.0
FLOWS_POLL_DRAINING_SECONDS = 0.25
HISTORY_LENGTH = 1000


class Dataplane:
    """The simulator's forwarding path in network namespace `netns` on interface `dev`."""

    def __init__(self, netns: str, dev: str, *, flow_timeout: float = FLOW_TIMEOUT) -> None:
        self.netns = netns
        self.dev = dev
        self.flow_timeout = flow_timeout
        self.mac = ""
        self.address = ""
        self.address6 = ""
        """DEV's global IPv6 address (probes to IPv6 services go from it); empty without one."""
        self.store: queries.DataplaneHost | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.names = Names()
        self.probes: dict[tuple[str, str], ProbeState] = {}
        self.applied: Desired | None = None
        self.script = ""
        self.renders = 0
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_LENGTH)
        """Each applied ruleset's forwarding choices, with when its transaction started and ended (wall clock)."""
        self.last_error: str | None = None
        self._objects: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._carried: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in COUNTED}
        """Rule counters of rulesets replaced since start (a transaction flushes the chains' counters)."""
        self._vips_added: set[str] = set()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_tasks: dict[tuple[str, str], tuple[ProbeSpec, asyncio.Task[None]]] = {}
        self._prober = Prober(netns, dev)
        self._neighbours = Neighbours(netns, dev, self._dirty.set)

    @property
    def macs(self) -> dict[str, str]:
        """The learnt backend MACs: IP → MAC."""
        return self._neighbours.macs

    # -- lifecycle

    def attach(self, model: queries.DataplaneHost) -> None:
        """Follow this store's changes; from now on its monitors are real probes."""
        self.store = model
        self._unsubscribe = model.subscribe(self._changed)
        model.set_probe_results({})

    def _changed(self) -> None:
        self._dirty.set()  # never blocks: the render loop does the work

    def _ip(self, *args: str) -> tuple[str, ...]:
        return ("ip", "-n", self.netns, *args)

    async def start(self) -> None:
        links = json.loads(await run(*self._ip("-j", "addr", "show", "dev", self.dev)))
        if not links:
            raise CommandError(f"no interface {self.dev} in namespace {self.netns}")
        self.mac = links[0]["address"]
        infos = links[0].get("addr_info", [])
        own = [a["local"] for a in infos if a.get("family") == "inet" and a.get("prefixlen", 32) < 32]
        if not own:
            raise CommandError(f"{self.dev} in {self.netns} has no IPv4 subnet address to probe from")
        self.address = own[0]
        own6 = [a["local"] for a in infos if a.get("family") == "inet6" and a.get("scope") == "global"
                and a.get("prefixlen", 128) < 128]  # fmt: skip
        self.address6 = own6[0] if own6 else ""
        # A previous run that died may have left its table behind: start from nothing.
        await run("ip", "netns", "exec", self.netns, "nft", "-f", "-",
                  stdin=f"add table netdev {TABLE}\ndelete table netdev {TABLE}\n")  # fmt: skip
        await self._prober.start()
        await self._neighbours.open(ipv6=bool(self.address6))
        self._tasks = [
            asyncio.create_task(self._render_loop(), name="dataplane-render"),
            asyncio.create_task(self._neighbours.run(), name="dataplane-neigh"),
            asyncio.create_task(self._flows_loop(), name="dataplane-flows"),
        ]
        self._dirty.set()
        logger.info(
            "DSR dataplane on %s in netns %s (MAC %s, probes from %s)", self.dev, self.netns, self.mac, self.address
        )

    async def stop(self) -> None:
        tasks = self._tasks + [task for _, task in self._probe_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._probe_tasks.clear()
        self._prober.close()
        self._neighbours.close()
        with contextlib.suppress(CommandError):
            await run("ip", "netns", "exec", self.netns, "nft", "-f", "-",
                      stdin=f"add table netdev {TABLE}\ndelete table netdev {TABLE}\n")  # fmt: skip
        for vip in sorted(self._vips_added):
            with contextlib.suppress(CommandError):
                await run(*self._ip("addr", "del", host_cidr(vip), "dev", self.dev))
        self._vips_added.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- rendering

    async def _render_loop(self) -> None:
        while True:
            await aio.wait(self._dirty, RENDER_POLL_SECONDS)
            self._dirty.clear()
            assert self.store is not None
            specs = self._sync_probes()
            self._neighbours.wanted = {s.service_ip for s in specs.values()} | {
                svc.ip for svc in self.store.services()
            } | {member.ip for member in self.store.group_members()}
            desired = desired_state(self.store, self.macs)
            if desired == self.applied:
                continue
            try:
                await self._apply(desired)
            except (CommandError, OSError) as exc:
                self.last_error = str(exc)
                logger.error("DSR dataplane update failed: %s", exc)
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _apply(self, desired: Desired) -> None:
        applying = time.time()
        script, objects = render(
            desired,
            dev=self.dev,
            mac=self.mac,
            names=self.names,
            previous=self._objects,
            flow_timeout=self.flow_timeout,
        )
        for vip in sorted(desired.vips - self._vips_added):
            nodad = ("nodad",) if ":" in vip else ()  # usable at once, not after duplicate address detection
            await run(*self._ip("addr", "replace", host_cidr(vip), "dev", self.dev, *nodad))
            self._vips_added.add(vip)
        if self._objects[0]:  # the chains' counters restart with the new rules: keep their totals
            with contextlib.suppress(CommandError, ValueError):
                for kind, counts in rule_counts(await self._table()).items():
                    self._carried[kind].update(counts)
        await run("ip", "netns", "exec", self.netns, "nft", "-f", "-", stdin=script)
        self._objects = objects
        for vip in sorted(self._vips_added - desired.vips):
            await run(*self._ip("addr", "del", host_cidr(vip), "dev", self.dev))
            self._vips_added.discard(vip)
        self.applied = desired
        self.script = script
        self.renders += 1
        self.history.append({
            "applying": applying,
            "time": time.time(),
            "vservers": {v.name: {"newFlows": [m.service for m in v.active], "serving": [m.service for m in v.serving]}
                         for v in desired.vservers},
        })
        self.last_error = None
        for v in desired.vservers:
            logger.info(
                "DSR %s %s:%s -> new flows: %s; serving: %s", v.name, v.vip, v.port,
                [m.service for m in v.active] or "none", [m.service for m in v.serving] or "none",
            )  # fmt: skip
        for name, why in desired.skipped:
            logger.info("DSR %s not forwarded: %s", name, why)

    # -- monitors

    def _sync_probes(self) -> dict[tuple[str, str], ProbeSpec]:
        assert self.store is not None
        specs = probe_specs(self.store)
        for key, (spec, task) in list(self._probe_tasks.items()):
            if specs.get(key) != spec:
                task.cancel()
                del self._probe_tasks[key]
                if key not in specs:
                    self.probes.pop(key, None)
        for key, spec in specs.items():
            if key not in self._probe_tasks:
                self.probes.setdefault(key, ProbeState())
                self._probe_tasks[key] = (spec, asyncio.create_task(self._probe_loop(spec), name=f"probe-{key}"))
        self._publish()
        return specs

    def _publish(self) -> None:
        if self.store is not None:
            self.store.set_probe_results({key: st.up for key, st in self.probes.items()})

    async def probe_once(self, spec: ProbeSpec) -> str | None:
        """One probe; None on success, else the reason it failed."""
        mac_ip = spec.service_ip if spec.transparent else spec.dst_ip
        mac = await self._neighbours.mac_of(mac_ip, spec.timeout)
        if mac is None:
            return f"no MAC for {mac_ip}"
        source = self.address6 if ":" in spec.dst_ip else self.address
        if not source:
            return f"{self.dev} has no global IPv6 address to probe {spec.dst_ip} from"
        if spec.type == "PING":
            return await self._prober.ping(self.mac, source, mac, spec.dst_ip, spec.timeout)
        if spec.dst_port in (0, WILDCARD_PORT):
            return "monitor has no destination port for a wildcard service"
        return await self._prober.tcp(self.mac, source, mac, spec.dst_ip, spec.dst_port, spec.timeout)

    async def _probe_loop(self, spec: ProbeSpec) -> None:
        key = (spec.service, spec.monitor)
        while True:
            started = time.monotonic()
            try:
                failure = await self.probe_once(spec)
            except OSError as exc:
                failure = f"probe error: {exc}"
            state = self.probes.setdefault(key, ProbeState())
            state.probes += 1
            state.at = time.time()
            if failure is None:
                state.streak = state.streak + 1 if state.streak > 0 else 1
                state.last = "success"
                if not state.up and state.streak >= spec.successretries:
                    state.up = True
                    logger.info("Monitor %s: service %s is UP", spec.monitor, spec.service)
            else:
                state.failed += 1
                state.streak = state.streak - 1 if state.streak < 0 else -1
                state.last = failure
                if state.up and -state.streak >= spec.retries:
                    state.up = False
                    logger.info("Monitor %s: service %s is DOWN (%s)", spec.monitor, spec.service, failure)
            self._publish()
            await asyncio.sleep(max(0.0, spec.interval - (time.monotonic() - started)))

    # -- flows

    async def _flows_loop(self) -> None:
        """Publish each service's live flows as its current clients (a graceful disable ends at 0)."""
        while True:
            assert self.store is not None
            try:
                self.store.set_clients(flows(await self._table(), self.names), replace=True, live=True)
            except (CommandError, ValueError) as exc:
                logger.debug("Cannot count the dataplane's flows: %s", exc)
            draining = any(not svc.enabled for svc in self.store.services()) or any(
                not member.enabled for member in self.store.group_members()
            )
            await asyncio.sleep(FLOWS_POLL_DRAINING_SECONDS if draining else FLOWS_POLL_SECONDS)

    # -- reporting

    async def _table(self) -> dict[str, Any]:
        out = await run("ip", "netns", "exec", self.netns, "nft", "-j", "list", "table", "netdev", TABLE)
        table: dict[str, Any] = json.loads(out)
        return table

    async def traffic(self) -> queries.Traffic:
        """Packets and new flows counted since start, for the NITRO stat endpoints."""
        counts = await self.counters()
        return queries.Traffic(counts["vserverPackets"], counts["forwardedPackets"], counts["newFlows"])

    async def counters(self) -> dict[str, Any]:
        """Packets per vserver at ingress, forwarded and new flows per service (since start), live flows
        per service, and DEV's counters."""
        table = await self._table()
        counts = rule_counts(table)
        for kind, carried in self._carried.items():
            counts[kind].update(carried)
        link = json.loads(await run(*self._ip("-s", "-j", "link", "show", "dev", self.dev)))[0]
        stats = link.get("stats64", link.get("stats", {}))
        return {
            "vserverPackets": dict(counts["vserver"]),
            "forwardedPackets": dict(counts["forwarded"]),
            "newFlows": dict(counts["newflow"]),
            "flows": flows(table, self.names),
            "interface": {
                "name": self.dev,
                "rxPackets": stats.get("rx", {}).get("packets", 0),
                "txPackets": stats.get("tx", {}).get("packets", 0),
            },
        }

    def describe(self) -> dict[str, Any]:
        """What `/_sim/dataplane` shows: forwarding choices, learnt MACs, probe verdicts."""
        applied = self.applied
        return {
            "netns": self.netns,
            "dev": self.dev,
            "mac": self.mac,
            "address": self.address,
            "address6": self.address6,
            "renders": self.renders,
            "lastError": self.last_error,
            "macs": dict(sorted(self.macs.items())),
            "vips": sorted(applied.vips) if applied else [],
            "vservers": [
                {
                    "name": v.name,
                    "vip": v.vip,
                    "port": v.port,
                    "newFlows": [m.service for m in v.active],
                    "serving": [m.service for m in v.serving],
                }
                for v in (applied.vservers if applied else ())
            ],
            "notForwarded": [{"name": n, "reason": why} for n, why in (applied.skipped if applied else ())],
            "history": list(self.history),
            "probes": [
                {"service": s, "monitor": m, "up": st.up, "probes": st.probes, "failed": st.failed, "last": st.last}
                for (s, m), st in sorted(self.probes.items())
            ],
        }
