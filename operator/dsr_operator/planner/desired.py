"""Desired NetScaler state: what the DsrServices and their backends ask for (pure).

The seed's manual procedure, as data: MBF on; a server per backend host (shared); per port a
vserver of type ANY in MAC mode on the VIP and a servicegroup of type ANY with USIP bound to it; one
monitor per DsrService bound to its servicegroups. A backend is a member of a servicegroup only once
its node holds the VIP (the loopback handshake), so nothing is black-holed.

Servicegroups, not services: NetScaler has one service per IP, port and type, so a service would be
shared by every DsrService with a backend on that host and port, and each one's monitor would judge
it for all of them (one tenant's failing check would take the host out for another). A host:port may
be a member of any number of servicegroups, each member with its own state, judged by its own
group's monitors only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from dsr_operator.api import models
from dsr_operator.model import names
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns


@dataclasses.dataclass(frozen=True)
class Backend:
    """One backend host of a DsrService: a node (by InternalIP) or a static host."""

    name: str
    address: str
    loopback_ready: bool = True
    """The host holds the VIP on its loopback (always true for static hosts: their owner's job)."""


@dataclasses.dataclass(frozen=True)
class Intent:
    """A DsrService as the planner needs it: who it is, what it asks for, which backends it has."""

    ref: models.ObjectRef
    spec: models.DsrServiceSpec
    backends: tuple[Backend, ...]


def static_backends(spec: models.DsrServiceSpec) -> tuple[Backend, ...]:
    return tuple(Backend(b.name, b.address) for b in spec.backends.static or ())


def monitor_object(intent: Intent) -> ns.NsObject:
    check = intent.spec.health_check
    through_vip = check.through_vip
    return ns.NsObject.make(
        "lbmonitor",
        names.monitor(intent.ref, check.type.value),
        intent.ref.uid,
        type=check.type.value,
        interval=check.interval_seconds,
        resptimeout=check.timeout_seconds,
        retries=check.retries,
        destip=intent.spec.vip if through_vip else None,
        destport=check.port if check.type == models.HealthCheckType.TCP else None,
        transparent="YES" if through_vip else "NO",
    )


def desired_for(intent: Intent) -> tuple[list[ns.NsObject], list[ns.Binding]]:
    """The objects and bindings one DsrService asks for."""
    owner = intent.ref.uid
    spec = intent.spec
    objects: list[ns.NsObject] = []
    bindings: list[ns.Binding] = []
    monitor = monitor_object(intent)
    objects.append(monitor)
    for backend in intent.backends:
        objects.append(
            ns.NsObject.make("server", names.server(backend.address), ns.SHARED_OWNER, ipaddress=backend.address)
        )
    for port in spec.ports:
        nitro_port = nsops.nitro_port(port)
        vserver = names.vserver(intent.ref, port)
        group = names.servicegroup(intent.ref, port)
        objects.append(
            ns.NsObject.make(
                "lbvserver",
                vserver,
                owner,
                servicetype="ANY",
                ipv46=spec.vip,
                port=nitro_port,
                lbmethod=spec.lb_method.value,
                m="MAC",
            )
        )
        objects.append(
            ns.NsObject.make("servicegroup", group, owner, servicetype="ANY", usip="YES", healthmonitor="YES")
        )
        bindings.append(ns.Binding(ns.GROUP_BINDING, vserver, group, owner))
        bindings.append(ns.Binding(ns.GROUP_MONITOR_BINDING, group, monitor.name, owner))
        for backend in intent.backends:
            if backend.loopback_ready:
                server = names.server(backend.address)
                bindings.append(ns.Binding(ns.MEMBER_BINDING, group, server, owner, port=nitro_port))
    return objects, bindings


def desired(intents: Iterable[Intent]) -> ns.NetScalerState:
    """The whole desired state of several DsrServices (servers shared between them)."""
    objects: dict[tuple[str, str], ns.NsObject] = {}
    bindings: set[ns.Binding] = set()
    for intent in intents:
        objs, binds = desired_for(intent)
        for obj in objs:
            objects.setdefault((obj.kind, obj.name), obj)
        bindings.update(binds)
    return ns.NetScalerState.build(objects.values(), bindings, mbf=True)


Endpoint = tuple[str, int | str]
"""A VIP and a spec port (`*` for every port)."""


@dataclasses.dataclass(frozen=True)
class VipConflict:
    loser: models.ObjectRef
    winner: models.ObjectRef
    endpoint: str
    release: tuple[Endpoint, ...] = ()
    """Endpoints the loser holds on NetScaler that another DsrService wins: its vservers there must go."""


def _overlap(a: int | str, b: int | str) -> bool:
    return models.WILDCARD_PORT in (a, b) or a == b


def vip_conflicts(
    services: Iterable[tuple[models.ObjectRef, models.DsrServiceSpec, str]],
    holders: Mapping[str, Iterable[Endpoint]] | None = None,
) -> list[VipConflict]:
    """DsrServices that claim a VIP:port another one wins.

    Each entry is (ref, spec, creation key); `holders` maps a DsrService uid to the endpoints its
    vservers occupy on NetScaler (`holdings`). Whoever already holds a VIP:port it still asks for
    keeps it: an existing, serving vserver is not displaced by a DsrService that moved onto its
    address. Otherwise (and between two holders) the oldest claim wins, ties by namespace/name.
    A `*` port claims every port of the VIP; a claim from another namespace conflicts on any port.
    A loser keeps the endpoints it holds and nobody else
    claims; those it holds and loses are in `release`.
    """
    held = {uid: set(endpoints) for uid, endpoints in (holders or {}).items()}
    ordered = sorted(services, key=lambda s: (s[2], s[0].namespace, s[0].name))
    claimed_on: dict[str, list[tuple[int | str, models.ObjectRef]]] = {}
    lost: dict[str, tuple[models.ObjectRef, models.ObjectRef, str]] = {}

    def claim(vip: str, port: int | str, ref: models.ObjectRef) -> None:
        claimed_on.setdefault(vip, []).append((port, ref))

    def rival(ref: models.ObjectRef, vip: str, port: int | str) -> models.ObjectRef | None:
        # Within a namespace a VIP's ports may go to different DsrServices; across namespaces the whole VIP
        # has one owner (a tenant must not put its vserver next to another tenant's on the same address).
        return next((o for p, o in claimed_on.get(vip, ())
                     if o.uid != ref.uid and (_overlap(p, port) or o.namespace != ref.namespace)), None)

    # First what is already on NetScaler and still asked for: a holder keeps all of it that no
    # older holder has, and loses (only) the rest.
    for ref, spec, _ in ordered:
        for port in (p for p in spec.ports if (spec.vip, p) in held.get(ref.uid, ())):
            winner = rival(ref, spec.vip, port)
            if winner is not None:
                lost.setdefault(ref.uid, (ref, winner, f"{spec.vip}:{port}"))
            else:
                claim(spec.vip, port, ref)
    # Then what is not there yet: all of a DsrService's new endpoints, or it loses.
    for ref, spec, _ in ordered:
        if ref.uid in lost:
            continue
        new = [p for p in spec.ports if (spec.vip, p) not in held.get(ref.uid, ())]
        clash = next(((p, w) for p in new if (w := rival(ref, spec.vip, p)) is not None), None)
        if clash is not None:
            lost[ref.uid] = (ref, clash[1], f"{spec.vip}:{clash[0]}")
        else:
            for p in new:
                claim(spec.vip, p, ref)
    conflicts = []
    for ref, _, _ in ordered:
        if ref.uid in lost:
            loser, winner, endpoint = lost[ref.uid]
            release = tuple(
                sorted((e for e in held.get(ref.uid, ()) if rival(ref, *e)), key=lambda e: (e[0], str(e[1])))
            )
            conflicts.append(VipConflict(loser=loser, winner=winner, endpoint=endpoint, release=release))
    return conflicts




def holdings(actual: ns.NetScalerState) -> dict[str, set[Endpoint]]:
    """DsrService uid → the VIP:ports its vservers occupy on NetScaler."""
    out: dict[str, set[Endpoint]] = {}
    for vserver in actual.of_kind("lbvserver"):
        if vserver.get("ipv46") is not None and vserver.get("port") is not None:
            out.setdefault(vserver.owner, set()).add((str(vserver.get("ipv46")), nsops.spec_port(vserver.get("port"))))
    return out


def released(actual: ns.NetScalerState, owner: str, endpoints: Iterable[Endpoint]) -> ns.NetScalerState:
    """What a VIP conflict's loser keeps on NetScaler: all it has but its vservers on `endpoints`.

    The servicegroups (and services of earlier versions) only those vservers used go too, so a diff
    against this state drains their members, then unbinds and removes them with the vservers; nothing
    else of the loser changes (its last good configuration stays), except that what it was already
    draining goes on draining.
    """
    lost = set(endpoints)
    vservers = [v for v in actual.of_kind("lbvserver") if v.owner == owner]
    gone = {v.name for v in vservers if (str(v.get("ipv46")), nsops.spec_port(v.get("port"))) in lost}
    kept_ports = {v.get("port") for v in vservers if v.name not in gone}
    mine = [b for b in actual.bindings if b.owner == owner]
    used = {b.child if b.kind == ns.VSERVER_BINDING else b.parent for b in mine
            if b.kind in (ns.VSERVER_BINDING, ns.MONITOR_BINDING)}
    draining = (ns.OUT_OF_SERVICE, ns.GOING_OUT_OF_SERVICE)
    services = [
        s
        for s in actual.of_kind("service")
        if s.name in used and s.get("port") in kept_ports and s.state not in draining
    ]
    kept_services = {s.name for s in services}
    kept_groups = {b.child for b in mine if b.kind == ns.GROUP_BINDING and b.parent not in gone}
    groups = [g for g in actual.of_kind("servicegroup") if g.owner == owner and g.name in kept_groups]
    members = [b for b in mine if b.kind == ns.MEMBER_BINDING and b.parent in kept_groups and b.state not in draining]
    server_names = {svc.get("servername") for svc in services} | {b.child for b in members}
    servers = [s for s in actual.of_kind("server") if s.name in server_names]
    monitors = [m for m in actual.of_kind("lbmonitor") if m.owner == owner]
    bindings = [
        b
        for b in mine
        if (b.kind == ns.VSERVER_BINDING and b.parent not in gone and b.child in kept_services)
        or (b.kind == ns.MONITOR_BINDING and b.parent in kept_services)
        or (b.kind == ns.GROUP_BINDING and b.parent not in gone)
        or (b.kind == ns.GROUP_MONITOR_BINDING and b.parent in kept_groups)
    ]
    objects = [*(v for v in vservers if v.name not in gone), *services, *groups, *servers, *monitors]
    return ns.NetScalerState.build(objects, [*bindings, *members], mbf=True)
