"""The chart's Argo CD health check (charts/dsr-operator/argocd/health.lua) in Lua 5.1, as Argo CD runs it.

The objects in argocd_statuses/ were captured from a real kube-apiserver with the operator running
(tests/controlplane/test_operator_realapi.py writes them with DSR_ARGOCD_CAPTURE_DIR set): a DsrService
no operator has seen yet, one waiting for its node's VIP, one whose Service is missing (a wait that heals
by itself), one converged, one that lost a VIP conflict, one whose spec the operator refuses.
"""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest

from tests.support.argocd import evaluate

CAPTURED = pathlib.Path(__file__).parent / "argocd_statuses"


def _captured(state: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((CAPTURED / f"{state}.json").read_text())
    return obj


@pytest.mark.parametrize(
    ("state", "health", "message"),
    [
        ("fresh", "Progressing", "Waiting for the operator to report a status"),
        ("progressing", "Progressing", "WaitingForLoopback: waiting for the node agent to apply the VIP on: "),
        ("healthy", "Healthy", "Converged: 1 of 1 backends bound"),
        ("waiting", "Progressing", "ServiceNotFound: Service "),
        ("degraded", "Degraded", "VipConflict: 192.0.2."),
        ("invalid", "Degraded", "InvalidSpec: "),
    ],
)
def test_captured_objects_get_their_health(state: str, health: str, message: str) -> None:
    result = evaluate(_captured(state))
    assert result["status"] == health
    assert result["message"].startswith(message), result


def test_a_spec_change_the_operator_has_not_seen_is_progressing() -> None:
    obj = _captured("healthy")
    obj["metadata"]["generation"] += 1
    assert evaluate(obj) == {"status": "Progressing", "message": f"Waiting for the operator to observe generation "
                                                                 f"{obj['metadata']['generation']}"}


def _with(obj: dict[str, Any], ctype: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    for condition in obj["status"]["conditions"]:
        if condition["type"] == ctype:
            condition.update(status=status, reason=reason, message=message)
    return obj


def test_serving_while_still_reconciling_is_progressing_and_no_backend_is_degraded() -> None:
    serving = _with(_with(_captured("healthy"), "Reconciling", "True", "Draining", "draining dsr-x_80"),
                    "Ready", "True", "Draining", "draining dsr-x_80")  # fmt: skip
    assert evaluate(serving) == {"status": "Progressing", "message": "Draining: draining dsr-x_80"}
    nothing = _with(_captured("healthy"), "Ready", "False", "NoReadyBackends", "no ready backend")
    assert evaluate(nothing) == {"status": "Degraded", "message": "NoReadyBackends: no ready backend"}
    unreachable = _with(_captured("healthy"), "Stalled", "True", "NetScalerUnreachable", "connect refused")
    assert evaluate(unreachable)["status"] == "Degraded"
