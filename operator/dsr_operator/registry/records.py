"""Registry records as backends (pure): CoreDNS/SkyDNS etcd records, one key per host under a prefix.

A record is the JSON CoreDNS's etcd plugin serves (`{"host": "10.0.0.21", "port": 80, "ttl": 30}`, other
SkyDNS fields such as `priority` or `text` are left to DNS), plus two fields of ours: `name` (how the
host is shown; default: the key's last part) and `drain` (true: the host is leaving; NetScaler disables
it gracefully and unbinds it, the host keeps its VIP until then).

Records are parsed one by one as they arrive (`parse`); `hosts(records, vip, ports)` picks the usable
ones for a DsrService and says, for every other one, why not. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence

from dsr_operator.api import models

#: Most hosts one DsrService takes from a registry prefix (static lists stop at 256); past it, none.
MAX_HOSTS = 1024
#: Most problems one status lists (a prefix of thousands of broken keys says how many more).
MAX_PROBLEMS = 10
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class Record:
    """One key's record, parsed: a host, or why the key is not one."""

    key: str
    host: str | None = None
    port: int | None = None
    name: str = ""
    drain: bool = False
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class PrefixView:
    """What a prefix holds, as last seen; `error` is set while etcd cannot be reached (records: last good)."""

    prefix: str
    records: Mapping[str, Record]
    revision: int
    error: str | None = None
    since: float | None = None
    """When (monotonic clock) the error began."""


@dataclasses.dataclass(frozen=True)
class Hosts:
    """The usable hosts of a prefix for one DsrService, and why the other keys are not used."""

    backends: tuple[tuple[str, str], ...]
    """(name, address) of each host taking traffic, by key order."""
    draining: tuple[str, ...]
    """Addresses of hosts that asked to leave (`drain: true`): not wanted, so NetScaler drains them."""
    problems: tuple[str, ...]
    too_many: bool = False


def _name_from(key: str) -> str:
    """A DNS label from the key's last part (`/skydns/local/shop/web/Pi_1` -> `pi-1`)."""
    last = key.rstrip("/").rsplit("/", 1)[-1].lower()
    label = re.sub(r"[^a-z0-9-]", "-", last).strip("-")[:63].strip("-")
    return label or "host"


def parse(key: str, value: bytes | str) -> Record:
    """One record; a key whose value is not a usable record gets `error` (it is shown, never used)."""
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return Record(key, error="is not JSON")
    if not isinstance(doc, dict):
        return Record(key, error="is not a JSON object")
    host = doc.get("host")
    if not isinstance(host, str) or not host:
        return Record(key, error='has no "host"')
    address = models.canonical_ip(host)
    if address is None:
        return Record(key, error=f"host {host!r} is not an IP address (DSR binds addresses, not names)")
    try:
        address = models.unicast(address)
    except ValueError as exc:
        return Record(key, error=f"host {exc}")
    port = doc.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        return Record(key, error=f"port {port!r} is not 0-65535")
    name = doc.get("name")
    if name is not None and (not isinstance(name, str) or not _LABEL.match(name)):
        return Record(key, error=f"name {name!r} is not a DNS label")
    drain = doc.get("drain", False)
    if not isinstance(drain, bool):
        return Record(key, error=f"drain {drain!r} is not true or false")
    return Record(key, host=address, port=port or None, name=name or _name_from(key), drain=drain)


def hosts(records: Mapping[str, Record], vip: str, ports: Sequence[int | str]) -> Hosts:
    """The hosts a DsrService on `vip` and `ports` takes from a prefix's records.

    A record's `port`, when set, must be one of the ports (MAC mode cannot remap ports; `"*"` takes
    any); a host listed under two keys is used once (the first key); a host in another address family
    than the VIP is not used. Past `MAX_HOSTS` usable hosts none is used (`too_many`): binding an
    arbitrary subset would be a surprise.
    """
    family = ipaddress.ip_address(vip).version
    backends: list[tuple[str, str]] = []
    draining: list[str] = []
    problems: list[str] = []
    seen: dict[str, str] = {}
    for key in sorted(records):
        record = records[key]
        if record.error is not None or record.host is None:
            problems.append(f"{key} {record.error}")
            continue
        if ipaddress.ip_address(record.host).version != family:
            problems.append(f"{key} host {record.host} is not in the VIP's address family (IPv{family})")
            continue
        if record.port is not None and models.WILDCARD_PORT not in ports and record.port not in ports:
            problems.append(f"{key} port {record.port} is not one of the ports ({','.join(map(str, ports))}): "
                            "MAC mode cannot remap ports")
            continue
        if record.host in seen:
            problems.append(f"{key} host {record.host} is already registered as {seen[record.host]}")
            continue
        seen[record.host] = key
        if record.drain:
            draining.append(record.host)
        else:
            backends.append((record.name, record.host))
    if len(backends) > MAX_HOSTS:
        return Hosts((), tuple(draining), tuple(problems), too_many=True)
    return Hosts(tuple(backends), tuple(draining), tuple(problems))


def summary(problems: Sequence[str]) -> str:
    """Problems as one status line: the first few, and how many more."""
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = len(problems) - MAX_PROBLEMS
    return f"{shown}; and {more} more" if more > 0 else shown
