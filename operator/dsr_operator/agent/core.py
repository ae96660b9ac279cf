"""The agent's pure core: which VIPs are wanted, which host addresses are ours, what to change, what to report.

No I/O here. The netlink layer turns host addresses into `HostAddress` values; this module decides
(`plan`) and summarises (`compute_status`); the rim executes and writes.

Ownership mark. An address is ours when it carries our address-origin tag `IFA_PROTO = OWNER_PROTO`
(Linux >= 6.1 stores it and returns it in dumps; `ip addr` shows it as `proto 213`). That tag is
authoritative: an address without it (added by hand, by DHCP, by another tool) is never ours, even
if it has the same IP as a VIP, our label, or is listed in our state file. On kernels that do not
keep IFA_PROTO, we fall back to a second mark: the IPv4 label `<ifname>:dsr` (IPv4 only, labels do
not exist for IPv6), and for both families the record of the addresses we added kept in the agent's
state file. Every VIP is written with all marks, so either rule recognises it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence

from dsr_operator.api import conditions as api_conditions
from dsr_operator.api import models

OWNER_PROTO = 213
"""IFA_PROTO value on the addresses the agent adds (0-3 are the kernel's; 213 is unassigned)."""

LABEL_SUFFIX = ":dsr"
"""IPv4 address label suffix: `lo:dsr`, `dsr0:dsr`."""

ARP_SYSCTLS: Mapping[str, int] = {"arp_ignore": 1, "arp_announce": 2}
"""Answer ARP only for addresses of the asking interface; never source ARP from the VIP."""

IPV6_SYSCTLS: Mapping[str, int] = {"accept_dad": 0, "ndisc_notify": 0}
"""With IPv6 VIPs: no duplicate address detection (whose probes would announce the VIP) and no unsolicited
neighbour advertisement when an address comes up. The kernel applies the larger of `all` and the interface,
so both are kept at 0. (IPv6 needs no arp_ignore: Linux answers a neighbour solicitation only for addresses
of the interface it arrived on, and never sources one from an address of another interface.)"""

_ALSO_GOOD: Mapping[str, frozenset[int]] = {"accept_dad": frozenset({-1})}
"""Values as good as the desired one: accept_dad -1 (DAD disabled, as the kernel sets it on lo)."""


@dataclasses.dataclass(frozen=True, order=True)
class Vip:
    """A valid VIP, normalised (`2001:DB8::0A` -> `2001:db8::a`), always a host route (/32, /128)."""

    address: str
    family: int

    @property
    def prefixlen(self) -> int:
        return 32 if self.family == socket.AF_INET else 128

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclasses.dataclass(frozen=True)
class VipFailure:
    """A VIP string that could not be applied, and why."""

    address: str
    error: str


@dataclasses.dataclass(frozen=True)
class HostAddress:
    """One address on the host as the kernel reports it."""

    index: int
    ifname: str
    address: str
    prefixlen: int
    family: int
    label: str | None = None
    proto: int | None = None


@dataclasses.dataclass(frozen=True)
class Ownership:
    """How to recognise our addresses on this host (see the module docstring)."""

    proto_supported: bool
    recorded: frozenset[tuple[str, str]] = frozenset()
    """(ifname, address) pairs the state file says we added; used only without IFA_PROTO."""

    def owns(self, addr: HostAddress) -> bool:
        if addr.proto is not None:
            return addr.proto == OWNER_PROTO
        if self.proto_supported:
            return False
        host_len = 32 if addr.family == socket.AF_INET else 128
        if addr.prefixlen != host_len:
            return False
        if addr.family == socket.AF_INET and addr.label == f"{addr.ifname}{LABEL_SUFFIX}":
            return True
        return (addr.ifname, addr.address) in self.recorded


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do on the host so that the target interface holds exactly the desired VIPs of ours."""

    add: tuple[Vip, ...] = ()
    delete: tuple[HostAddress, ...] = ()
    held: tuple[Vip, ...] = ()
    """Already present with our mark on the target interface."""
    foreign: tuple[Vip, ...] = ()
    """Present on the target interface without our mark: the host holds it, we never touch it."""

    @property
    def empty(self) -> bool:
        return not self.add and not self.delete


def parse_vips(raw: object) -> tuple[list[Vip], list[VipFailure]]:
    """Split a spec's `vips` into valid VIPs (deduplicated, sorted) and failures; never raises."""
    if raw is None:
        return [], []
    if not isinstance(raw, list):
        return [], [VipFailure(address=repr(raw)[:64], error="spec.vips must be a list of IP addresses")]
    valid: dict[str, Vip] = {}
    failed: list[VipFailure] = []
    for item in raw:
        text = item if isinstance(item, str) else repr(item)
        try:
            if not isinstance(item, str):
                raise ValueError("not a string")
            ip = ipaddress.ip_address(item.strip())
        except ValueError:
            failed.append(VipFailure(address=text[:64], error="not an IPv4 or IPv6 address"))
            continue
        if special := special_range(ip):
            failed.append(VipFailure(address=text[:64], error=f"refused: {special}, never a VIP"))
            continue
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        valid[str(ip)] = Vip(address=str(ip), family=family)
    return sorted(valid.values()), failed


def special_range(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why no host may hold `ip` as a VIP (unspecified, loopback, link-local, multicast, reserved), or None."""
    for bad, what in ((ip.is_unspecified, "unspecified"), (ip.is_loopback, "a loopback address"),
                      (ip.is_link_local, "link-local"), (ip.is_multicast, "multicast"),
                      (ip.is_reserved, "reserved (or broadcast)")):
        if bad:
            return f"{ip} is {what}"
    return None


@dataclasses.dataclass(frozen=True)
class Protected:
    """Addresses this node must never take as a VIP, each with the reason (the agent's own rule).

    The operator is not trusted to ask only for harmless VIPs: a DsrService whose VIP is the API server's
    address, a node's InternalIP or the default gateway would cut the node off if the agent obeyed. The
    agent checks each VIP before it adds it; a VIP it already holds is left to the spec (the operator
    unbinds before it asks for a removal).
    """

    addresses: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Canonical address -> what it is (`the API server's address`, `node n2's InternalIP`)."""
    networks: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = ()
    """Ranges no VIP may fall in (pod and service CIDRs, `--protected-cidr`), each with what it is."""
    unknown: str | None = None
    """Set when the cluster's addresses could not be read: then no new VIP is added (fail safe)."""

    def __or__(self, other: Protected) -> Protected:
        return Protected(
            addresses={**other.addresses, **self.addresses},
            networks=self.networks + tuple(n for n in other.networks if n not in self.networks),
            unknown=self.unknown or other.unknown,
        )


NOTHING_PROTECTED = Protected()


def refusal(vip: Vip, protected: Protected) -> str | None:
    """Why the node refuses to add `vip` (the error reported in failedVips), or None when it is harmless."""
    ip = ipaddress.ip_address(vip.address)
    if special := special_range(ip):
        return f"refused: {special}, never a VIP"
    if (what := protected.addresses.get(vip.address)) is not None:
        return f"refused: {vip.address} is {what}; holding it would cut this node off"
    for network, what in protected.networks:
        if ip.version == network.version and ip in network:
            return f"refused: {vip.address} is in {network} ({what})"
    if protected.unknown:
        return f"not added: cannot check it against the cluster's addresses ({protected.unknown})"
    return None


def host_protected(
    current: Sequence[HostAddress], target_index: int, ownership: Ownership, gateways: Iterable[str]
) -> Protected:
    """What this namespace itself forbids: its addresses (other than VIP-shaped ones on the VIP interface) and
    its gateways.

    A host-length address on the VIP interface that is not ours is left out: that is a VIP the host owner put
    there (`plan` treats it as held by the host, and never touches it).
    """
    found: dict[str, str] = {}
    for addr in current:
        if ownership.owns(addr):
            continue
        host_len = 32 if addr.family == socket.AF_INET else 128
        if addr.index == target_index and addr.prefixlen == host_len:
            continue
        found.setdefault(addr.address, f"assigned to {addr.ifname} on this node")
    for gateway in gateways:
        found.setdefault(models.canonical_ip(gateway) or gateway, "this node's gateway")
    return Protected(addresses=found)



def plan(desired: Iterable[Vip], target_index: int, current: Sequence[HostAddress], ownership: Ownership) -> Plan:
    """Diff the desired VIPs on the target interface against the host's addresses.

    Adds what is missing on the target; deletes our addresses that are not desired there (including
    ours left on another interface after a mode change); leaves every address that is not ours.
    """
    wanted = {v.address: v for v in desired}
    on_target: dict[str, HostAddress] = {}
    for addr in current:
        if addr.index == target_index and addr.address in wanted:
            # Prefer our own entry when the same IP is there twice (ours /32 and someone's /24).
            if addr.address not in on_target or ownership.owns(addr):
                on_target[addr.address] = addr
    add: list[Vip] = []
    held: list[Vip] = []
    foreign: list[Vip] = []
    for address, vip in sorted(wanted.items()):
        found = on_target.get(address)
        if found is None:
            add.append(vip)
        elif ownership.owns(found):
            held.append(vip)
        else:
            foreign.append(vip)
    delete = [a for a in current if ownership.owns(a) and not (a.index == target_index and a.address in wanted)]
    return Plan(add=tuple(add), delete=tuple(delete), held=tuple(held), foreign=tuple(foreign))


def sysctl_key(ifname: str, param: str, family: str = "ipv4") -> str:
    """The sysctl(8) name, with dots in interface names written as slashes (`eth0/100`)."""
    return f"net.{family}.conf.{ifname.replace('.', '/')}.{param}"


def desired_sysctls(interface: str, *, ipv6: bool = False) -> dict[str, int]:
    """arp_ignore/arp_announce on `all` and on the VIP interface; with `ipv6`, accept_dad/ndisc_notify too."""
    wanted = {sysctl_key(i, param): value for i in ("all", interface) for param, value in ARP_SYSCTLS.items()}
    if ipv6:
        wanted |= {
            sysctl_key(i, param, "ipv6"): value for i in ("all", interface) for param, value in IPV6_SYSCTLS.items()
        }
    return wanted


def sysctl_ok(key: str, desired: int, value: int | None) -> bool:
    """Whether the sysctl's current value does what the desired value is for."""
    return value == desired or value in _ALSO_GOOD.get(key.rsplit(".", 1)[-1], frozenset())


def has_ipv6(vips: Iterable[Vip]) -> bool:
    return any(v.family == socket.AF_INET6 for v in vips)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one pass over the host achieved (input of `compute_status`)."""

    mode: str
    interface: str
    applied: tuple[str, ...] = ()
    failed: tuple[VipFailure, ...] = ()
    sysctls: Mapping[str, int] = dataclasses.field(default_factory=dict)
    rp_filter: Mapping[str, int] = dataclasses.field(default_factory=dict)
    error: str | None = None
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    sysctls_fixed: tuple[str, ...] = ()
    interface_created: bool = False


def _condition(
    previous: Mapping[str, Mapping[str, object]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> models.Condition:
    return models.Condition.model_validate(
        api_conditions.condition(type_, status, reason, message, generation=generation, now=now,
                             previous=previous.get(type_)))


def compute_status(
    outcome: Outcome,
    *,
    generation: int | None,
    previous: Mapping[str, object] | None,
    now: str,
    drift: models.DriftRepair | None = None,
) -> models.NodeConfigStatus:
    """The whole status of a DsrNodeConfig from one outcome; conditions keep their transition times."""
    prev = previous or {}
    prev_conditions = api_conditions.by_type(prev.get("conditions"))
    if outcome.error:
        ready = ("False", "ApplyFailed", outcome.error)
    elif outcome.failed:
        names = ", ".join(f.address for f in outcome.failed)
        ready = ("False", "PartiallyApplied", f"{len(outcome.applied)} VIP(s) applied; failed: {names}")
    else:
        ready = ("True", "Applied", f"{len(outcome.applied)} VIP(s) on {outcome.interface} ({outcome.mode} mode)")
    if outcome.failed:
        degraded = ("True", "VipsFailed", "; ".join(f"{f.address}: {f.error}" for f in outcome.failed))
    else:
        degraded = ("False", "AsExpected", "")
    built = [
        _condition(prev_conditions, "Ready", *ready, generation, now),
        _condition(prev_conditions, "Degraded", *degraded, generation, now),
    ]
    if drift is None and isinstance(prev.get("lastDriftRepair"), Mapping):
        drift = models.DriftRepair.model_validate(prev["lastDriftRepair"])
    return models.NodeConfigStatus(
        observed_generation=generation,
        applied_vips=list(outcome.applied),
        failed_vips=[models.VipError(address=f.address, error=f.error) for f in outcome.failed],
        applied_count=len(outcome.applied),
        failed_count=len(outcome.failed),
        interface=outcome.interface,
        mode=outcome.mode,  # type: ignore[arg-type]
        sysctls=dict(outcome.sysctls),
        rp_filter=dict(outcome.rp_filter),
        rp_filter_max=max(outcome.rp_filter.values()) if outcome.rp_filter else None,
        conditions=built,
        last_error=outcome.error,
        last_drift_repair=drift,
    )


def status_document(status: models.NodeConfigStatus) -> dict[str, object]:
    """The JSON form written to the API (camelCase, no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def merge_patch(old: Mapping[str, object] | None, new: Mapping[str, object]) -> dict[str, object]:
    """A top-level merge patch turning `old` into `new` (keys gone from `new` become null)."""
    patch: dict[str, object] = dict(new)
    for key in old or {}:
        if key not in new:
            patch[key] = None
    return patch
