"""Service groups in the simulator's dataplane: members get new flows when UP in their group, and the same
backend can be UP in one group and DOWN in another, each judged by its own group's monitors, for real.

Topology (`dsr_lab.lab.Lab`): namespaces client, lb, b1, b2 on one bridge, 10.79.0.0/24, VIP 10.79.0.100
on each backend's `lo` (the node agent's host code puts it there). The simulator runs with its dataplane
in lb and is configured over NITRO directly. Group `a` holds b1:80 with a TCP monitor on the member's
port (the backends serve HTTP on 80); group `b` holds b1:80 and b2:80 with a TCP monitor on port 81,
where nothing listens. Assertions are on state (the dataplane's forwarding choices, who answered);
waits poll with generous limits.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from dsr_lab import simctl
from dsr_lab.lab import Lab
from dsr_operator.agent import core, host
from dsr_operator.simulator import dataplane
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.skipif(shutil.which("nft") is None, reason="the dataplane test needs nftables"),
    pytest.mark.asyncio(loop_scope="module"),
]

AUTH = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nsroot"}
WAIT = 90.0
MEMBER = "servicegroup_servicegroupmember_binding"
MON = "servicegroup_lbmonitor_binding"


class Stand:
    def __init__(self, lab: Lab, sim: simctl.Simulator) -> None:
        self.lab, self.sim = lab, sim

    async def nitro(self, method: str, path: str, body: Any = None) -> None:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, f"{self.sim.url}/nitro/v1/config/{path}", json=body, headers=AUTH) as resp,
        ):
            doc = await resp.json()
            assert resp.status in (200, 201), (method, path, doc)

    async def new_flows(self) -> list[str]:
        vservers = (await self.sim.dataplane())["vservers"]
        return sorted(vservers[0]["newFlows"]) if vservers else []


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stand(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stand]:
    lab = Lab(f"dsrg{os.getpid() % 100000}", backends=("b1", "b2"), net="10.79.0", vip="10.79.0.100")
    tmp = tmp_path_factory.mktemp("dsr-groups")
    try:
        await asyncio.to_thread(lab.up)
        for backend in lab.backends:
            async with host.Host(netns=lab.ns(backend), mode="loopback", state_dir=tmp / backend) as the_host:
                vips, _ = core.parse_vips([lab.vip])
                outcome = await the_host.apply(vips)
            assert outcome.applied == (lab.vip,) and outcome.error is None, outcome
        plane = dataplane.Dataplane(lab.ns("lb"), "eth0")
        async with simctl.running(users={"nsroot": "nsroot"}, dataplane=plane) as sim:
            stand = Stand(lab, sim)
            await stand.nitro("POST", "nsmode?action=enable", {"nsmode": {"mode": ["MBF"]}})
            vs = {"name": "vs", "servicetype": "ANY", "ipv46": lab.vip, "port": 80, "m": "MAC"}
            await stand.nitro("POST", "lbvserver", {"lbvserver": vs})
            for port in (80, 81):
                monitor = {"monitorname": f"tcp{port}", "type": "TCP", "interval": 1, "resptimeout": 500,
                           "units4": "MSEC", "retries": 1, **({"destport": port} if port == 81 else {})}  # fmt: skip
                await stand.nitro("POST", "lbmonitor", {"lbmonitor": monitor})
            for group, backends, monitor in (("a", ("b1",), "tcp80"), ("b", ("b1", "b2"), "tcp81")):
                await stand.nitro("POST", "servicegroup", {"servicegroup": {"servicegroupname": group,
                                                                            "servicetype": "ANY", "usip": "YES"}})
                for backend in backends:
                    member = {"servicegroupname": group, "ip": lab.ip(backend), "port": 80}
                    await stand.nitro("PUT", MEMBER, {MEMBER: member})
                await stand.nitro("PUT", MON, {MON: {"servicegroupname": group, "monitor_name": monitor}})
                await stand.nitro("PUT", "lbvserver_servicegroup_binding",
                                  {"lbvserver_servicegroup_binding": {"name": "vs", "servicegroupname": group}})
            yield stand
    finally:
        await asyncio.to_thread(lab.down)
    assert not any(ns.startswith(lab.prefix) for ns in os.listdir("/run/netns")), "namespaces left behind"


async def test_a_member_gets_new_flows_only_while_up_in_its_group(stand: Stand) -> None:
    lab = stand.lab
    b1, b2 = lab.ip("b1"), lab.ip("b2")
    # b1:80 passes group a's monitor and fails group b's: UP in a, DOWN in b; b2 is DOWN in b.
    want = [f"a/{b1}:80"]
    await eventually(lambda: _eq(stand.new_flows(), want), timeout=WAIT, interval=0.2, what=f"new flows to {want}")
    probes = {(p["service"], p["monitor"]): p for p in (await stand.sim.dataplane())["probes"]}
    assert set(probes) == {(f"a/{b1}:80", "tcp80"), (f"b/{b1}:80", "tcp81"), (f"b/{b2}:80", "tcp81")}
    replies = [await asyncio.to_thread(lab.get, 5.0) for _ in range(10)]
    assert [r.backend for r in replies] == ["b1"] * 10, replies

    # Group b judged by a monitor that passes: its members get new flows too, b2 included.
    await stand.nitro("DELETE", f"{MON}/b?args=monitor_name:tcp81")
    await stand.nitro("PUT", MON, {MON: {"servicegroupname": "b", "monitor_name": "tcp80"}})
    want = sorted([f"a/{b1}:80", f"b/{b1}:80", f"b/{b2}:80"])
    await eventually(lambda: _eq(stand.new_flows(), want), timeout=WAIT, interval=0.2, what=f"new flows to {want}")
    replies = [await asyncio.to_thread(lab.get, 5.0) for _ in range(30)]
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    assert {r.backend for r in replies} == {"b1", "b2"}


async def _eq(got: Any, want: list[str]) -> bool:
    return bool(await got == want)
