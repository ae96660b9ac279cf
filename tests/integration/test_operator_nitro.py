"""The operator against what real appliances do: expired sessions inside bulk requests, normalised
monitor intervals, an HA pair that fails over, drains that end early.

The resync is set far away wherever only the behaviour under test may bring the outcome.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from dsr_lab import simctl
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, converged, nitro_config, running_operator, serving
from tests.support.waiting import eventually

FAR = 600.0


def saved(cluster: Cluster) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await nitro_config(cluster))["configchanged"] is False

    return check


async def test_bulk_writes_on_an_expired_session_really_reach_netscaler(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",), resync_seconds=FAR):
        await eventually(saved(cluster))  # nothing in flight: the next request is the bulk write
        await nitro_sim.faults(expireSessions=True)  # the next bulk write is answered 200 / errorcode 444
        await cluster.slice({"n1": "ready", "n2": "ready"})
        await converged(cluster, ("n1", "n2"))  # read from the box, not from the operator's cache
        assert {s["name"] for s in await cluster.nitro("server")} == {"dsr-198.51.100.1", "dsr-198.51.100.2"}
        members = await cluster.nitro("servicegroup_servicegroupmember_binding", "/dsr-shop_web_80_sg")
        assert sorted(m["servername"] for m in members) == ["dsr-198.51.100.1", "dsr-198.51.100.2"]


async def test_a_monitor_interval_of_a_minute_converges_and_stays_unchanged(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    spec = {"healthCheck": {"type": "TCP", "intervalSeconds": 60, "timeoutSeconds": 2}}
    async with serving(cluster, kube, nitro_sim, ("n1",), spec=spec, resync_seconds=0.5):
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
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    b2 = "dsr-shop_web_80_sg/dsr-198.51.100.2:80"  # a member, as NetScaler's stat names it
    async with serving(cluster, kube, nitro_sim, ("n1", "n2"), spec={"drainSeconds": 600},
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
        assert await cluster.configured() == {"dsr-198.51.100.1_80"}


async def _no_drains(cluster: Cluster) -> bool:
    status = (await cluster.dsr()).get("status") or {}
    return status.get("draining") == [] and (await cluster.condition("Ready")).get("status") == "True"


@pytest.fixture
async def pair() -> AsyncIterator[simctl.Pair]:
    async with simctl.running_pair(users={"nsroot": "nsroot"}) as p:
        yield p


async def test_a_failover_in_the_middle_of_a_change_loses_and_repeats_nothing(
    kube: KubeHandle, pair: simctl.Pair, unused_tcp_port: int
) -> None:
    a, b = pair.a, pair.b
    cluster = Cluster(kube, a, "nsroot")
    for i in (1, 2, 3):
        await cluster.node(f"n{i}", f"198.51.100.{i}")
    await cluster.service()
    async with serving(cluster, kube, a, ("n1",), netscaler={"urls": [a.url, b.url]}, resync_seconds=FAR,
                       metrics_port=unused_tcp_port):
        await eventually(saved(cluster))
        assert ((await cluster.dsr())["status"]["netscaler"]) == {"primary": a.url}
        start = max(e["seq"] for e in await a.journal())
        # The primary fails over right after it applied the next write request (the first stage of
        # the change below), before it answers it.
        await a.failover(after_writes=1)
        await cluster.slice({"n1": "ready", "n2": "ready", "n3": "ready"})
        cluster.sim = b  # from now on, read what the new primary holds
        await converged(cluster, ("n1", "n2", "n3"))
        await eventually(saved(cluster))
        status = (await cluster.dsr())["status"]
        assert status["netscaler"] == {"primary": b.url}

        # Which writes each node took, and in which role (its role transitions carry the journal's seq).
        [a_became_secondary] = [t for t in (await a.ha())["transitions"] if t["state"] == "Secondary"]
        [b_became_primary] = [t for t in (await b.ha())["transitions"] if t["state"] == "Primary"]
        on_a = [e for e in await a.journal(since=start)]
        on_b = await b.journal()
        assert [e for e in on_a if e["seq"] > a_became_secondary["seq"]] == [], "written to a secondary"
        assert [e for e in on_b if e["seq"] <= b_became_primary["seq"]] == [], "written to a secondary"

        def steps(entries: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
            return [(e["resource"], e["action"], json.dumps(e["key"], sort_keys=True)) for e in entries
                    if e["resource"] != "nsconfig"]

        before, after = steps(on_a), steps(on_b)
        assert before == [("server", "add", json.dumps({"name": f"dsr-198.51.100.{i}"})) for i in (2, 3)]
        every = before + after
        assert len(every) == len(set(every)), f"a change was applied twice: {every}"
        assert sorted((r, a_) for r, a_, _ in after) == sorted(
            [("servicegroup_servicegroupmember_binding", "bind")] * 2
        ), after  # the rest of the change, once, on the new primary
        # Nothing lost: the new primary holds the whole change, and the new secondary has it too.
        for node in (a, b):
            assert sorted(node.store.objects["server"]) == [(f"dsr-198.51.100.{i}",) for i in (1, 2, 3)]
            assert len(node.store.objects["servicegroup_servicegroupmember_binding"]) == 3
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as r:
            text = await r.text()
        assert f'dsr_netscaler_ha_primary{{url="{b.url}"}} 1.0' in text, text
        assert f'dsr_netscaler_ha_primary{{url="{a.url}"}} 0.0' in text
        assert "dsr_netscaler_failovers_total 1.0" in text


async def test_an_ha_secondary_given_alone_is_never_written(
    kube: KubeHandle, pair: simctl.Pair
) -> None:
    cluster = Cluster(kube, pair.b, "nsroot")
    await cluster.node("n1", "198.51.100.1")
    await cluster.service()
    await cluster.slice({"n1": "ready"})
    async with running_operator(kube, pair.b):
        await cluster.dsrservice()

        async def refused() -> bool:
            ready = await cluster.condition("Ready")
            return ready.get("reason") == "NetScalerUnreachable" and "not the HA primary" in ready["message"]

        await eventually(refused)
    assert await pair.b.journal() == [] and await pair.a.journal() == []
