"""The DsrVipPool custom resource and the pure allocator that hands out its addresses.

A DsrVipPool is a cluster-wide set of VIPs for Services of type LoadBalancer. The allocator never lists a
pool's addresses: it walks them lowest first, skipping the few already taken, so an IPv6 /64 costs no more
than a /28.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

import pydantic

from dsr_operator.api import models

POOL_KIND = "DsrVipPool"
POOL_PLURAL = "dsrvippools"

_MAX_ENTRY_LENGTH = 100

_Segment = tuple[int, int, int]
"""(IP version, first, last) as integers, both ends included."""

_USABLE: dict[int, tuple[tuple[int, int], ...]] = {
    4: (
        (int(ipaddress.IPv4Address("0.0.0.1")), int(ipaddress.IPv4Address("126.255.255.255"))),
        (int(ipaddress.IPv4Address("128.0.0.0")), int(ipaddress.IPv4Address("169.253.255.255"))),
        (int(ipaddress.IPv4Address("169.255.0.0")), int(ipaddress.IPv4Address("223.255.255.255"))),
    ),
    6: tuple(
        (int(n.network_address), int(n.broadcast_address))
        for n in (ipaddress.IPv6Network("2000::/3"), ipaddress.IPv6Network("fc00::/7"))
    ),
}
"""What models.unicast accepts, as ranges: IPv4 without 0.0.0.0, 127/8, 169.254/16 and 224/3; IPv6
2000::/3 and fc00::/7 (neither holds a loopback, link-local, multicast or reserved address)."""


def _address(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


@dataclasses.dataclass(frozen=True)
class _Entry:
    text: str
    """The entry in canonical form."""
    version: int
    first: int
    last: int
    hosts: tuple[_Segment, ...]
    """The addresses it may hand out: without an IPv4 network's network and broadcast addresses, and
    without what no VIP can be."""


def _parse(text: str) -> _Entry:
    bad = f"{text!r} is not an IP address, a CIDR (192.0.2.0/28) or a range (192.0.2.10-192.0.2.20)"
    first: ipaddress.IPv4Address | ipaddress.IPv6Address
    last: ipaddress.IPv4Address | ipaddress.IPv6Address
    if "%" in text:
        raise ValueError(f"{text!r} has a zone (%...): a VIP has none")
    if "/" in text:
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(bad) from exc
            raise ValueError(f"{text!r} has host bits set: the network is {loose}") from exc
        first, last = network.network_address, network.broadcast_address
        canonical = str(network)
        if network.version == 4 and network.prefixlen < 31:
            hosts = (int(first) + 1, int(last) - 1)
        else:
            hosts = (int(first), int(last))
    elif "-" in text:
        parts = text.split("-")
        if len(parts) != 2:
            raise ValueError(bad)
        try:
            first, last = ipaddress.ip_address(parts[0]), ipaddress.ip_address(parts[1])
        except ValueError as exc:
            raise ValueError(bad) from exc
        if first.version != last.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6")
        if int(first) > int(last):
            raise ValueError(f"{text!r} starts above its end: write the lower address first")
        canonical = f"{first}-{last}"
        hosts = (int(first), int(last))
    else:
        try:
            first = last = ipaddress.ip_address(text)
        except ValueError as exc:
            raise ValueError(bad) from exc
        canonical = str(first)
        hosts = (int(first), int(last))
    usable = tuple(
        (first.version, max(hosts[0], low), min(hosts[1], high))
        for low, high in _USABLE[first.version]
        if max(hosts[0], low) <= min(hosts[1], high)
    )
    return _Entry(canonical, first.version, int(first), int(last), usable)


def _pool_entry(text: str) -> str:
    entry = _parse(text)
    if not entry.hosts:
        if "/" not in text and "-" not in text:
            models.unicast(text)
        raise ValueError(
            f"{text!r} holds no address usable as a VIP (unspecified, loopback, link-local, multicast, "
            "reserved, or an IPv4 network's network and broadcast addresses; IPv6 needs 2000::/3 or fc00::/7)"
        )
    return entry.text


def _avoid_entry(text: str) -> str:
    return _parse(text).text


def _without(segments: Sequence[_Segment], cuts: Sequence[_Segment]) -> list[_Segment]:
    out: list[_Segment] = []
    for version, first, last in segments:
        pieces = [(first, last)]
        for cut_version, low, high in cuts:
            if cut_version != version:
                continue
            pieces = [
                piece
                for start, end in pieces
                for piece in ((start, min(end, low - 1)), (max(start, high + 1), end))
                if piece[0] <= piece[1]
            ]
        out += [(version, start, end) for start, end in pieces]
    return out


PoolEntry = Annotated[
    str, pydantic.Field(min_length=1, max_length=_MAX_ENTRY_LENGTH), pydantic.AfterValidator(_pool_entry)
]
"""A CIDR, a range `first-last` or one address, holding addresses a VIP can be; stored in canonical form."""
AvoidEntry = Annotated[
    str, pydantic.Field(min_length=1, max_length=_MAX_ENTRY_LENGTH), pydantic.AfterValidator(_avoid_entry)
]
"""A CIDR, a range `first-last` or one address; stored in canonical form."""


class SelectorOperator(enum.StrEnum):
    """How a selector requirement relates a label's key to its values."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class SelectorRequirement(models._Model):
    """A label requirement: the key, an operator, and the values In and NotIn compare with."""

    key: Annotated[str, pydantic.Field(min_length=1, max_length=317)]
    """The label's key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: Annotated[list[Annotated[str, pydantic.Field(max_length=63)]], pydantic.Field(max_length=64)] | None = (
        None
    )
    """The values In and NotIn compare with (required for them; Exists and DoesNotExist take none)."""

    @pydantic.model_validator(mode="after")
    def _values_fit_the_operator(self) -> SelectorRequirement:
        if self.operator in (SelectorOperator.IN, SelectorOperator.NOT_IN) and not self.values:
            raise ValueError(f"matchExpressions {self.key!r}: operator {self.operator} needs values")
        if self.operator in (SelectorOperator.EXISTS, SelectorOperator.DOES_NOT_EXIST) and self.values:
            raise ValueError(f"matchExpressions {self.key!r}: operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == SelectorOperator.EXISTS:
            return self.key in labels
        if self.operator == SelectorOperator.DOES_NOT_EXIST:
            return self.key not in labels
        inside = self.key in labels and labels[self.key] in (self.values or [])
        return inside if self.operator == SelectorOperator.IN else not inside


class LabelSelector(models._Model):
    """Kubernetes label selector: every matchLabels pair and every matchExpressions requirement must hold;
    an empty selector selects everything."""

    match_labels: Annotated[dict[str, str], pydantic.Field(max_length=64)] | None = None
    """Labels that must be present with exactly these values."""
    match_expressions: Annotated[list[SelectorRequirement], pydantic.Field(max_length=32)] | None = None
    """Requirements that must all hold."""

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object with these labels is selected."""
        return all(labels.get(key) == value for key, value in (self.match_labels or {}).items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions or []
        )


class DsrVipPoolSpec(models._Model):
    """Addresses Services of type LoadBalancer get their VIP from, and who may use them."""

    addresses: Annotated[list[PoolEntry], pydantic.Field(min_length=1, max_length=64)]
    """CIDRs (192.0.2.0/28, 2001:db8::/120), ranges (192.0.2.10-192.0.2.20) or single addresses; entries
    must not overlap. An IPv4 CIDR shorter than /31 never hands out its network and broadcast addresses."""
    avoid_addresses: Annotated[list[AvoidEntry], pydantic.Field(max_length=256)] = []
    """Addresses never handed out (same syntax as addresses)."""
    auto_assign: bool = True
    """Whether Services that ask for no pool and no address get VIPs from this pool; when false, only
    Services naming the pool or one of its addresses do."""
    namespace_selector: LabelSelector | None = None
    """The namespaces whose Services may use the pool (default: every namespace)."""

    _entries: tuple[_Entry, ...] = pydantic.PrivateAttr(default=())
    _segments: tuple[_Segment, ...] = pydantic.PrivateAttr(default=())

    @pydantic.model_validator(mode="after")
    def _disjoint(self) -> DsrVipPoolSpec:
        entries = sorted((_parse(text) for text in self.addresses), key=lambda e: (e.version, e.first))
        for before, entry in itertools.pairwise(entries):
            if before.version == entry.version and entry.first <= before.last:
                raise ValueError(f"addresses {before.text} and {entry.text} overlap")
        avoided = [_described(_parse(text)) for text in self.avoid_addresses]
        self._entries = tuple(entries)
        self._segments = tuple(_without([s for e in entries for s in e.hosts], avoided))
        return self

    def contains(self, address: str) -> bool:
        """Whether the pool may hand out this address (in some entry, not avoided, not a network or broadcast)."""
        canonical = models.canonical_ip(address)
        if canonical is None:
            return False
        parsed = ipaddress.ip_address(canonical)
        value = int(parsed)
        return any(v == parsed.version and first <= value <= last for v, first, last in self._segments)

    def size(self, family: int | None = None) -> int:
        """How many addresses the pool may hand out (of one IP family, 4 or 6, if given)."""
        return sum(last - first + 1 for v, first, last in self._segments if family in (None, v))

    def candidates(self, family: int | None = None) -> Iterator[str]:
        """The addresses the pool may hand out, lowest first (IPv4 before IPv6), one at a time."""
        for version, first, last in self._segments:
            if family in (None, version):
                for value in range(first, last + 1):
                    yield _address(version, value)

    def _overlap(self, other: DsrVipPoolSpec) -> tuple[str, str] | None:
        for mine in self._entries:
            for theirs in other._entries:
                if mine.version == theirs.version and mine.first <= theirs.last and theirs.first <= mine.last:
                    return mine.text, theirs.text
        return None


def _described(entry: _Entry) -> _Segment:
    return entry.version, entry.first, entry.last


class DsrVipPoolStatus(models._Model):
    """Written by the operator only: whether the pool is usable, and how full it is."""

    observed_generation: int = 0
    """The metadata.generation this status describes."""
    conditions: list[models.Condition] = []
    """Ready (the pool hands out addresses; False when its spec is invalid or it overlaps another pool)."""
    addresses_total: str | None = None
    """How many addresses the pool may hand out, as a decimal number (an IPv6 pool can exceed int64)."""
    addresses_used: int = 0
    """How many of them are VIPs of Services."""


class DsrVipPool(models._Model):
    """A parsed DsrVipPool manifest."""

    api_version: Literal["dsr.operators.dev/v1alpha1"] = "dsr.operators.dev/v1alpha1"
    kind: Literal["DsrVipPool"] = "DsrVipPool"
    metadata: dict[str, Any]
    spec: DsrVipPoolSpec
    status: DsrVipPoolStatus | None = None


@dataclasses.dataclass(frozen=True)
class Pool:
    """A valid DsrVipPool, as the allocator needs it."""

    name: str
    spec: DsrVipPoolSpec


@dataclasses.dataclass(frozen=True)
class Allocation:
    """The VIP handed out, and the pool it came from."""

    vip: str
    pool: str


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why no VIP was handed out: a CamelCase reason for conditions and events, and details for humans."""

    reason: Literal[
        "PoolNotFound", "NamespaceNotAllowed", "AddressNotInPool", "AddressInUse", "PoolExhausted", "NoPool"
    ]
    message: str


def overlapping(pools: Sequence[Pool]) -> dict[str, str]:
    """Pools that overlap another pool, name -> why. Of two overlapping pools the one whose name sorts later
    is reported: the earlier keeps working, so the addresses it has handed out stay valid."""
    ordered = sorted(pools, key=lambda p: p.name)
    out: dict[str, str] = {}
    for index, later in enumerate(ordered):
        clashes = []
        for earlier in ordered[:index]:
            overlap = later.spec._overlap(earlier.spec)
            if overlap is not None:
                clashes.append(f"{overlap[0]} overlaps {overlap[1]} of DsrVipPool {earlier.name}")
        if clashes:
            out[later.name] = "; ".join(clashes)
    return out


def allocate(
    pools: Sequence[Pool],
    *,
    namespace_labels: Mapping[str, str],
    taken: Collection[str],
    family: int | None = None,
    pool: str | None = None,
    address: str | None = None,
) -> Allocation | Refusal:
    """A VIP for a Service in a namespace with these labels, or why there is none.

    `taken` holds the VIPs other Services have (not this Service's own). `pool` names the pool to use (it
    need not have autoAssign), `address` the VIP wanted, `family` (4 or 6) the IP family. Without either,
    pools with autoAssign are tried in name order and the lowest free address is handed out. Pools that
    overlap another pool (`overlapping`) are never used.
    """
    if family not in (None, 4, 6):
        raise ValueError(f"family must be 4, 6 or None, not {family!r}")
    broken = overlapping(pools)
    usable = sorted((p for p in pools if p.name not in broken), key=lambda p: p.name)
    used = _canonical(taken)
    of_family = f"IPv{family} " if family else ""

    if pool is not None:
        chosen = next((p for p in usable if p.name == pool), None)
        if chosen is None:
            why = f": {broken[pool]}" if pool in broken else ""
            return Refusal("PoolNotFound", f"no usable DsrVipPool {pool}{why}")
        if not _allows(chosen, namespace_labels):
            return Refusal("NamespaceNotAllowed", f"DsrVipPool {pool}'s namespaceSelector excludes this namespace")
        usable = [chosen]
    if address is not None:
        return _requested(usable, address, namespace_labels, used, family, named=pool is not None)

    eligible = [p for p in usable if (pool is not None or p.spec.auto_assign) and _allows(p, namespace_labels)]
    eligible = [p for p in eligible if pool is not None or p.spec.size(family) > 0]
    if not eligible:
        skipped = f" (overlapping another pool: {', '.join(sorted(broken))})" if broken else ""
        return Refusal(
            "NoPool", f"no DsrVipPool with autoAssign offers {of_family}addresses to this namespace{skipped}"
        )
    for candidate in eligible:
        vip = next((a for a in candidate.spec.candidates(family) if a not in used), None)
        if vip is not None:
            return Allocation(vip, candidate.name)
    tried = ", ".join(f"{p.name} ({p.spec.size(family)} {of_family}addresses)" for p in eligible)
    return Refusal("PoolExhausted", f"no free {of_family}address in DsrVipPool {tried}")


def permits(pools: Sequence[Pool], vip: str, namespace_labels: Mapping[str, str]) -> str | None:
    """Why a namespace with these labels may not use `vip` (a DsrService's VIP, when VIPs must come
    from pools), or None when a usable pool holds it and admits the namespace. An avoided address, or a
    network or broadcast address of an IPv4 CIDR, is in no pool."""
    broken = overlapping(pools)
    holders = sorted((p for p in pools if p.name not in broken and p.spec.contains(vip)), key=lambda p: p.name)
    if not holders:
        return f"{vip} is in no usable DsrVipPool"
    if not any(_allows(p, namespace_labels) for p in holders):
        names = ", ".join(p.name for p in holders)
        return f"{vip} is in DsrVipPool {names}, whose namespaceSelector excludes this namespace"
    return None


def _allows(pool: Pool, namespace_labels: Mapping[str, str]) -> bool:
    selector = pool.spec.namespace_selector
    return selector is None or selector.matches(namespace_labels)


def _requested(
    pools: Sequence[Pool],
    address: str,
    namespace_labels: Mapping[str, str],
    used: set[str],
    family: int | None,
    *,
    named: bool,
) -> Allocation | Refusal:
    vip = models.canonical_ip(address)
    if vip is None:
        return Refusal("AddressNotInPool", f"{address!r} is not an IP address")
    if family is not None and ipaddress.ip_address(vip).version != family:
        return Refusal("AddressNotInPool", f"{vip} is not an IPv{family} address")
    holders = [p for p in pools if p.spec.contains(vip)]
    allowed = [p for p in holders if _allows(p, namespace_labels)]
    if not allowed:
        if holders:
            names = ", ".join(p.name for p in holders)
            return Refusal("AddressNotInPool", f"{vip} is in DsrVipPool {names}, which excludes this namespace")
        where = f"DsrVipPool {pools[0].name}" if named else "any usable DsrVipPool"
        return Refusal("AddressNotInPool", f"{vip} is not in {where}")
    if vip in used:
        return Refusal("AddressInUse", f"{vip} is already another Service's VIP")
    return Allocation(vip, allowed[0].name)


def usage(pool: Pool, taken: Collection[str]) -> tuple[int, int]:
    """(How many addresses the pool may hand out, how many of `taken` are among them.)"""
    return pool.spec.size(), sum(1 for address in _canonical(taken) if pool.spec.contains(address))


def _canonical(addresses: Collection[str]) -> set[str]:
    return {canonical for canonical in map(models.canonical_ip, addresses) if canonical is not None}
