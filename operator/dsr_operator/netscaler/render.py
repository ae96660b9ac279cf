"""Render plan operations as NetScaler CLI commands, as an admin would type them (pure)."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from dsr_operator.model.ops import spec_port

_OBJECT_WORDS = {
    "server": "server",
    "service": "service",
    "servicegroup": "servicegroup",
    "lbvserver": "lb vserver",
    "lbmonitor": "lb monitor",
}
_OPTION_NAMES = {
    "lbmethod": "lbMethod",
    "healthmonitor": "healthMonitor",
    "destip": "destIP",
    "destport": "destPort",
    "resptimeout": "resptimeout",
    "ipaddress": "IPAddress",
    "ipv46": "IPAddress",
}


def _port(value: Any) -> str:
    return str(spec_port(value))


def _quote(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if not text or any(c in text for c in " \"'") else text


def _options(body: Mapping[str, Any], skip: Iterable[str]) -> str:
    skipped = set(skip)
    parts = []
    for key, value in body.items():
        if key in skipped or value is None:
            continue
        parts.append(f"-{_OPTION_NAMES.get(key, key)} {_quote(value)}")
    return " ".join(parts)


def command(verb: str, kind: str, body: Mapping[str, Any]) -> str:
    """One NetScaler CLI command for one operation."""
    b = dict(body)
    words = _OBJECT_WORDS.get(kind, kind)
    if kind == "nsmode":
        return f"{verb} ns mode {' '.join(b['mode'])}"
    if verb == "add":
        if kind == "server":
            head = f"add server {b['name']} {b['ipaddress']}"
            rest = _options(b, ("name", "ipaddress"))
        elif kind == "service":
            head = f"add service {b['name']} {b['servername']} {b['servicetype']} {_port(b['port'])}"
            rest = _options(b, ("name", "servername", "servicetype", "port"))
        elif kind == "servicegroup":
            head = f"add servicegroup {b['servicegroupname']} {b['servicetype']}"
            rest = _options(b, ("servicegroupname", "servicetype"))
        elif kind == "lbvserver":
            head = f"add lb vserver {b['name']} {b['servicetype']} {b['ipv46']} {_port(b['port'])}"
            rest = _options(b, ("name", "servicetype", "ipv46", "port"))
        else:
            head = f"add lb monitor {b['monitorname']} {b['type']}"
            rest = _options(b, ("monitorname", "type"))
        return f"{head} {rest}".strip()
    key = {"lbmonitor": "monitorname", "servicegroup": "servicegroupname"}.get(kind, "name")
    if verb == "update":
        extra = f" {b['type']}" if kind == "lbmonitor" else ""
        return f"set {words} {b[key]}{extra} {_options(b, (key, 'type'))}".strip()
    if verb == "unset":
        extra = f" {b['type']}" if kind == "lbmonitor" else ""
        flags = " ".join(f"-{_OPTION_NAMES.get(k, k)}" for k, v in b.items() if k not in (key, "type") and v)
        return f"unset {words} {b[key]}{extra} {flags}".strip()
    if verb == "delete":
        if kind == "lbmonitor":
            return f"rm lb monitor {b['monitorname']} {b['type']}"
        return f"rm {words} {b[key]}"
    if kind == "servicegroup" and verb in ("enable", "disable"):  # one member
        member = f"servicegroup {b['servicegroupname']} {b['servername']} {_port(b['port'])}"
        if verb == "disable" and b.get("delay"):
            return f"disable {member} -delay {b['delay']} -graceful {b.get('graceful', 'YES')}"
        return f"{verb} {member}"
    if verb in ("enable", "disable"):
        if verb == "disable" and b.get("delay"):
            return f"disable {words} {b['name']} {b['delay']} -graceful {b.get('graceful', 'YES')}"
        return f"{verb} {words} {b['name']}"
    if kind == "lbvserver_service_binding":
        return f"{verb} lb vserver {b['name']} {b['servicename']}"
    if kind == "service_lbmonitor_binding":
        return f"{verb} service {b['name']} -monitorName {b['monitor_name']}"
    if kind == "lbvserver_servicegroup_binding":
        return f"{verb} lb vserver {b['name']} {b['servicegroupname']}"
    if kind == "servicegroup_lbmonitor_binding":
        return f"{verb} servicegroup {b['servicegroupname']} -monitorName {b['monitor_name']}"
    if kind == "servicegroup_servicegroupmember_binding":
        return f"{verb} servicegroup {b['servicegroupname']} {b['servername']} {_port(b['port'])}"
    return f"{verb} {words} {shlex.quote(str(b))}"
