"""Desired NetScaler state: what the DsrServices and their backends ask for (pure).

The seed's manual procedure, as data: MBF on; a server per backend host (shared); per port a
vserver of type ANY in MAC mode on the VIP; per port and backend host a service of type ANY with
USIP (shared: NetScaler has one service per IP, port and type);
one monitor per DsrService bound to its services; a binding only for backends whose node already
holds the VIP (the loopback handshake), so nothing is black-holed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from dsr_operator.api import models
from dsr_operator.netscaler import models as ns
from dsr_operator.planner import names


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
        nitro_port = models.nitro_port(port)
        vserver = names.vserver(intent.ref, port)
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
        for backend in intent.backends:
            service = names.service(port, backend.address)
            objects.append(
                ns.NsObject.make(
                    "service",
                    service,
                    ns.SHARED_OWNER,
                    servername=names.server(backend.address),
                    servicetype="ANY",
                    port=nitro_port,
                    usip="YES",
                    healthmonitor="YES",
                )
            )
            bindings.append(ns.Binding(ns.MONITOR_BINDING, service, monitor.name, owner))
            if backend.loopback_ready:
                bindings.append(ns.Binding(ns.VSERVER_BINDING, vserver, service, owner))
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


@dataclasses.dataclass(frozen=True)
class VipConflict:
    loser: models.ObjectRef
    winner: models.ObjectRef
    endpoint: str


def vip_conflicts(
    services: Iterable[tuple[models.ObjectRef, models.DsrServiceSpec, str]],
) -> list[VipConflict]:
    """DsrServices that claim a VIP:port already claimed by an older one.

    Each entry is (ref, spec, creation key); the oldest claim wins (ties by namespace/name).
    A `*` port claims every port of the VIP.
    """
    conflicts: list[VipConflict] = []
    claimed: list[tuple[str, int | str, models.ObjectRef]] = []
    for ref, spec, _ in sorted(services, key=lambda s: (s[2], s[0].namespace, s[0].name)):
        clash = None
        for vip, port, owner in claimed:
            if vip != spec.vip:
                continue
            for mine in spec.ports:
                if models.WILDCARD_PORT in (mine, port) or mine == port:
                    clash = (owner, f"{vip}:{mine}")
                    break
            if clash:
                break
        if clash:
            conflicts.append(VipConflict(loser=ref, winner=clash[0], endpoint=clash[1]))
            continue
        claimed.extend((spec.vip, port, ref) for port in spec.ports)
    return conflicts
