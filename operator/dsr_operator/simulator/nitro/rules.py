"""Configuration rules: the writes NITRO accepts and what each one does to the objects.

The checks of one object are in `validation.py`; the rules that cross objects (references,
duplicates, service type matches, sessionless constraints) live here.

Choices where the NITRO reference is silent:
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
* service groups: a member is a (server, port) binding; the same server and port may be a member
  of any number of groups, and also the address of a standalone service. A member given by `ip`
  uses the server that holds the IP, or creates one named after it, as a service does. Deleting a
  server that is a member → 1070, as for a service; deleting a group drops its members, its monitor
  bindings and its vserver bindings. Unbinding a member that is not one → 404 / 258; a group that
  is not bound to the vserver → 599 / 1303, as for a service.
* `servicegroup?action=enable|disable` with `servername` and `port` acts on that member only
  (its `state`, and for disable `delay` and `graceful` as for a service); without them, on the group.

Behaviours of real boxes reproduced on purpose:
* an lbmonitor `interval` (`resptimeout`) of whole minutes given in seconds is stored in minutes:
  `interval: 60` reads back as `interval: 1, units3: MIN`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dsr_operator.simulator import schema
from dsr_operator.simulator.nitro.errors import (
    NitroError,
    already_exists,
    argument_missing,
    bad_value,
    invalid_argument,
    not_found,
)
from dsr_operator.simulator.nitro.state import Addresses, Record, StoreState
from dsr_operator.simulator.nitro.validation import (
    check_monitor,
    check_vserver,
    coerce,
    normalise_monitor_units,
    require_mapping,
    validate_add,
    validate_fields,
    validate_key,
)

#: Writes after which the address index stays true (adds and updates maintain it themselves).
KEEPS_ADDRESSES = frozenset({"add", "update", "bind", "unbind", "enable", "disable", "save"})


class ConfigRules(StoreState):
    """NITRO writes: one handler per (resource type, action), each raising NitroError on a refusal."""

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
            check_monitor(obj)
            normalise_monitor_units(obj)
        elif res.name == "servicegroup":
            obj.setdefault("usip", "YES" if "usip" in self.modes else "NO")
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

    def _backend_server(self, obj: Record, missing: str) -> tuple[str, str, bool]:
        """(ip, server name, whether that server must be created) of a service or member being added:
        given by `ip` (the server holding it, else a new one named after it) or by `servername`."""
        if "ip" in obj:
            ip = obj.pop("ip")
            held = self._addresses().servers.get(ip)
            server = self.objects["server"].get((held,)) if held is not None else None
            servername = server["name"] if server is not None else ip
            return ip, servername, server is None and (ip,) not in self.objects["server"]
        if "servername" in obj:
            server = self.objects["server"].get((obj["servername"],))
            if server is None:
                raise not_found("servername", obj["servername"])
            return server.get("ipaddress", "0.0.0.0"), server["name"], False
        raise argument_missing(missing)

    def _create_server(self, ip: str) -> None:
        """The server a bare `ip` names, named after it."""
        self.objects["server"][(ip,)] = {"name": ip, "ipaddress": ip, "state": "ENABLED"}
        self._addresses().servers[ip] = ip

    def _prepare_service(self, obj: Record) -> Record:
        ip, servername, create_server = self._backend_server(obj, "ip")
        addresses = self._addresses()
        if (ip, obj["port"], obj["servicetype"]) in addresses.services:
            raise already_exists()
        addresses.services[(ip, obj["port"], obj["servicetype"])] = obj["name"]
        if create_server:
            self._create_server(ip)
        obj.setdefault("usip", "YES" if "usip" in self.modes else "NO")
        head = {"name": obj.pop("name"), "servername": servername, "ipaddress": ip}
        return head | obj

    def _prepare_vserver(self, obj: Record) -> None:
        if obj.get("ipv46") not in (None, "0.0.0.0") and "port" not in obj:
            raise argument_missing("port")
        obj.setdefault("ipv46", "0.0.0.0")
        obj.setdefault("port", 0)
        check_vserver(obj)
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

    def _update(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = require_mapping(payload, res.name)
        validate_fields(res, data, lambda f: True)
        key = validate_key(res, data)
        obj = self._find(res, key)
        changes = {k: coerce(k, res.fields[k], v) for k, v in data.items() if res.fields[k].update}
        candidate = obj | changes
        if res.name == "lbvserver":
            check_vserver(candidate)
            self._check_vserver_address(candidate)
        elif res.name == "lbmonitor":
            check_monitor(candidate)
        elif res.name == "server" and "ipaddress" in changes:
            for svc in self.objects["service"].values():
                if svc["servername"] == obj["name"]:
                    svc["ipaddress"] = changes["ipaddress"]
            for member in self.objects["servicegroup_servicegroupmember_binding"].values():
                if member["servername"] == obj["name"]:
                    member["ip"] = changes["ipaddress"]
            self._addr = None
        if res.name == "lbvserver" and self._addr is not None:
            before = (obj["ipv46"], obj["port"], obj["servicetype"])
            if self._addr.vservers.get(before) == obj["name"]:
                del self._addr.vservers[before]
            if candidate["ipv46"] != "0.0.0.0":
                self._addr.vservers[(candidate["ipv46"], candidate["port"], candidate["servicetype"])] = obj["name"]
        obj.update(changes)
        if res.name == "lbmonitor":
            normalise_monitor_units(obj)
        return dict(zip(res.keys, key, strict=True))

    def _unset(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        """`?action=unset`: each field given as true goes back to its default (or away if it has none)."""
        data = require_mapping(payload, res.name)
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
            check_vserver(candidate)
        elif res.name == "lbmonitor":
            check_monitor(candidate)
        obj.clear()
        obj.update(candidate)
        return dict(zip(res.keys, key, strict=True))

    def _delete(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = require_mapping(payload, res.name)
        key = validate_key(res, data)
        obj = self._find(res, key)
        name = obj[res.keys[0]]
        if res.name == "server":
            if any(s["servername"] == name for s in self.objects["service"].values()) or any(
                m["servername"] == name for m in self.objects["servicegroup_servicegroupmember_binding"].values()
            ):
                raise NitroError(599, 1070, "Object in use, cannot delete")
        elif res.name == "lbmonitor":
            bound = [b for binding in ("service_lbmonitor_binding", "servicegroup_lbmonitor_binding")
                     for b in self.objects[binding].values() if b["monitor_name"] == name]  # fmt: skip
            if bound and len(self._monitors_named(name)) == 1:
                raise NitroError(599, 1070, "Object in use, cannot delete")
        elif res.name == "service":
            self._drop_where("lbvserver_service_binding", lambda k: k[1] == name)
            self._drop_where("service_lbmonitor_binding", lambda k: k[0] == name)
        elif res.name == "lbvserver":
            self._drop_where("lbvserver_service_binding", lambda k: k[0] == name)
            self._drop_where("lbvserver_servicegroup_binding", lambda k: k[0] == name)
        elif res.name == "servicegroup":
            self._drop_where("lbvserver_servicegroup_binding", lambda k: k[1] == name)
            self._drop_where("servicegroup_servicegroupmember_binding", lambda k: k[0] == name)
            self._drop_where("servicegroup_lbmonitor_binding", lambda k: k[0] == name)
        del self.objects[res.name][key]
        return dict(zip(res.keys, key, strict=True))

    def _drop_where(self, resource: str, match: Callable[[tuple[str, ...]], bool]) -> None:
        objs = self.objects[resource]
        for key in [k for k in objs if match(k)]:
            del objs[key]

    # -- actions

    def _set_state(self, res: schema.Resource, payload: Any, *, enable: bool) -> dict[str, str]:
        data = require_mapping(payload, res.name)
        extra = {k: v for k, v in data.items() if k not in res.keys}
        allowed: dict[str, schema.Field] = {}
        if not enable and res.name in ("server", "service", "servicegroup"):
            allowed |= schema.DISABLE_FIELDS
        if res.name == "servicegroup":
            allowed |= schema.MEMBER_FIELDS
        for name in extra:
            if name not in allowed:
                raise invalid_argument(name)
        args = {k: coerce(k, allowed[k], v) for k, v in extra.items()}
        key = validate_key(res, data)
        obj = self._find(res, key)
        done = dict(zip(res.keys, key, strict=True))
        if res.name == "servicegroup" and ("servername" in args or "port" in args):
            for name in ("servername", "port"):
                if name not in args:
                    raise argument_missing(name)
            member_key = (key[0], args["servername"], str(args["port"]))
            member = self.objects["servicegroup_servicegroupmember_binding"].get(member_key)
            if member is None:
                raise not_found("servername", args["servername"])
            obj = member
            done |= {"servername": member_key[1], "port": member_key[2]}
        obj.pop("_until", None)
        obj.pop("_graceful", None)
        obj["state"] = "ENABLED" if enable else "DISABLED"
        delay = args.get("delay", 0)
        if not enable and delay:
            obj["_until"] = self.clock() + float(delay)
        if not enable and args.get("graceful") == "YES":
            obj["_graceful"] = self.clock()  # ends when its clients reach 0 or the delay passes (0: no deadline)
        return done

    def _rename(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        data = require_mapping(payload, res.name)
        field = res.keys[0]
        for name in data:
            if name not in (field, "newname"):
                raise invalid_argument(name)
        old = validate_key(res, data)[0]
        if "newname" not in data:
            raise argument_missing("newname")
        new = coerce("newname", schema.Field("name"), data["newname"])
        obj = self._find(res, (old,))
        if (new,) in self.objects[res.name]:
            raise already_exists()
        self.objects[res.name] = {
            ((new,) if k == (old,) else k): (obj | {field: new} if k == (old,) else v)
            for k, v in self.objects[res.name].items()
        }
        if res.name == "server":
            for svc in self.objects["service"].values():
                if svc["servername"] == old:
                    svc["servername"] = new
            self._rekey("servicegroup_servicegroupmember_binding", 1, "servername", old, new)
        elif res.name == "service":
            self._rekey("lbvserver_service_binding", 1, "servicename", old, new)
            self._rekey("service_lbmonitor_binding", 0, "name", old, new)
        elif res.name == "lbvserver":
            self._rekey("lbvserver_service_binding", 0, "name", old, new)
            self._rekey("lbvserver_servicegroup_binding", 0, "name", old, new)
        elif res.name == "servicegroup":
            self._rekey("servicegroup_servicegroupmember_binding", 0, "servicegroupname", old, new)
            self._rekey("servicegroup_lbmonitor_binding", 0, "servicegroupname", old, new)
            self._rekey("lbvserver_servicegroup_binding", 1, "servicegroupname", old, new)
        return {field: new}

    def _rekey(self, resource: str, index: int, field: str, old: str, new: str) -> None:
        rebuilt: dict[tuple[str, ...], Record] = {}
        for key, rec in self.objects[resource].items():
            if key[index] == old:
                key = (*key[:index], new, *key[index + 1 :])
                rec = rec | {field: new}
            rebuilt[key] = rec
        self.objects[resource] = rebuilt

    def _nsmode(self, action: str, payload: Any) -> dict[str, str]:
        data = require_mapping(payload, "nsmode")
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
        if res.name == "servicegroup_servicegroupmember_binding":
            return self._bind_member(res, payload)
        if res.name == "lbvserver_servicegroup_binding":
            return self._bind_group(res, payload)
        if res.name == "servicegroup_lbmonitor_binding":
            return self._bind_group_monitor(res, payload)
        if res.name == "lbvserver_service_binding":
            data = require_mapping(payload, res.name)
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
        data = require_mapping(payload, res.name)
        validate_fields(res, data, lambda f: True)
        if res.name == "servicegroup_servicegroupmember_binding":
            return self._unbind_member(res, data)
        key = validate_key(res, data)
        if res.name == "lbvserver_servicegroup_binding":
            self._find(schema.LBVSERVER, (key[0],))
            self._find(schema.SERVICEGROUP, (key[1],))
            if key not in self.objects[res.name]:
                raise NitroError(599, 1303, "Service not bound to Vserver")
        elif res.name == "servicegroup_lbmonitor_binding":
            self._find(schema.SERVICEGROUP, (key[0],))
            if not self._monitors_named(key[1]):
                raise NitroError(599, 2171, f"Monitor does not exist [{key[1]}]")
            if key not in self.objects[res.name]:
                raise NitroError(599, 2170, "Monitor not bound to service")
        elif res.name == "lbvserver_service_binding":
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

    # -- service groups

    def _bind_member(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        obj = validate_add(res, payload)
        self._find(schema.SERVICEGROUP, (obj["servicegroupname"],))
        ip, servername, create_server = self._backend_server(obj, "servername")
        key = (obj["servicegroupname"], servername, str(obj["port"]))
        if key in self.objects[res.name]:
            raise already_exists()
        if create_server:
            self._create_server(ip)
        head = {"servicegroupname": obj.pop("servicegroupname"), "ip": ip, "port": obj.pop("port"),
                "servername": servername}  # fmt: skip
        obj.pop("servername", None)
        self.objects[res.name][key] = head | obj
        return dict(zip(res.keys, key, strict=True))

    def _unbind_member(self, res: schema.Resource, data: dict[str, Any]) -> dict[str, str]:
        """Unbind by `servername` and `port`, or by `ip` and `port`."""
        for name in ("servicegroupname", "port"):
            if name not in data:
                raise argument_missing(name)
        group = str(data["servicegroupname"])
        self._find(schema.SERVICEGROUP, (group,))
        port = str(coerce("port", res.fields["port"], data["port"]))
        key: tuple[str, ...]
        if "servername" in data:
            key = (group, str(data["servername"]), port)
            if key not in self.objects[res.name]:
                raise not_found("servername", data["servername"])
        elif "ip" in data:
            ip = coerce("ip", res.fields["ip"], data["ip"])
            found = [k for k, m in self.objects[res.name].items() if k[0] == group and k[2] == port and m["ip"] == ip]
            if not found:
                raise not_found("ip", ip)
            key = found[0]
        else:
            raise argument_missing("servername")
        del self.objects[res.name][key]
        return dict(zip(res.keys, key, strict=True))

    def _bind_group(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        obj = validate_add(res, payload)
        key = res.key_of(obj)
        vserver = self._find(schema.LBVSERVER, (obj["name"],))
        group = self.objects["servicegroup"].get((obj["servicegroupname"],))
        if group is None:
            raise not_found("servicegroupname", obj["servicegroupname"])
        if key in self.objects[res.name]:
            raise already_exists()
        if group["servicetype"] != vserver["servicetype"]:
            raise NitroError(599, 1304, "Service type mismatch between the vserver and service")
        if vserver.get("sessionless") == "ENABLED" and group.get("usip") != "YES":
            raise NitroError(599, 1284, "Service bound to a sessionless vserver must have UseSourceIP mode enabled")
        self.objects[res.name][key] = obj
        return dict(zip(res.keys, key, strict=True))

    def _bind_group_monitor(self, res: schema.Resource, payload: Any) -> dict[str, str]:
        obj = validate_add(res, payload)
        key = res.key_of(obj)
        self._find(schema.SERVICEGROUP, (obj["servicegroupname"],))
        if not self._monitors_named(obj["monitor_name"]):
            raise NitroError(599, 2171, f"Monitor does not exist [{obj['monitor_name']}]")
        if key in self.objects[res.name]:
            raise NitroError(599, 2133, "The monitor is already bound to the service")
        self.objects[res.name][key] = obj
        return dict(zip(res.keys, key, strict=True))
