"""Who may claim which VIP: with DSR_REQUIRE_VIP_POOL (the chart's default), only a VIP in a DsrVipPool
that admits the DsrService's namespace is served. The operator in-process, the emulator, the simulator."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

from dsr_operator.simulator import server
from tests.conftest import KubeHandle
from tests.integration.test_operator import VIP, Cluster, converged, eventually, running_operator
from tests.integration.test_operator_loadbalancer import pool


async def reason(cluster: Cluster, wanted: str) -> dict[str, Any] | None:
    ready = await cluster.condition("Ready")
    return ready if ready.get("reason") == wanted else None


async def test_a_vip_is_served_only_while_a_pool_admits_its_namespace(
    cluster: Cluster, kube: KubeHandle, nitro_sim: server.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    await cluster.client.create(Namespace.from_dict({"metadata": {"name": "shop", "labels": {"team": "shop"}}}))
    await cluster.slice({"n1": "ready"})
    async with running_operator(kube, nitro_sim, monkeypatch, require_vip_pool=True):
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
