"""Reads: objects as NITRO GET shows them (runtime fields included), `filter=` and `attrs=`, and the
read-only `ConfigView` of `queries.py` the dataplane uses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dsr_operator.simulator import schema
from dsr_operator.simulator.nitro import queries
from dsr_operator.simulator.nitro.errors import NitroError, argument_missing, invalid_argument, not_found
from dsr_operator.simulator.nitro.runtime import RuntimeState, member_name
from dsr_operator.simulator.nitro.state import Change, Record

_TIME_UNIT_S = {"SEC": 1.0, "MSEC": 0.001, "MIN": 60.0}


class Reads(RuntimeState):
    """GET, and the dataplane's read-only queries."""

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
        elif resource == "servicegroup":
            out["servicegroupeffectivestate"] = self.group_state(obj)
            out["numofconnections"] = self.client_count(obj)
        elif resource == "servicegroup_servicegroupmember_binding":
            out["svrstate"] = self.member_state(obj)
        elif resource == "lbvserver_servicegroup_binding":
            group = self.objects["servicegroup"][(obj["servicegroupname"],)]
            out["servicetype"] = group["servicetype"]
        return out

    def records(
        self, resource: str, name: str | None = None, args: Mapping[str, str] | None = None,
        *, bulkbindings: bool = False,
    ) -> list[Record] | Record:  # fmt: skip
        """GET: the rendered records of a type (a dict for the nsmode/nsconfig singletons).

        `name` is the last URL segment; `args` select by key (and, for other fields, exact value).
        Raises 404/258 when a named object does not exist.
        """
        with self.reading():
            return self._records(resource, name, args, bulkbindings)

    def _records(
        self, resource: str, name: str | None, args: Mapping[str, str] | None, bulkbindings: bool
    ) -> list[Record] | Record:
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
                if (parent,) not in self.objects[res.parent]:
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

    # -- the dataplane's view (queries.ConfigView)

    def mbf(self) -> bool:
        return "mbf" in self.modes

    def vservers(self) -> tuple[queries.VserverInfo, ...]:
        return tuple(
            queries.VserverInfo(
                name=name,
                ipv46=vs.get("ipv46", "0.0.0.0"),
                port=int(vs.get("port", 0)),
                servicetype=str(vs.get("servicetype")),
                mode=vs.get("m", "IP"),
                enabled=vs.get("state") != "DISABLED",
            )
            for (name,), vs in sorted(self.objects["lbvserver"].items())
        )

    def services(self) -> tuple[queries.ServiceInfo, ...]:
        return tuple(
            queries.ServiceInfo(
                name=name,
                ip=svc["ipaddress"],
                port=int(svc.get("port", 0)),
                enabled=svc.get("state") != "DISABLED",
                svrstate=self.svrstate(svc),
            )
            for (name,), svc in sorted(self.objects["service"].items())
        )

    def service_bindings(self) -> tuple[queries.BindingInfo, ...]:
        return tuple(
            queries.BindingInfo(vserver, service, int(binding.get("weight", 1) or 1))
            for (vserver, service), binding in sorted(self.objects["lbvserver_service_binding"].items())
        )

    def group_members(self) -> tuple[queries.GroupMemberInfo, ...]:
        return tuple(
            queries.GroupMemberInfo(
                name=member_name(m),
                group=group,
                server=server,
                ip=m["ip"],
                port=int(m["port"]),
                weight=int(m.get("weight", 1) or 1),
                enabled=m.get("state") != "DISABLED"
                and self.objects["servicegroup"].get((group,), {}).get("state") != "DISABLED",
                svrstate=self.member_state(m),
            )
            for (group, server, _), m in sorted(
                self.objects["servicegroup_servicegroupmember_binding"].items(), key=lambda kv: _member_order(kv[0])
            )
        )

    def group_bindings(self) -> tuple[queries.GroupBindingInfo, ...]:
        return tuple(
            queries.GroupBindingInfo(vserver, group)
            for (vserver, group) in sorted(self.objects["lbvserver_servicegroup_binding"])
        )

    def group_monitor_bindings(self) -> tuple[queries.GroupMonitorBindingInfo, ...]:
        return tuple(
            queries.GroupMonitorBindingInfo(group, monitor, binding.get("monstate") != "DISABLED")
            for (group, monitor), binding in sorted(self.objects["servicegroup_lbmonitor_binding"].items())
        )

    def monitors(self) -> tuple[queries.MonitorInfo, ...]:
        return tuple(
            queries.MonitorInfo(
                name=name,
                type=monitor["type"],
                enabled=monitor.get("state") != "DISABLED",
                destip=monitor.get("destip") or "",
                destport=int(monitor.get("destport") or 0),
                transparent=monitor.get("transparent") == "YES",
                interval=monitor["interval"] * _TIME_UNIT_S[monitor.get("units3", "SEC")],
                resptimeout=monitor["resptimeout"] * _TIME_UNIT_S[monitor.get("units4", "SEC")],
                retries=int(monitor.get("retries", 3)),
                successretries=int(monitor.get("successretries", 1)),
            )
            for (name, _), monitor in sorted(self.objects["lbmonitor"].items())
        )

    def monitor_bindings(self) -> tuple[queries.MonitorBindingInfo, ...]:
        return tuple(
            queries.MonitorBindingInfo(service, monitor, binding.get("monstate") != "DISABLED")
            for (service, monitor), binding in self.objects["service_lbmonitor_binding"].items()
        )

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        def listener(change: Change) -> None:
            callback()

        self.listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self.listeners:
                self.listeners.remove(listener)

        return unsubscribe


def _member_order(key: tuple[str, ...]) -> tuple[str, str, int]:
    return key[0], key[1], int(key[2])


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
