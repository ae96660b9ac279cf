"""Diff desired against actual NetScaler state into an ordered plan of bulk stages (pure).

A plan is a list of stages; each stage is one verb on one object type, so it goes to NetScaler as
one bulk request, and stages run in dependency order: servers, monitors, servicegroups, their
monitor bindings, members, vservers, vserver bindings; then, for removal, the reverse with a
graceful drain first (`nsops.ORDER`).

Safety rules enforced here, not in the callers:
- only objects whose `comment` carries our marker are updated or removed; a desired name that
  exists without our marker is a conflict and is never touched;
- a managed optional field that is no longer wanted is unset (back to NetScaler's default),
  never left behind;
- only owners in `scope` lose objects (a one-shot apply of one file never prunes another's);
- a member (or a service) that carries traffic is disabled gracefully for `drainSeconds` before it
  is unbound;
- the blast-radius guard: one plan removes at most a share of a wanted vserver's bound backends
  (rounded down, but at least one while more than one is bound: `guard_allowance`); a vserver no
  longer wanted (its DsrService deleted, its port removed) is not limited, nor a backend that asked
  to leave (`Policy.leaving`);
- servers are shared: removed only when nothing that remains references them; so are the services
  of earlier versions, which give way to servicegroups: a vserver's binding to one goes only once the
  same host is an UP member of the vserver's servicegroup (or the service is not UP itself);
- a vserver is never added or moved onto an IP:port another vserver holds: it waits (VipConflict).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from dsr_operator.model import state as ns
from dsr_operator.model.ops import NSMODE, Op, Stage, spec_port, stages


@dataclasses.dataclass(frozen=True)
class Hold:
    """Why an owner's change is not (fully) in this plan: a drain in progress, the guard, a conflict."""

    owner: str
    reason: str  # Draining | BlastRadiusGuard | NameConflict | VipConflict
    message: str
    retry_after: float | None = None


@dataclasses.dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    holds: tuple[Hold, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.stages

    @property
    def ops(self) -> list[Op]:
        return [op for stage in self.stages for op in stage.ops]

    @property
    def retry_after(self) -> float | None:
        delays = [h.retry_after for h in self.holds if h.retry_after is not None]
        return min(delays) if delays else None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Per-owner knobs the plan needs: drain time and blast-radius share."""

    operator_id: str
    drain_seconds: Mapping[str, int] = dataclasses.field(default_factory=dict)
    default_drain_seconds: int = 30
    guard_percent: Mapping[str, int] = dataclasses.field(default_factory=dict)
    default_guard_percent: int = 50
    drain_poll_seconds: float = 5.0
    leaving: frozenset[str] = frozenset()
    """Services whose backend asked to leave (a registry host's `drain: true`): their removal is that
    host's intent, so the guard does not hold it back (it would keep a host bound that drops its VIP)."""

    def drain(self, owner: str) -> int:
        return self.drain_seconds.get(owner, self.default_drain_seconds)

    def guard(self, owner: str) -> int:
        return self.guard_percent.get(owner, self.default_guard_percent)


def relevant(
    actual: ns.NetScalerState,
    desired: ns.NetScalerState,
    scope: Iterable[str],
    sweep: Collection[ns.NsObject] = (),
) -> ns.NetScalerState:
    """The part of `actual` a plan for the owners in `scope` can read or change (cost: that part).

    Everything the owners own; every desired object that exists; the services they bind or want,
    with every binding of those services (other owners' too, so that a shared service is never taken
    for unused); the servers of those services, with every service on those servers (a server goes
    only when no service uses it). `sweep`: unused shared objects (`NetScalerState.unused_shared`)
    that nobody could want, so that the plan deletes them too. `diff(desired, relevant(...), policy,
    scope)` equals the diff against the whole box for the same scope, minus the removal of unused
    shared objects not in `sweep`.
    """
    objects: dict[tuple[str, str], ns.NsObject] = {}
    bindings: set[ns.Binding] = set()
    services: set[str] = {o.name for o in sweep if o.kind == "service"}
    servers: set[str] = {o.name for o in sweep if o.kind == "server"}
    for owner in scope:
        owned, owned_bindings = actual.owned_by(owner)
        objects.update(((o.kind, o.name), o) for o in owned)
        bindings.update(owned_bindings)
        services.update(b.child if b.kind == ns.VSERVER_BINDING else b.parent for b in owned_bindings
                        if b.kind in _SERVICE_BINDINGS)
        servers.update(b.child for b in owned_bindings if b.kind == ns.MEMBER_BINDING)
    for key in desired.objects:
        have = actual.objects.get(key)
        if have is not None:
            objects[key] = have
        if key[0] == "service":
            services.add(key[1])
        elif key[0] == "server":
            servers.add(key[1])
    for name in services:
        service = actual.get("service", name)
        if service is not None:
            objects[("service", name)] = service
            if service.get("servername"):
                servers.add(str(service.get("servername")))
        bindings.update(actual.bindings_of(name))
    for name in servers:
        server = actual.get("server", name)
        if server is not None:
            objects[("server", name)] = server
        bindings.update(b for b in actual.bindings_of(name) if b.kind == ns.MEMBER_BINDING)
        for service in actual.services_of_server(name):
            objects[("service", service.name)] = service
            bindings.update(actual.bindings_of(service.name))
    return ns.NetScalerState(objects=objects, bindings=frozenset(bindings), mbf=actual.mbf, foreign=actual.foreign)


_SERVICE_BINDINGS = (ns.VSERVER_BINDING, ns.MONITOR_BINDING)
_DRAINING = (ns.OUT_OF_SERVICE, ns.GOING_OUT_OF_SERVICE)


def _member_body(binding: ns.Binding) -> dict[str, Any]:
    return {"servicegroupname": binding.parent, "servername": binding.child, "port": binding.port}


def diff(
    desired: ns.NetScalerState,
    actual: ns.NetScalerState,
    policy: Policy,
    scope: frozenset[str] | None = None,
) -> Plan:
    """The plan that moves `actual` towards `desired` for the owners in `scope` (all ours if None)."""
    ops: list[Op] = []
    holds: list[Hold] = []

    def in_scope(owner: str) -> bool:
        return owner == ns.SHARED_OWNER or scope is None or owner in scope

    live_owners = desired.owners() - {ns.SHARED_OWNER}

    # Names held by someone else's objects: never touched, and what depends on them waits.
    blocked_names: set[str] = set()
    for (kind, name), obj in sorted(desired.objects.items()):
        if (kind, name) in actual.foreign:
            blocked_names.add(name)
            owner = obj.owner if obj.owner != ns.SHARED_OWNER else _first_user(desired, name)
            holds.append(
                Hold(
                    owner,
                    "NameConflict",
                    f"{kind} {name} exists on NetScaler without our ownership marker; left untouched",
                )
            )

    # A vserver never goes onto an IP:port that another vserver still holds (NetScaler refuses two):
    # it waits until that one has left, drained and removed by its own DsrService.
    spots: dict[tuple[Any, Any, Any], list[str]] = defaultdict(list)
    for vs in actual.of_kind("lbvserver"):
        spots[(vs.get("ipv46"), vs.get("port"), vs.get("servicetype"))].append(vs.name)
    for want in desired.of_kind("lbvserver"):
        spot = (want.get("ipv46"), want.get("port"), want.get("servicetype"))
        have = actual.get("lbvserver", want.name)
        if have is not None and (have.get("ipv46"), have.get("port"), have.get("servicetype")) == spot:
            continue  # already there
        others = [n for n in spots.get(spot, ()) if n != want.name]
        if others and want.name not in blocked_names:
            blocked_names.add(want.name)
            port = spec_port(spot[1])
            holds.append(
                Hold(
                    want.owner,
                    "VipConflict",
                    f"{spot[0]}:{port} is still held on NetScaler by vserver {others[0]}; "
                    f"{want.name} waits for it to leave",
                    retry_after=policy.drain_poll_seconds,
                )
            )

    # Additions and updates.
    if desired.objects and not actual.mbf:
        ops.append(Op("enable", NSMODE, "MBF", ns.SHARED_OWNER, {"mode": ["MBF"]}))
    for (kind, name), want in sorted(desired.objects.items()):
        if name in blocked_names:
            continue
        have = actual.get(kind, name)
        key = ns.KINDS[kind].key
        if have is None:
            ops.append(Op("add", kind, name, want.owner, want.payload(policy.operator_id)))
            continue
        changes = {k: v for k, v in want.changed_fields(have).items() if k not in ns.KINDS[kind].immutable}
        if changes or have.owner != want.owner:
            body: dict[str, Any] = {
                key: name,
                **changes,
                "comment": ns.marker(policy.operator_id, want.owner),
            }
            if kind == "lbmonitor":
                body["type"] = want.get("type")
            ops.append(Op("update", kind, name, want.owner, body))
        unset = want.unset_fields(have)
        if unset:
            # Fields we set before and no longer want go back to NetScaler's default.
            unset_body: dict[str, Any] = {key: name, **dict.fromkeys(unset, True)}
            if kind == "lbmonitor":
                unset_body["type"] = want.get("type")
            ops.append(Op("unset", kind, name, want.owner, unset_body))
        if kind == "service" and have.state in _DRAINING:
            ops.append(Op("enable", kind, name, want.owner, {"name": name}))
    for binding in sorted(desired.bindings - actual.bindings):
        if binding.parent in blocked_names or binding.child in blocked_names:
            continue
        ops.append(Op.binding("bind", binding))
    actual_members = {b: b for b in actual.bindings if b.kind == ns.MEMBER_BINDING}
    for binding in sorted(b for b in desired.bindings if b.kind == ns.MEMBER_BINDING):
        have_member = actual_members.get(binding)
        if have_member is not None and have_member.state in _DRAINING:  # wanted again while it drained
            ops.append(Op("enable", "servicegroup", binding.parent, binding.owner, _member_body(binding),
                          child=binding.child))

    # Removals: bindings first (with drain and guard), then the objects nothing uses any more.
    everything = actual.bindings | desired.bindings
    monitor_removals = {
        b for b in actual.bindings if b.kind == ns.MONITOR_BINDING and b not in desired.bindings and in_scope(b.owner)
    }
    members_up = {(b.parent, b.child) for b in actual_members.values() if b.state == "UP"}
    group_of = {b.parent: b.child for b in desired.bindings if b.kind == ns.GROUP_BINDING}
    desired_members = {(b.parent, b.child) for b in desired.bindings if b.kind == ns.MEMBER_BINDING}
    member_removals: list[ns.Binding] = []
    held_members: set[ns.Binding] = set()
    for group, members in _by_parent(actual_members.values()):
        owner = members[0].owner
        if not in_scope(owner):
            continue
        removing = sorted(b for b in members if b not in desired.bindings)
        if owner in live_owners and desired.get("servicegroup", group) is not None:
            removing, kept, hold = _guarded(policy, owner, group, "members", len(members), removing,
                                            lambda b: b.member_id)  # fmt: skip
            held_members.update(kept)
            holds.extend(hold)
        member_removals.extend(removing)

    vserver_removals: list[ns.Binding] = []
    held_services: set[str] = set()
    for vserver, bound in _by_parent(b for b in actual.bindings if b.kind == ns.VSERVER_BINDING):
        owner = bound[0].owner
        if not in_scope(owner):
            continue
        removing = sorted(b for b in bound if b not in desired.bindings)
        # A service of an earlier version goes once its host serves as an UP member of the vserver's
        # servicegroup (or it serves nothing itself): the move loses no new connection.
        into = group_of.get(vserver)
        moving: list[ns.Binding] = []
        if into is not None:
            for b in removing:
                legacy = actual.get("service", b.child)
                host = str(legacy.get("servername")) if legacy is not None else ""
                if (into, host) not in desired_members:
                    continue
                moving.append(b)
                if (into, host) not in members_up and legacy is not None and legacy.state == "UP":
                    held_services.add(b.child)
                    holds.append(Hold(owner, "Applying",
                                      f"{vserver}: service {b.child} stays bound until {host} is UP in {into}",
                                      retry_after=policy.drain_poll_seconds))
            removing = [b for b in removing if b not in moving]
        # The guard protects a wanted vserver's bindings; a vserver nobody wants any more (its
        # DsrService or its port is gone) goes with all of them: that removal is the user's intent,
        # as is a backend's own request to leave.
        if owner in live_owners and desired.get("lbvserver", vserver) is not None:
            removing, kept, hold = _guarded(policy, owner, vserver, "bound backends", len(bound), removing,
                                            lambda b: b.child)  # fmt: skip
            held_services.update(b.child for b in kept)
            holds.extend(hold)
        vserver_removals.extend(removing)
        vserver_removals.extend(b for b in moving if b.child not in held_services)

    removal_set = set(vserver_removals) | monitor_removals
    still_used = {b.child if b.kind == ns.VSERVER_BINDING else b.parent for b in everything
                  if b.kind in _SERVICE_BINDINGS and b not in removal_set}

    def leaving(service: str) -> bool:
        """No DsrService wants the service any more: it is drained, then deleted."""
        return desired.get("service", service) is None and service not in still_used

    unbound: set[ns.Binding] = set()
    disabled: dict[str, int] = {}  # services this plan disables → the drain's delay
    for b in vserver_removals:
        service = actual.get("service", b.child)
        drain = policy.drain(b.owner)
        if service is not None and drain > 0 and service.state != ns.OUT_OF_SERVICE and leaving(b.child):
            held_services.add(b.child)
            # Every DsrService whose binding waits for the drain holds and comes back for it, also the second
            # one that leaves the service in the same plan (the disable is sent once, for the first).
            if service.state == ns.GOING_OUT_OF_SERVICE:
                holds.append(
                    Hold(
                        b.owner,
                        "Draining",
                        f"service {b.child} is still draining",
                        retry_after=policy.drain_poll_seconds,
                    )
                )
            elif b.child in disabled:
                delay = disabled[b.child]
                holds.append(
                    Hold(b.owner, "Draining", f"service {b.child} drains for {delay}s before removal",
                         retry_after=float(delay))
                )
            else:
                disabled[b.child] = drain
                ops.append(
                    Op("disable", "service", b.child, b.owner, {"name": b.child, "delay": drain, "graceful": "YES"})
                )
                holds.append(
                    Hold(
                        b.owner,
                        "Draining",
                        f"service {b.child} drains for {drain}s before removal",
                        retry_after=float(drain),
                    )
                )
            continue
        unbound.add(b)
        ops.append(Op.binding("unbind", b))
    # A monitor stays on a service kept (draining, guarded) for its owner's vserver; on one kept only for
    # another DsrService's drain it goes now: its owner has nothing there to come back for.
    still_bound = {(b.owner, b.child) for b in everything if b.kind == ns.VSERVER_BINDING and b not in unbound}
    for b in sorted(monitor_removals):
        if b.parent in held_services and (b.owner, b.parent) in still_bound:
            continue
        unbound.add(b)
        ops.append(Op.binding("unbind", b))

    for b in member_removals:
        drain = policy.drain(b.owner)
        if drain > 0 and b.state != ns.OUT_OF_SERVICE:
            held_members.add(b)
            if b.state == ns.GOING_OUT_OF_SERVICE:
                holds.append(Hold(b.owner, "Draining", f"{b.child} is still draining in {b.parent}",
                                  retry_after=policy.drain_poll_seconds))
            else:
                ops.append(Op("disable", "servicegroup", b.parent, b.owner,
                              {**_member_body(b), "delay": drain, "graceful": "YES"}, child=b.child))
                holds.append(Hold(b.owner, "Draining", f"{b.child} drains for {drain}s in {b.parent} before removal",
                                  retry_after=float(drain)))
            continue
        unbound.add(b)
        ops.append(Op.binding("unbind", b))
    # A servicegroup with members still draining (or kept by the guard) stays on its vserver, and
    # keeps its monitor: those members still carry their connections.
    busy_groups = {b.parent for b in held_members}
    for b in sorted(actual.bindings - desired.bindings):
        if b.kind not in (ns.GROUP_BINDING, ns.GROUP_MONITOR_BINDING) or not in_scope(b.owner):
            continue
        if (b.child if b.kind == ns.GROUP_BINDING else b.parent) in busy_groups:
            continue
        unbound.add(b)
        ops.append(Op.binding("unbind", b))

    remaining = everything - unbound
    parents = {b.parent for b in remaining}
    children = {b.child for b in remaining}
    deleted: set[str] = set()
    for kind in ("servicegroup", "service", "lbvserver", "lbmonitor"):
        for obj in actual.of_kind(kind):
            if desired.get(kind, obj.name) or not in_scope(obj.owner) or obj.name in held_services:
                continue
            if kind in ("service", "servicegroup") and (obj.name in parents or obj.name in children):
                continue
            if kind == "lbvserver" and obj.name in parents:
                continue
            if kind == "lbmonitor" and obj.name in children:
                continue
            if kind == "service":
                deleted.add(obj.name)
            key_body: dict[str, Any] = {ns.KINDS[kind].key: obj.name}
            key_body.update({arg: obj.get(arg) for arg in ns.KINDS[kind].delete_args})
            ops.append(Op("delete", kind, obj.name, obj.owner, key_body))
    referenced = {
        o.get("servername") for o in [*actual.of_kind("service"), *desired.of_kind("service")] if o.name not in deleted
    } | {b.child for b in remaining if b.kind == ns.MEMBER_BINDING}
    for server in actual.of_kind("server"):
        if desired.get("server", server.name) or server.name in referenced:
            continue
        ops.append(Op("delete", "server", server.name, server.owner, {"name": server.name}))

    return Plan(stages=stages(ops), holds=tuple(holds))


def _by_parent(bindings: Iterable[ns.Binding]) -> list[tuple[str, list[ns.Binding]]]:
    """Bindings grouped by their parent (a vserver, a servicegroup), in name order."""
    grouped: dict[str, list[ns.Binding]] = defaultdict(list)
    for binding in bindings:
        grouped[binding.parent].append(binding)
    return sorted(grouped.items())


def _guarded(
    policy: Policy, owner: str, parent: str, label: str, bound: int, removing: list[ns.Binding],
    leaving_id: Callable[[ns.Binding], str],
) -> tuple[list[ns.Binding], list[ns.Binding], list[Hold]]:  # fmt: skip
    """The blast-radius guard over the removals from one wanted parent with `bound` bindings: what goes
    now, what stays for a later plan, and the hold that says so. A backend's own request to leave
    (`leaving_id(binding)` in `policy.leaving`) always goes; the guard counts the others."""
    asked = [b for b in removing if leaving_id(b) in policy.leaving]
    guarded = [b for b in removing if leaving_id(b) not in policy.leaving]
    allowed = guard_allowance(bound, policy.guard(owner))
    if len(guarded) <= allowed:
        return removing, [], []
    kept, now = guarded[allowed:], asked + guarded[:allowed]
    message = (f"{parent}: {len(kept) + len(now)} of {bound} {label} would go; "
               f"at most {policy.guard(owner)}% may go at once, removing {len(now)} now")  # fmt: skip
    return now, kept, [Hold(owner, "BlastRadiusGuard", message, retry_after=policy.drain_poll_seconds)]


def guard_allowance(bound: int, percent: int) -> int:
    """How many of a wanted vserver's `bound` bindings one plan may remove under a `percent` guard.

    The share rounds down, but never to zero while more than one binding is bound, so a small
    percentage over few backends still makes progress, one binding per plan; the last binding goes
    only when the share allows it in full (100 %).
    """
    share = math.floor(bound * percent / 100)
    return 1 if share == 0 and bound > 1 else share


def _first_user(desired: ns.NetScalerState, name: str) -> str:
    """The DsrService to report a conflict on a shared object to."""
    users = sorted(b.owner for b in desired.bindings if name in (b.parent, b.child))
    users = [u for u in users if u != ns.SHARED_OWNER]
    return users[0] if users else ns.SHARED_OWNER
