"""`dsr-operator status`'s pure part: from what was read to one row per (DsrService, port, backend)."""

from __future__ import annotations

import io
from typing import Any

from dsr_operator import status


def _dsr(name: str, spec: dict[str, Any], conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
            "metadata": {"name": name, "namespace": "shop", "uid": f"uid-{name}"}, "spec": spec,
            "status": {"conditions": conditions or []}}  # fmt: skip


STATIC = {"vip": "192.0.2.20", "ports": [80, 443],
          "backends": {"static": [{"name": "pi-1", "address": "198.51.100.21"}]}}  # fmt: skip


def test_static_backend_bound_on_one_port_and_not_created_on_the_other() -> None:
    snapshot = status.Snapshot(
        dsrservices=[_dsr("pi", STATIC)], nodeconfigs={}, node_addresses={},
        bindings={"dsr-shop_pi_80": ["dsr-198.51.100.21_80"], "dsr-shop_pi_443": []},
        services={"dsr-198.51.100.21_80": {"ipaddress": "198.51.100.21", "svrstate": "UP"}},
    )  # fmt: skip
    rows = status.report(snapshot)
    assert [(r.port, r.address, r.node, r.netscaler, r.node_vip) for r in rows] == [
        ("80", "198.51.100.21", "static pi-1", "bound, UP", "- (static host)"),
        ("443", "198.51.100.21", "static pi-1", "not created", "- (static host)"),
    ]


def test_unreachable_netscaler_and_a_dsrservice_without_backends_still_report() -> None:
    service_backed = {"vip": "192.0.2.30", "ports": ["*"], "backends": {"service": "web"},
                      "healthCheck": {"type": "PING"}}  # fmt: skip
    ready = [{"type": "Ready", "status": "False", "reason": "NoReadyBackends"}]
    snapshot = status.Snapshot(
        dsrservices=[_dsr("web", service_backed, ready), _dsr("pi", STATIC)], nodeconfigs={}, node_addresses={},
        bindings={}, services={}, netscaler_error="connection refused",
    )  # fmt: skip
    rows = status.report(snapshot)
    assert [(r.dsrservice, r.port, r.address, r.netscaler, r.last_change) for r in rows] == [
        ("shop/pi", "80", "198.51.100.21", "unknown (NetScaler unreachable)", ""),
        ("shop/pi", "443", "198.51.100.21", "unknown (NetScaler unreachable)", ""),
        ("shop/web", "any", "-", "unknown (NetScaler unreachable)", "no backend (NoReadyBackends)"),
    ]
    out = io.StringIO()
    status.render(rows, out)
    assert out.getvalue().splitlines()[0].split() == ["DSRSERVICE", "PORT", "BACKEND", "NODE", "NETSCALER", "NODE",
                                                      "VIP", "LAST", "CHANGE"]  # fmt: skip


def test_a_node_whose_agent_is_behind_the_spec_says_so() -> None:
    spec = {"vip": "192.0.2.40", "ports": [80], "backends": {"service": "web"}}
    config = {"metadata": {"name": "n1", "generation": 3},
              "spec": {"vips": ["192.0.2.40"]},
              "status": {"observedGeneration": 2, "appliedVips": ["192.0.2.40"],
                         "conditions": [{"type": "Ready", "status": "True",
                                         "lastTransitionTime": "2026-12-01T10:00:00Z"}]}}  # fmt: skip
    snapshot = status.Snapshot(
        dsrservices=[_dsr("web", spec)], nodeconfigs={"n1": config}, node_addresses={"198.51.100.1": "n1"},
        bindings={"dsr-shop_web_80": []}, services={},
    )  # fmt: skip
    (row,) = status.report(snapshot)
    assert (row.node, row.netscaler, row.node_vip) == ("n1", "not created", "applied (agent behind the spec)")
    assert row.last_change == "2026-12-01T10:00:00Z node n1"


def test_an_invalid_spec_is_one_row_saying_so() -> None:
    snapshot = status.Snapshot(dsrservices=[_dsr("bad", {"vip": "not-an-ip", "ports": [80],
                                                         "backends": {"service": "web"}})],
                               nodeconfigs={}, node_addresses={}, bindings={}, services={})  # fmt: skip
    (row,) = status.report(snapshot)
    assert row.dsrservice == "shop/bad" and row.last_change.startswith("invalid spec:")
