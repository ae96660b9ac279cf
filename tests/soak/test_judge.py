"""The soak's judge catches corrupted final states (fast, no cluster).

A correct state is built on the simulator's own store (the NetScaler model the soak reads back) the
way the README describes it, by hand; each corruption must fail exactly the invariant it breaks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from dsr_operator.simulator import nitro
from tests.soak import judge

OP = "soak"
PASSWORD = "nitro-pass-for-judge"
TOKEN = "eyJhbGciOi.kube-token-for-judge"
VIP = "192.0.2.10"
HOSTS = ("198.51.100.1", "198.51.100.2")
SQUATTED = "198.51.100.77"


def _dsr(name: str, uid: str, spec: dict[str, Any], outcome: str = "Ready", reason: str = "Converged",
         generation: int = 3, created: str = "2025-01-01T00:00:00Z") -> dict[str, Any]:
    stalled = outcome != "Ready"
    return {
        "metadata": {"namespace": "t", "name": name, "uid": uid, "generation": generation,
                     "creationTimestamp": created},
        "spec": spec,
        "status": {"observedGeneration": generation, "conditions": [
            {"type": "Ready", "status": "False" if stalled else "True", "reason": reason,
             "observedGeneration": generation},
            {"type": "Stalled", "status": "True" if stalled else "False",
             "reason": reason if stalled else "Progressing", "observedGeneration": generation},
        ]},
    }


WEB_SPEC = {
    "vip": VIP, "ports": [80], "lbMethod": "ROUNDROBIN", "drainSeconds": 0,
    "backends": {"static": [{"name": "a", "address": HOSTS[0]}, {"name": "b", "address": HOSTS[1]}]},
    "healthCheck": {"type": "TCP", "intervalSeconds": 5, "timeoutSeconds": 2, "retries": 3, "port": 80,
                    "throughVip": True},
}
BROKEN_SPEC = {**WEB_SPEC, "vip": "192.0.2.11", "ports": [80, 80]}


def _write(model: nitro.Store, resource: str, action: str, payload: dict[str, Any]) -> None:
    method = {"add": "POST", "bind": "PUT", "update": "PUT"}.get(action, "POST")
    model.execute(method, resource, action, payload)


MEMBERS = "servicegroup_servicegroupmember_binding"


def _vserver(model: nitro.Store, name: str, vip: str, owner: str) -> None:
    """A DsrService's vserver on port 80 with its servicegroup and the group's monitor (`dsr-t_<name>_tcp`)."""
    vserver, group = f"dsr-t_{name}_80", f"dsr-t_{name}_80_sg"
    _write(model, "lbvserver", "add", {"name": vserver, "servicetype": "ANY", "ipv46": vip, "port": 80,
                                       "lbmethod": "ROUNDROBIN", "m": "MAC", "comment": owner})
    _write(model, "servicegroup", "add", {"servicegroupname": group, "servicetype": "ANY", "usip": "YES",
                                          "healthmonitor": "YES", "comment": owner})
    _write(model, "servicegroup_lbmonitor_binding", "bind", {"servicegroupname": group,
                                                             "monitor_name": f"dsr-t_{name}_tcp"})
    _write(model, "lbvserver_servicegroup_binding", "bind", {"name": vserver, "servicegroupname": group})


def _world() -> tuple[nitro.Store, judge.Capture]:
    """DsrService web configured as the README says, one invalid DsrService, and hand-made objects."""
    model = nitro.Store()
    _write(model, "nsmode", "enable", {"mode": ["MBF"]})
    # Hand-made: our prefix without a marker, and another operator's marker.
    _write(model, "server", "add", {"name": "dsr-manual", "ipaddress": "198.51.100.250", "comment": "by hand"})
    _write(model, "service", "add", {"name": "dsr-manual-svc", "servername": "dsr-manual", "servicetype": "ANY",
                                     "port": 80})
    _write(model, "lbvserver", "add", {"name": "dsr-other_x_80", "servicetype": "ANY", "ipv46": "203.0.113.9",
                                       "port": 80, "m": "MAC", "comment": "dsr-operator:other:uid-x"})
    _write(model, "lbvserver_service_binding", "bind", {"name": "dsr-other_x_80", "servicename": "dsr-manual-svc"})
    # One of our names (the server of a backend host), made by hand without a marker.
    _write(model, "server", "add", {"name": f"dsr-{SQUATTED}", "ipaddress": SQUATTED})
    handmade = frozenset({("server", "dsr-manual"), ("service", "dsr-manual-svc"), ("lbvserver", "dsr-other_x_80"),
                          ("server", f"dsr-{SQUATTED}")})
    before = judge.snapshot(model.dump(), handmade)

    owner, shared = f"dsr-operator:{OP}:uid-web", f"dsr-operator:{OP}:shared"
    _write(model, "lbmonitor", "add", {"monitorname": "dsr-t_web_tcp", "type": "TCP", "interval": 5,
                                       "resptimeout": 2, "retries": 3, "destip": VIP, "destport": 80,
                                       "transparent": "YES", "comment": owner})
    _vserver(model, "web", VIP, owner)
    for host in HOSTS:
        _write(model, "server", "add", {"name": f"dsr-{host}", "ipaddress": host, "comment": shared})
        _write(model, MEMBERS, "bind", {"servicegroupname": "dsr-t_web_80_sg", "servername": f"dsr-{host}", "port": 80})
    _write(model, "nsconfig", "save", {})
    capture = judge.Capture(
        operator_id=OP,
        dsrservices=(
            judge.DsrObject.from_api(_dsr("web", "uid-web", WEB_SPEC)),
            judge.DsrObject.from_api(_dsr("broken", "uid-broken", BROKEN_SPEC, "Stalled", "InvalidSpec",
                                          created="2025-01-02T00:00:00Z")),
        ),
        netscaler=model.dump(),
        handmade=handmade,
        handmade_snapshot=before,
        journal=tuple(c.as_json() for c in model.journal),
        operator_logs={"operator-1": "Saved NetScaler configuration\n"},
        metrics={"operator-1": "dsr_bound_backends{namespace=\"t\",name=\"web\"} 2.0\n"},
        secrets={"NITRO password": PASSWORD, "kube token": TOKEN},
    )
    return model, capture


def _failed(capture: judge.Capture) -> dict[str, tuple[str, ...]]:
    return {v.name: v.evidence for v in judge.judge(capture) if not v.ok}


def test_a_correct_state_passes_every_invariant() -> None:
    _, capture = _world()
    assert _failed(capture) == {}


def _redo(model: nitro.Store, capture: judge.Capture, *, save: bool = True, **changes: Any) -> judge.Capture:
    if save:
        _write(model, "nsconfig", "save", {})
    return dataclasses.replace(capture, netscaler=model.dump(), journal=tuple(c.as_json() for c in model.journal),
                               **changes)


def _missing_binding(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    model.execute("POST", MEMBERS, "unbind", {"servicegroupname": "dsr-t_web_80_sg", "servername": f"dsr-{HOSTS[1]}",
                                              "port": 80})
    return _redo(model, capture)


def _shared_monitor(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    """Another DsrService's monitor judges web's backends: one tenant could take the other's down."""
    _write(model, "lbmonitor", "add", {"monitorname": "dsr-t_b_tcp", "type": "TCP", "interval": 5, "resptimeout": 2,
                                       "comment": f"dsr-operator:{OP}:uid-broken"})
    _write(model, "servicegroup_lbmonitor_binding", "bind", {"servicegroupname": "dsr-t_web_80_sg",
                                                             "monitor_name": "dsr-t_b_tcp"})
    return _redo(model, capture)


def _old_service_left(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    """A shared service of an earlier version, still bound: its backend is served twice."""
    _write(model, "service", "add", {"name": f"dsr-{HOSTS[0]}_80", "servername": f"dsr-{HOSTS[0]}",
                                     "servicetype": "ANY", "port": 80, "usip": "YES", "healthmonitor": "YES",
                                     "comment": f"dsr-operator:{OP}:shared"})
    _write(model, "lbvserver_service_binding", "bind", {"name": "dsr-t_web_80", "servicename": f"dsr-{HOSTS[0]}_80"})
    return _redo(model, capture)


def _orphan(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbvserver", "add", {"name": "dsr-t_gone_80", "servicetype": "ANY", "ipv46": "192.0.2.99",
                                       "port": 80, "m": "MAC", "comment": f"dsr-operator:{OP}:uid-gone"})
    return _redo(model, capture)


def _orphan_monitor_binding(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbmonitor", "add", {"monitorname": "dsr-t_gone_ping", "type": "PING", "interval": 5,
                                       "resptimeout": 2, "comment": f"dsr-operator:{OP}:uid-gone"})
    _write(model, "servicegroup_lbmonitor_binding", "bind",
           {"servicegroupname": "dsr-t_web_80_sg", "monitor_name": "dsr-t_gone_ping"})
    return _redo(model, capture)


def _handmade_changed(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbvserver", "update", {"name": "dsr-other_x_80", "lbmethod": "SOURCEIPHASH"})
    return _redo(model, capture)


def _handmade_bound(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbvserver_service_binding", "bind", {"name": "dsr-t_web_80", "servicename": "dsr-manual-svc"})
    return _redo(model, capture)


def _wrong_lbmethod(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbvserver", "update", {"name": "dsr-t_web_80", "lbmethod": "LEASTCONNECTION"})
    return _redo(model, capture)


def _monitor_port_left(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    spec = {**WEB_SPEC, "healthCheck": {**WEB_SPEC["healthCheck"], "port": None}}  # type: ignore[dict-item]
    web = dataclasses.replace(capture.dsrservices[0], spec=spec)
    return _redo(model, capture, dsrservices=(web, capture.dsrservices[1]))


def _two_vservers_on_one_vip(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbvserver", "add", {"name": "dsr-t_other_80", "servicetype": "ANY", "ipv46": "192.0.2.98",
                                       "port": 80, "m": "MAC", "comment": f"dsr-operator:{OP}:uid-web"})
    # The simulator refuses a second vserver on an IP:port, as a box does: corrupt its records directly.
    model.objects["lbvserver"][("dsr-t_other_80",)]["ipv46"] = VIP
    return _redo(model, capture)


def _credential_in_log(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    logs = {"operator-1": f"Request POST login failed: body {{'password': '{PASSWORD}'}}\n"}
    return _redo(model, capture, operator_logs=logs)


def _token_in_metrics(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    return _redo(model, capture, metrics={"operator-1": f'dsr_x{{token="{TOKEN}"}} 1\n'})


def _traceback(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    log = "Reconcile of t/web failed\nTraceback (most recent call last):\n  File \"x.py\"\nKeyError: 'x'\n"
    return _redo(model, capture, operator_logs={"operator-1": log})


def _write_while_secondary(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    """Two requests in one Secondary spell: the second was sent without asking (one alone is the race a check
    before each stage cannot close; `test_one_write_racing_a_flip_to_secondary_is_tolerated`)."""
    model.set_ha_state("Secondary")
    _write(model, "lbvserver", "update", {"name": "dsr-t_web_80", "lbmethod": "ROUNDROBIN"})
    _write(model, "lbvserver", "update", {"name": "dsr-t_web_80", "lbmethod": "ROUNDROBIN"})
    model.set_ha_state("Primary")
    return _redo(model, capture)


def _unsaved(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    _write(model, "lbvserver", "update", {"name": "dsr-t_web_80", "lbmethod": "ROUNDROBIN"})
    return _redo(model, capture, save=False)


def _not_ready(model: nitro.Store, capture: judge.Capture) -> judge.Capture:
    body = _dsr("web", "uid-web", WEB_SPEC, "Stalled", "BlastRadiusGuard", generation=4)
    body["metadata"]["generation"] = 5
    web = judge.DsrObject.from_api(body)
    return _redo(model, capture, dsrservices=(web, capture.dsrservices[1]))


NETSCALER = "netscaler-holds-exactly-the-specs"
CORRUPTIONS: dict[str, tuple[Callable[[nitro.Store, judge.Capture], judge.Capture], str, str]] = {
    "missing binding": (_missing_binding, "netscaler-holds-exactly-the-specs",
                        f"missing member uid-web:{VIP}:80:{HOSTS[1]}"),
    "another tenant's monitor": (_shared_monitor, NETSCALER,
                                 "servicegroup dsr-t_web_80_sg of uid-web has monitor dsr-t_b_tcp of uid-broken"),
    "a shared service left": (_old_service_left, NETSCALER,
                              f"extra service (backends are servicegroup members) {HOSTS[0]}:80"),
    "orphan object": (_orphan, "netscaler-holds-exactly-the-specs", "orphan lbvserver uid-gone:192.0.2.99:80"),
    "orphan monitor binding": (_orphan_monitor_binding, "netscaler-holds-exactly-the-specs",
                               "servicegroup dsr-t_web_80_sg of uid-web has monitor dsr-t_gone_ping of uid-gone"),
    "hand-made object changed": (_handmade_changed, "hand-made-objects-untouched", "lbvserver/dsr-other_x_80 changed"),
    "hand-made object bound": (_handmade_bound, "hand-made-objects-untouched",
                               "lbvserver_service_binding/dsr-t_web_80/dsr-manual-svc is new"),
    "wrong lbmethod": (_wrong_lbmethod, "netscaler-holds-exactly-the-specs", "'lbmethod': 'LEASTCONNECTION (spec"),
    "monitor field not unset": (_monitor_port_left, "netscaler-holds-exactly-the-specs", "'destport': '80"),
    "two vservers on one VIP:port": (_two_vservers_on_one_vip, "netscaler-holds-exactly-the-specs",
                                     f"2 vservers on {VIP}:80 ANY"),
    "credential in a log line": (_credential_in_log, "no-credential-leaked", "NITRO password appears in log"),
    "token in metrics": (_token_in_metrics, "no-credential-leaked", "kube token appears in metrics"),
    "traceback": (_traceback, "no-traceback-in-operator-logs", "KeyError"),
    "write while secondary": (_write_while_secondary, "no-write-while-secondary", "while Secondary"),
    "configuration unsaved": (_unsaved, "configuration-saved", "configchanged is True"),
    "operator crashed": (lambda m, c: _redo(m, c, unexpected_exits=("operator-a-2 exited by itself with code 1",)),
                         "no-process-exits-by-itself", "operator-a-2 exited by itself"),
    "not ready at its generation": (_not_ready, "statuses-ready-or-stalled-with-reason",
                                    "t/web: status is not of the current generation"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_the_judge_catches(corruption: str) -> None:
    corrupt, invariant, evidence = CORRUPTIONS[corruption]
    model, capture = _world()
    failed = _failed(corrupt(model, capture))
    also = {NETSCALER} if corruption == "hand-made object bound" else set()  # a binding to a foreign service
    assert set(failed) == {invariant} | also, failed
    assert any(evidence in line for line in failed[invariant]), failed[invariant]


def test_an_invalid_spec_keeps_its_last_good_configuration() -> None:
    """`broken` turned invalid after converging on its last good spec: that configuration must stay."""
    _, capture = _world()
    failed = _failed(dataclasses.replace(capture, last_good={"uid-broken": WEB_SPEC | {"vip": "192.0.2.11"}}))
    assert set(failed) == {NETSCALER}
    assert set(failed[NETSCALER]) == {
        "missing lbmonitor of owner uid-broken", "missing lbvserver uid-broken:192.0.2.11:80",
        "missing vserver with its servicegroup uid-broken:192.0.2.11:80",
        "missing servicegroup with its own monitor uid-broken:192.0.2.11:80",
        *(f"missing member uid-broken:192.0.2.11:80:{h}" for h in HOSTS),
    }


def test_the_younger_of_two_dsrservices_on_one_vip_port_is_stalled() -> None:
    _, capture = _world()
    younger = judge.DsrObject.from_api(_dsr("copy", "uid-copy", WEB_SPEC, "Stalled", "VipConflict",
                                            created="2025-02-01T00:00:00Z"))
    assert _failed(dataclasses.replace(capture, dsrservices=(*capture.dsrservices, younger))) == {}
    ready = judge.DsrObject.from_api(_dsr("copy", "uid-copy", WEB_SPEC, created="2025-02-01T00:00:00Z"))
    failed = _failed(dataclasses.replace(capture, dsrservices=(*capture.dsrservices, ready)))
    assert list(failed) == ["statuses-ready-or-stalled-with-reason"]
    assert "t/copy: should be VipConflict" in failed["statuses-ready-or-stalled-with-reason"][0]


def test_a_backend_whose_server_name_is_taken_by_hand_is_a_name_conflict() -> None:
    model, capture = _world()
    squat = {**WEB_SPEC, "vip": "192.0.2.12", "backends": {"static": [{"name": "m", "address": SQUATTED}]}}
    body = _dsr("squat", "uid-squat", squat, "Stalled", "NameConflict", created="2025-03-01T00:00:00Z")
    capture = dataclasses.replace(capture, dsrservices=(*capture.dsrservices, judge.DsrObject.from_api(body)))
    # What does not depend on the taken name is still required: its monitor, vserver and servicegroup.
    assert _failed(capture) == {NETSCALER: ("missing lbvserver uid-squat:192.0.2.12:80",
                                            "missing lbmonitor of owner uid-squat",
                                            "missing vserver with its servicegroup uid-squat:192.0.2.12:80",
                                            "missing servicegroup with its own monitor uid-squat:192.0.2.12:80")}
    _write(model, "lbmonitor", "add", {"monitorname": "dsr-t_squat_tcp", "type": "TCP", "interval": 5,
                                       "resptimeout": 2, "retries": 3, "destip": "192.0.2.12", "destport": 80,
                                       "transparent": "YES", "comment": f"dsr-operator:{OP}:uid-squat"})
    _vserver(model, "squat", "192.0.2.12", f"dsr-operator:{OP}:uid-squat")
    assert _failed(_redo(model, capture)) == {}


def test_one_write_racing_a_flip_to_secondary_is_tolerated() -> None:
    """The box turns Secondary between the operator's question and its next stage: that one bulk request
    lands there (unavoidable), the next question stops the rest; two separate spells, one request each."""
    model, capture = _world()
    for _ in range(2):
        model.set_ha_state("Secondary")
        model.execute_bulk("PUT", "lbvserver", "update", [{"name": "dsr-t_web_80", "lbmethod": "ROUNDROBIN"}] * 2,
                           "continue")
        model.set_ha_state("Primary")
        _write(model, "lbvserver", "update", {"name": "dsr-t_web_80", "lbmethod": "ROUNDROBIN"})
    assert _failed(_redo(model, capture)) == {}
