"""The soak's judge: what the DsrService specs require, and whether a captured final state holds it.

Independent of the product on purpose: it imports nothing from `dsr_operator` and keeps its own small
model, written from the README's rules rather than from the planner's code:

* per DsrService port one lbvserver: type ANY, `ipv46` = VIP, the NITRO port (`*` is 65535), `m` MAC,
  the spec's lbmethod, `comment` = `dsr-operator:<operatorId>:<DsrService uid>`;
* per backend host one server, per (host, port) one service of type ANY with USIP and health
  monitoring, both shared between DsrServices (`comment` ends in `:shared`);
* per DsrService one monitor (the health check: destip = VIP and transparent when `throughVip`,
  destport = the probe port of a TCP check), bound to each of its services;
* every backend bound to every vserver of its DsrService (static hosts always; Service backends are
  the nodes with a ready, not terminating endpoint, by InternalIP in the VIP's family);
* of two DsrServices on one VIP:port the one that already held it (it had converged there: its last
  good spec claims it) keeps it, else the older one; the other is Stalled (`VipConflict`); an
  invalid spec is Stalled (`InvalidSpec`) and keeps its last good configuration; a backend whose
  server name is held by a hand-made object makes its DsrService Stalled (`NameConflict`), that
  object is never touched and only what depends on it is missing;
* hand-made objects (our prefix without our marker, or another operator's marker) never change.

Objects are compared by content (owner from the marker, VIP, port, backend address), not by name,
except for one rule the README documents by example: a server is named `dsr-<address>` (`add server
dsr-198.51.100.21`), which is how a hand-made object comes to hold one of our names.

`judge(capture)` returns one `Verdict` per invariant; each carries its evidence.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

Spec = Mapping[str, Any]
Key = tuple[str, str]

PREFIX = "dsr-"
MARKER = "dsr-operator"
SHARED = "shared"
WILDCARD_NITRO_PORT = 65535
LB_METHODS = frozenset({
    "ROUNDROBIN", "LEASTCONNECTION", "LEASTRESPONSETIME", "SOURCEIPHASH", "DESTINATIONIPHASH",
    "SRCIPDESTIPHASH", "SRCIPSRCPORTHASH", "LEASTBANDWIDTH", "LEASTPACKETS",
})
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ABSENT = (None, "", 0, "0", "0.0.0.0", "::")
TRACEBACK = "Traceback (most recent call last)"

#: Key fields of each NetScaler type in the simulator's configuration document.
KEYS: Mapping[str, tuple[str, ...]] = {
    "server": ("name",),
    "service": ("name",),
    "servicegroup": ("servicegroupname",),
    "lbvserver": ("name",),
    "lbmonitor": ("monitorname", "type"),
    "lbvserver_service_binding": ("name", "servicename"),
    "service_lbmonitor_binding": ("name", "monitor_name"),
    "lbvserver_servicegroup_binding": ("name", "servicegroupname"),
    "servicegroup_lbmonitor_binding": ("servicegroupname", "monitor_name"),
    "servicegroup_servicegroupmember_binding": ("servicegroupname", "servername", "port"),
}
BINDINGS = ("lbvserver_service_binding", "service_lbmonitor_binding", "lbvserver_servicegroup_binding",
            "servicegroup_lbmonitor_binding", "servicegroup_servicegroupmember_binding")
INVARIANTS = (
    "netscaler-holds-exactly-the-specs",
    "hand-made-objects-untouched",
    "statuses-ready-or-stalled-with-reason",
    "no-traceback-in-operator-logs",
    "no-credential-leaked",
    "no-write-while-secondary",
    "configuration-saved",
    "node-vips-as-required",
    "simulator-no-handler-failure",
    "no-process-exits-by-itself",
)


def server_name(address: str) -> str:
    """Our name for a backend host's server, as the README shows it (`add server dsr-198.51.100.21`)."""
    return f"{PREFIX}{address}"


def marker(operator_id: str, owner: str) -> str:
    return f"{MARKER}:{operator_id}:{owner}"


# --------------------------------------------------------------------------------- the inputs


@dataclasses.dataclass(frozen=True)
class DsrObject:
    """A DsrService as the API server returned it."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: str
    spec: Spec
    status: Spec
    deleting: bool

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> DsrObject:
        meta = body.get("metadata") or {}
        return cls(
            namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")), uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0), created=str(meta.get("creationTimestamp") or ""),
            spec=body.get("spec") or {}, status=body.get("status") or {},
            deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclasses.dataclass(frozen=True)
class Capture:
    """Everything the judge looks at, captured once the last changes settled."""

    operator_id: str
    dsrservices: tuple[DsrObject, ...]
    netscaler: Mapping[str, Any]
    """The simulator's configuration document (`GET /_sim/config`)."""
    handmade: frozenset[tuple[str, str]]
    """(type, name) of the objects made by hand through NITRO before the soak."""
    handmade_snapshot: Mapping[str, str]
    """`snapshot(document, handmade)` taken before the soak."""
    last_good: Mapping[str, Spec] = dataclasses.field(default_factory=dict)
    """uid → the spec a DsrService last converged to, for those that end invalid or in conflict."""
    k8s_services: frozenset[Key] = frozenset()
    slices: tuple[Mapping[str, Any], ...] = ()
    nodes: tuple[Mapping[str, Any], ...] = ()
    nodeconfigs: tuple[Mapping[str, Any], ...] = ()
    judged_nodes: frozenset[str] = frozenset()
    """Nodes whose DsrNodeConfig VIPs are judged (the soak's own fake nodes)."""
    journal: tuple[Mapping[str, Any], ...] = ()
    operator_logs: Mapping[str, str] = dataclasses.field(default_factory=dict)
    simulator_log: str = ""
    events: tuple[Mapping[str, Any], ...] = ()
    metrics: Mapping[str, str] = dataclasses.field(default_factory=dict)
    secrets: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """label → a credential that must appear nowhere (the NITRO password, the kube token)."""
    unexpected_exits: tuple[str, ...] = ()
    """Processes (operator, simulator) that exited without being told to, with their last log lines."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    evidence: tuple[str, ...] = ()

    def line(self, limit: int = 40) -> str:
        head = f"{'PASS' if self.ok else 'FAIL'}  {self.name}"
        return head if self.ok else head + "".join(f"\n        - {e}" for e in self.evidence[:limit]) + (
            f"\n        ... {len(self.evidence) - limit} more" if len(self.evidence) > limit else "")


# --------------------------------------------------------------------------------- spec rules


def spec_errors(spec: Spec) -> list[str]:
    """Why a spec is invalid by the README's rules (empty when valid)."""
    errors: list[str] = []
    vip = spec.get("vip")
    if not _is_ip(vip):
        errors.append(f"vip {vip!r} is not an IP address")
    ports = spec.get("ports")
    if not isinstance(ports, list) or not 1 <= len(ports) <= 64:
        errors.append("ports must list 1 to 64 ports")
    else:
        for port in ports:
            if port != "*" and not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65534):
                errors.append(f"port {port!r} is not 1-65534 or *")
        if len({json.dumps(p) for p in ports}) != len(ports):
            errors.append("ports repeat")
        if "*" in ports and len(ports) > 1:
            errors.append("* must be alone")
    backends = spec.get("backends") or {}
    service, static = backends.get("service"), backends.get("static")
    if sum(backends.get(k) is not None for k in ("service", "static", "registry")) != 1:
        errors.append("exactly one of backends.service, backends.static and backends.registry")
    if service is not None and not (isinstance(service, str) and 1 <= len(service) <= 63):
        errors.append("backends.service must be a name")
    if static is not None:
        if not isinstance(static, list) or not 1 <= len(static) <= 256:
            errors.append("backends.static must list 1 to 256 hosts")
        else:
            names = [b.get("name") for b in static if isinstance(b, Mapping)]
            if len(names) != len(static) or any(not isinstance(n, str) or not _DNS_LABEL.match(n) for n in names):
                errors.append("backends.static names must be DNS labels")
            if len(set(names)) != len(names):
                errors.append("backends.static names repeat")
            if any(not _is_ip(b.get("address")) for b in static if isinstance(b, Mapping)):
                errors.append("backends.static address is not an IP address")
    if spec.get("lbMethod", "LEASTCONNECTION") not in LB_METHODS:
        errors.append(f"lbMethod {spec.get('lbMethod')!r} unknown")
    hc = health_check(spec)
    if hc["type"] not in ("TCP", "PING"):
        errors.append("healthCheck.type must be TCP or PING")
    for field, lo, hi in (("intervalSeconds", 2, 20940), ("timeoutSeconds", 1, 20939), ("retries", 1, 127)):
        if not _int_in(hc[field], lo, hi):
            errors.append(f"healthCheck.{field} out of range")
    if _int_in(hc["timeoutSeconds"], 1, 20939) and _int_in(hc["intervalSeconds"], 2, 20940):
        if hc["timeoutSeconds"] >= hc["intervalSeconds"]:
            errors.append("healthCheck.timeoutSeconds must be below intervalSeconds")
    if hc["port"] is not None and not _int_in(hc["port"], 1, 65535):
        errors.append("healthCheck.port out of range")
    if ports == ["*"] and hc["type"] == "TCP" and hc["port"] is None:
        errors.append("a TCP check on * needs healthCheck.port")
    if not _int_in(spec.get("drainSeconds", 30), 0, 3600):
        errors.append("drainSeconds out of range")
    if spec.get("maxUnbindPercent") is not None and not _int_in(spec.get("maxUnbindPercent"), 1, 100):
        errors.append("maxUnbindPercent out of range")
    return errors


def health_check(spec: Spec) -> dict[str, Any]:
    hc = spec.get("healthCheck") or {}
    return {
        "type": hc.get("type", "TCP"), "intervalSeconds": hc.get("intervalSeconds", 5),
        "timeoutSeconds": hc.get("timeoutSeconds", 2), "retries": hc.get("retries", 3),
        "port": hc.get("port"), "throughVip": hc.get("throughVip", True),
    }


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except (ValueError, TypeError):
        return False
    return True


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _ip(value: Any) -> str:
    return str(ipaddress.ip_address(value))


def nitro_port(port: int | str) -> int:
    return WILDCARD_NITRO_PORT if port == "*" else int(port)


def endpoints(spec: Spec) -> set[tuple[str, int | str]]:
    return {(_ip(spec["vip"]), p) for p in spec["ports"]}


def _clash(a: set[tuple[str, int | str]], b: set[tuple[str, int | str]]) -> set[tuple[str, int]]:
    """The VIP:ports (NITRO ports) both claim; `*` claims every port of its VIP."""
    out: set[tuple[str, int]] = set()
    for vip, port in a:
        for other_vip, other_port in b:
            if vip == other_vip and (port == other_port or "*" in (port, other_port)):
                out.add((vip, nitro_port(port)))
    return out


# --------------------------------------------------------------------------------- what is required


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What one DsrService must show: its outcome, and the spec whose configuration NetScaler keeps."""

    dsr: DsrObject
    outcome: str
    """"Ready", "NoReadyBackends", or the reason of a Stalled condition."""
    configured: Spec | None
    contested: frozenset[tuple[str, int]] = frozenset()
    """VIP:ports (NITRO port) a winner holds: this DsrService must have no vserver there."""


def service_backends(namespace: str, service: str, vip: str, slices: Iterable[Mapping[str, Any]],
                     nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """Addresses of the nodes hosting a ready, not terminating endpoint of the Service."""
    family = ipaddress.ip_address(vip).version
    addresses: dict[str, str] = {}
    for node in nodes:
        for kind in ("InternalIP", "ExternalIP"):
            found = [a["address"] for a in (node.get("status") or {}).get("addresses") or ()
                     if a.get("type") == kind and _is_ip(a.get("address"))
                     and ipaddress.ip_address(a["address"]).version == family]
            if found:
                addresses[node["metadata"]["name"]] = _ip(found[0])
                break
    out: set[str] = set()
    for s in slices:
        meta = s.get("metadata") or {}
        if meta.get("namespace") != namespace or (meta.get("labels") or {}).get(
                "kubernetes.io/service-name") != service:
            continue
        for ep in s.get("endpoints") or ():
            cond = ep.get("conditions") or {}
            if cond.get("ready") and not cond.get("terminating") and ep.get("nodeName") in addresses:
                out.add(addresses[ep["nodeName"]])
    return sorted(out)


def backends_of(dsr: DsrObject, spec: Spec, capture: Capture) -> list[str]:
    backends = spec["backends"]
    if backends.get("static") is not None:
        return sorted({_ip(b["address"]) for b in backends["static"]})
    return service_backends(dsr.namespace, backends["service"], spec["vip"], capture.slices, capture.nodes)


def squatted_addresses(capture: Capture) -> set[str]:
    """Backend addresses whose server name a hand-made object (not ours) already holds."""
    taken = {name for kind, name in capture.handmade if kind == "server"}
    return {name[len(PREFIX):] for name in taken if _is_ip(name[len(PREFIX):])}


def expectations(capture: Capture) -> list[Expectation]:
    """Each DsrService's required outcome, by the README's rules, oldest claim first."""
    out: list[Expectation] = []
    valid: list[DsrObject] = []
    for dsr in capture.dsrservices:
        if dsr.deleting:
            out.append(Expectation(dsr, "Deleted", None))
        elif spec_errors(dsr.spec):
            out.append(Expectation(dsr, "InvalidSpec", capture.last_good.get(dsr.uid)))
        else:
            valid.append(dsr)
    claimed: list[set[tuple[str, int | str]]] = []
    squatted = squatted_addresses(capture)
    def holds(dsr: DsrObject) -> bool:
        good = capture.last_good.get(dsr.uid)
        return bool(good) and bool(_clash(endpoints(dsr.spec), endpoints(good)))

    for dsr in sorted(valid, key=lambda d: (not holds(d), d.created, d.namespace, d.name)):
        mine = endpoints(dsr.spec)
        lost: set[tuple[str, int]] = set()
        for claim in claimed:
            lost |= _clash(mine, claim)
        if lost:
            good = capture.last_good.get(dsr.uid)
            held = {e for claim in claimed for e in _clash(endpoints(good), claim)} if good else set()
            out.append(Expectation(dsr, "VipConflict", good, frozenset(held)))
            continue
        claimed.append(mine)
        backends = dsr.spec["backends"]
        if backends.get("service") is not None and (dsr.namespace, backends["service"]) not in capture.k8s_services:
            out.append(Expectation(dsr, "ServiceNotFound", capture.last_good.get(dsr.uid)))
            continue
        addresses = backends_of(dsr, dsr.spec, capture)
        if set(addresses) & squatted:
            out.append(Expectation(dsr, "NameConflict", dsr.spec))
        elif not addresses:
            out.append(Expectation(dsr, "NoReadyBackends", dsr.spec))
        else:
            out.append(Expectation(dsr, "Ready", dsr.spec))
    return out


@dataclasses.dataclass
class Want:
    """NetScaler content, by meaning: addresses, ports, owners."""

    servers: set[str] = dataclasses.field(default_factory=set)
    vservers: dict[tuple[str, str, int], str] = dataclasses.field(default_factory=dict)
    """(owner uid, VIP, NITRO port) → lbmethod; each with one servicegroup of the same owner bound"""
    monitors: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """owner uid → monitor fields"""
    members: set[tuple[str, str, int, str]] = dataclasses.field(default_factory=set)
    """(owner uid, VIP, port, backend address): the backend is a member of that vserver's servicegroup"""


def monitor_fields(spec: Spec) -> dict[str, Any]:
    hc = health_check(spec)
    through = bool(hc["throughVip"])
    return {
        "type": hc["type"], "interval": hc["intervalSeconds"], "resptimeout": hc["timeoutSeconds"],
        "retries": hc["retries"], "destip": _ip(spec["vip"]) if through else None,
        "destport": hc["port"] if hc["type"] == "TCP" and hc["port"] is not None else None,
        "transparent": "YES" if through else "NO",
    }


def required(capture: Capture, exps: Iterable[Expectation]) -> Want:
    want = Want()
    squatted = squatted_addresses(capture)
    for exp in exps:
        spec = exp.configured
        if spec is None:
            continue
        uid, vip = exp.dsr.uid, _ip(spec["vip"])
        addresses = [a for a in backends_of(exp.dsr, spec, capture) if a not in squatted]
        want.monitors[uid] = monitor_fields(spec)
        kept = [nitro_port(port) for port in spec["ports"] if (vip, nitro_port(port)) not in exp.contested]
        if kept:  # a servicegroup per port; one that only a lost VIP:port used goes with its vserver
            want.servers.update(addresses)
        for p in kept:
            want.vservers[(uid, vip, p)] = str(spec.get("lbMethod", "LEASTCONNECTION"))
            for address in addresses:
                want.members.add((uid, vip, p, address))
    return want


# --------------------------------------------------------------------------------- what is there


def records(doc: Mapping[str, Any], rtype: str) -> list[Mapping[str, Any]]:
    return list((doc.get("objects") or {}).get(rtype) or ())


def record_key(rtype: str, rec: Mapping[str, Any]) -> str:
    return f"{rtype}/" + "/".join(str(rec.get(k)) for k in KEYS[rtype])


def snapshot(doc: Mapping[str, Any], handmade: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The hand-made objects and every binding that names one, as canonical JSON by key."""
    names = {name for _, name in handmade}
    kinds = set(handmade)
    out: dict[str, str] = {}
    for rtype, keys in KEYS.items():
        for rec in records(doc, rtype):
            if rtype in BINDINGS:
                hit = any(str(rec.get(k)) in names for k in keys)
            else:
                hit = (rtype, str(rec.get(keys[0]))) in kinds
            if hit:
                out[record_key(rtype, rec)] = json.dumps(rec, sort_keys=True)
    return out


def _owner(rec: Mapping[str, Any], operator_id: str) -> str | None:
    comment = rec.get("comment")
    head = marker(operator_id, "")
    if isinstance(comment, str) and comment.startswith(head) and len(comment) > len(head):
        return comment[len(head):]
    return None


def _absent(value: Any) -> bool:
    return value in _ABSENT


def check_netscaler(capture: Capture, exps: list[Expectation]) -> Verdict:
    want = required(capture, exps)
    doc, op = capture.netscaler, capture.operator_id
    uids = {e.dsr.uid for e in exps if e.outcome != "Deleted"}
    bad: list[str] = []

    # Every object with our prefix is ours (by marker) or one of the hand-made ones.
    for rtype in ("server", "service", "servicegroup", "lbvserver", "lbmonitor"):
        key = KEYS[rtype][0]
        for rec in records(doc, rtype):
            name = str(rec.get(key))
            if name.startswith(PREFIX) and _owner(rec, op) is None and (rtype, name) not in capture.handmade:
                bad.append(f"{rtype} {name} has our prefix, no marker of ours and was not made by hand: {rec}")

    servers = {str(r["name"]): r for r in records(doc, "server") if _owner(r, op) is not None}
    server_ip = {name: _ip(r.get("ipaddress")) for name, r in servers.items()}
    have_servers: dict[str, str] = {}
    for name, rec in servers.items():
        if _owner(rec, op) != SHARED:
            bad.append(f"server {name} is marked {rec.get('comment')!r}, not shared")
        if server_ip[name] in have_servers:
            bad.append(f"two servers for {server_ip[name]}: {have_servers[server_ip[name]]}, {name}")
        have_servers[server_ip[name]] = name
    _compare(bad, "server", set(have_servers), want.servers)

    services: dict[str, tuple[str, int]] = {}
    for rec in records(doc, "service"):
        if _owner(rec, op) is None:
            continue
        name = str(rec["name"])
        point = (_ip(rec.get("ipaddress")), int(rec.get("port") or 0))
        if point in services.values():
            bad.append(f"two services for {point[0]}:{point[1]} (one is {name})")
        services[name] = point
        wrong = {f: rec.get(f) for f, v in (("servicetype", "ANY"), ("usip", "YES"), ("healthmonitor", "YES"))
                 if rec.get(f) != v}
        if _owner(rec, op) != SHARED:
            wrong["comment"] = rec.get("comment")
        if rec.get("servername") not in servers:
            wrong["servername"] = rec.get("servername")
        if wrong:
            bad.append(f"service {name} ({point[0]}:{point[1]}) has {wrong}")
    _compare(bad, "service (backends are servicegroup members)", set(services.values()), set())

    vservers: dict[str, tuple[str, str, int]] = {}
    for rec in records(doc, "lbvserver"):
        owner = _owner(rec, op)
        if owner is None:
            continue
        name = str(rec["name"])
        vpoint = (owner, _ip(rec.get("ipv46")), int(rec.get("port") or 0))
        if vpoint in vservers.values():
            bad.append(f"two vservers of {owner} on {vpoint[1]}:{vpoint[2]} (one is {name})")
        vservers[name] = vpoint
        wrong = {f: rec.get(f) for f, v in (("servicetype", "ANY"), ("m", "MAC")) if rec.get(f) != v}
        if vpoint in want.vservers and rec.get("lbmethod") != want.vservers[vpoint]:
            wrong["lbmethod"] = f"{rec.get('lbmethod')} (spec: {want.vservers[vpoint]})"
        if wrong:
            bad.append(f"lbvserver {name} ({vpoint[1]}:{vpoint[2]}) has {wrong}")
    _compare(bad, "lbvserver", set(vservers.values()), set(want.vservers), uids)
    on_endpoint: dict[tuple[str, int, str], list[str]] = {}
    for rec in records(doc, "lbvserver"):
        if _is_ip(rec.get("ipv46")) and _ip(rec.get("ipv46")) not in ("0.0.0.0", "::"):
            point2 = (_ip(rec["ipv46"]), int(rec.get("port") or 0), str(rec.get("servicetype")))
            on_endpoint.setdefault(point2, []).append(str(rec["name"]))
    for (vip, port, stype), names in sorted(on_endpoint.items()):
        if len(names) > 1:
            bad.append(f"{len(names)} vservers on {vip}:{port} {stype}: {', '.join(sorted(names))}")

    monitors: dict[str, str] = {}
    for rec in records(doc, "lbmonitor"):
        owner = _owner(rec, op)
        if owner is None:
            continue
        name = str(rec["monitorname"])
        if owner in monitors.values():
            bad.append(f"two monitors of {owner} (one is {name})")
        monitors[name] = owner
        expected = want.monitors.get(owner)
        if expected is None:
            continue
        wrong = {}
        for field, value in expected.items():
            have = rec.get(field)
            if (value is None and not _absent(have)) or (value is not None and have != value):
                wrong[field] = f"{have!r} (spec: {value!r})"
        if wrong:
            bad.append(f"lbmonitor {name} of {owner} has {wrong}")
    _compare(bad, "lbmonitor of owner", set(monitors.values()), set(want.monitors), uids)

    for rtype, keys in (("lbvserver_service_binding", ("name", "servicename")),
                        ("service_lbmonitor_binding", ("name", "monitor_name"))):
        for rec in records(doc, rtype):
            if str(rec.get("servicename", rec.get("name"))) in services or str(rec.get("name")) in vservers:
                bad.append(f"{rtype} {'/'.join(str(rec.get(k)) for k in keys)}: backends are servicegroup members")

    groups: dict[str, str] = {}
    for rec in records(doc, "servicegroup"):
        owner = _owner(rec, op)
        if owner is None:
            continue
        name = str(rec["servicegroupname"])
        groups[name] = owner
        wrong = {f: rec.get(f) for f, v in (("servicetype", "ANY"), ("usip", "YES"), ("healthmonitor", "YES"))
                 if rec.get(f) != v}
        if owner == SHARED:
            wrong["comment"] = rec.get("comment")
        if wrong:
            bad.append(f"servicegroup {name} of {owner} has {wrong}")
    serving: dict[str, tuple[str, str, int]] = {}  # servicegroup → the (owner, VIP, port) of its vserver
    for rec in records(doc, "lbvserver_servicegroup_binding"):
        vs, group = vservers.get(str(rec.get("name"))), str(rec.get("servicegroupname"))
        if vs is None:
            continue
        if groups.get(group) != vs[0]:
            bad.append(f"vserver {rec.get('name')} of {vs[0]} is bound to {group}, not a servicegroup of its own")
        elif group in serving or vs in serving.values():
            bad.append(f"vserver {rec.get('name')} and servicegroup {group} are bound more than once")
        else:
            serving[group] = vs
    _compare(bad, "vserver with its servicegroup", set(serving.values()), set(want.vservers), uids)
    for name, owner in sorted(groups.items()):
        if name not in serving:
            bad.append(f"{'orphan' if owner not in uids else 'extra'} servicegroup {name} of {owner}: no vserver")

    have_gm: set[tuple[str, str, int, str]] = set()
    for rec in records(doc, "servicegroup_lbmonitor_binding"):
        group, monitor = str(rec.get("servicegroupname")), str(rec.get("monitor_name"))
        if group not in groups:
            if monitor in monitors:
                bad.append(f"monitor {monitor} of {monitors[monitor]} is bound to {group}, not a servicegroup of ours")
            continue
        if monitors.get(monitor) != groups[group]:  # tenants never judge each other's backends
            bad.append(f"servicegroup {group} of {groups[group]} has monitor {monitor} of {monitors.get(monitor)}")
        elif group in serving:
            have_gm.add(serving[group])
    _compare(bad, "servicegroup with its own monitor", have_gm, set(want.vservers), uids)

    have_members: set[tuple[str, str, int, str]] = set()
    for rec in records(doc, "servicegroup_servicegroupmember_binding"):
        group = str(rec.get("servicegroupname"))
        if group not in groups or group not in serving:
            continue
        vs = serving[group]
        server = str(rec.get("servername"))
        address = server_ip.get(server) or _ip(rec.get("ip"))
        wrong = {}
        if server not in servers:
            wrong["servername"] = server
        if int(rec.get("port") or 0) != vs[2]:
            wrong["port"] = f"{rec.get('port')} (vserver port {vs[2]})"
        if (*vs, address) in want.members and rec.get("state", "ENABLED") != "ENABLED":
            wrong["state"] = rec.get("state")
        if wrong:
            bad.append(f"member {server}:{rec.get('port')} of servicegroup {group} has {wrong}")
        have_members.add((*vs, address))
    _compare(bad, "member", have_members, want.members, uids)

    if want.vservers and "mbf" not in (doc.get("nsmode") or ()):
        bad.append("MAC-based forwarding (nsmode MBF) is not enabled")
    return Verdict(INVARIANTS[0], not bad, tuple(bad))


def _compare(bad: list[str], what: str, have: set[Any], want: set[Any], live: set[str] | None = None,
             owner_at: int = 0) -> None:
    """Missing and extra items; an extra one whose owner (item[owner_at]) is no DsrService is an orphan."""
    for item in sorted(want - have, key=repr):
        bad.append(f"missing {what} {_show(item)}")
    for item in sorted(have - want, key=repr):
        owner = item[owner_at] if isinstance(item, tuple) else item
        orphan = live is not None and owner not in live
        bad.append(f"{'orphan' if orphan else 'extra'} {what} {_show(item)}"
                   + (" (its DsrService is gone or being deleted)" if orphan else ""))


def _show(item: Any) -> str:
    return ":".join(str(x) for x in item) if isinstance(item, tuple) else str(item)


def check_handmade(capture: Capture) -> Verdict:
    now = snapshot(capture.netscaler, capture.handmade)
    before = capture.handmade_snapshot
    bad = [f"{k} is gone (was {before[k]})" for k in sorted(set(before) - set(now))]
    bad += [f"{k} is new: {now[k]}" for k in sorted(set(now) - set(before))]
    bad += [f"{k} changed: {before[k]} -> {now[k]}" for k in sorted(set(now) & set(before)) if now[k] != before[k]]
    return Verdict(INVARIANTS[1], not bad, tuple(bad))


def _condition(status: Spec, ctype: str) -> Mapping[str, Any]:
    for c in status.get("conditions") or ():
        if c.get("type") == ctype:
            return dict(c)
    return {}


def status_problem(exp: Expectation) -> str | None:
    """Why a DsrService's status does not show its required outcome (None when it does)."""
    dsr = exp.dsr
    if exp.outcome == "Deleted":
        return "its deletion never completed (deletionTimestamp set, object still there)"
    status = dsr.status
    ready, stalled = _condition(status, "Ready"), _condition(status, "Stalled")
    observed = status.get("observedGeneration")
    shown = (f"Ready={ready.get('status')}/{ready.get('reason')} Stalled={stalled.get('status')}/"
             f"{stalled.get('reason')} observedGeneration={observed} generation={dsr.generation}"
             + (f" message={ready.get('message')!r}" if ready.get("message") else ""))
    if observed != dsr.generation or ready.get("observedGeneration") != dsr.generation:
        return f"status is not of the current generation: {shown}"
    if exp.outcome == "Ready":
        ok = ready.get("status") == "True" and stalled.get("status") != "True"
    elif exp.outcome == "NoReadyBackends":
        ok = ready.get("status") == "False" and ready.get("reason") == "NoReadyBackends"
    else:
        ok = ready.get("status") == "False" and stalled.get("status") == "True" and stalled.get("reason") == exp.outcome
    return None if ok else f"should be {exp.outcome}: {shown}"


def check_statuses(exps: Iterable[Expectation]) -> Verdict:
    bad = []
    for exp in exps:
        problem = status_problem(exp)
        if problem:
            bad.append(f"{exp.dsr.namespace}/{exp.dsr.name}: {problem}")
    return Verdict(INVARIANTS[2], not bad, tuple(bad))


def _tracebacks(text: str) -> list[str]:
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if TRACEBACK in line:
            tail = [ln for ln in lines[i + 1:i + 40] if ln and not ln.startswith((" ", "\t"))]
            out.append(f"line {i + 1}: {lines[i - 1].strip()[:200] if i else ''} ... {tail[0][:200] if tail else ''}")
    return out


def check_tracebacks(capture: Capture) -> Verdict:
    bad = [f"{name} {hit}" for name, text in sorted(capture.operator_logs.items()) for hit in _tracebacks(text)]
    return Verdict(INVARIANTS[3], not bad, tuple(bad))


def check_credentials(capture: Capture) -> Verdict:
    places: dict[str, str] = {f"log {name}": text for name, text in capture.operator_logs.items()}
    places["Events"] = json.dumps(list(capture.events))
    places["DsrService statuses"] = json.dumps([d.status for d in capture.dsrservices])
    places |= {f"metrics {name}": text for name, text in capture.metrics.items()}
    bad = []
    for label, secret in sorted(capture.secrets.items()):
        if not secret:
            continue
        for where, text in sorted(places.items()):
            for line in text.splitlines():
                if secret in line:
                    bad.append(f"{label} appears in {where}: {line.replace(secret, '<' + label + '>')[:300]}")
                    break
    return Verdict(INVARIANTS[4], not bad, tuple(bad))


def check_ha(capture: Capture) -> Verdict:
    """No write after the box could have said it is Secondary.

    The operator asks before every write stage, so a flip between that answer and the stage's one request
    cannot be seen: each time the box is Secondary, at most that one request may land there. A second one
    in the same Secondary spell (journal entries in a row, one simulator run) was sent without asking.
    """
    bad: list[str] = []
    spell: list[Mapping[str, Any]] = []

    def judge_spell() -> None:
        requests = list(dict.fromkeys(e.get("request") for e in spell))
        if len(requests) > 1:
            late = [e for e in spell if e.get("request") != requests[0]]
            bad.extend(f"{e.get('method')} {e.get('resource')} {e.get('action')} {e.get('name')} (seq {e.get('seq')}, "
                       f"simulator run {e.get('epoch', '?')}) while Secondary, in a write request after the first "
                       f"of that spell" for e in late)
        spell.clear()

    for e in capture.journal:
        if e.get("haState") == "Secondary" and (not spell or spell[-1].get("epoch") == e.get("epoch")):
            spell.append(e)
            continue
        judge_spell()
        if e.get("haState") == "Secondary":
            spell.append(e)
    judge_spell()
    return Verdict(INVARIANTS[5], not bad, tuple(bad))


def check_saved(capture: Capture) -> Verdict:
    meta = capture.netscaler.get("nsconfig") or {}
    if meta.get("configchanged") is False:
        return Verdict(INVARIANTS[6], True)
    writes = [e for e in capture.journal if e.get("resource") != "nsconfig"]
    saves = [e for e in capture.journal if e.get("resource") == "nsconfig"]
    last_write = writes[-1] if writes else None
    last_save = saves[-1] if saves else None
    return Verdict(INVARIANTS[6], False, (
        f"configchanged is {meta.get('configchanged')!r} (last change {meta.get('lastchanged')}, "
        f"last save {meta.get('lastsaved')})",
        f"last write in the journal: {_entry(last_write)}; last save: {_entry(last_save)}",
    ))


def _entry(e: Mapping[str, Any] | None) -> str:
    if e is None:
        return "none"
    return f"{e.get('method')} {e.get('resource')} {e.get('action')} {e.get('name')} at {e.get('time')}"


def check_node_vips(capture: Capture, exps: Iterable[Expectation]) -> Verdict:
    wanted: dict[str, set[str]] = {n: set() for n in capture.judged_nodes}
    names = {}
    for node in capture.nodes:
        for a in (node.get("status") or {}).get("addresses") or ():
            if a.get("type") == "InternalIP" and _is_ip(a.get("address")):
                names[_ip(a["address"])] = node["metadata"]["name"]
    squatted = squatted_addresses(capture)
    for exp in exps:
        spec = exp.configured
        if spec is None or spec["backends"].get("service") is None:
            continue
        for address in backends_of(exp.dsr, spec, capture):
            node_name = names.get(address)
            if node_name in wanted and address not in squatted:
                wanted[node_name].add(_ip(spec["vip"]))
    have = {str(c["metadata"]["name"]): {_ip(v) for v in (c.get("spec") or {}).get("vips") or ()}
            for c in capture.nodeconfigs}
    bad = [f"DsrNodeConfig {n} lists {sorted(have.get(n, set()))}, the specs require {sorted(w)}"
           for n, w in sorted(wanted.items()) if have.get(n, set()) != w]
    return Verdict(INVARIANTS[7], not bad, tuple(bad))


def check_simulator_log(capture: Capture) -> Verdict:
    bad = [f"simulator {hit}" for hit in _tracebacks(capture.simulator_log)]
    return Verdict(INVARIANTS[8], not bad, tuple(bad))


def check_exits(capture: Capture) -> Verdict:
    return Verdict(INVARIANTS[9], not capture.unexpected_exits, capture.unexpected_exits)


def judge(capture: Capture) -> list[Verdict]:
    exps = expectations(capture)
    return [
        check_netscaler(capture, exps),
        check_handmade(capture),
        check_statuses(exps),
        check_tracebacks(capture),
        check_credentials(capture),
        check_ha(capture),
        check_saved(capture),
        check_node_vips(capture, exps),
        check_simulator_log(capture),
        check_exits(capture),
    ]
