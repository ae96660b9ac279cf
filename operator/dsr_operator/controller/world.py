"""What the operator knows of the cluster, as plain data, and the pure decisions made from it.

Kopf indices hold these summaries (one per EndpointSlice, Node, DsrNodeConfig, DsrService);
the functions here turn them into planner input (backends with their readiness), the VIPs each
node must hold, and the DsrService status. No I/O, no kopf: tested as transitions.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from dsr_operator.api import conditions as api_conditions
from dsr_operator.api import models
from dsr_operator.model import names
from dsr_operator.model import state as ns
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner
from dsr_operator.registry import records

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclasses.dataclass(frozen=True)
class Endpoint:
    node: str | None
    ready: bool
    serving: bool
    terminating: bool


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    name: str
    uid: str
    addresses: tuple[tuple[str, str], ...]  # (type, address), InternalIP first

    def address_for(self, vip: str) -> str | None:
        """The node's InternalIP (else ExternalIP) in the VIP's address family."""
        family = ipaddress.ip_address(vip).version
        for kind in ("InternalIP", "ExternalIP"):
            for t, address in self.addresses:
                try:
                    if t == kind and ipaddress.ip_address(address).version == family:
                        return address
                except ValueError:
                    continue
        return None


@dataclasses.dataclass(frozen=True)
class NodeConfigInfo:
    name: str
    generation: int
    vips: frozenset[str]
    applied: frozenset[str]
    observed_generation: int | None
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """VIP -> why the node's agent refuses to hold it (failedVips whose error starts with `refused:`)."""

    @property
    def current(self) -> bool:
        return self.observed_generation is not None and self.observed_generation >= self.generation


def slice_endpoints(body: Mapping[str, Any]) -> tuple[Endpoint, ...]:
    result = []
    for ep in body.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        terminating = bool(cond.get("terminating", False))
        serving = cond.get("serving", ready)
        result.append(Endpoint(
            node=ep.get("nodeName"),
            ready=bool(ready if ready is not None else not terminating),
            serving=bool(serving if serving is not None else True),
            terminating=terminating,
        ))
    return tuple(result)


def node_info(body: Mapping[str, Any]) -> NodeInfo:
    meta = body.get("metadata") or {}
    addresses = [(a.get("type", ""), a.get("address", "")) for a in (body.get("status") or {}).get("addresses") or ()]
    addresses.sort(key=lambda a: (a[0] != "InternalIP", a[0]))
    return NodeInfo(name=meta.get("name", ""), uid=meta.get("uid", ""), addresses=tuple(addresses))


def nodeconfig_info(body: Mapping[str, Any]) -> NodeConfigInfo:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    observed = status.get("observedGeneration")
    return NodeConfigInfo(
        name=meta.get("name", ""),
        generation=int(meta.get("generation") or 0),
        vips=frozenset(spec.get("vips") or ()),
        applied=frozenset(status.get("appliedVips") or ()),
        observed_generation=int(observed) if observed is not None else None,
        refused={str(f.get("address")): str(f.get("error"))
                 for f in status.get("failedVips") or () if str(f.get("error") or "").startswith("refused:")},
    )


@dataclasses.dataclass(frozen=True)
class Backends:
    """Planner input for one DsrService, and what the nodes must hold for it."""

    backends: tuple[desired_mod.Backend, ...]
    node_vips: Mapping[str, str]  # node → VIP it must hold for this DsrService
    desired: int  # backends that should carry traffic
    loopback_ready: int
    missing_nodes: tuple[str, ...] = ()
    waiting_nodes: tuple[str, ...] = ()
    refused_nodes: tuple[tuple[str, str], ...] = ()
    """(node, its agent's reason) for each node that refuses to hold the VIP."""
    problems: tuple[str, ...] = ()
    """Registry keys that are not used as backends, and why."""
    too_many: bool = False
    """More registered hosts than one DsrService takes (records.MAX_HOSTS)."""
    leaving: tuple[str, ...] = ()
    """Addresses of registry hosts that asked to leave (`drain: true`)."""


def node_backends(slices: Iterable[Iterable[Endpoint]]) -> dict[str, tuple[int, int]]:
    """node → (ready endpoints, other endpoints); terminating endpoints count as other (drained)."""
    counts: dict[str, list[int]] = {}
    for endpoints in slices:
        for ep in endpoints:
            if not ep.node:
                continue
            c = counts.setdefault(ep.node, [0, 0])
            if ep.ready and not ep.terminating:
                c[0] += 1
            else:
                c[1] += 1
    return {node: (r, o) for node, (r, o) in counts.items()}


def service_backends(
    spec: models.DsrServiceSpec,
    slices: Iterable[Iterable[Endpoint]],
    nodes: Mapping[str, NodeInfo],
    nodeconfigs: Mapping[str, NodeConfigInfo],
    bound_addresses: Iterable[str],
    present_addresses: Iterable[str],
) -> Backends:
    """Backends of a Service-backed DsrService: nodes hosting its endpoints, by InternalIP.

    - a node with a ready endpoint should carry traffic: it is bound once its DsrNodeConfig status
      shows the VIP applied at the current generation (or it is already bound: never flap);
    - a node with only not-ready endpoints gets its service (unbound) and the VIP, ready for later;
    - a node with only terminating endpoints is left out: the planner drains it, then removes it;
    - a node keeps the VIP while NetScaler still has a service for it (unbind first, VIP after).
    """
    bound = set(bound_addresses)
    present = set(present_addresses)
    slices = [tuple(eps) for eps in slices]
    counts = node_backends(slices)
    backends: list[desired_mod.Backend] = []
    node_vips: dict[str, str] = {}
    missing: list[str] = []
    waiting: list[str] = []
    refused: list[tuple[str, str]] = []
    desired = loopback_ready = 0
    for node, (ready, _other) in sorted(counts.items()):
        info = nodes.get(node)
        address = info.address_for(spec.vip) if info else None
        if address is None:
            missing.append(node)
            continue
        node_vips[node] = spec.vip
        if ready == 0 and not _has_pending(node, slices):
            continue  # only terminating endpoints: the planner drains this backend
        config = nodeconfigs.get(node)
        loop_ok = config is not None and spec.vip in config.applied and (config.current or address in bound)
        if ready > 0:
            desired += 1
            if loop_ok:
                loopback_ready += 1
            elif config is not None and spec.vip in config.vips and spec.vip in config.refused:
                refused.append((node, config.refused[spec.vip]))
            else:
                waiting.append(node)
        backends.append(desired_mod.Backend(node, address, loopback_ready=ready > 0 and loop_ok))
    for node, info in nodes.items():
        address = info.address_for(spec.vip)
        if address is not None and address in present and node not in node_vips:
            node_vips[node] = spec.vip
    return Backends(tuple(backends), node_vips, desired, loopback_ready, tuple(missing), tuple(waiting),
                    tuple(refused))


def _has_pending(node: str, slices: Iterable[Iterable[Endpoint]]) -> bool:
    """A node with a not-ready endpoint that is not terminating (a pod starting up)."""
    return any(ep.node == node and not ep.ready and not ep.terminating for eps in slices for ep in eps)


def static_backends(spec: models.DsrServiceSpec) -> Backends:
    backends = desired_mod.static_backends(spec)
    return Backends(backends, {}, len(backends), len(backends))


def registry_backends(spec: models.DsrServiceSpec, view: records.PrefixView) -> Backends:
    """Backends of a registry-backed DsrService: the hosts registered under its prefix.

    A host registers only once its VIP loopback is in place (`dsr-operator host-agent`), so every
    registered host is ready; a host that asks to leave (`drain: true`) is not wanted, so the planner
    drains it and unbinds it while the host keeps its VIP. Past `records.MAX_HOSTS` hosts, none.
    """
    found = records.hosts(view.records, spec.vip, spec.ports)
    backends = tuple(desired_mod.Backend(name, address) for name, address in found.backends)
    return Backends(backends, {}, len(backends), len(backends), problems=found.problems, too_many=found.too_many,
                    leaving=found.draining)


def owned_service_addresses(actual: ns.NetScalerState, owner: str) -> tuple[set[str], set[str]]:
    """(bound, present) backend addresses of one DsrService on NetScaler, from its bindings: a member of
    its servicegroups is bound; of a shared service of earlier versions, one bound to its vserver."""
    _, owned = actual.owned_by(owner)
    bound: set[str] = set()
    present: set[str] = set()
    for b in owned:
        address = _address(actual, b)
        if address is None:
            continue
        present.add(address)
        if b.kind in (ns.VSERVER_BINDING, ns.MEMBER_BINDING):
            bound.add(address)
    return bound, present


def _server_of(actual: ns.NetScalerState, b: ns.Binding) -> str | None:
    """The server a member or a service binding reaches (None for the other kinds)."""
    if b.kind == ns.MEMBER_BINDING:
        return b.child
    if b.kind in (ns.VSERVER_BINDING, ns.MONITOR_BINDING):
        service = actual.get("service", b.child if b.kind == ns.VSERVER_BINDING else b.parent)
        return str(service.get("servername")) if service is not None else None
    return None


def _address(actual: ns.NetScalerState, b: ns.Binding) -> str | None:
    name = _server_of(actual, b)
    server = actual.get("server", name) if name is not None else None
    address = server.get("ipaddress") if server is not None else None
    return str(address) if address is not None else None


def bound_count(actual: ns.NetScalerState, ref: models.ObjectRef, spec: models.DsrServiceSpec) -> int:
    """Backends bound on every vserver of the DsrService (the smallest count over its ports): members of
    its servicegroup, and hosts of shared services of earlier versions bound to it (each host once)."""
    counts = []
    for port in spec.ports:
        vserver, group = names.vserver(ref, port), names.servicegroup(ref, port)
        hosts = {_server_of(actual, b) for b in actual.bindings_of(vserver)
                 if b.kind == ns.VSERVER_BINDING and b.parent == vserver}
        hosts |= {b.child for b in actual.bindings_of(group) if b.kind == ns.MEMBER_BINDING and b.parent == group}
        hosts.discard(None)
        counts.append(len(hosts))
    return min(counts) if counts else 0


def vserver_states(actual: ns.NetScalerState, ref: models.ObjectRef, spec: models.DsrServiceSpec
                   ) -> list[dict[str, Any]]:
    out = []
    for port in spec.ports:
        obj = actual.get("lbvserver", names.vserver(ref, port))
        out.append({"name": names.vserver(ref, port), "port": port, "state": obj.state if obj else "ABSENT"})
    return out


# --- status -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one reconcile, from which the status conditions follow."""

    ready: bool
    reason: str
    message: str
    reconciling: bool = False
    stalled: bool = False


def verdict(
    *,
    backends: Backends,
    bound: int,
    plan: planner.Plan | None,
    failures: Iterable[str] = (),
    unreachable: str | None = None,
    stalled_reason: str | None = None,
    stalled_message: str = "",
) -> Verdict:
    """One function decides the conditions; the highest-priority problem wins."""
    if stalled_reason:
        return Verdict(False, stalled_reason, stalled_message, stalled=True)
    if unreachable:
        return Verdict(False, "NetScalerUnreachable", unreachable, stalled=True)
    failed = list(failures)
    if failed:
        return Verdict(False, "NetScalerRejected", "; ".join(failed[:3]), stalled=True)
    holds = plan.holds if plan else ()
    guard = [h for h in holds if h.reason == "BlastRadiusGuard"]
    if guard:
        return Verdict(False, "BlastRadiusGuard", guard[0].message, reconciling=True)
    conflicts = [h for h in holds if h.reason == "NameConflict"]
    if conflicts:
        return Verdict(False, "NameConflict", conflicts[0].message, stalled=True)
    occupied = [h for h in holds if h.reason == "VipConflict"]
    if occupied:  # another vserver still holds the VIP:port and is leaving: not stalled, waiting
        return Verdict(bound > 0, "VipConflict", occupied[0].message, reconciling=True)
    if backends.missing_nodes:
        missing = ", ".join(backends.missing_nodes)
        note = f"nodes without a usable address: {missing}"
    else:
        note = ""
    if backends.desired == 0:
        return Verdict(False, "NoReadyBackends", note or "no ready backend", reconciling=False)
    if backends.refused_nodes:  # the node's own safety rule: only a different VIP (or node) heals it
        node, why = backends.refused_nodes[0]
        more = f" (and {len(backends.refused_nodes) - 1} more nodes)" if len(backends.refused_nodes) > 1 else ""
        return Verdict(False, "VipRefusedByNode", f"node {node}{more} will not hold the VIP: {why}", stalled=True)
    if backends.waiting_nodes:
        waiting = ", ".join(backends.waiting_nodes)
        return Verdict(bound > 0, "WaitingForLoopback",
                       f"waiting for the node agent to apply the VIP on: {waiting}", reconciling=True)
    applying = [h for h in holds if h.reason == "Applying"]  # a big change, going in steps
    if applying:
        return Verdict(bound > 0, "Applying", applying[0].message, reconciling=True)
    draining = [h for h in holds if h.reason == "Draining"]
    if draining:
        return Verdict(bound > 0, "Draining", draining[0].message, reconciling=True)
    return Verdict(True, "Converged", f"{bound} of {backends.desired} backends bound")


def conditions(v: Verdict, generation: int | None, now: str, previous: Iterable[Mapping[str, Any]] = ()
               ) -> list[dict[str, Any]]:
    """kstatus-style conditions; lastTransitionTime moves only when a status flips."""
    return api_conditions.kstatus(ready=v.ready, reason=v.reason, message=v.message, reconciling=v.reconciling,
                                  stalled=v.stalled, generation=generation, now=now, previous=previous)
