"""NetScaler objects as the planner sees them: pure data, no I/O.

Each kind of object is described once in `KINDS`: its NITRO resource type, its key, and the fields
we manage. The planner compares only managed fields, so NetScaler's own defaults never cause a
diff (a real box returns dozens of fields we never set). Runtime state (`svrstate`, `curstate`) is
kept apart from configuration: it is read, never written.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import sys
from collections.abc import Iterable, Mapping
from typing import Any

PREFIX = "dsr-"
MARKER_PREFIX = "dsr-operator"
SHARED_OWNER = "shared"


@dataclasses.dataclass(frozen=True)
class Kind:
    """A NetScaler object type: where it lives in NITRO and which of its fields are ours."""

    rtype: str
    key: str
    managed: tuple[str, ...]
    immutable: tuple[str, ...] = ()
    delete_args: tuple[str, ...] = ()
    """Fields NITRO needs besides the key to delete one (a monitor is deleted by name and type)."""
    optional: tuple[str, ...] = ()
    """Managed fields a desired object may leave out; NetScaler then has them unset (its default)."""
    blank: tuple[tuple[str, Any], ...] = ()
    """(field, value) pairs NetScaler may report for an unset optional field: read as absent."""
    units: tuple[tuple[str, str], ...] = ()
    """(time field, its unit field): we keep times in seconds; the box may answer in other units."""

    @functools.cached_property
    def order(self) -> tuple[str, ...]:
        """The managed fields sorted by name: the order of an `NsObject`'s values and of its bodies."""
        return tuple(sorted(self.managed))


SERVER = Kind("server", "name", ("ipaddress", "comment"))
SERVICE = Kind(
    "service",
    "name",
    ("servername", "servicetype", "port", "usip", "healthmonitor", "comment"),
    immutable=("servername", "servicetype", "port"),
)
LBVSERVER = Kind(
    "lbvserver",
    "name",
    ("servicetype", "ipv46", "port", "lbmethod", "m", "comment"),
    immutable=("servicetype", "port"),
)
LBMONITOR = Kind(
    "lbmonitor",
    "monitorname",
    ("type", "interval", "resptimeout", "retries", "destip", "destport", "transparent", "comment"),
    immutable=("type",),
    delete_args=("type",),
    optional=("destip", "destport"),
    blank=(("destip", "0.0.0.0"), ("destip", "::"), ("destport", 0)),
    units=(("interval", "units3"), ("resptimeout", "units4")),
)
SERVICEGROUP = Kind(
    "servicegroup",
    "servicegroupname",
    ("servicetype", "usip", "healthmonitor", "comment"),
    immutable=("servicetype",),
)
KINDS: dict[str, Kind] = {k.rtype: k for k in (SERVER, SERVICE, SERVICEGROUP, LBVSERVER, LBMONITOR)}

VSERVER_BINDING = "lbvserver_service_binding"
MONITOR_BINDING = "service_lbmonitor_binding"
GROUP_BINDING = "lbvserver_servicegroup_binding"
"""vserver → servicegroup."""
GROUP_MONITOR_BINDING = "servicegroup_lbmonitor_binding"
"""servicegroup → monitor: the monitor judges that group's members only."""
MEMBER_BINDING = "servicegroup_servicegroupmember_binding"
"""servicegroup → server, on the binding's port: a member, with its own state in that group."""
BINDING_KINDS = (VSERVER_BINDING, MONITOR_BINDING, GROUP_BINDING, GROUP_MONITOR_BINDING, MEMBER_BINDING)

# Service states in which the service no longer receives new connections.
OUT_OF_SERVICE = "OUT OF SERVICE"
GOING_OUT_OF_SERVICE = "GOING OUT OF SERVICE"


def marker(operator_id: str, owner: str) -> str:
    """The ownership marker written into `comment`: operator id plus DsrService uid (or `shared`)."""
    return f"{MARKER_PREFIX}:{operator_id}:{owner}"


def parse_marker(comment: object, operator_id: str) -> str | None:
    """The owner named by a comment if the marker is this operator's, else None."""
    if not isinstance(comment, str):
        return None
    head = f"{MARKER_PREFIX}:{operator_id}:"
    if not comment.startswith(head) or len(comment) == len(head):
        return None
    return sys.intern(comment[len(head) :])  # one string per owner, not one per object it owns


#: Seconds per NITRO time unit (lbmonitor `units3`, `units4`, ...).
UNIT_SECONDS = {"SEC": 1.0, "MSEC": 0.001, "MIN": 60.0}


def in_seconds(value: Any, unit: Any) -> Any:
    """A NITRO time in seconds: `interval: 1, units3: MIN` is 60 (a whole number stays an int)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    seconds = number * UNIT_SECONDS.get(str(unit or "SEC").upper(), 1.0)
    return int(seconds) if seconds.is_integer() else seconds


def _normalise(value: Any) -> Any:
    """NITRO returns many numbers as strings; compare them as numbers. Its enumerated values (`ANY`,
    `YES`, `UP`) are shared strings, not one copy per object read."""
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return _shared(value)


def _shared(value: Any) -> Any:
    """An enumerated NITRO value (upper case, short) as the one string of its text."""
    if isinstance(value, str) and len(value) <= 20 and value.isupper():
        return sys.intern(value)
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class NsObject:
    """One configured NetScaler object: kind, name, the managed fields, and its owner.

    The managed fields are kept as one tuple of values in its kind's `order` (None: not set): the cache
    holds tens of thousands of these, and a tuple of (field, value) pairs per object took four times the
    memory.
    """

    kind: str
    name: str
    values: tuple[Any, ...]
    owner: str
    state: str | None = None  # runtime state read from the box (svrstate / curstate); never written

    @classmethod
    def make(cls, kind: str, name: str, owner: str, state: str | None = None, **fields: Any) -> NsObject:
        order = KINDS[kind].order
        unknown = set(fields) - set(order)
        if unknown:
            raise ValueError(f"{kind} has no managed fields {sorted(unknown)}")
        values = tuple(None if (v := fields.get(k)) is None else _normalise(v) for k in order)
        return cls(kind=kind, name=name, values=values, owner=owner, state=state)

    @property
    def fields(self) -> tuple[tuple[str, Any], ...]:
        """The managed fields that are set, as sorted (field, value) pairs."""
        return tuple((k, v) for k, v in zip(KINDS[self.kind].order, self.values, strict=True) if v is not None)

    @property
    def data(self) -> dict[str, Any]:
        """The managed fields that are set, as a new dict."""
        return {k: v for k, v in zip(KINDS[self.kind].order, self.values, strict=True) if v is not None}

    def get(self, field: str) -> Any:
        order = KINDS[self.kind].order
        return self.values[order.index(field)] if field in order else None

    def payload(self, operator_id: str) -> dict[str, Any]:
        """The NITRO add body for this object, including our ownership marker."""
        body = {KINDS[self.kind].key: self.name, **self.data}
        body["comment"] = marker(operator_id, self.owner)
        return body

    def changed_fields(self, other: NsObject) -> dict[str, Any]:
        """Managed fields whose value in `self` differs from `other` (the actual object).

        A changed time comes with its unit (`units3: SEC`): the box may hold the old one in minutes.
        """
        mine, theirs = self.data, other.data
        changes = {k: v for k, v in mine.items() if k != "comment" and theirs.get(k) != v}
        for field, unit in KINDS[self.kind].units:
            if field in changes:
                changes[unit] = "SEC"
        return changes

    def unset_fields(self, other: NsObject) -> list[str]:
        """Optional fields that `other` (the actual object) has and `self` no longer wants."""
        mine, theirs = self.data, other.data
        return [k for k in KINDS[self.kind].optional if k in theirs and k not in mine]


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Binding:
    """A binding between two named objects: vserver→service, service→monitor, vserver→servicegroup,
    servicegroup→monitor, or servicegroup→server (a member, on `port`)."""

    kind: str  # one of BINDING_KINDS
    parent: str
    child: str
    owner: str = dataclasses.field(default="", compare=False)
    state: str | None = dataclasses.field(default=None, compare=False)
    """Runtime state read from the box: a vserver binding's `curstate`, a member's `svrstate`."""
    port: int = 0
    """A member's NITRO port (65535 is every port); 0 for the other kinds."""

    @property
    def member_id(self) -> str:
        """How a member is named where one string must do (drains, a leaving host): `group/server:port`."""
        return member_key(self.parent, self.child, self.port)

    def payload(self) -> dict[str, Any]:
        if self.kind == VSERVER_BINDING:
            return {"name": self.parent, "servicename": self.child, "weight": 1}
        return self.unbind_payload()

    def unbind_payload(self) -> dict[str, Any]:
        if self.kind == VSERVER_BINDING:
            return {"name": self.parent, "servicename": self.child}
        if self.kind == GROUP_BINDING:
            return {"name": self.parent, "servicegroupname": self.child}
        if self.kind == GROUP_MONITOR_BINDING:
            return {"servicegroupname": self.parent, "monitor_name": self.child}
        if self.kind == MEMBER_BINDING:
            return {"servicegroupname": self.parent, "servername": self.child, "port": self.port}
        return {"name": self.parent, "monitor_name": self.child}


def member_key(group: str, server: str, port: int) -> str:
    return f"{group}/{server}:{port}"


def drain_target(binding: Binding) -> str | None:
    """What drains when `binding` goes: the service a vserver binding names, or a member itself."""
    if binding.kind == VSERVER_BINDING:
        return binding.child
    if binding.kind == MEMBER_BINDING:
        return binding.member_id
    return None


@dataclasses.dataclass(frozen=True)
class NetScalerState:
    """A set of NetScaler objects: either what we want, or what we read (ours and foreign names)."""

    objects: Mapping[tuple[str, str], NsObject] = dataclasses.field(default_factory=dict)
    bindings: frozenset[Binding] = frozenset()
    mbf: bool = False
    foreign: frozenset[tuple[str, str]] = frozenset()
    """(kind, name) of objects with our prefix but not our marker: never touched, never reused."""

    @classmethod
    def build(
        cls,
        objects: Iterable[NsObject] = (),
        bindings: Iterable[Binding] = (),
        *,
        mbf: bool = False,
        foreign: Iterable[tuple[str, str]] = (),
    ) -> NetScalerState:
        objs: dict[tuple[str, str], NsObject] = {}
        for obj in objects:
            key = (obj.kind, obj.name)
            if key in objs and objs[key] != obj:
                raise ValueError(f"conflicting definitions of {obj.kind} {obj.name}")
            objs[key] = obj
        return cls(objects=objs, bindings=frozenset(bindings), mbf=mbf, foreign=frozenset(foreign))

    def of_kind(self, kind: str) -> list[NsObject]:
        return sorted(self._index.by_kind.get(kind, ()), key=lambda o: o.name)

    @functools.cached_property
    def _index(self) -> StateIndex:
        return StateIndex.of(self)

    def bindings_of(self, name: str) -> tuple[Binding, ...]:
        """Bindings in which the object `name` is the parent or the child."""
        return self._index.by_name.get(name, ())

    def owned_by(self, owner: str) -> tuple[tuple[NsObject, ...], tuple[Binding, ...]]:
        """The objects and bindings of one owner."""
        return self._index.objects_of.get(owner, ()), self._index.bindings_of.get(owner, ())

    def services_of_server(self, server: str) -> tuple[NsObject, ...]:
        return self._index.services_of.get(server, ())

    def unused_shared(self) -> tuple[NsObject, ...]:
        """Shared objects nothing uses: services without any binding, servers without any service.

        They are left when a removal stops between its stages (a failed request, a killed operator):
        the unbinding went through, the deletion did not, and no owner refers to them any more.
        """
        return self._index.unused

    def get(self, kind: str, name: str) -> NsObject | None:
        return self.objects.get((kind, name))

    def owners(self) -> set[str]:
        return {o.owner for o in self.objects.values()}


@dataclasses.dataclass(frozen=True)
class StateIndex:
    """Lookups over a `NetScalerState`, built once per state, so that work follows what is asked for."""

    by_kind: Mapping[str, tuple[NsObject, ...]]
    by_name: Mapping[str, tuple[Binding, ...]]
    objects_of: Mapping[str, tuple[NsObject, ...]]
    bindings_of: Mapping[str, tuple[Binding, ...]]
    services_of: Mapping[str, tuple[NsObject, ...]]
    unused: tuple[NsObject, ...] = ()

    @classmethod
    def of(cls, state: NetScalerState) -> StateIndex:
        by_kind: dict[str, list[NsObject]] = collections.defaultdict(list)
        objects_of: dict[str, list[NsObject]] = collections.defaultdict(list)
        services_of: dict[str, list[NsObject]] = collections.defaultdict(list)
        for (kind, _), obj in state.objects.items():
            by_kind[kind].append(obj)
            objects_of[obj.owner].append(obj)
            if kind == SERVICE.rtype and obj.get("servername"):
                services_of[str(obj.get("servername"))].append(obj)
        by_name: dict[str, list[Binding]] = collections.defaultdict(list)
        bindings_of: dict[str, list[Binding]] = collections.defaultdict(list)
        for b in state.bindings:
            by_name[b.parent].append(b)
            by_name[b.child].append(b)
            bindings_of[b.owner].append(b)

        def frozen(d: Mapping[str, list[Any]]) -> dict[str, tuple[Any, ...]]:
            return {k: tuple(v) for k, v in d.items()}

        unused = tuple(
            obj for obj in objects_of.get(SHARED_OWNER, ())
            if (obj.kind == SERVICE.rtype and obj.name not in by_name)
            or (obj.kind == SERVER.rtype and obj.name not in services_of
                and not any(b.kind == MEMBER_BINDING for b in by_name.get(obj.name, ())))
        )
        return cls(frozen(by_kind), frozen(by_name), frozen(objects_of), frozen(bindings_of), frozen(services_of),
                   unused)


def parse_actual(
    records: Mapping[str, Iterable[Mapping[str, Any]]],
    *,
    operator_id: str,
    mbf: bool,
) -> NetScalerState:
    """Build the actual state from NITRO GET records keyed by resource type.

    Objects named with our prefix but lacking our marker are recorded as foreign names only.
    A vserver binding belongs to its vserver's owner, a monitor binding to its monitor's owner, a
    member to its servicegroup's owner.
    """
    objects: list[NsObject] = []
    foreign: list[tuple[str, str]] = []
    names: dict[str, str] = {}  # one string per object name, shared by what refers to it (servers first)

    def same(value: Any) -> str:
        text = str(value)
        return names.get(text, text)

    for kind_name, kind in KINDS.items():
        for rec in records.get(kind_name, ()):
            name = str(rec.get(kind.key, ""))
            if not name.startswith(PREFIX):
                continue
            owner = parse_marker(rec.get("comment"), operator_id)
            if owner is None:
                foreign.append((kind_name, name))
                continue
            fields = {
                f: rec.get(f)
                for f in kind.managed
                if f != "comment" and rec.get(f) not in (None, "") and (f, _normalise(rec.get(f))) not in kind.blank
            }
            for field, unit in kind.units:  # `interval: 1, units3: MIN` is 60 seconds
                if field in fields:
                    fields[field] = in_seconds(fields[field], rec.get(unit))
            if kind is SERVICE and "servername" not in fields and rec.get("servername"):
                fields["servername"] = rec["servername"]
            if "servername" in fields:
                fields["servername"] = same(fields["servername"])
            state = rec.get("svrstate") if kind is SERVICE else rec.get("curstate")
            names[name] = name
            objects.append(NsObject.make(kind_name, name, owner, state=_shared(state), **fields))
    ours = {(o.kind, o.name): o for o in objects}
    bindings: list[Binding] = []
    for rec in records.get(VSERVER_BINDING, ()):
        parent = ours.get((LBVSERVER.rtype, str(rec.get("name"))))
        if parent is not None:
            bindings.append(
                Binding(
                    VSERVER_BINDING,
                    parent.name,
                    same(rec.get("servicename")),
                    parent.owner,
                    _shared(rec.get("curstate")),
                )
            )
    for rec in records.get(MONITOR_BINDING, ()):
        monitor = ours.get((LBMONITOR.rtype, str(rec.get("monitor_name"))))
        if monitor is not None and (SERVICE.rtype, str(rec.get("name"))) in ours:
            bindings.append(Binding(MONITOR_BINDING, same(rec.get("name")), monitor.name, monitor.owner))
    for rec in records.get(GROUP_BINDING, ()):
        parent = ours.get((LBVSERVER.rtype, str(rec.get("name"))))
        if parent is not None:
            bindings.append(Binding(GROUP_BINDING, parent.name, same(rec.get("servicegroupname")), parent.owner))
    for rec in records.get(GROUP_MONITOR_BINDING, ()):
        monitor = ours.get((LBMONITOR.rtype, str(rec.get("monitor_name"))))
        if monitor is not None and (SERVICEGROUP.rtype, str(rec.get("servicegroupname"))) in ours:
            bindings.append(
                Binding(GROUP_MONITOR_BINDING, same(rec.get("servicegroupname")), monitor.name, monitor.owner)
            )
    for rec in records.get(MEMBER_BINDING, ()):
        group = ours.get((SERVICEGROUP.rtype, str(rec.get("servicegroupname"))))
        if group is not None and rec.get("servername") not in (None, ""):
            bindings.append(
                Binding(
                    MEMBER_BINDING,
                    group.name,
                    same(rec.get("servername")),
                    group.owner,
                    _shared(rec.get("svrstate")),
                    port=int(str(rec.get("port") or 0)),
                )
            )
    return NetScalerState.build(objects, bindings, mbf=mbf, foreign=foreign)
