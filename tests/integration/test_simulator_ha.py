"""The simulator as an HA pair: roles, sync from primary to secondary, writes on the secondary, failover."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dsr_lab import simctl
from tests.integration.test_simulator import AUTH, Nitro, one
from tests.support.waiting import eventually


@pytest.fixture
async def pair() -> AsyncIterator[simctl.Pair]:
    async with simctl.running_pair(users={"nsroot": "nsroot"}) as p:
        yield p


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def server_body(name: str, ip: str) -> dict[str, Any]:
    return {"server": {"name": name, "ipaddress": ip}}


async def names(nitro: Nitro) -> list[str]:
    return [s["name"] for s in (await nitro.get("server"))[1].get("server", [])]


async def test_each_node_knows_its_role_and_its_peer(pair: simctl.Pair, http: aiohttp.ClientSession) -> None:
    a, b = Nitro(pair.a.url, http), Nitro(pair.b.url, http)
    _, doc = await a.get("hanode")
    assert [(n["id"], n["ipaddress"], n["state"]) for n in doc["hanode"]] == [
        ("0", "127.0.0.1", "Primary"), ("1", "127.0.0.2", "Secondary")]
    assert (await one(b, "hanode/0"))["state"] == "Secondary"
    for node in (a, b):
        cfg = (await node.get("nsconfig"))[1]["nsconfig"]
        assert (cfg["systemtype"], cfg["primaryip"]) == ("HA", "127.0.0.1")
    async with http.get(f"{pair.b.url}/nitro/v1/stat/hanode", headers=AUTH) as r:
        stat = (await r.json())["hanode"]
    assert (stat["hacurstatus"], stat["hacurstate"], stat["hacurmasterstate"]) == ("YES", "UP", "Secondary")


async def test_the_primary_propagates_and_the_secondary_keeps_its_own_writes_until_the_next_sync(
    pair: simctl.Pair, http: aiohttp.ClientSession
) -> None:
    a, b = Nitro(pair.a.url, http), Nitro(pair.b.url, http)
    await a.ok("POST", "server", server_body("web-1", "10.0.0.1"))
    assert await names(b) == ["web-1"]  # there before the primary answered
    assert await pair.b.journal() == []  # a sync is no NITRO write
    # A write on the secondary is accepted (with warning 1028 when asked), stays there, is not propagated...
    status, doc = await b.post("server?warning=yes", server_body("stray", "10.0.0.9"))
    assert (status, doc["errorcode"]) == (209, 0)
    async with http.post(f"{pair.b.url}/nitro/v1/config/server?warning=yes", json=server_body("stray2", "10.0.0.8"),
                         headers=AUTH) as r:
        assert r.reason == "Netscaler specific warning" and r.headers["X-NITRO-WARNING"].startswith("1028 - ")
    assert sorted(await names(b)) == ["stray", "stray2", "web-1"] and await names(a) == ["web-1"]
    assert [e["name"] for e in await pair.b.journal()] == ["stray", "stray2"]
    # ... and is lost at the primary's next change.
    await a.ok("POST", "server", server_body("web-2", "10.0.0.2"))
    assert await names(b) == ["web-1", "web-2"]


async def test_failover_swaps_the_roles_and_the_new_primary_propagates(
    pair: simctl.Pair, http: aiohttp.ClientSession
) -> None:
    a, b = Nitro(pair.a.url, http), Nitro(pair.b.url, http)
    await a.ok("POST", "server", server_body("web-1", "10.0.0.1"))
    info = await pair.a.failover()
    assert info["state"] == "Secondary"
    [added] = await pair.a.journal()
    assert [(t["state"], t["seq"]) for t in info["transitions"]] == [("Primary", 0), ("Secondary", added["seq"])]
    assert (await one(a, "hanode/0"))["state"] == "Secondary"  # the old primary's NSIP still answers
    assert (await one(b, "hanode/0"))["state"] == "Primary"
    assert (await b.get("nsconfig"))[1]["nsconfig"]["primaryip"] == "127.0.0.2"
    await b.ok("POST", "server", server_body("web-2", "10.0.0.2"))
    assert await names(a) == ["web-1", "web-2"]
    assert [t["state"] for t in (await pair.b.ha())["transitions"]] == ["Secondary", "Primary"]


async def test_failover_after_a_number_of_writes(pair: simctl.Pair, http: aiohttp.ClientSession) -> None:
    a = Nitro(pair.a.url, http)
    await pair.a.failover(after_writes=2)
    await a.ok("POST", "server", server_body("web-1", "10.0.0.1"))
    assert pair.a.store.ha_state == "Primary"
    await a.get("server")  # reads do not count
    status, _ = await a.post("server", {"server": {"name": "-bad", "ipaddress": "10.0.0.3"}})
    assert status == 599 and pair.a.store.ha_state == "Primary"  # nor do failed writes
    await a.ok("POST", "server", server_body("web-2", "10.0.0.2"))  # applied on the primary, then it fails over
    assert (pair.a.store.ha_state, pair.b.store.ha_state) == ("Secondary", "Primary")
    assert sorted(pair.b.store.objects["server"]) == [("web-1",), ("web-2",)]
    async with http.post(f"{pair.a.url}/_sim/failover", json={"afterWrites": 0}) as r:
        assert r.status == 400
    async with simctl.running() as alone, http.post(f"{alone.url}/_sim/failover", json={}) as r:
        assert r.status == 404


async def _serve(port: int, peer_port: int, state: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsr_operator.cli", "nitro-sim", "--listen", f"127.0.0.1:{port}",
        "--peer", f"http://127.0.0.1:{peer_port}", "--ha-state", state, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _up(http: aiohttp.ClientSession, url: str) -> None:
    async def answers() -> bool:
        try:
            async with http.get(f"{url}/_sim/ha") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(answers, timeout=30, interval=0.1, what=f"the simulator at {url} to answer")


async def test_two_simulator_processes_form_a_pair(
    http: aiohttp.ClientSession, unused_tcp_port_factory: Any
) -> None:
    ports = unused_tcp_port_factory(), unused_tcp_port_factory()
    procs = [await _serve(ports[0], ports[1], "Primary"), await _serve(ports[1], ports[0], "Secondary")]
    try:
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            await _up(http, url)
        a, b = Nitro(urls[0], http), Nitro(urls[1], http)
        await a.ok("POST", "server", server_body("web-1", "10.0.0.1"))
        assert await names(b) == ["web-1"]
        async with http.post(f"{urls[0]}/_sim/failover", json={}) as r:
            assert r.status == 200 and (await r.json())["state"] == "Secondary"
        assert (await one(b, "hanode/0"))["state"] == "Primary"
        await b.ok("POST", "server", server_body("web-2", "10.0.0.2"))
        assert await names(a) == ["web-1", "web-2"]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), timeout=30)
