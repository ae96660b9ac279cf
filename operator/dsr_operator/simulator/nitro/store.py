"""In-memory NetScaler: configuration objects, their validation, derived runtime state, the write journal.

Pure Python, no I/O: the HTTP layer (`server.py`) translates requests into `Store.execute` /
`Store.execute_bulk` / `Store.query` calls and `NitroError`s into NITRO error bodies. Validation is
driven by the table in `schema.py`; the rules that cross objects (references, duplicates, service
type matches, sessionless constraints) live here.

Choices where the NITRO reference is silent (see `reference/nitro-api.md` §10):
* deleting a `server` that a `service` still uses → 599 / 1070 "Object in use, cannot delete";
  so does deleting an `lbmonitor` still bound to a service. Deleting a service or a vserver drops
  its bindings, as the appliance does.
* a second `server` with the same IP → 409 / 1335 "Server already exists [<existing name>]"; a
  second `service` (or `lbvserver`) with the same IP, port and type → 409 / 273, and so does an
  update that moves a vserver (`ipv46`) onto the IP, port and type of another.
* `resptimeout` not below `interval` → 599 / 278 "Invalid argument [resptimeout]".
* enabling an enabled object (or disabling a disabled one) succeeds.
* unknown resource type → 599 / 1232, unknown action → 599 / 1240.
* `?action=unset` takes the key and each field to reset as `true`: the field returns to its default,
  or is removed when it has none; a field that cannot be updated (or is an object's address) → 599 / 278.
* monitor binding errors (2133 already bound, 2170 not bound, 2171 no such monitor) use HTTP 599.

Behaviours of real boxes reproduced on purpose (`reference/nitro-api.md` §11):
* an lbmonitor `interval` (`resptimeout`) of whole minutes given in seconds is stored in minutes:
  `interval: 60` reads back as `interval: 1, units3: MIN`.

Runtime state: a service is UP when enabled and its IP is not marked unreachable (`hosts_down`),
or when its `healthmonitor` is NO; OUT OF SERVICE when it or its server is disabled; GOING OUT OF
SERVICE while a disable `delay` runs, and for a graceful disable (`graceful: YES`) only while the
service still has clients (`clients`, from `/_sim/clients` or the dataplane's live flows): it ends
when they reach 0 or the delay passes, whichever comes first, as on a real box. A vserver is UP
when any bound service is UP.

Every successful write is appended to `journal` and passed to each callback in `listeners` (for
persistence and, later, a dataplane that re-renders on change).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dsr_operator.simulator import schema

logger = logging.getLogger(__name__)

STATE_VERSION = 1
ONERROR_MODES = ("exit", "continue", "rollback")
ROLLBACK_ACTIONS = frozenset({"add", "upsert", "bind"})
_TIME_UNIT_MS = {"SEC": 1000, "MSEC": 1, "MIN": 60000}


class NitroError(Exception):
    """A NITRO failure: HTTP status, NetScaler errorcode and message, as the appliance reports them."""

    def __init__(self, status: int, errorcode: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errorcode = errorcode
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"errorcode": self.errorcode, "message": self.message, "severity": "ERROR"}


def not_found(field: str, value: Any) -> NitroError:
    return NitroError(404, 258, f"No such resource [{field}, {value}]")


def already_exists() -> NitroError:
    return NitroError(409, 273, "Resource already exists")


def invalid_argument(field: str) -> NitroError:
    return NitroError(599, 278, f"Invalid argument [{field}]")


def argument_missing(field: str) -> NitroError:
    return NitroError(599, 1095, f"Required argument missing [{field}]")


def bad_value(field: str, value: Any) -> NitroError:
    return NitroError(599, 1097, f"Invalid argument value [{field}, {value}]")


@dataclasses.dataclass(frozen=True)
class Change:
    """One successful write, as recorded in the journal and passed to listeners."""

    seq: int
    time: float
    method: str
    resource: str
    action: str
    name: str
    key: Mapping[str, str]
    ha_state: str = "Primary"
    """What `hanode/0` reported when the write ran: a write while Secondary is one a real pair would lose."""
    request: int = 0
    """The write request it came with (the items of one bulk request share it)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "resource": self.resource,
            "action": self.action,
            "name": self.name,
            "key": dict(self.key),
            "haState": self.ha_state,
            "request": self.request,
        }


Listener = Callable[[Change], None]
Record = dict[str, Any]


@dataclasses.dataclass
class BulkOutcome:
    """Per-item results of a bulk request (None = success) and whether earlier items were undone."""

    results: list[NitroError | None]
    rolled_back: bool = False

    @property
    def ok(self) -> bool:
        return all(r is None for r in self.results)


def coerce(name: str, field: schema.Field, value: Any) -> Any:
    """Validate one value against its field and return its canonical stored form."""
    kind = field.kind
    if kind == "name":
        if not isinstance(value, str) or not value:
            raise bad_value(name, value)
        if len(value) > schema.NAME_MAX_LENGTH or not schema.NAME_RE.match(value):
            raise NitroError(599, 1075, f"{schema.NAME_RULES} [{name}, {value}]")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise bad_value(name, value)
        return value
    if kind == "enum":
        if isinstance(value, str):
            for choice in field.choices:
                if choice.upper() == value.upper():
                    return choice
        raise bad_value(name, value)
    if kind in ("int", "double"):
        number: int | float
        if isinstance(value, bool):
            raise bad_value(name, value)
        if isinstance(value, int):
            number = value
        elif isinstance(value, float) and (kind == "double" or value.is_integer()):
            number = int(value) if value.is_integer() else value
        elif isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            number = int(value)
        else:
            raise bad_value(name, value)
        if field.hi is not None and number > field.hi:
            raise NitroError(599, 1108, f"Integer value exceeds maximum [{name}, {value}]")
        if field.lo is not None and number < field.lo:
            raise NitroError(599, 1109, f"Integer value below minimum [{name}, {value}]")
        return number
    if kind == "ip":
        try:
            return str(ipaddress.ip_address(value))
        except (ValueError, TypeError):
            raise NitroError(599, 1110, f"Invalid IP address [{name}, {value}]") from None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad_value(name, value)
    if kind == "list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad_value(name, value)
    raise AssertionError(f"unknown field kind {kind}")


def _require_mapping(payload: Any, resource: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise NitroError(599, 1234, f"Invalid JSON data type [{resource}]")
    return {k: v for k, v in payload.items() if v is not None}


def _validate_fields(res: schema.Resource, payload: Mapping[str, Any], allowed: Callable[[schema.Field], bool]) -> None:
    for name in payload:
        field = res.fields.get(name)
        if field is None or not allowed(field):
            raise invalid_argument(name)
    for a, b in res.mutex:
        if a in payload and b in payload:
            raise NitroError(599, 1092, f"Arguments cannot both be specified [{a}, {b}]")


def validate_add(res: schema.Resource, payload: Any) -> Record:
    """Check an add/bind payload against the schema; return it canonicalised with defaults filled."""
    data = _require_mapping(payload, res.name)
    _validate_fields(res, data, lambda f: f.add)
    for name, field in res.fields.items():
        if field.required and name not in data:
            raise argument_missing(name)
    # Keys first, so that a bad name is reported before other faults, as the appliance does.
    ordered = [k for k in res.keys if k in data] + [k for k in data if k not in res.keys]
    out: Record = {k: coerce(k, res.fields[k], data[k]) for k in ordered}
    for name, field in res.fields.items():
        if field.add and field.default is not None and name not in out:
            out[name] = field.default
    return out


def validate_key(res: schema.Resource, payload: Mapping[str, Any]) -> tuple[str, ...]:
    for k in res.keys:
        if k not in payload:
            raise argument_missing(k)
    return tuple(str(payload[k]) for k in res.keys)



#: Writes after which the address index stays true (adds and updates maintain it themselves).
_KEEPS_ADDRESSES = frozenset({"add", "update", "bind", "unbind", "enable", "disable", "save"})


@dataclasses.dataclass
class Addresses:
    """Index of the addresses NetScaler keeps unique, so that a bulk add costs O(items), not O(items x box)."""

    servers: dict[str, str]
    services: dict[tuple[str, Any, str], str]
    vservers: dict[tuple[str, Any, str], str]

class Store:
    """The simulated appliance's configuration and runtime state."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.listeners: list[Listener] = []
        self.journal: list[Change] = []
        self._seq = 0
        self.hosts_down: set[str] = set()
        #: (service, monitor) → verdict of the last real probe, when a dataplane probes for real;
        #: None (the default) means monitors are simulated and only `hosts_down` decides health.
        self.probe_results: dict[tuple[str, str], bool] | None = None
        self.ha_state = "Primary"
        #: Write requests so far (a bulk request is one); each journal entry names the one it came with.
        self.requests = 0
        self._in_bulk = False
        #: The HA peer as `hanode` lists it ({"id": "1", "ipaddress": ...}), None when stand-alone.
        self.ha_peer: dict[str, str] | None = None
        #: This node's NSIP, as `hanode/0` and `nsconfig` show it.
        self.nsip = "127.0.0.1"
        #: Current client connections per service: set through `/_sim/clients`, or the dataplane's
        #: live flows. A graceful disable ends as soon as its service has none left.
        self.clients: dict[str, int] = {}
        #: Whether `clients` are live counts (a dataplane's flows), and when they were last counted:
        #: a graceful disable then waits for a count taken after it before it calls 0 clients "none left".
        self.clients_live = False
        self.clients_counted: float | None = None
        self.objects: dict[str, dict[tuple[str, ...], Record]] = {}
        self.modes: set[str] = set()
        self.config_changed = False
        self.last_changed: float | None = None
        self.last_saved: float | None = None
        self._clear_config()

    def _clear_config(self) -> None:
        self.objects = {name: {} for name in schema.RESOURCES}
        self._addr: Addresses | None = None
        self.modes = set(schema.NSMODE_DEFAULTS)
        self.config_changed = False
        self.last_changed = None
        self.last_saved = None

    # ------------------------------------------------------------------ control (outside NITRO)

    def reset(self) -> None:
        """Empty configuration, journal and host marks (as after `clear ns config full`)."""
        self._clear_config()
        self.hosts_down.clear()
        self.journal.clear()
        self._notify(self._change("POST", "", "reset", {}), journal=False)

    def set_hosts(self, states: Mapping[str, str]) -> None:
        """Mark backend hosts reachable ("UP") or not ("DOWN"); drives service `svrstate`."""
        parsed: dict[str, bool] = {}
        for host, state in states.items():
            ip = str(ipaddress.ip_address(host))
            if not isinstance(state, str) or state.upper() not in ("UP", "DOWN"):
                raise ValueError(f"host state must be UP or DOWN, not {state!r}")
            parsed[ip] = state.upper() == "UP"
        for ip, up in parsed.items():
            if up:
                self.hosts_down.discard(ip)
            else:
                self.hosts_down.add(ip)
        self._notify(self._change("POST", "", "hosts", {}), journal=False)

    def set_probe_results(self, results: Mapping[tuple[str, str], bool]) -> None:
        """Real monitor verdicts per (service, monitor binding); announced to listeners when they change.

        From the first call on, a bound, enabled monitor without a verdict counts as DOWN (not yet probed).
        """
        new = dict(results)
        if new == self.probe_results:
            return
        self.probe_results = new
        self._notify(self._change("POST", "", "probes", {}), journal=False)

    def set_clients(self, counts: Mapping[str, int], *, replace: bool = False, live: bool = False) -> None:
        """Current client connections per service (`replace`: every service not named has none;
        `live`: counted just now, as a dataplane does)."""
        new = ({} if replace else dict(self.clients)) | {k: int(v) for k, v in counts.items()}
        new = {k: v for k, v in new.items() if v > 0}
        if live:
            self.clients_live, self.clients_counted = True, self.clock()
        if new == self.clients:
            return
        self.clients = new
        self._notify(self._change("POST", "", "clients", {}), journal=False)

    def config_document(self) -> dict[str, Any]:
        """The configuration an HA primary synchronises to its secondary (JSON-able): objects and modes."""
        return {
            "objects": {name: copy.deepcopy(list(objs.values())) for name, objs in self.objects.items()},
            "nsmode": sorted(self.modes),
        }

    def load_config_document(self, doc: Mapping[str, Any]) -> None:
        """Take a primary's configuration (HA sync): what was configured here is replaced, unjournaled."""
        objects: dict[str, dict[tuple[str, ...], Record]] = {name: {} for name in schema.RESOURCES}
        for name, records in dict(doc.get("objects", {})).items():
            res = schema.RESOURCES.get(name)
            if res is None or not isinstance(records, list):
                raise ValueError(f"unknown resource type {name!r} in an HA sync")
            objects[name] = {res.key_of(r): copy.deepcopy(dict(r)) for r in records}
        self.objects = objects
        self.modes = set(doc.get("nsmode", schema.NSMODE_DEFAULTS))
        self._notify(self._change("POST", "", "sync", {}), journal=False)

    def set_ha_state(self, state: str) -> None:
        """What `hanode/0` reports as this node's state (Primary, Secondary, UNKNOWN)."""
        self.ha_state = state
        self._notify(self._change("POST", "", "ha", {}), journal=False)

    def dump(self) -> dict[str, Any]:
        """The persistent state as a JSON-able document."""
        return {
            "version": STATE_VERSION,
            "objects": {name: list(objs.values()) for name, objs in self.objects.items()},
            "nsmode": sorted(self.modes),
            "nsconfig": {
                "configchanged": self.config_changed,
                "lastchanged": self.last_changed,
                "lastsaved": self.last_saved,
            },
            "hostsDown": sorted(self.hosts_down),
            "haState": self.ha_state,
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        """Replace the state with a document produced by `dump`."""
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {doc.get('version')!r}")
        self._clear_config()
        for name, records in doc.get("objects", {}).items():
            res = schema.RESOURCES.get(name)
            if res is None:
                raise ValueError(f"unknown resource type {name!r} in state")
            self.objects[name] = {res.key_of(r): dict(r) for r in records}
        self._addr = None
        self.modes = set(doc.get("nsmode", schema.NSMODE_DEFAULTS))
        meta = doc.get("nsconfig", {})
        self.config_changed = bool(meta.get("configchanged", False))
        self.last_changed = meta.get("lastchanged")
        self.last_saved = meta.get("lastsaved")
        self.hosts_down = set(doc.get("hostsDown", ()))
        self.ha_state = str(doc.get("haState", "Primary"))

    # ------------------------------------------------------------------ writes

    def execute(self, method: str, resource: str, action: str, payload: Any) -> Change:
        """Run one write; raise NitroError on failure, record and announce it on success.

        `action` "upsert" (an add with `idempotent=yes`) becomes "update" when the object exists.
        """
        if not self._in_bulk:
            self.requests += 1
        if action == "upsert":
            action = "update" if self._exists(resource, payload) else "add"
        if action not in _KEEPS_ADDRESSES:
            self._addr = None  # the next address check rebuilds the index (adds and updates keep it true)
        key = self._dispatch(resource, action)(payload)
        change = self._change(method, resource, action, key)
        if action != "save":
            self.config_changed = True
            self.last_changed = change.time
        self._notify(change)
        return change

    def execute_bulk(self, method: str, resource: str, action: str, items: Iterable[Any], onerror: str) -> BulkOutcome:
        """Run a bulk write with NITRO's `X-NITRO-ONERROR` semantics (exit, continue, rollback)."""
        if onerror not in ONERROR_MODES:
            raise invalid_argument("X-NITRO-ONERROR")
        if onerror == "rollback" and action not in ROLLBACK_ACTIONS:
            raise NitroError(599, 1242, "Rollback not supported for this operation")
        self._dispatch(resource, action)  # an unknown type or action fails the whole request
        self.requests += 1
        self._in_bulk = True
        try:
            return self._execute_items(method, resource, action, items, onerror)
        finally:
            self._in_bulk = False

    def _execute_items(self, method: str, resource: str, action: str, items: Iterable[Any], onerror: str
                       ) -> BulkOutcome:
        snapshot = self._snapshot() if onerror == "rollback" else None
        results: list[NitroError | None] = []
        for item in items:
            try:
                self.execute(method, resource, action, item)
            except NitroError as exc:
                results.append(exc)
                if onerror == "exit":
                    break
                if snapshot is not None:
                    self._restore(snapshot)
                    self._notify(self._change(method, resource, "rollback", {}), journal=False)
                    return BulkOutcome(results, rolled_back=True)
            else:
                results.append(None)
        return BulkOutcome(results)

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            copy.deepcopy(self.objects),
            set(self.modes),
            self.config_changed,
            self.last_changed,
            self.last_saved,
            len(self.journal),
        )

    def _restore(self, snap: tuple[Any, ...]) -> None:
        self.objects, self.modes, self.config_changed, self.last_changed, self.last_saved, n = snap
        self._addr = None
        del self.journal[n:]

    def _change(self, method: str, resource: str, action: str, key: Mapping[str, str]) -> Change:
        self._seq += 1
        name = next(iter(key.values()), "")
        return Change(self._seq, self.clock(), method, resource, action, name, dict(key), self.ha_state, self.requests)

    def _notify(self, change: Change, *, journal: bool = True) -> None:
        if journal:
            self.journal.append(change)
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("Change listener failed for %s %s", change.action, change.resource)

    def _dispatch(self, resource: str, action: str) -> Callable[[Any], dict[str, str]]:
        if resource == "nsmode" and action in ("enable", "disable"):
            return lambda p: self._nsmode(action, p)
        if resource == "nsconfig" and action == "save":
            return self._save
        res = schema.RESOURCES.get(resource)
        if res is None:
            if resource in schema.SPECIAL_TYPES:
                raise NitroError(599, 1240, f"Invalid nitro action or operation [{action}]")
            raise NitroError(599, 1232, f"Invalid object name [{resource}]")
        table: dict[str, Callable[[Any], dict[str, str]]]
        if res.binding:
            table = {"bind": lambda p: self._bind(res, p), "unbind": lambda p: self._unbind(res, p)}
        else:
            table = {
                "add": lambda p: self._add(res, p),
                "update": lambda p: self._update(res, p),
                "delete": lambda p: self._delete(res, p),
                "unset": lambda p: self._unset(res, p),
            }
            if "enable" in res.actions:
                table["enable"] = lambda p: self._set_state(res, p, enable=True)
                table["disable"] = lambda p: self._set_state(res, p, enable=False)
            if res.renamable:
                table["rename"] = lambda p: self._rename(res, p)
        handler = table.get(action)
        if handler is None:
            raise NitroError(599, 1240, f"Invalid nitro action or operation [{action}]")
        return handler

    # -- lookups

    def _exists(self, resource: str, payload: Any) -> bool:
        res = schema.RESOURCES.get(resource)
        if res is None or not isinstance(payload, dict) or not all(k in payload for k in res.keys):
            return False
        return res.key_of(payload) in self.objects[res.name]

    def _find(self, res: schema.Resource, key: tuple[str, ...]) -> Record:
        obj = self.objects[res.name].get(key)
        if obj is None:
            raise not_found(res.keys[0], key[0])
        return obj

    def _monitors_named(self, name: str) -> list[Record]:
        return [m for k, m in self.objects["lbmonitor"].items() if k[0] == name]

    def _bindings_of(self, binding: str, parent: str) -> list[Record]:
        return [b for k, b in self.objects[binding].items() if k[0] == parent]

    # -- add / update / delete

    def _add(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        obj = validate_add(res, payload)
        key = res.key_of(obj)
        if key in self.objects[res.name]:
            raise already_exists()
        if res.name == "server":
            self._check_new_server(obj)
        elif res.name == "service":
            obj = self._prepare_service(obj)
        elif res.name == "lbvserver":
            self._prepare_vserver(obj)
        elif res.name == "lbmonitor":
            self._check_monitor(obj)
            _normalise_monitor_units(obj)
        self.objects[res.name][key] = obj
        return dict(zip(res.keys, key, strict=True))

    def _addresses(self) -> Addresses:
        """Which object holds each address (one server per IP, one service or vserver per IP, port, type)."""
        if self._addr is None:
            self._addr = Addresses(
                servers={o["ipaddress"]: o["name"] for o in self.objects["server"].values() if "ipaddress" in o},
                services={(o["ipaddress"], o["port"], o["servicetype"]): o["name"]
                          for o in self.objects["service"].values()},
                vservers={(o["ipv46"], o["port"], o["servicetype"]): o["name"]
                          for o in self.objects["lbvserver"].values() if o.get("ipv46") not in (None, "0.0.0.0")},
            )
        return self._addr

    def _check_new_server(self, obj: Record) -> None:
        if "ipaddress" not in obj and "domain" not in obj:
            raise argument_missing("ipaddress")
        other = self._addresses().servers.get(obj["ipaddress"]) if "ipaddress" in obj else None
        if other is not None:
            raise NitroError(409, 1335, f"Server already exists [{other}]")
        if "ipaddress" in obj:
            self._addresses().servers[obj["ipaddress"]] = obj["name"]

    def _prepare_service(self, obj: Record) -> Record:
        if "ip" in obj:
            ip = obj.pop("ip")
            held = self._addresses().servers.get(ip)
            server = self.objects["server"].get((held,)) if held is not None else None
            servername = server["name"] if server is not None else ip
            create_server = server is None and (ip,) not in self.objects["server"]
        elif "servername" in obj:
            server = self.objects["server"].get((obj["servername"],))
            if server is None:
                raise not_found("servername", obj["servername"])
            ip, servername, create_server = server.get("ipaddress", "0.0.0.0"), server["name"], False
        else:
            raise argument_missing("ip")
        addresses = self._addresses()
        if (ip, obj["port"], obj["servicetype"]) in addresses.services:
            raise already_exists()
        addresses.services[(ip, obj["port"], obj["servicetype"])] = obj["name"]
        if create_server:
            self.objects["server"][(ip,)] = {"name": ip, "ipaddress": ip, "state": "ENABLED"}
            addresses.servers[ip] = ip
        obj.setdefault("usip", "YES" if "usip" in self.modes else "NO")
        head = {"name": obj.pop("name"), "servername": servername, "ipaddress": ip}
        return head | obj

    def _prepare_vserver(self, obj: Record) -> None:
        if obj.get("ipv46") not in (None, "0.0.0.0") and "port" not in obj:
            raise argument_missing("port")
        obj.setdefault("ipv46", "0.0.0.0")
        obj.setdefault("port", 0)
        self._check_vserver(obj)
        self._check_vserver_address(obj)
        if obj["ipv46"] != "0.0.0.0":
            self._addresses().vservers[(obj["ipv46"], obj["port"], obj["servicetype"])] = obj["name"]

    def _check_vserver_address(self, obj: Record) -> None:
        """One vserver per IP, port and type: another one there → 409 / 273, on add and on a move."""
        if obj["ipv46"] != "0.0.0.0":
            addresses = self._addresses()
            place = (obj["ipv46"], obj["port"], obj["servicetype"])
            holder = addresses.vservers.get(place)
            if holder is not None and holder != obj["name"]:
                raise already_exists()

    @staticmethod
    def _check_vserver(obj: Record) -> None:
        if obj.get("sessionless") == "ENABLED":
            if obj["servicetype"] not in ("ANY", "DNS", "UDP"):
                raise NitroError(599, 1282, "Sessionless vserver must be of type ANY, DNS or UDP")
            if obj.get("m") not in ("MAC", "IPTUNNEL"):
                raise NitroError(599, 1283, "Sessionless vserver must have MAC or IPTUNNEL mode set")

    @staticmethod
    def _check_monitor(obj: Record) -> None:
        interval = obj["interval"] * _TIME_UNIT_MS[obj.get("units3", "SEC")]
        resptimeout = obj["resptimeout"] * _TIME_UNIT_MS[obj.get("units4", "SEC")]
        if resptimeout >= interval:
            raise invalid_argument("resptimeout")

    def _update(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = _require_mapping(payload, res.name)
        _validate_fields(res, data, lambda f: True)
        key = validate_key(res, data)
        obj = self._find(res, key)
        changes = {k: coerce(k, res.fields[k], v) for k, v in data.items() if res.fields[k].update}
        candidate = obj | changes
        if res.name == "lbvserver":
            self._check_vserver(candidate)
            self._check_vserver_address(candidate)
        elif res.name == "lbmonitor":
            self._check_monitor(candidate)
        elif res.name == "server" and "ipaddress" in changes:
            for svc in self.objects["service"].values():
                if svc["servername"] == obj["name"]:
                    svc["ipaddress"] = changes["ipaddress"]
            self._addr = None
        if res.name == "lbvserver" and self._addr is not None:
            before = (obj["ipv46"], obj["port"], obj["servicetype"])
            if self._addr.vservers.get(before) == obj["name"]:
                del self._addr.vservers[before]
            if candidate["ipv46"] != "0.0.0.0":
                self._addr.vservers[(candidate["ipv46"], candidate["port"], candidate["servicetype"])] = obj["name"]
        obj.update(changes)
        if res.name == "lbmonitor":
            _normalise_monitor_units(obj)
        return dict(zip(res.keys, key, strict=True))

    def _unset(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        """`?action=unset`: each field given as true goes back to its default (or away if it has none)."""
        data = _require_mapping(payload, res.name)
        key = validate_key(res, data)
        flags = {k: v for k, v in data.items() if k not in res.keys}
        for name in flags:
            field = res.fields.get(name)
            if field is None or not field.update or name in schema.NOT_UNSETTABLE.get(res.name, ()):
                raise invalid_argument(name)
        cleared = [k for k, v in flags.items() if coerce(k, schema.Field("bool"), v)]
        obj = self._find(res, key)
        candidate = dict(obj)
        for name in cleared:
            default = res.fields[name].default
            if default is None:
                candidate.pop(name, None)
            else:
                candidate[name] = default
        if res.name == "lbvserver":
            self._check_vserver(candidate)
        elif res.name == "lbmonitor":
            self._check_monitor(candidate)
        obj.clear()
        obj.update(candidate)
        return dict(zip(res.keys, key, strict=True))

    def _delete(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = _require_mapping(payload, res.name)
        key = validate_key(res, data)
        obj = self._find(res, key)
        name = obj[res.keys[0]]
        if res.name == "server":
            if any(s["servername"] == name for s in self.objects["service"].values()):
                raise NitroError(599, 1070, "Object in use, cannot delete")
        elif res.name == "lbmonitor":
            bound = [b for b in self.objects["service_lbmonitor_binding"].values() if b["monitor_name"] == name]
            if bound and len(self._monitors_named(name)) == 1:
                raise NitroError(599, 1070, "Object in use, cannot delete")
        elif res.name == "service":
            self._drop_where("lbvserver_service_binding", lambda k: k[1] == name)
            self._drop_where("service_lbmonitor_binding", lambda k: k[0] == name)
        elif res.name == "lbvserver":
            self._drop_where("lbvserver_service_binding", lambda k: k[0] == name)
        del self.objects[res.name][key]
        return dict(zip(res.keys, key, strict=True))

    def _drop_where(self, resource: str, match: Callable[[tuple[str, ...]], bool]) -> None:
        objs = self.objects[resource]
        for key in [k for k in objs if match(k)]:
            del objs[key]

    # -- actions

    def _set_state(self, res: schema.Resource, payload: Any, *, enable: bool) -> dict[str, str]:
        data = _require_mapping(payload, res.name)
        extra = {k: v for k, v in data.items() if k not in res.keys}
        allowed = schema.DISABLE_FIELDS if (not enable and res.name in ("server", "service")) else {}
        for name in extra:
            if name not in allowed:
                raise invalid_argument(name)
        args = {k: coerce(k, allowed[k], v) for k, v in extra.items()}
        key = validate_key(res, data)
        obj = self._find(res, key)
        obj.pop("_until", None)
        obj.pop("_graceful", None)
        obj["state"] = "ENABLED" if enable else "DISABLED"
        delay = args.get("delay", 0)
        if not enable and delay:
            obj["_until"] = self.clock() + float(delay)
        if not enable and args.get("graceful") == "YES":
            obj["_graceful"] = self.clock()  # ends when its clients reach 0 or the delay passes (0: no deadline)
        return dict(zip(res.keys, key, strict=True))

    def _rename(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = _require_mapping(payload, res.name)
        for name in data:
            if name not in ("name", "newname"):
                raise invalid_argument(name)
        old = validate_key(res, data)[0]
        if "newname" not in data:
            raise argument_missing("newname")
        new = coerce("newname", schema.Field("name"), data["newname"])
        obj = self._find(res, (old,))
        if (new,) in self.objects[res.name]:
            raise already_exists()
        self.objects[res.name] = {
            ((new,) if k == (old,) else k): (obj | {"name": new} if k == (old,) else v)
            for k, v in self.objects[res.name].items()
        }
        if res.name == "server":
            for svc in self.objects["service"].values():
                if svc["servername"] == old:
                    svc["servername"] = new
        elif res.name == "service":
            self._rekey("lbvserver_service_binding", 1, "servicename", old, new)
            self._rekey("service_lbmonitor_binding", 0, "name", old, new)
        elif res.name == "lbvserver":
            self._rekey("lbvserver_service_binding", 0, "name", old, new)
        return {"name": new}

    def _rekey(self, resource: str, index: int, field: str, old: str, new: str) -> None:
        rebuilt: dict[tuple[str, ...], Record] = {}
        for key, rec in self.objects[resource].items():
            if key[index] == old:
                key = (*key[:index], new, *key[index + 1 :])
                rec = rec | {field: new}
            rebuilt[key] = rec
        self.objects[resource] = rebuilt

    def _nsmode(self, action: str, payload: Any) -> dict[str, str]:
        data = _require_mapping(payload, "nsmode")
        for name in data:
            if name != "mode":
                raise invalid_argument(name)
        if "mode" not in data:
            raise argument_missing("mode")
        modes = coerce("mode", schema.Field("list"), data["mode"])
        flags = []
        for mode in modes:
            flag = schema.NSMODES.get(mode.upper())
            if flag is None:
                raise bad_value("mode", mode)
            flags.append(flag)
        if action == "enable":
            self.modes.update(flags)
        else:
            self.modes.difference_update(flags)
        return {"mode": " ".join(modes)}

    def _save(self, payload: Any) -> dict[str, str]:
        if payload is not None and not isinstance(payload, dict):
            raise NitroError(599, 1234, "Invalid JSON data type [nsconfig]")
        self.config_changed = False
        self.last_saved = self.clock()
        return {}

    # -- bindings

    def _bind(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        if res.name == "lbvserver_service_binding":
            data = _require_mapping(payload, res.name)
            if "servicegroupname" in data and "servicename" not in data:
                raise not_found("servicegroupname", data["servicegroupname"])
        obj = validate_add(res, payload)
        key = res.key_of(obj)
        if res.name == "lbvserver_service_binding":
            vserver = self._find(schema.LBVSERVER, (obj["name"],))
            service = self.objects["service"].get((obj["servicename"],))
            if service is None:
                raise not_found("servicename", obj["servicename"])
            if key in self.objects[res.name]:
                raise already_exists()
            if service["servicetype"] != vserver["servicetype"]:
                raise NitroError(599, 1304, "Service type mismatch between the vserver and service")
            if vserver.get("sessionless") == "ENABLED" and service.get("usip") != "YES":
                raise NitroError(599, 1284, "Service bound to a sessionless vserver must have UseSourceIP mode enabled")
        else:
            self._find(schema.SERVICE, (obj["name"],))
            if not self._monitors_named(obj["monitor_name"]):
                raise NitroError(599, 2171, f"Monitor does not exist [{obj['monitor_name']}]")
            if key in self.objects[res.name]:
                raise NitroError(599, 2133, "The monitor is already bound to the service")
        self.objects[res.name][key] = obj
        return dict(zip(res.keys, key, strict=True))

    def _unbind(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = _require_mapping(payload, res.name)
        _validate_fields(res, data, lambda f: True)
        key = validate_key(res, data)
        if res.name == "lbvserver_service_binding":
            self._find(schema.LBVSERVER, (key[0],))
            if (key[1],) not in self.objects["service"]:
                raise not_found("servicename", key[1])
            if key not in self.objects[res.name]:
                raise NitroError(599, 1303, "Service not bound to Vserver")
        else:
            self._find(schema.SERVICE, (key[0],))
            if not self._monitors_named(key[1]):
                raise NitroError(599, 2171, f"Monitor does not exist [{key[1]}]")
            if key not in self.objects[res.name]:
                raise NitroError(599, 2170, "Monitor not bound to service")
        del self.objects[res.name][key]
        return dict(zip(res.keys, key, strict=True))

    # ------------------------------------------------------------------ runtime state

    def _disabled_state(self, obj: Record | None) -> str | None:
        if obj is None or obj.get("state") != "DISABLED":
            return None
        until = obj.get("_until")
        graceful = obj.get("_graceful")
        if graceful:
            # `disable service S D -graceful YES`: until its clients reach 0 or D passes, whichever
            # comes first; D = 0 waits for the last client. Live counts must postdate the disable.
            counted = not self.clients_live or (self.clients_counted or 0.0) > float(graceful)
            if counted and self.client_count(obj) == 0:
                return "OUT OF SERVICE"
            return "GOING OUT OF SERVICE" if until is None or self.clock() < until else "OUT OF SERVICE"
        if until is not None and self.clock() < until:
            return "GOING OUT OF SERVICE"
        return "OUT OF SERVICE"

    def client_count(self, obj: Record) -> int:
        """Current client connections of a service, or of every service of a server."""
        if "servername" in obj:
            return self.clients.get(obj["name"], 0)
        return sum(self.clients.get(s["name"], 0) for s in self.objects["service"].values()
                   if s["servername"] == obj["name"])

    def svrstate(self, service: Record) -> str:
        server = self.objects["server"].get((service["servername"],))
        disabled = self._disabled_state(service) or self._disabled_state(server)
        if disabled == "OUT OF SERVICE":
            return disabled
        healthy = service.get("healthmonitor") == "NO" or (
            service["ipaddress"] not in self.hosts_down and self._probes_pass(service)
        )
        if disabled is not None:
            return disabled if healthy else "DOWN WHEN GOING OUT OF SERVICE"
        return "UP" if healthy else "DOWN"

    def _monitor_enabled(self, binding: Record) -> bool:
        monitors = self._monitors_named(binding["monitor_name"])
        return binding.get("monstate") != "DISABLED" and any(m.get("state") != "DISABLED" for m in monitors)

    def _probes_pass(self, service: Record) -> bool:
        if self.probe_results is None:
            return True
        bindings = self._bindings_of("service_lbmonitor_binding", service["name"])
        results = self.probe_results
        return all(
            results.get((service["name"], b["monitor_name"]), False) for b in bindings if self._monitor_enabled(b)
        )

    def _monitor_state(self, binding: Record) -> str:
        service = self.objects["service"][(binding["name"],)]
        if not self._monitor_enabled(binding):
            return "DISABLED"
        if service["ipaddress"] in self.hosts_down:
            return "DOWN"
        if self.probe_results is not None and not self.probe_results.get((binding["name"], binding["monitor_name"])):
            return "DOWN"
        return "UP"

    def _vserver_runtime(self, vserver: Record) -> Record:
        bindings = self._bindings_of("lbvserver_service_binding", vserver["name"])
        total_weight = active_weight = active = 0
        for b in bindings:
            total_weight += b["weight"]
            if self.svrstate(self.objects["service"][(b["servicename"],)]) == "UP":
                active += 1
                active_weight += b["weight"]
        if vserver.get("state") == "DISABLED":
            state = "OUT OF SERVICE"
        else:
            state = "UP" if active else "DOWN"
        health = round(100 * active_weight / total_weight) if total_weight else 0
        return {
            "curstate": state,
            "effectivestate": state,
            "health": str(health),
            "totalservices": str(len(bindings)),
            "activeservices": str(active),
            "type": "ADDRESS",
        }

    # ------------------------------------------------------------------ reads

    def render(self, resource: str, obj: Record) -> Record:
        """One stored object as GET shows it, runtime fields included."""
        res = schema.RESOURCES[resource]
        out = {k: schema.render_value(res.fields.get(k), v) for k, v in obj.items() if not k.startswith("_")}
        if resource == "service":
            del out["state"]
            out["svrstate"] = self.svrstate(obj)
        elif resource == "lbvserver":
            del out["state"]
            out |= self._vserver_runtime(obj)
        elif resource == "lbvserver_service_binding":
            svc = self.objects["service"][(obj["servicename"],)]
            out |= {
                "ipv46": svc["ipaddress"],
                "port": svc["port"],
                "servicetype": svc["servicetype"],
                "curstate": self.svrstate(svc),
                "vsvrbindsvcip": svc["ipaddress"],
                "vsvrbindsvcport": svc["port"],
            }
        elif resource == "service_lbmonitor_binding":
            out["monitor_state"] = self._monitor_state(obj)
        return out

    def records(
        self, resource: str, name: str | None = None, args: Mapping[str, str] | None = None,
        *, bulkbindings: bool = False,
    ) -> list[Record] | Record:  # fmt: skip
        """GET: the rendered records of a type (a dict for the nsmode/nsconfig singletons).

        `name` is the last URL segment; `args` select by key (and, for other fields, exact value).
        Raises 404/258 when a named object does not exist.
        """
        args = dict(args or {})
        if resource == "nsmode":
            return self._nsmode_record()
        if resource == "nsconfig":
            return self._nsconfig_record()
        if resource == "hanode":
            nodes = [self._hanode_record(), *self._peer_records()]
            if name is not None:
                nodes = [n for n in nodes if n["id"] == name]
                if not nodes:
                    raise not_found("id", name)
            return nodes
        res = schema.RESOURCES.get(resource)
        if res is None:
            raise NitroError(599, 1232, f"Invalid object name [{resource}]")
        if name is not None:
            args[res.keys[0]] = name
        if res.binding:
            parent = args.get(res.keys[0])
            if parent is None and not bulkbindings:
                raise argument_missing(res.keys[0])
            if parent is not None:
                parent_type = "lbvserver" if resource == "lbvserver_service_binding" else "service"
                if (parent,) not in self.objects[parent_type]:
                    raise not_found(res.keys[0], parent)
        selected = [obj for obj in self.objects[resource].values() if _matches(obj, args)]
        if not res.binding and res.keys[0] in args and not selected:
            raise not_found(res.keys[0], args[res.keys[0]])
        return [self.render(resource, obj) for obj in selected]

    def _nsmode_record(self) -> Record:
        rec: Record = {"mode": [schema.NSMODE_DISPLAY[f] for f in schema.NSMODE_DISPLAY if f in self.modes]}
        rec |= {flag: flag in self.modes for flag in schema.NSMODE_DISPLAY}
        return rec

    def _nsconfig_record(self) -> Record:
        pair: Record = {}
        if self.ha_peer is not None:
            primary = self.nsip if self.ha_state == "Primary" else self.ha_peer["ipaddress"]
            pair = {"primaryip": primary}
        return pair | {
            "ipaddress": self.nsip,
            "netmask": "255.0.0.0",
            "systemtype": "HA" if self.ha_peer is not None else "Stand-alone",
            "configchanged": self.config_changed,
            "lastconfigchangedtime": _nstime(self.last_changed),
            "lastconfigsavetime": _nstime(self.last_saved),
            "timezone": "CoordinatedUniversalTime",
        }

    def _hanode_record(self) -> Record:
        return {
            "id": "0",
            "name": "",
            "ipaddress": self.nsip,
            "state": self.ha_state,
            "hastatus": "ENABLED" if self.ha_state in ("Primary", "Secondary") else "DISABLED",
            "hasync": "ENABLED",
            "haprop": "ENABLED",
        }

    def _peer_records(self) -> list[Record]:
        """The HA peer (id 1) as this node sees it: the other role."""
        if self.ha_peer is None:
            return []
        other = {"Primary": "Secondary", "Secondary": "Primary"}.get(self.ha_state, "UNKNOWN")
        return [{"id": self.ha_peer.get("id", "1"), "name": "", "ipaddress": self.ha_peer["ipaddress"],
                 "state": other, "hastatus": "ENABLED", "hasync": "ENABLED", "haprop": "ENABLED"}]


#: lbmonitor times and the fields that hold their units.
MONITOR_UNITS = (("interval", "units3"), ("resptimeout", "units4"))


def _normalise_monitor_units(monitor: Record) -> None:
    """Store whole minutes as minutes, as the appliance does: `interval: 60` reads back `1` + `units3: MIN`.

    ansible-collection-netscaleradc issue #324 (and its `fix_nitro_anomolies`); `resptimeout` with
    `units4` the same way.
    """
    for value_field, unit_field in MONITOR_UNITS:
        value = monitor.get(value_field)
        if monitor.get(unit_field, "SEC") == "SEC" and isinstance(value, int) and value >= 60 and value % 60 == 0:
            monitor[value_field] = value // 60
            monitor[unit_field] = "MIN"


def _matches(obj: Record, args: Mapping[str, str]) -> bool:
    return all(str(obj.get(k)) == v for k, v in args.items())


def _nstime(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(ts))


def filter_records(records: list[Record], filters: Mapping[str, str]) -> list[Record]:
    """NITRO `filter=`: exact match per property, or a regex when written as `/regex/`."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    patterns: dict[str, re.Pattern[str]] = {}
    for k, want in filters.items():
        if len(want) >= 2 and want.startswith("/") and want.endswith("/"):
            try:
                patterns[k] = re.compile(want[1:-1])
            except re.error:
                raise invalid_argument("filter") from None

    def ok(rec: Record) -> bool:
        for k, want in filters.items():
            if k not in rec:
                return False
            have = text(rec[k])
            pattern = patterns.get(k)
            if (pattern is not None and not pattern.search(have)) or (pattern is None and have != want):
                return False
        return True

    return [r for r in records if ok(r)]


def select_attrs(records: list[Record], attrs: Iterable[str], keys: Iterable[str]) -> list[Record]:
    """NITRO `attrs=`: keep only the named properties plus the key fields."""
    wanted = set(attrs) | set(keys)
    return [{k: v for k, v in r.items() if k in wanted} for r in records]
