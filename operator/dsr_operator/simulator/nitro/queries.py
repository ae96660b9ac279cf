"""The store as the dataplane sees it: a small read-only query API, and the observations it reports back.

`ConfigView` answers what forwarding and probing need (vservers, services and service-group members
with their state, bindings, monitors, whether MBF is on) with frozen dataclasses, so a reader never
holds the store's own records and cannot change them. `RuntimeFeed` is the other direction: what a
dataplane observes on the network (probe verdicts, live client flows) — runtime inputs, never
configuration.

`Traffic` is what it counted, for the NITRO stat endpoints. `Store` implements both protocols.
This module imports nothing else of the store, so depending on it does not tie a reader to how
the store keeps its state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class VserverInfo:
    """An lbvserver's addressing and mode."""

    name: str
    ipv46: str  # "0.0.0.0" when it has no address
    port: int
    servicetype: str
    mode: str  # redirection mode `m`: IP, MAC, ...
    enabled: bool


@dataclasses.dataclass(frozen=True)
class ServiceInfo:
    """A service's address and what it is doing now."""

    name: str
    ip: str
    port: int
    enabled: bool  # configured state; a disabled service may still be draining
    svrstate: str  # UP, DOWN, GOING OUT OF SERVICE, OUT OF SERVICE, ...


@dataclasses.dataclass(frozen=True)
class BindingInfo:
    """A service bound to a vserver, with its weight."""

    vserver: str
    service: str
    weight: int


@dataclasses.dataclass(frozen=True)
class GroupMemberInfo:
    """A service-group member: a backend like a service, named `<servicegroup>/<servername>:<port>`."""

    name: str
    group: str
    server: str
    ip: str
    port: int
    weight: int
    enabled: bool  # the member's and its group's configured state; a disabled member may still be draining
    svrstate: str  # UP, DOWN, GOING OUT OF SERVICE, OUT OF SERVICE, ... in this group


@dataclasses.dataclass(frozen=True)
class GroupBindingInfo:
    """A service group bound to a vserver (its members' weights are their own)."""

    vserver: str
    group: str


@dataclasses.dataclass(frozen=True)
class GroupMonitorBindingInfo:
    """A monitor bound to a service group: it probes each member of the group."""

    group: str
    monitor: str
    enabled: bool  # the binding's `monstate`


@dataclasses.dataclass(frozen=True)
class MonitorInfo:
    """An lbmonitor, its times in seconds."""

    name: str
    type: str
    enabled: bool
    destip: str  # "" when it probes the service's (member's) own IP
    destport: int  # 0 when it probes the service's own port
    transparent: bool
    interval: float
    resptimeout: float
    retries: int
    successretries: int


@dataclasses.dataclass(frozen=True)
class MonitorBindingInfo:
    """A monitor bound to a service."""

    service: str
    monitor: str
    enabled: bool  # the binding's `monstate`


@dataclasses.dataclass(frozen=True)
class Traffic:
    """What the dataplane counted: packets in per vserver, packets forwarded and new flows per backend
    (a service, or a group member by its `<servicegroup>/<servername>:<port>` name)."""

    vserver_packets: Mapping[str, int] = dataclasses.field(default_factory=dict)
    forwarded_packets: Mapping[str, int] = dataclasses.field(default_factory=dict)
    new_flows: Mapping[str, int] = dataclasses.field(default_factory=dict)


class ConfigView(Protocol):
    """Read-only queries over the configuration and its runtime state (each ordered by object key)."""

    def mbf(self) -> bool:
        """Whether nsmode MBF (MAC-based forwarding) is on."""
        ...

    def vservers(self) -> tuple[VserverInfo, ...]: ...

    def services(self) -> tuple[ServiceInfo, ...]: ...

    def service_bindings(self) -> tuple[BindingInfo, ...]: ...

    def monitors(self) -> tuple[MonitorInfo, ...]: ...

    def monitor_bindings(self) -> tuple[MonitorBindingInfo, ...]: ...

    def group_members(self) -> tuple[GroupMemberInfo, ...]: ...

    def group_bindings(self) -> tuple[GroupBindingInfo, ...]: ...

    def group_monitor_bindings(self) -> tuple[GroupMonitorBindingInfo, ...]: ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` after every change (configuration or runtime); returns how to stop."""
        ...


class RuntimeFeed(Protocol):
    """What a dataplane reports: observations, which change runtime state and never configuration."""

    def set_probe_results(self, results: Mapping[tuple[str, str], bool]) -> None:
        """Real monitor verdicts per (backend, monitor): a service's name, or a member's (`GroupMemberInfo.name`)."""
        ...

    def set_clients(self, counts: Mapping[str, int], *, replace: bool = False, live: bool = False) -> None:
        """Current client connections per backend (service, or member by its name)."""
        ...


class DataplaneHost(ConfigView, RuntimeFeed, Protocol):
    """What a dataplane is attached to: it reads through `ConfigView` and reports through `RuntimeFeed`."""
