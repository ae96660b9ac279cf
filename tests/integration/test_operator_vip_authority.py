"""Who may claim which VIP: with DSR_REQUIRE_VIP_POOL (the chart's default), only a VIP in a DsrVipPool
that admits the DsrService's namespace is served. The operator in-process, the emulator, the simulator."""

from __future__ import annotations

from typing import Any

from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

from dsr_lab import simctl
from dsr_operator import kube as kubeapi
from tests.conftest import KubeHandle
from tests.integration.test_operator import VIP, Cluster, converged, running_operator
from tests.integration.test_operator_loadbalancer import pool
from tests.support.waiting import eventually


async def reason(cluster: Cluster, wanted: str) -> dict[str, Any] | None:
    ready = await cluster.condition("Ready")
    return ready if ready.get("reason") == wanted else None


async def test_a_vip_is_served_only_while_a_pool_admits_its_namespace(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.client.create(Namespace.from_dict({"metadata": {"name": "shop", "labels": {"team": "shop"}}}))
    await cluster.slice({"n1": "ready"})
    async with running_operator(kube, nitro_sim, require_vip_pool=True):
        # No pool holds the VIP: Stalled with the reason, nothing on NetScaler, no VIP asked of the node.
        await cluster.dsrservice()
        refused = await eventually(lambda: reason(cluster, "VipNotAllowed"))
        assert refused["status"] == "False"
        assert refused["message"] == (f"{VIP} is in no usable DsrVipPool: this operator serves a VIP only from "
                                      "a DsrVipPool that admits the namespace")
        assert (await cluster.condition("Stalled")).get("status") == "True"
        assert await cluster.nitro("lbvserver") == []
        assert await cluster.nodeconfig("n1") is None

        # The admin adds a pool for the namespace: the same DsrService is served, no change of its own needed.
        await pool(cluster, "shop", "192.0.2.0/28", autoAssign=False,
                   namespaceSelector={"matchLabels": {"team": "shop"}})
        await converged(cluster, ("n1",))
        assert [v["ipv46"] for v in await cluster.nitro("lbvserver")] == [VIP]

        # The namespace no longer matches: refused again, but what serves stays (its last good configuration).
        await cluster.client.patch(Namespace, "shop", {"metadata": {"labels": {"team": "other"}}},
                                   patch_type=PatchType.MERGE)
        refused = await eventually(lambda: reason(cluster, "VipNotAllowed"))
        assert "whose namespaceSelector excludes this namespace" in refused["message"]
        assert await cluster.bound() == ["dsr-198.51.100.1_80"]


async def test_a_static_backend_of_another_namespace_is_refused_until_that_namespace_lets_it_go(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    static = {"backends": {"static": [{"name": "db", "address": "10.9.0.5"}]}}
    async with running_operator(kube, nitro_sim, resync_seconds=600):  # only events wake them
        await cluster.dsrservice("db", namespace="team-b", vip="192.0.2.31", **static)
        await eventually(lambda: condition_of(cluster, "db", "team-b", "True"))
        # Another tenant lists team-b's backend, with a health check that always fails.
        await cluster.dsrservice("thief", namespace="team-a", vip="192.0.2.32", **static,
                                 healthCheck={"type": "TCP", "port": 9})
        refused = await eventually(lambda: condition_of(cluster, "thief", "team-a", "False", "BackendNotAllowed"))
        assert refused["message"].startswith("10.9.0.5 is a backend of DsrService team-b/db")
        groups = await cluster.nitro("servicegroup")
        assert [g["servicegroupname"] for g in groups] == ["dsr-team-b_db_80_sg"]  # nothing of the thief's
        # team-b lets it go: the waiting DsrService is served at once.
        await cluster.client.delete(kubeapi.DsrService, "db", namespace="team-b")
        await eventually(lambda: condition_of(cluster, "thief", "team-a", "True"), timeout=30)


async def condition_of(cluster: Cluster, name: str, namespace: str, status: str,
                       reason: str | None = None) -> dict[str, Any] | None:
    obj = await cluster.client.get(kubeapi.DsrService, name, namespace=namespace)
    body = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    ready = next((c for c in (body.get("status") or {}).get("conditions") or () if c["type"] == "Ready"), {})
    if ready.get("status") != status or (reason is not None and ready.get("reason") != reason):
        return None
    return ready
