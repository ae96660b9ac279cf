"""The chart's two operator replicas against the real API server: one leads on the Lease, one stands by.

Both are `dsr-operator run` with the chart's environment (leader election on the chart's Lease, in the
release's namespace, as its ServiceAccount) and the NITRO simulator. What a user sees: with the
default two replicas the DsrService converges; stopping the leader hands over at once (the Lease is
released); a SIGKILLed leader is replaced once its Lease runs out; a restarted leader takes its own
Lease back without waiting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.controlplane import operator_rig as rig
from tests.controlplane.conftest import ControlPlane
from tests.support.waiting import eventually_sync

pytestmark = pytest.mark.controlplane

OPERATOR_ID = "lease"
VIP = "203.0.113.70"


@dataclasses.dataclass
class Pair:
    cp: ControlPlane
    chart: rig.ChartInstall
    namespace: str
    sim: rig.SimProcess
    a: rig.OperatorProcess
    b: rig.OperatorProcess

    def lease(self) -> dict[str, Any]:
        got: dict[str, Any] = self.cp.kc_json("get", "lease", self.chart.lease, "-n", self.chart.namespace)
        return got

    def holder(self) -> str | None:
        try:
            return self.lease()["spec"].get("holderIdentity")
        except Exception:
            return None

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            if self.sim.proc is not None:
                self.sim.proc.check_alive()
            return predicate()

        return eventually_sync(check, timeout=timeout, what=what, interval=0.2)

    def dsr(self) -> dict[str, Any]:
        status, body = self.cp.request("GET", f"{rig.DSR_PATH}/namespaces/{self.namespace}/dsrservices/web")
        assert status == 200, body
        return dict(body)

    def ready_at_generation(self) -> bool:
        body = self.dsr()
        status = body.get("status") or {}
        ready = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
        return (bool(ready) and ready[0].get("status") == "True"
                and status.get("observedGeneration") == body["metadata"]["generation"])

    def servers(self) -> set[str]:
        return {s.get("ipaddress", "") for s in self.sim.config().get("objects", {}).get("server", [])}

    def set_backends(self, *hosts: str) -> None:
        patch = {"spec": {"backends": {"static": [{"name": f"h{i}", "address": h} for i, h in enumerate(hosts)]}}}
        status, body = self.cp.request("PATCH", f"{rig.DSR_PATH}/namespaces/{self.namespace}/dsrservices/web",
                                       patch, content_type="application/merge-patch+json")
        assert status == 200, body


def _pod(op: rig.OperatorProcess) -> str:
    return op.env["DSR_POD_NAME"]


@pytest.fixture(scope="module")
def pair(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    with rig.staged(controlplane, tmp_path_factory.mktemp("lease"), "lease") as stage:
        a, b = (stage.operator(name, OPERATOR_ID, resync_seconds="600", default_drain_seconds="0")
                for name in ("operator-a", "operator-b"))
        yield Pair(controlplane, stage.chart, stage.namespace, stage.sim, a, b)


def test_two_replicas_one_leads_and_the_dsrservice_converges(pair: Pair) -> None:
    pair.a.start()
    pair.a.wait_live()
    pair.wait(lambda: pair.holder() == _pod(pair.a), 60, "operator-a to take the Lease")
    pair.b.start()
    pair.b.wait_live()
    pair.wait(lambda: "Standing by: Lease" in pair.b.log(), 60, "operator-b to stand by")

    body = {"apiVersion": f"{rig.GROUP}/{rig.VERSION}", "kind": "DsrService",
            "metadata": {"name": "web", "namespace": pair.namespace},
            "spec": {"vip": VIP, "ports": [80], "drainSeconds": 0,
                     "backends": {"static": [{"name": "h0", "address": "198.51.100.71"}]}}}
    status, answer = pair.cp.request("POST", f"{rig.DSR_PATH}/namespaces/{pair.namespace}/dsrservices", body)
    assert status == 201, answer
    pair.wait(pair.ready_at_generation, 90, "the DsrService Ready with two replicas running")
    assert "198.51.100.71" in pair.servers()
    assert pair.holder() == _pod(pair.a)
    assert "Leading: this replica" not in pair.b.log(), "the stand-by reconciled while the leader held the Lease"


def test_stopping_the_leader_hands_over_at_once(pair: Pair) -> None:
    transitions = pair.lease()["spec"].get("leaseTransitions", 0)
    pair.a.stop()  # SIGTERM, as a Pod deletion or a rolling update sends
    assert "Released Lease" in pair.a.log()
    pair.wait(lambda: pair.holder() == _pod(pair.b), 30, "operator-b to take the released Lease")
    assert pair.lease()["spec"]["leaseTransitions"] == transitions + 1

    pair.set_backends("198.51.100.71", "198.51.100.72")
    pair.wait(pair.ready_at_generation, 60, "the change reconciled by the new leader")
    assert "198.51.100.72" in pair.servers()


def test_a_killed_leader_is_replaced_once_its_lease_runs_out(pair: Pair) -> None:
    pair.a.start()  # the old leader comes back as the stand-by
    pair.a.wait_live()
    pair.wait(lambda: pair.a.log().count("Standing by: Lease") >= 1, 60, "operator-a to stand by")
    pair.b.kill()  # SIGKILL: no release; the Lease must run out (15 s) before operator-a may lead
    pair.wait(lambda: pair.holder() == _pod(pair.a), 60, "operator-a to take the expired Lease")

    pair.set_backends("198.51.100.71", "198.51.100.73")
    pair.wait(pair.ready_at_generation, 60, "the change reconciled after the take-over")
    assert "198.51.100.73" in pair.servers()


def test_a_restarted_leader_takes_its_own_lease_back(pair: Pair) -> None:
    """A container restart keeps the Pod's name: the new process is the holder and leads without waiting."""
    assert pair.holder() == _pod(pair.a)
    transitions = pair.lease()["spec"]["leaseTransitions"]
    pair.a.kill()
    pair.a.start()
    pair.a.wait_live()
    pair.wait(lambda: pair.a.log().count("Leading: this replica") >= 1, 60, "the restarted leader to lead")
    assert "Standing by" not in pair.a.log()
    assert pair.lease()["spec"]["leaseTransitions"] == transitions
