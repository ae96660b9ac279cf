"""The operator against what real appliances do: expired sessions inside bulk requests, normalised
monitor intervals, an HA pair that fails over, drains that end early.

The resync is set far away wherever only the behaviour under test may bring the outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from dsr_operator.simulator import server
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, converged, eventually, nitro_config, serving

FAR = 600.0


@pytest.fixture
async def cluster(kube: KubeHandle, nitro_sim: server.Simulator) -> Cluster:
    c = Cluster(kube, nitro_sim, "nsroot")
    for i in (1, 2, 3):
        await c.node(f"n{i}", f"198.51.100.{i}")
    await c.service()
    return c


def saved(cluster: Cluster) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await nitro_config(cluster))["configchanged"] is False

    return check


async def test_bulk_writes_on_an_expired_session_really_reach_netscaler(
    cluster: Cluster, kube: KubeHandle, nitro_sim: server.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(cluster, kube, nitro_sim, monkeypatch, ("n1",), resync_seconds=FAR):
        await eventually(saved(cluster))  # nothing in flight: the next request is the bulk write
        await nitro_sim.faults(expireSessions=True)  # the next bulk write is answered 200 / errorcode 444
        await cluster.slice({"n1": "ready", "n2": "ready"})
        await converged(cluster, ("n1", "n2"))  # read from the box, not from the operator's cache
        assert {s["name"] for s in await cluster.nitro("server")} == {"dsr-198.51.100.1", "dsr-198.51.100.2"}
        monitors = await cluster.nitro("service_lbmonitor_binding", "/dsr-198.51.100.2_80")
        assert [m["monitor_name"] for m in monitors] == ["dsr-shop_web_tcp"]


async def test_a_monitor_interval_of_a_minute_converges_and_stays_unchanged(
    cluster: Cluster, kube: KubeHandle, nitro_sim: server.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = {"healthCheck": {"type": "TCP", "intervalSeconds": 60, "timeoutSeconds": 2}}
    async with serving(cluster, kube, nitro_sim, monkeypatch, ("n1",), spec=spec, resync_seconds=0.5):
        [monitor] = await cluster.nitro("lbmonitor")
        assert (monitor["interval"], monitor["units3"]) == (1, "MIN")  # as a real box shows it
        await eventually(saved(cluster))
        seq = max(e["seq"] for e in await nitro_sim.journal())
        reads = (await nitro_sim.stats())["byResource"]["lbmonitor"]

        async def resynced_twice() -> bool:
            return (await nitro_sim.stats())["byResource"]["lbmonitor"] >= reads + 2

        await eventually(resynced_twice)
        writes = [(e["resource"], e["action"]) for e in await nitro_sim.journal(since=seq)]
        assert writes == [], "NetScaler was changed although nothing changed"


async def test_a_drain_ends_as_soon_as_netscaler_ends_it_and_status_shows_its_clients(
    cluster: Cluster, kube: KubeHandle, nitro_sim: server.Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    b2 = "dsr-198.51.100.2_80"
    async with serving(cluster, kube, nitro_sim, monkeypatch, ("n1", "n2"), spec={"drainSeconds": 600},
                       resync_seconds=FAR, drain_check_seconds=0.2, max_unbind_percent=100):
        await nitro_sim.set_clients({b2: 3})
        await cluster.slice({"n1": "ready"})

        async def draining() -> list[dict[str, object]]:
            return ((await cluster.dsr()).get("status") or {}).get("draining") or []

        def clients(n: int) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return (await draining()) == [{"service": b2, "state": "GOING OUT OF SERVICE", "clientConnections": n}]

            return check

        await eventually(clients(3))
        assert (await cluster.condition("Ready"))["reason"] == "Draining"
        await nitro_sim.set_clients({b2: 1})
        await eventually(clients(1))
        await nitro_sim.set_clients({b2: 0})  # the last client leaves: NetScaler ends the drain, 600 s early

        async def unbound() -> bool:
            return await cluster.bound() == ["dsr-198.51.100.1_80"]

        await eventually(unbound)
        await eventually(lambda: _no_drains(cluster))
        assert {s["name"] for s in await cluster.nitro("service")} == {"dsr-198.51.100.1_80"}


async def _no_drains(cluster: Cluster) -> bool:
    status = (await cluster.dsr()).get("status") or {}
    return status.get("draining") == [] and (await cluster.condition("Ready")).get("status") == "True"
