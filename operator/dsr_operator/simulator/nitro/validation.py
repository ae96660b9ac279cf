"""Validation of one object against the table in `simulator/schema.py`: field values, required and exclusive
arguments, defaults, and the checks that need no other object (vserver and monitor constraints).

Pure functions; the rules that cross objects live in `rules.py`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

from dsr_operator.simulator import schema
from dsr_operator.simulator.nitro.errors import NitroError, argument_missing, bad_value, invalid_argument
from dsr_operator.simulator.nitro.state import Record

TIME_UNIT_MS = {"SEC": 1000, "MSEC": 1, "MIN": 60000}

#: lbmonitor times and the fields that hold their units.
MONITOR_UNITS = (("interval", "units3"), ("resptimeout", "units4"))


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


def require_mapping(payload: Any, resource: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise NitroError(599, 1234, f"Invalid JSON data type [{resource}]")
    return {k: v for k, v in payload.items() if v is not None}


def validate_fields(res: schema.Resource, payload: Mapping[str, Any], allowed: Callable[[schema.Field], bool]) -> None:
    for name in payload:
        field = res.fields.get(name)
        if field is None or not allowed(field):
            raise invalid_argument(name)
    for a, b in res.mutex:
        if a in payload and b in payload:
            raise NitroError(599, 1092, f"Arguments cannot both be specified [{a}, {b}]")


def validate_add(res: schema.Resource, payload: Any) -> Record:
    """Check an add/bind payload against the schema; return it canonicalised with defaults filled."""
    data = require_mapping(payload, res.name)
    validate_fields(res, data, lambda f: f.add)
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


def check_vserver(obj: Record) -> None:
    if obj.get("sessionless") == "ENABLED":
        if obj["servicetype"] not in ("ANY", "DNS", "UDP"):
            raise NitroError(599, 1282, "Sessionless vserver must be of type ANY, DNS or UDP")
        if obj.get("m") not in ("MAC", "IPTUNNEL"):
            raise NitroError(599, 1283, "Sessionless vserver must have MAC or IPTUNNEL mode set")

def check_monitor(obj: Record) -> None:
    interval = obj["interval"] * TIME_UNIT_MS[obj.get("units3", "SEC")]
    resptimeout = obj["resptimeout"] * TIME_UNIT_MS[obj.get("units4", "SEC")]
    if resptimeout >= interval:
        raise invalid_argument("resptimeout")


def normalise_monitor_units(monitor: Record) -> None:
    """Store whole minutes as minutes, as the appliance does: `interval: 60` reads back `1` + `units3: MIN`.

    ansible-collection-netscaleradc issue #324 (and its `fix_nitro_anomolies`); `resptimeout` with
    `units4` the same way.
    """
    for value_field, unit_field in MONITOR_UNITS:
        value = monitor.get(value_field)
        if monitor.get(unit_field, "SEC") == "SEC" and isinstance(value, int) and value >= 60 and value % 60 == 0:
            monitor[value_field] = value // 60
            monitor[unit_field] = "MIN"
