"""Drains end when NetScaler ends them: the unbind and the deletion follow the drain, not the resync.

The resync is set far away (600 s) in every test here, so only the operator's own drain tracking
can bring the steps that follow a drain.
"""

from __future__ import annotations

import aiohttp
import httpx2

from dsr_lab import simctl
from dsr_operator import kube as kubeapi
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, backend_steps, serving
from tests.support.waiting import eventually

FAR = 600.0
B2 = "dsr-198.51.100.2_80"


async def test_an_unbind_follows_the_end_of_the_drain_and_the_lag_is_a_metric(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator,
    unused_tcp_port: int,
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1", "n2"), spec={"drainSeconds": 1},
                       resync_seconds=FAR, metrics_port=unused_tcp_port):
        seq = max(e["seq"] for e in await nitro_sim.journal())
        await cluster.slice({"n1": "ready"})
        await eventually(lambda: _only(cluster, ["dsr-198.51.100.1_80"]), timeout=30)
        journal = await nitro_sim.journal(since=seq)
        steps = [*backend_steps(journal), *((e["action"], e["name"]) for e in journal if e["resource"] == "server")]
        disable, unbind = steps.index(("disable", B2)), steps.index(("unbind", B2))
        delete = steps.index(("delete", "dsr-198.51.100.2"))
        assert disable < unbind < delete
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as r:
            text = await r.text()
        assert "dsr_drain_unbind_lag_seconds_count 1.0" in text, text


async def test_deleting_a_dsrservice_waits_for_its_drains_only(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1", "n2"), spec={"drainSeconds": 1},
                       resync_seconds=FAR):
        await cluster.client.delete(kubeapi.DsrService, "web", namespace="shop")

        async def gone() -> bool:
            try:
                await cluster.dsr()
            except httpx2.HTTPStatusError as exc:
                return exc.response.status_code == 404
            return False

        await eventually(gone, timeout=30)
        assert await cluster.nitro("lbvserver") == []
        assert await cluster.configured() == set()
        disables = [b for step, b in backend_steps(await nitro_sim.journal()) if step == "disable"]
        assert sorted(disables) == ["dsr-198.51.100.1_80", B2], "both backends were drained first"


async def _only(cluster: Cluster, services: list[str]) -> bool:
    return await cluster.bound() == services and sorted(await cluster.configured()) == services
