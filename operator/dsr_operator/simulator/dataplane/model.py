"""The forwarding model: what the dataplane should do for a configuration (pure).

`desired_state` turns the store's `ConfigView` and the learnt backend MACs into the vservers that
forward and the backends each may send to: its bound services and the members of its bound service
groups, each member named `<servicegroup>/<servername>:<port>` (`GroupMemberInfo.name`) where a
service is named by its own name (`Member.service`, `newFlows`, probe keys, flow and client counts);
`probe_specs` into the monitor probes to run: each service's monitors against it, each group's
monitors against each of its members. Both read the store only through `nitro.queries`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping

from dsr_operator.simulator.nitro import queries

SERVING_STATES = ("UP", "GOING OUT OF SERVICE")


@dataclasses.dataclass(frozen=True)
class Member:
    """A bound backend as the dataplane sees it: a service, or a service-group member."""

    service: str  # the service's name, or the member's `<servicegroup>/<servername>:<port>`
    ip: str
    mac: str
    weight: int
    state: str  # svrstate


@dataclasses.dataclass(frozen=True)
class Vserver:
    """A MAC-mode vserver that forwards, with the services it may send to."""

    name: str
    vip: str
    port: int
    active: tuple[Member, ...]  # UP: new flows
    serving: tuple[Member, ...]  # UP or draining: flows already recorded on them
    family: int = 4  # IP version of the VIP


@dataclasses.dataclass(frozen=True)
class Desired:
    vservers: tuple[Vserver, ...]
    vips: frozenset[str]
    skipped: tuple[tuple[str, str], ...]  # (vserver, why it does not forward)


def desired_state(view: queries.ConfigView, macs: Mapping[str, str]) -> Desired:
    """What the dataplane should do for this configuration and these learnt MACs (pure)."""
    vservers: list[Vserver] = []
    vips: set[str] = set()
    skipped: list[tuple[str, str]] = []
    mbf = view.mbf()
    bindings = view.service_bindings()
    services = {svc.name: svc for svc in view.services()}
    group_bindings = view.group_bindings()
    members = view.group_members()
    for vs in view.vservers():
        name = vs.name
        try:
            parsed = ipaddress.ip_address(vs.ipv46)
        except ValueError:
            parsed = None
        if parsed is None or parsed.is_unspecified:
            skipped.append((name, "no IP VIP"))
            continue
        vip = str(parsed)
        vips.add(vip)
        why = None
        if not vs.enabled:
            why = "vserver disabled"
        elif vs.servicetype != "ANY":
            why = f"servicetype {vs.servicetype}, not ANY"
        elif vs.mode != "MAC":
            why = f"redirection mode m={vs.mode}, not MAC"
        elif not mbf:
            why = "nsmode MBF is off"
        if why:
            skipped.append((name, why))
            continue
        backends: list[Member] = []
        for binding in bindings:
            if binding.vserver != name:
                continue
            svc = services.get(binding.service)
            if svc is None:
                continue
            mac = macs.get(svc.ip)
            if mac is None:
                continue
            backends.append(Member(svc.name, svc.ip, mac, binding.weight, svc.svrstate))
        for group_binding in group_bindings:
            if group_binding.vserver != name:
                continue
            for member in members:
                mac = macs.get(member.ip) if member.group == group_binding.group else None
                if mac is not None:
                    backends.append(Member(member.name, member.ip, mac, member.weight, member.svrstate))
        active = tuple(m for m in backends if m.state == "UP")
        serving = tuple(m for m in backends if m.state in SERVING_STATES)
        vservers.append(Vserver(name, vip, vs.port, active, serving, parsed.version))
    return Desired(tuple(vservers), frozenset(vips), tuple(skipped))


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    service: str  # the backend probed: a service, or a member by its `<servicegroup>/<servername>:<port>`
    monitor: str
    type: str
    service_ip: str
    dst_ip: str
    dst_port: int
    transparent: bool
    interval: float
    timeout: float
    retries: int
    successretries: int


def probe_specs(view: queries.ConfigView) -> dict[tuple[str, str], ProbeSpec]:
    """The probes the configuration asks for: one per enabled service-monitor binding, and one per
    member of a group for each enabled monitor bound to the group."""
    specs: dict[tuple[str, str], ProbeSpec] = {}
    services = {svc.name: svc for svc in view.services()}
    monitors = view.monitors()
    for binding in view.monitor_bindings():
        if not binding.enabled:
            continue
        svc = services.get(binding.service)
        monitor = next((m for m in monitors if m.name == binding.monitor and m.enabled), None)
        if svc is None or monitor is None:
            continue
        specs[(binding.service, binding.monitor)] = ProbeSpec(
            service=binding.service,
            monitor=binding.monitor,
            type=monitor.type,
            service_ip=svc.ip,
            dst_ip=monitor.destip or svc.ip,
            dst_port=monitor.destport or svc.port,
            transparent=monitor.transparent,
            interval=monitor.interval,
            timeout=monitor.resptimeout,
            retries=monitor.retries,
            successretries=monitor.successretries,
        )
    members = view.group_members()
    for group_binding in view.group_monitor_bindings():
        if not group_binding.enabled:
            continue
        monitor = next((m for m in monitors if m.name == group_binding.monitor and m.enabled), None)
        if monitor is None:
            continue
        for member in members:
            if member.group != group_binding.group:
                continue
            specs[(member.name, group_binding.monitor)] = ProbeSpec(
                service=member.name,
                monitor=group_binding.monitor,
                type=monitor.type,
                service_ip=member.ip,
                dst_ip=monitor.destip or member.ip,
                dst_port=monitor.destport or member.port,
                transparent=monitor.transparent,
                interval=monitor.interval,
                timeout=monitor.resptimeout,
                retries=monitor.retries,
                successretries=monitor.successretries,
            )
    return specs
