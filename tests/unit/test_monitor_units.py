"""Monitor times are compared in seconds: NetScaler reads `interval: 60` back as `1` with `units3: MIN`."""

from __future__ import annotations

from typing import Any

from dsr_operator.model import state as ns
from dsr_operator.planner import desired as d
from dsr_operator.planner import plan as planner

from .test_planner import OP_ID, hosts, intent


def actual_with_monitor(**monitor: Any) -> ns.NetScalerState:
    """What the box shows after our objects for `intent(intervalSeconds=60)` were created."""
    want = d.desired([intent(backends=hosts(21), healthCheck={"intervalSeconds": 60, "timeoutSeconds": 2})])
    records: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ns.KINDS}
    for obj in want.objects.values():
        rec = {ns.KINDS[obj.kind].key: obj.name, **obj.data, "comment": ns.marker(OP_ID, obj.owner)}
        if obj.kind == "lbmonitor":
            rec |= monitor
        records[obj.kind].append(rec)
    for b in want.bindings:  # each binding record as NITRO shows it (its bind body, and a member's state)
        records.setdefault(b.kind, []).append({**b.payload(), "svrstate": "UP"})
    return ns.parse_actual(records, operator_id=OP_ID, mbf=True)


def test_an_interval_read_back_in_minutes_is_no_change() -> None:
    actual = actual_with_monitor(interval="1", units3="MIN", resptimeout="2", units4="SEC")
    [monitor] = actual.of_kind("lbmonitor")
    assert (monitor.get("interval"), monitor.get("resptimeout")) == (60, 2)
    want = d.desired([intent(backends=hosts(21), healthCheck={"intervalSeconds": 60, "timeoutSeconds": 2})])
    assert planner.diff(want, actual, planner.Policy(OP_ID)).empty


def test_a_changed_interval_is_sent_in_seconds_with_its_unit() -> None:
    actual = actual_with_monitor(interval=1, units3="MIN", resptimeout=1, units4="MIN")
    assert actual.of_kind("lbmonitor")[0].get("resptimeout") == 60
    want = d.desired([intent(backends=hosts(21), healthCheck={"intervalSeconds": 90, "timeoutSeconds": 2})])
    plan = planner.diff(want, actual, planner.Policy(OP_ID))
    [op] = plan.ops
    assert (op.verb, op.kind) == ("update", "lbmonitor")
    assert {k: op.body[k] for k in ("interval", "units3", "resptimeout", "units4")} == {
        "interval": 90, "units3": "SEC", "resptimeout": 2, "units4": "SEC",
    }  # fmt: skip


def test_milliseconds_count_as_fractions_of_a_second() -> None:
    assert ns.in_seconds("500", "MSEC") == 0.5
    assert ns.in_seconds(3, None) == 3
    assert ns.in_seconds("2", "min") == 120
