"""What to do for a batch of DsrServices, decided from a snapshot of the inputs (pure, no I/O).

`decide(snapshot)` takes every DsrService the batch must reconcile and returns one `Decision`: for
each of them a judgement (invalid, in conflict, waiting for its Service, or an intent with its
backends), the VIPs each node must hold before NetScaler may route to it, and one plan for the whole
batch (so one bulk request per stage, whatever the batch size). The plan is made against only the
part of NetScaler the batch touches (`planner.relevant`), so its cost follows the batch, not the box.

`report(decision, after, outcome, now)` turns what happened into each DsrService's status, events
and when to come back. Both are table-tested without any I/O.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pydantic

from dsr_operator import clock
from dsr_operator.api import models, vippool
from dsr_operator.controller import world
from dsr_operator.model import names
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import executor
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner
from dsr_operator.registry import records

Key = tuple[str, str]
LOAD_BALANCER_STATUS = "status.loadBalancer"
"""In `Snapshot.services`: a Service of type LoadBalancer of ours, whose status will name the VIP."""


KOPF_STATUS = "kopf"
"""Where kopf kept its bookkeeping in a DsrService's status before the operator kept its own finalizer."""

Parsed = tuple[models.DsrServiceSpec | None, str | None]
"""A DsrService's spec as a model, or why it is invalid."""


class Specs:
    """Parsed specs by DsrService uid and generation: a DsrService's status writes and metadata changes
    (most of its events) leave its generation alone, so they do not parse and validate its spec again."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[int | None, Parsed]] = {}

    def parse(self, uid: str, generation: int | None, raw: Any) -> Parsed:
        known = self._parsed.get(uid)
        if known is not None and generation is not None and known[0] == generation:
            return known[1]
        parsed: Parsed
        try:
            parsed = models.DsrServiceSpec.model_validate(dict(raw or {})), None
        except pydantic.ValidationError as exc:
            parsed = None, models.validation_message(exc)
        self._parsed[uid] = (generation, parsed)
        return parsed

    def forget(self, uid: str) -> None:
        self._parsed.pop(uid, None)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A DsrService as the index keeps it: parsed once, with what status decisions need."""

    ref: models.ObjectRef
    generation: int | None
    created: str
    spec: models.DsrServiceSpec | None
    error: str | None
    deleting: bool
    status: Mapping[str, Any]
    kopf_leftover: bool = False
    """Its status still holds what an older version's kopf kept there (`status.kopf`): the next status
    write removes it."""
    finalizers: tuple[str, ...] = (models.FINALIZER,)
    resource_version: str = ""
    """What the finalizer's write needs (see `controller.finalizer`)."""

    @property
    def finalized(self) -> bool:
        """It carries the operator's finalizer."""
        return models.FINALIZER in self.finalizers

    @classmethod
    def of(cls, body: Mapping[str, Any], specs: Specs | None = None) -> Entry:
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
        ref = models.ObjectRef(namespace=namespace, name=name, uid=meta.get("uid") or f"{namespace}/{name}")
        spec, error = (specs or Specs()).parse(ref.uid, meta.get("generation"), body.get("spec"))
        return cls(ref=ref, generation=meta.get("generation"), created=meta.get("creationTimestamp") or "",
                   spec=spec, error=error, deleting=bool(meta.get("deletionTimestamp")),
                   status={k: v for k, v in (body.get("status") or {}).items() if k != KOPF_STATUS},
                   kopf_leftover=KOPF_STATUS in (body.get("status") or {}),
                   finalizers=tuple(meta.get("finalizers") or ()), resource_version=meta.get("resourceVersion") or "")


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Operator-wide settings the decisions use."""

    operator_id: str
    drain_seconds: int = 30
    guard_percent: int = 50
    step_ops: int = 1000
    """Most NetScaler changes one DsrService gets per batch: a huge one goes in steps, so that the others'
    changes never wait for all of it (see `bounded`)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The inputs of one batch, frozen: the batch's keys, every DsrService, the cluster, NetScaler."""

    keys: frozenset[Key]
    entries: Mapping[Key, Entry]
    slices: Mapping[Key, Sequence[Sequence[world.Endpoint]]]
    nodes: Mapping[str, world.NodeInfo]
    nodeconfigs: Mapping[str, world.NodeConfigInfo]
    services: Mapping[Key, tuple[str, ...]] | None
    """Kubernetes Services → their externalIPs; None when the operator does not watch Services."""
    actual: ns.NetScalerState
    needs: Mapping[Key, Mapping[str, str]]
    """node → VIP each DsrService asked nodes to hold so far (the node VIP book)."""
    defaults: Defaults
    orphans: frozenset[str] = frozenset()
    """Owners of objects on NetScaler whose DsrService is gone: the plan removes what they have."""
    registry: Mapping[str, records.PrefixView] = dataclasses.field(default_factory=dict)
    """Registry key prefix → its records as last read (every prefix followed and read)."""
    registry_waits: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Registry key prefix → why it is not read yet (etcd's error), for prefixes still being read."""
    registry_configured: bool = False
    """Whether the operator has an etcd to read (DSR_ETCD_ENDPOINTS)."""
    vip_pools: Sequence[vippool.Pool] | None = None
    """The valid DsrVipPools when every VIP must lie in one that admits its namespace (DSR_REQUIRE_VIP_POOL);
    None: any VIP no one else holds."""
    namespace_labels: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    """Namespace → its labels (what pools select namespaces by)."""


@dataclasses.dataclass(frozen=True)
class Judgement:
    """One DsrService of the batch, as decided before NetScaler is written."""

    key: Key
    entry: Entry
    stalled: world.Verdict | None = None
    """Set when nothing is planned for it (invalid, conflict, missing Service)."""
    keep: ns.NetScalerState | None = None
    """A conflict's loser: what it keeps on NetScaler (all but its vservers on the VIP:ports it lost)."""
    intent: desired_mod.Intent | None = None
    backends: world.Backends | None = None
    warnings: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Decision:
    judgements: Mapping[Key, Judgement]
    needs: Mapping[Key, Mapping[str, str]]
    """What each DsrService of the batch needs on the nodes before the plan runs (additions first)."""
    plan: planner.Plan
    scope: frozenset[str]
    users: Mapping[str, frozenset[str]]
    """NetScaler object name → uids of the batch's DsrServices that use it (to report shared failures)."""


def _conflicts(entries: Mapping[Key, Entry], actual: ns.NetScalerState) -> dict[Key, desired_mod.VipConflict]:
    """Losers of VIP:port conflicts: whoever holds a VIP:port on NetScaler keeps it, else the older one."""
    claims = [(e.ref, e.spec, e.created) for e in entries.values() if e.spec is not None and not e.deleting]
    conflicts = desired_mod.vip_conflicts(claims, desired_mod.holdings(actual))
    return {(c.loser.namespace, c.loser.name): c for c in conflicts}


def _gather(snapshot: Snapshot, entry: Entry, spec: models.DsrServiceSpec) -> world.Backends:
    if spec.backends.static is not None:
        return world.static_backends(spec)
    if spec.backends.registry is not None:
        return world.registry_backends(spec, snapshot.registry[spec.backends.registry.etcd.key_prefix])
    bound, present = world.owned_service_addresses(snapshot.actual, entry.ref.uid)
    slices = snapshot.slices.get((entry.ref.namespace, spec.backends.service or ""), ())
    return world.service_backends(spec, slices, snapshot.nodes, snapshot.nodeconfigs, bound, present)


def host_addresses(snapshot: Snapshot) -> dict[str, str]:
    """Addresses that are hosts, never VIPs: every node's addresses and every static backend's."""
    found: dict[str, str] = {}
    for node in snapshot.nodes.values():
        for kind, address in node.addresses:
            if kind in ("InternalIP", "ExternalIP"):
                found.setdefault(models.canonical_ip(address) or address, f"node {node.name}'s {kind}")
    for entry in snapshot.entries.values():
        for host in (entry.spec.backends.static or ()) if entry.spec is not None else ():
            found.setdefault(host.address, f"a backend of DsrService {entry.ref.namespace}/{entry.ref.name}")
    return found



def backend_conflicts(snapshot: Snapshot) -> dict[Key, str]:
    """DsrServices that list, as a static backend, an address a DsrService of another namespace lists.

    A backend address belongs to one namespace at a time, as a VIP does: a tenant must not send its
    traffic to, or probe, another tenant's hosts by naming them (its servicegroup would, and the
    NetScaler's probes come from the box's own address). The DsrService whose objects already use the
    address on NetScaler keeps it, else the oldest; the others' message names it.
    """
    users: dict[str, list[Entry]] = {}
    for entry in snapshot.entries.values():
        if entry.spec is not None and not entry.deleting and entry.spec.backends.static is not None:
            for host in entry.spec.backends.static:
                users.setdefault(host.address, []).append(entry)
    losers: dict[Key, str] = {}
    for address, claimants in sorted(users.items()):
        if len({e.ref.namespace for e in claimants}) < 2:
            continue

        def rank(e: Entry, address: str = address) -> tuple[bool, str, str, str]:
            holds = address in world.owned_service_addresses(snapshot.actual, e.ref.uid)[1]
            return (not holds, e.created, e.ref.namespace, e.ref.name)

        winner = min(claimants, key=rank)
        for e in claimants:
            if e.ref.namespace != winner.ref.namespace:
                losers.setdefault((e.ref.namespace, e.ref.name), (
                    f"{address} is a backend of DsrService {winner.ref.namespace}/{winner.ref.name}: a backend "
                    "address belongs to one namespace at a time, as a VIP does"))
    return losers


def judge(snapshot: Snapshot, key: Key, conflicts: Mapping[Key, desired_mod.VipConflict],
          hosts: Mapping[str, str] | None = None, backend_claims: Mapping[Key, str] | None = None
          ) -> Judgement | None:
    """One DsrService of the batch; None when it is gone or being deleted (the finalizer's job)."""
    entry = snapshot.entries.get(key)
    if entry is None or entry.deleting:
        return None
    if entry.error is not None or entry.spec is None:
        return Judgement(key, entry, world.Verdict(False, "InvalidSpec", entry.error or "invalid", stalled=True))
    spec = entry.spec
    if snapshot.vip_pools is not None:
        why = vippool.permits(snapshot.vip_pools, spec.vip, snapshot.namespace_labels.get(entry.ref.namespace, {}))
        if why is not None:
            message = f"{why}: this operator serves a VIP only from a DsrVipPool that admits the namespace"
            return Judgement(key, entry, world.Verdict(False, "VipNotAllowed", message, stalled=True))
    if hosts and (host := hosts.get(spec.vip)) is not None:
        # NetScaler answers ARP/ND for a VIP: on a host's own address it would take that host's traffic.
        message = f"{spec.vip} is {host}: NetScaler would answer for it and take that host's traffic"
        return Judgement(key, entry, world.Verdict(False, "VipNotAllowed", message, stalled=True))
    conflict = conflicts.get(key)
    if conflict is not None:
        winner = f"{conflict.winner.namespace}/{conflict.winner.name}"
        if conflict.winner.namespace != entry.ref.namespace:
            message = (f"{spec.vip} is used by DsrService {winner}: a VIP belongs to one namespace at a time "
                       "(all its ports)")
        else:
            message = f"{conflict.endpoint} is already served by DsrService {winner}"
        keep = desired_mod.released(snapshot.actual, entry.ref.uid, conflict.release) if conflict.release else None
        return Judgement(key, entry, world.Verdict(False, "VipConflict", message, stalled=True), keep=keep)
    if backend_claims and (claim := backend_claims.get(key)) is not None:
        return Judgement(key, entry, world.Verdict(False, "BackendNotAllowed", claim, stalled=True))
    warnings: list[str] = []
    if spec.backends.service is not None and snapshot.services is not None:
        external = snapshot.services.get((entry.ref.namespace, spec.backends.service))
        if external is None:
            # A wait, not a failure: it heals by itself when the Service appears (kstatus: InProgress).
            message = f"Service {entry.ref.namespace}/{spec.backends.service} does not exist (yet)"
            return Judgement(key, entry, world.Verdict(False, "ServiceNotFound", message, reconciling=True))
        if spec.vip not in external and LOAD_BALANCER_STATUS not in external:
            warnings.append(
                f"Service {entry.ref.namespace}/{spec.backends.service} does not list {spec.vip} in externalIPs: "
                "kube-proxy will not deliver VIP traffic to its pods unless they listen on the VIP with host networking"
            )
    if spec.backends.registry is not None:
        verdict, notes = _registry(snapshot, spec.backends.registry.etcd)
        if verdict is not None:
            return Judgement(key, entry, verdict)
        warnings.extend(notes)
    backends = _gather(snapshot, entry, spec)
    if backends.too_many:
        message = (f"more than {records.MAX_HOSTS} hosts are registered under {spec.backends.registry.etcd.prefix}"
                   if spec.backends.registry is not None else "too many backends")
        return Judgement(key, entry, world.Verdict(False, "TooManyBackends", message + ": NetScaler keeps what it has",
                                                   stalled=True))
    if backends.problems:
        warnings.append(f"{len(backends.problems)} registry key(s) not used: {records.summary(backends.problems)}")
    intent = desired_mod.Intent(entry.ref, spec, backends.backends)
    return Judgement(key, entry, intent=intent, backends=backends, warnings=tuple(warnings))


def _registry(snapshot: Snapshot, source: models.EtcdRegistry) -> tuple[world.Verdict | None, list[str]]:
    """Whether a registry-backed DsrService can be planned now, and what its status should warn about.

    Not read yet, or not configured: nothing planned (what NetScaler has stays). Read, but etcd
    unreachable since: the last good records are used, and the status says so.
    """
    prefix = source.key_prefix
    view = snapshot.registry.get(prefix)
    if view is None:
        if not snapshot.registry_configured:
            return world.Verdict(False, "RegistryNotConfigured",
                                 f"backends.registry.etcd needs the operator's etcd (DSR_ETCD_ENDPOINTS; chart: "
                                 f"registry.etcd.endpoints) to read {prefix}", stalled=True), []
        why = snapshot.registry_waits.get(prefix)
        message = f"reading {prefix} from etcd" + (f": {why}" if why else "")
        return world.Verdict(False, "RegistryNotRead", message, reconciling=True), []
    notes = []
    if view.error is not None:
        notes.append(f"etcd unreachable: {view.error}; using the backends registered at revision {view.revision}")
    return None, notes


def policy(defaults: Defaults, intents: Iterable[desired_mod.Intent], leaving: Iterable[str] = ()) -> planner.Policy:
    intents = list(intents)
    return planner.Policy(
        leaving=frozenset(leaving),
        operator_id=defaults.operator_id,
        drain_seconds={i.ref.uid: i.spec.drain_seconds for i in intents if i.spec.drain_seconds is not None},
        default_drain_seconds=defaults.drain_seconds,
        guard_percent={i.ref.uid: i.spec.max_unbind_percent for i in intents if i.spec.max_unbind_percent},
        default_guard_percent=defaults.guard_percent,
    )


def decide(snapshot: Snapshot) -> Decision:
    conflicts = _conflicts(snapshot.entries, snapshot.actual)
    hosts = host_addresses(snapshot)
    claims = backend_conflicts(snapshot)
    judgements: dict[Key, Judgement] = {}
    for key in sorted(snapshot.keys):
        judgement = judge(snapshot, key, conflicts, hosts, claims)
        if judgement is not None:
            judgements[key] = judgement
    needs: dict[Key, Mapping[str, str]] = {}
    for key, j in judgements.items():
        before = snapshot.needs.get(key, {})
        # Additions first: a node gets the VIP before NetScaler may send it traffic; a stalled
        # DsrService keeps what it had (its last good NetScaler config stays too).
        needs[key] = {**before, **j.backends.node_vips} if j.backends is not None else dict(before)
    intents = [j.intent for j in judgements.values() if j.intent is not None]
    losers = [j for j in judgements.values() if j.keep is not None]
    scope = frozenset(i.ref.uid for i in intents) | {j.entry.ref.uid for j in losers} | snapshot.orphans
    want = _union(desired_mod.desired(intents), *(j.keep for j in losers if j.keep is not None))
    drains = [desired_mod.Intent(j.entry.ref, j.entry.spec, ()) for j in losers if j.entry.spec is not None]
    sweep = unwanted_leftovers(snapshot, want)
    plan = planner.diff(want, planner.relevant(snapshot.actual, want, scope, sweep),
                        policy(snapshot.defaults, [*intents, *drains], leaving(judgements.values())), scope)
    frozen = users(want, want.bindings)
    return Decision(judgements, needs, bounded(plan, frozen, snapshot.defaults.step_ops), scope, frozen)


def users(state: ns.NetScalerState, bindings: Iterable[ns.Binding]) -> dict[str, frozenset[str]]:
    """Object name -> the DsrServices that use it through `bindings` (a service's server is used by
    those of the service): what a change to a shared object counts against in `bounded`."""
    found: dict[str, set[str]] = {}
    for binding in bindings:
        for name in (binding.parent, binding.child):
            found.setdefault(name, set()).add(binding.owner)
    for name, owners in list(found.items()):
        service = state.get(ns.SERVICE.rtype, name)
        server = service.get("servername") if service is not None else None
        if server:
            found.setdefault(str(server), set()).update(owners)
    return {k: frozenset(v) for k, v in found.items()}


def leaving(judgements: Iterable[Judgement]) -> set[str]:
    """Members of the hosts that asked to leave (registry `drain: true`), on each port of their DsrService."""
    return {ns.member_key(names.servicegroup(j.intent.ref, port), names.server(address), nsops.nitro_port(port))
            for j in judgements if j.backends is not None and j.intent is not None
            for address in j.backends.leaving for port in j.intent.spec.ports}


def unwanted_leftovers(snapshot: Snapshot, want: ns.NetScalerState) -> tuple[ns.NsObject, ...]:
    """Unused shared services and servers that no DsrService could want: the batch deletes them.

    A removal that stops between its stages (a failed request, a killed operator) leaves a service
    unbound or a server without services, and no owner refers to them any more. One that a DsrService
    outside the batch might still want (its port, and one of its static addresses or, if it is
    Service-backed, a node's address) is left alone: that one adds and binds it itself. The cost
    follows the leftovers: nothing is looked at when there are none.
    """
    leftovers = [o for o in snapshot.actual.unused_shared() if want.get(o.kind, o.name) is None]
    if not leftovers:
        return ()
    nodes = {models.canonical_ip(a) or a for node in snapshot.nodes.values() for _, a in node.addresses}
    hosts: set[str] = set()
    endpoints: set[tuple[int, str]] = set()
    anywhere: set[int] = set()
    """Ports on which any host may be wanted (a registry prefix not read yet)."""
    for entry in snapshot.entries.values():
        spec = entry.spec
        if spec is None:
            continue
        if spec.backends.static is not None:
            addresses = {models.canonical_ip(b.address) or b.address for b in spec.backends.static}
        elif spec.backends.registry is not None:
            view = snapshot.registry.get(spec.backends.registry.etcd.key_prefix)
            if view is None:  # not read yet: it may want anything on its ports
                anywhere.update(nsops.nitro_port(port) for port in spec.ports)
                continue
            addresses = {r.host for r in view.records.values() if r.host is not None}
        else:
            addresses = nodes
        hosts |= addresses
        endpoints.update((nsops.nitro_port(port), address) for port in spec.ports for address in addresses)

    def address(server_name: object) -> str | None:
        server = snapshot.actual.get("server", str(server_name))
        value = server.get("ipaddress") if server is not None else None
        return models.canonical_ip(str(value)) or str(value) if value else None

    unwanted = []
    for obj in leftovers:
        if obj.kind == "server":
            host = address(obj.name)
            wanted = host is None or host in hosts or bool(anywhere)
        else:
            host = address(obj.get("servername"))
            port = int(str(obj.get("port") or 0))
            wanted = host is None or (port, host) in endpoints or port in anywhere
        if not wanted:
            unwanted.append(obj)
    return tuple(unwanted)


def bounded(plan: planner.Plan, users: Mapping[str, frozenset[str]], limit: int) -> planner.Plan:
    """The plan with at most `limit` operations for any one DsrService; the rest wait for the next batch.

    An operation counts against the DsrServices it serves (a shared server or service against those
    that use it); one that a DsrService within the limit needs is always kept. What a big DsrService
    keeps is a prefix of its operations in the plan's safe order, so each step leaves NetScaler in a
    state the full plan would pass through (nothing bound before it exists, drained before unbound).
    Its hold (`Applying`, retry at once) brings it back in the next batch, planned again from the box.
    """
    counts: dict[str, int] = {}
    for op in plan.ops:
        for uid in owner_of(op, users):
            counts[uid] = counts.get(uid, 0) + 1
    big = {uid for uid, count in counts.items() if count > limit}
    if not big:
        return plan
    kept: list[nsops.Op] = []
    taken = dict.fromkeys(big, 0)
    cut: set[str] = set()
    for op in plan.ops:  # stage by stage, in the safe order
        owners = owner_of(op, users)
        if not owners or not owners <= big:
            kept.append(op)
            continue
        if owners & cut or any(taken[uid] >= limit for uid in owners):
            cut.update(owners)
            continue
        for uid in owners:
            taken[uid] += 1
        kept.append(op)
    holds = tuple(planner.Hold(uid, "Applying", f"applying {taken[uid]} of {counts[uid]} NetScaler changes in "
                               f"this step (at most {limit} per step; the rest follow)", retry_after=0.0)
                  for uid in sorted(big))
    return planner.Plan(nsops.stages(kept), plan.holds + holds)


def _union(first: ns.NetScalerState, *others: ns.NetScalerState) -> ns.NetScalerState:
    """Several desired states as one; an object both want is taken from the first that has it."""
    if not others:
        return first
    objects = dict(first.objects)
    bindings = set(first.bindings)
    for other in others:
        for key, obj in other.objects.items():
            objects.setdefault(key, obj)
        bindings |= other.bindings
    return ns.NetScalerState(objects=objects, bindings=frozenset(bindings), mbf=True)


# --- after NetScaler was written -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Report:
    """What one DsrService's status, events and next visit are after the batch."""

    key: Key
    entry: Entry
    status: dict[str, Any]
    verdict: world.Verdict
    applied: tuple[nsops.Op, ...] = ()
    failures: tuple[str, ...] = ()
    needs: Mapping[str, str] | None = None
    """What the DsrService needs on the nodes now (None: keep what it had)."""
    bound: int = 0
    draining_services: frozenset[str] = frozenset()
    retry_after: float | None = None
    """From the plan's holds (the guard); drains come back when the box ends them."""


def status_for(entry: Entry, v: world.Verdict, extra: Mapping[str, Any], now: datetime.datetime) -> dict[str, Any]:
    previous = entry.status.get("conditions") or []
    ports = {"portsText": entry.spec.ports_text} if entry.spec is not None else {}
    return {"observedGeneration": entry.generation, **ports, **extra,
            "conditions": world.conditions(v, entry.generation, clock.rfc3339(now), previous)}


def owner_of(op: nsops.Op, users: Mapping[str, frozenset[str]]) -> frozenset[str]:
    if op.owner != ns.SHARED_OWNER:
        return frozenset({op.owner})
    return users.get(op.name, frozenset())


def report(decision: Decision, after: ns.NetScalerState, outcome: executor.Outcome, snapshot: Snapshot,
           now: datetime.datetime, *, primary: str | None = None,
           drain_report: Callable[[Iterable[str]], list[dict[str, object]]] | None = None) -> list[Report]:
    """Per DsrService of the batch: status, events, what it needs on the nodes, when to come back.

    `primary` is the NetScaler written to (an HA pair's primary); `drain_report(services)` tells the
    drains in progress with their client connections, for the status.
    """
    applied: dict[str, list[nsops.Op]] = {}
    for op in outcome.applied:
        for uid in owner_of(op, decision.users):
            applied.setdefault(uid, []).append(op)
    failed: dict[str, list[str]] = {}
    for failure in outcome.failures:
        for uid in owner_of(failure.op, decision.users):
            failed.setdefault(uid, []).append(str(failure))
    reports: list[Report] = []
    for key, j in decision.judgements.items():
        if j.stalled is not None or j.intent is None or j.backends is None:
            v = j.stalled or world.Verdict(False, "InvalidSpec", "invalid", stalled=True)
            uid = j.entry.ref.uid
            draining, again = _come_back(decision, after, uid)
            reports.append(Report(key, j.entry, status_for(j.entry, v, {}, now), v, tuple(applied.get(uid, ())),
                                  tuple(failed.get(uid, ())), draining_services=draining, retry_after=again))
            continue
        uid = j.entry.ref.uid
        spec = j.intent.spec
        backends = _gather(dataclasses.replace(snapshot, actual=after), j.entry, spec)
        holds = tuple(h for h in decision.plan.holds if h.owner == uid)
        bound = world.bound_count(after, j.entry.ref, spec)
        failures = tuple(failed.get(uid, ()))
        v = world.verdict(backends=backends, bound=bound, plan=planner.Plan((), holds), failures=failures)
        states = world.vserver_states(after, j.entry.ref, spec)
        extra = {
            "backends": {"desired": backends.desired, "loopbackReady": backends.loopback_ready, "bound": bound},
            "vservers": states,
            "vserverState": "UP" if states and all(s["state"] == "UP" for s in states) else
                            ("DOWN" if states else "ABSENT"),
            "warnings": list(j.warnings),
            "netscaler": {"primary": primary},
        }
        if drain_report is not None:
            _, owned = after.owned_by(uid)
            extra["draining"] = drain_report({t for b in owned if (t := ns.drain_target(b)) is not None})
        draining, again = _come_back(decision, after, uid)
        reports.append(Report(
            key, j.entry, status_for(j.entry, v, extra, now), v, tuple(applied.get(uid, ())), failures,
            backends.node_vips, bound, draining, again,
        ))
    return reports


def _come_back(decision: Decision, after: ns.NetScalerState, uid: str) -> tuple[frozenset[str], float | None]:
    """(services whose drain end brings this DsrService back, seconds until another hold's retry)."""
    holds = [h for h in decision.plan.holds if h.owner == uid]
    draining: frozenset[str] = frozenset()
    if any(h.reason == "Draining" for h in holds):
        _, owned = after.owned_by(uid)
        draining = frozenset(t for b in owned if (t := ns.drain_target(b)) is not None)
    others = [h.retry_after for h in holds if h.retry_after is not None and h.reason != "Draining"]
    return draining, min(others) if others else None


def unreachable(decision: Decision, reason: str, message: str, now: datetime.datetime) -> list[Report]:
    """Every DsrService of the batch when NetScaler could not be reached (or refused our login).

    What is wrong without NetScaler (an invalid spec, a VIP that is a host's address, a missing Service)
    is reported as such; a VIP conflict is not: whoever holds a VIP:port is on NetScaler, which could
    not be read, so the decision was made without holders and may name the wrong winner.
    """
    v = world.Verdict(False, reason, message, stalled=True)

    def verdict(j: Judgement) -> world.Verdict:
        return j.stalled if j.stalled is not None and j.stalled.reason != "VipConflict" else v

    return [Report(key, j.entry, status_for(j.entry, verdict(j), {}, now), verdict(j))
            for key, j in decision.judgements.items()]
