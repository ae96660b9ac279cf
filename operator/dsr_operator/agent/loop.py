"""The agent's thin Kubernetes loop: watch one DsrNodeConfig, converge the host, report status and drift.

Level-based: the watch only records the latest object and wakes the reconciler; a resync timer
wakes it too. Each pass reads the whole desired state (the spec's VIPs), lets `Host.apply` converge
the host, and writes the status subresource only if it differs. API failures never touch the host:
the watch reconnects with exponential backoff while the timer keeps repairing the host from the
last spec seen. Until the object has been read once, the host is left exactly as it is, so an agent
restart never removes a VIP.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import logging
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import lightkube
import lightkube.models.core_v1
import lightkube.models.meta_v1
import lightkube.resources.core_v1
import lightkube.types

from dsr_operator import aio, kube
from dsr_operator import clock as clock_
from dsr_operator.agent import core, facts, host, state
from dsr_operator.agent import metrics as metrics_
from dsr_operator.api import models

logger = logging.getLogger(__name__)

COMPONENT = "dsr-operator-agent"


@dataclasses.dataclass(frozen=True)
class Settings:
    """The node agent's settings (flags of `dsr-operator agent`)."""

    node_name: str
    interface_mode: host.Mode = "auto"
    interface: str = "dsr0"
    """Name of the dummy interface (dummy mode)."""
    resync_seconds: float = 30.0
    """Re-check the host (and repair drift) at least this often."""
    netns: str | None = None
    state_dir: pathlib.Path = state.DEFAULT_DIR
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    events_namespace: str = "default"
    """Events about the cluster-scoped DsrNodeConfig go to this namespace."""
    metrics_port: int = 0
    """Serve Prometheus `/metrics` on this port (0: no metrics endpoint)."""
    api_hosts: tuple[str, ...] = ()
    """The API server's addresses as the agent reaches it (never taken as VIPs)."""
    protected_cidrs: tuple[str, ...] = ()
    """Ranges no VIP may fall in, besides those the cluster reports (`--protected-cidr`)."""
    api_grace_seconds: float = 10.0
    """After adding VIPs, the API server must answer within this long, or the VIPs just added are removed."""
    quarantine_seconds: float = 60.0
    """A VIP removed that way is retried after this long (doubling each time, up to 16 times as long)."""


def _plain(obj: Any) -> dict[str, Any]:
    data = obj.to_dict() if hasattr(obj, "to_dict") and not isinstance(obj, dict) else dict(obj)
    return copy.deepcopy(data)


class Agent:
    """Reconciles the host against this node's DsrNodeConfig until cancelled."""

    def __init__(
        self,
        settings: Settings,
        the_host: host.Host,
        client: lightkube.AsyncClient,
        *,
        clock: clock_.Clock = clock_.SYSTEM,
        metrics: metrics_.AgentMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.host = the_host
        self.client = client
        self.clock = clock
        self._obj: dict[str, Any] | None = None
        self._known = False
        self._wake = asyncio.Event()
        self._retry_in: float | None = None
        self._baseline: tuple[set[str], set[str]] | None = None
        """(VIPs held, sysctls at their desired value) after the last pass: what drift is measured against."""
        self.passes = 0
        self._static = facts.static_protected(settings.api_hosts, settings.protected_cidrs)
        self._cluster: core.Protected | None = None
        self._cluster_read_at = 0.0
        self._held: frozenset[str] = frozenset()
        self._failures: dict[str, str] = {}
        self._probation: tuple[frozenset[str], float] | None = None
        """VIPs added while the API server has not answered since, and when they were added."""
        self._quarantine: dict[str, tuple[float, int, str]] = {}
        """VIP -> (monotonic time it may be retried, how many times it was removed, why): see `_roll_back`."""

    # --- watch -----------------------------------------------------------------------------------

    def _observe(self, obj: dict[str, Any] | None) -> None:
        self._obj = obj
        self._known = True
        self._wake.set()

    async def _watch(self) -> None:
        name = self.settings.node_name
        fields: dict[str, Any] = {"metadata.name": name}
        delay = self.settings.backoff_initial_seconds
        while True:
            try:
                listing = self.client.list(kube.DsrNodeConfig, fields=fields)
                found = None
                async for obj in listing:
                    if obj.metadata is not None and obj.metadata.name == name:  # never trust the selector alone
                        found = _plain(obj)
                try:
                    version: str | None = listing.resourceVersion
                except lightkube.core.exceptions.NotReadyError:
                    version = None
                self._observe(found)
                delay = self.settings.backoff_initial_seconds
                async for event, obj in self.client.watch(kube.DsrNodeConfig, fields=fields, resource_version=version):
                    if obj.metadata is None or obj.metadata.name != name:
                        continue
                    self._observe(None if event == "DELETED" else _plain(obj))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # API and transport errors alike: back off and list again
                logger.warning("Watching DsrNodeConfig %s failed, retrying in %.1fs: %s", name, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max_seconds)

    # --- reconcile -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch and reconcile until cancelled (cancellation leaves the host as it is)."""
        watcher = asyncio.create_task(self._watch(), name=f"watch-{self.settings.node_name}")
        try:
            while True:
                timeout = self._retry_in if self._retry_in is not None else self.settings.resync_seconds
                await aio.wait(self._wake, timeout)
                self._wake.clear()
                if not self._known:
                    continue
                await self.reconcile()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    async def _protected(self, wanted: set[str]) -> core.Protected:
        """The cluster's forbidden addresses, read again before a VIP is added and at least every resync."""
        now = time.monotonic()
        stale = now - self._cluster_read_at >= self.settings.resync_seconds
        if self._cluster is None or stale or (wanted - self._held and now - self._cluster_read_at >= 1.0):
            try:
                async with asyncio.timeout(self.settings.api_grace_seconds):
                    read = await facts.cluster_protected(self.client)
            except TimeoutError:
                read = core.Protected(unknown="listing Nodes timed out")
            if read.unknown is None or self._cluster is None or self._cluster.unknown is not None:
                self._cluster, self._cluster_read_at = read, now
            else:  # keep the last complete answer: the addresses did not become harmless
                logger.warning("Reading the cluster's addresses failed, using the last answer: %s", read.unknown)
        return self._static | self._cluster

    def _quarantined(self, vips: list[core.Vip]) -> tuple[list[core.Vip], list[core.VipFailure]]:
        now = time.monotonic()
        keep: list[core.Vip] = []
        failed: list[core.VipFailure] = []
        for vip in vips:
            until, _, message = self._quarantine.get(vip.address, (0.0, 0, ""))
            if until > now:
                failed.append(core.VipFailure(vip.address, message))
            else:
                keep.append(vip)
        return keep, failed

    def _roll_back(self) -> None:
        """Second line of defence: the API server went silent right after we added VIPs, so maybe they cut
        this node off. Take them out again (the next pass removes them) and retry later, with backoff."""
        assert self._probation is not None
        added, _ = self._probation
        self._probation = None
        now = time.monotonic()
        for address in sorted(added):
            _, times, _ = self._quarantine.get(address, (0.0, 0, ""))
            delay = self.settings.quarantine_seconds * 2 ** min(times, 4)
            retry = clock_.rfc3339(self.clock() + datetime.timedelta(seconds=delay))
            message = (f"removed: the API server did not answer within {self.settings.api_grace_seconds:g}s "
                       f"after it was added; retried at {retry}")
            self._quarantine[address] = (now + delay, times + 1, message)
            logger.error("VIP %s: the API server has not answered for %.0fs since it was added; removing it, "
                         "retrying in %.0fs", address, self.settings.api_grace_seconds, delay)

    async def reconcile(self) -> None:
        """One pass: spec -> host -> status (only if changed) -> events."""
        obj = self._obj
        spec = (obj or {}).get("spec") or {}
        vips, invalid = core.parse_vips(spec.get("vips", []))
        if self._probation and time.monotonic() - self._probation[1] >= self.settings.api_grace_seconds:
            self._roll_back()
        vips, held_back = self._quarantined(vips)
        protected = await self._protected({v.address for v in vips})
        outcome = await self.host.apply(vips, [*invalid, *held_back], protected)
        self._held = frozenset(outcome.applied)
        failures = {f.address: f.error for f in outcome.failed}
        for address, error in sorted(failures.items()):
            if self._failures.get(address) != error:
                logger.warning("DsrNodeConfig %s: VIP %s not applied: %s", self.settings.node_name, address, error)
        self._failures = failures
        if outcome.added:
            since = self._probation[1] if self._probation else time.monotonic()
            self._probation = (frozenset(outcome.added) | (self._probation[0] if self._probation else frozenset()),
                               since)
        self.passes += 1
        if outcome.added or outcome.removed:
            logger.info(
                "DsrNodeConfig %s: added %s, removed %s on %s",
                self.settings.node_name,
                list(outcome.added) or "nothing",
                list(outcome.removed) or "nothing",
                outcome.interface,
            )

        previous_status: Mapping[str, Any] = (obj or {}).get("status") or {}
        metadata = (obj or {}).get("metadata") or {}
        generation = metadata.get("generation")
        now = self.clock()
        repaired = self._drift(outcome, previous_status, generation)
        drift = models.DriftRepair(time=clock_.rfc3339(now), repaired=repaired) if repaired else None
        if repaired:
            logger.warning("DsrNodeConfig %s: repaired host drift: %s", self.settings.node_name, "; ".join(repaired))
        if self.metrics is not None:
            self.metrics.observe(outcome, now=now.timestamp(), repaired=len(repaired))

        self._retry_in = None
        if obj is None:
            self._probation = None  # nothing to report to: the spec is gone (deleted DsrNodeConfig)
            return
        if drift is not None:
            await self._event("DriftRepaired", "Repaired host drift: " + "; ".join(repaired), metadata, now)
        status = core.compute_status(
            outcome, generation=generation, previous=previous_status, now=clock_.rfc3339(now), drift=drift
        )
        document = core.status_document(status)
        if document == dict(previous_status) and self._probation is None:
            return
        try:
            async with asyncio.timeout(self.settings.api_grace_seconds if self._probation else None):
                if document == dict(previous_status):  # nothing to write: only ask whether the API answers
                    await self.client.get(kube.DsrNodeConfig, self.settings.node_name)
                else:
                    await self.client.patch(
                        kube.DsrNodeConfig.Status,
                        self.settings.node_name,
                        {"status": core.merge_patch(previous_status, document)},
                        patch_type=lightkube.types.PatchType.MERGE,
                    )
            self._probation = None
            for address in self._held & self._quarantine.keys():  # re-added, and the API still answers
                del self._quarantine[address]
            if self._obj is obj:
                obj["status"] = document
        except Exception as exc:  # the next pass recomputes and retries
            self._retry_in = self.settings.backoff_initial_seconds
            code = exc.response.status_code if isinstance(exc, lightkube.ApiError) and exc.response else None
            if code is not None and code < 500:
                self._probation = None  # refused, but answered (say, by an admission policy): not cut off
            logger.warning("Writing status of DsrNodeConfig %s failed: %s", self.settings.node_name, exc)

    def _drift(self, outcome: core.Outcome, previous_status: Mapping[str, Any], generation: int | None) -> list[str]:
        """What this pass had to restore although it was in place after the previous pass."""
        ipv6 = any(key.startswith("net.ipv6.") for key in outcome.sysctls)
        desired_sysctls = core.desired_sysctls(outcome.interface, ipv6=ipv6)
        if self._baseline is None and previous_status.get("observedGeneration") == generation and generation:
            # First pass after a start: measure against what the previous agent reported.
            held = set(previous_status.get("appliedVips") or [])
            reported = previous_status.get("sysctls") or {}
            good = {k for k, v in desired_sysctls.items() if core.sysctl_ok(k, v, reported.get(k))}
            self._baseline = (held, good)
        repaired: list[str] = []
        if self._baseline is not None:
            held, good = self._baseline
            repaired += [f"VIP {a} re-added on {outcome.interface}" for a in outcome.added if a in held]
            repaired += [f"{k} set back to {desired_sysctls[k]}" for k in outcome.sysctls_fixed if k in good]
            if outcome.interface_created and held:
                repaired.insert(0, f"interface {outcome.interface} re-created")
        self._baseline = (
            set(outcome.applied),
            {k for k, v in desired_sysctls.items() if core.sysctl_ok(k, v, outcome.sysctls.get(k))},
        )
        return repaired

    async def _event(self, reason: str, message: str, metadata: Mapping[str, Any], now: datetime.datetime) -> None:
        name = self.settings.node_name
        involved = kube.Involved(models.NODECONFIG_KIND, name, uid=metadata.get("uid"),
                                 resource_version=metadata.get("resourceVersion"))
        await kube.post_event(self.client, involved, reason, message, component=COMPONENT,
                              namespace=self.settings.events_namespace, host=name)
