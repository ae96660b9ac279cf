"""DSR end to end: a client reaches the VIP through the simulator's dataplane, the backend answers it directly.

Topology (`dsr_lab.lab.Lab`): namespaces client, lb and b1..b3 on one bridge, 10.77.0.0/24, VIP
10.77.0.100. The NITRO simulator runs with its dataplane in lb; the operator runs in-process against
the Kubernetes emulator; one real node agent process per backend puts the VIP on the backend's `lo`.
Everything is configured from one DsrService and its EndpointSlice; Node InternalIPs are the
backend namespaces' addresses. That scenario, and what serves it, is `dsr_lab.scenario`: the one
`dsr-operator demo-dsr` plays.

One lab serves every test of the module (it takes seconds to build); each test is one act and first
brings the lab to the state it starts from, so any one of them can run alone. Assertions are on order
and state: the simulator's journal (when each write was applied), the dataplane's history (when each
forwarding choice took effect), packet counters, and what each request got. Waits poll for a state
with generous limits; no assertion depends on how fast this machine is.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from dsr_lab import scenario, simctl
from dsr_lab.lab import Lab, Reply
from dsr_lab.scenario import GROUP, NODES, VSERVER, Loop
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.skipif(
        shutil.which("nft") is None or shutil.which("tcpdump") is None,
        reason="the DSR end-to-end test needs nftables and tcpdump: apt-get install nftables tcpdump",
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

AUTH = {"X-NITRO-USER": scenario.USER, "X-NITRO-PASS": scenario.PASSWORD}
DRAIN = 4  # this module's drainSeconds (the scenario's default is 2): the drain test holds a connection through it
WAIT = 90.0  # the longest any state may take to appear, on the slowest machine we run on
member = scenario.member_name


async def gets(lab: Lab, count: int, each: float = 5.0) -> list[Reply]:
    return [await asyncio.to_thread(lab.get, each) for _ in range(count)]


async def nitro(sim: simctl.Simulator, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{sim.url}/nitro/v1/config/{path}", json=body, headers=AUTH) as resp,
    ):
        doc: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), (method, path, doc)
        return doc


async def members(sim: simctl.Simulator) -> dict[str, dict[str, Any]]:
    """The members of the scenario's servicegroup (the backends of its lbvserver), by `member_name`."""
    rows = (await nitro(sim, "GET", f"servicegroup_servicegroupmember_binding/{GROUP}")).get(
        "servicegroup_servicegroupmember_binding", [])  # fmt: skip
    return {f"{GROUP}/{r['servername']}:{r['port']}": r for r in rows}


@dataclasses.dataclass
class Stand:
    """The shared lab and the scenario running on it (`dsr_lab.scenario`), agents started per test."""

    lab: Lab
    stack: scenario.Stack

    @property
    def sim(self) -> simctl.Simulator:
        return self.stack.sim

    @property
    def kube(self) -> scenario.Kube:
        return self.stack.kube

    @property
    def agents(self) -> scenario.Agents:
        return self.stack.agents

    async def plane(self) -> dict[str, Any]:
        return await self.sim.dataplane()

    async def new_flows(self) -> list[str]:
        vservers = (await self.plane())["vservers"]
        return list(vservers[0]["newFlows"]) if vservers else []

    async def set_slice(self, nodes: tuple[str, ...]) -> None:
        if self.kube.slice is None or set(nodes) != set(self.kube.slice):
            await self.kube.endpoints(sorted(nodes))

    async def serving_on(self, *nodes: str) -> None:
        """Bring the lab to: exactly `nodes` in the EndpointSlice, their agents running, bound and UP."""
        await self.set_slice(nodes)
        for node in nodes:
            self.agents.start(node)
        want = [member(self.lab, NODES[n]) for n in nodes]
        await eventually(lambda: _eq(self.new_flows(), want), timeout=WAIT, interval=0.1, what=f"{want} bound and UP")

    async def journal_seq(self) -> int:
        return max((j["seq"] for j in await self.sim.journal()), default=0)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stand(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stand]:
    lab = Lab(f"dsre{os.getpid() % 100000}")
    tmp = tmp_path_factory.mktemp("dsr-e2e")
    try:
        await asyncio.to_thread(lab.up)
        async with scenario.running(lab, tmp) as stack:
            for node in NODES:
                await stack.node(node)
            await stack.kube.service(lab.vip)
            stand = Stand(lab, stack)
            await stand.set_slice(("n1", "n2"))
            await stack.kube.dsrservice(lab.vip, drain_seconds=DRAIN)
            yield stand
    finally:
        await asyncio.to_thread(lab.down)
    assert not any(ns.startswith(lab.prefix) for ns in os.listdir("/run/netns")), "namespaces left behind"


async def test_requests_spread_over_the_backends_and_replies_bypass_lb(stand: Stand) -> None:
    lab, sim = stand.lab, stand.sim
    await stand.serving_on("n1", "n2")
    before = await stand.plane()
    lb_before = await asyncio.to_thread(lab.link_packets, "lb")
    replies_before = [await asyncio.to_thread(lab.vip_packets, b) for b in lab.backends]
    with (
        lab.capture("b1", f"tcp and src host {lab.vip}") as b1_frames,
        lab.capture("lb", f"src host {lab.vip} and dst host {lab.ip('client')}") as lb_frames,
    ):
        replies = await gets(lab, 40)
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    assert {r.backend for r in replies} == {"b1", "b2"}
    after = await sim.dataplane()
    lb_after = await asyncio.to_thread(lab.link_packets, "lb")
    replies_after = [await asyncio.to_thread(lab.vip_packets, b) for b in lab.backends]
    client_mac = await asyncio.to_thread(lab.mac, "client")
    lb_mac = await asyncio.to_thread(lab.mac, "lb")  # a frame the bridge floods reaches lb too: not sent to it
    crossed = [f for f in lb_frames if f["dst_mac"] == lb_mac]
    assert crossed == [], f"replies crossed lb: {crossed[:3]}"
    assert b1_frames, "no reply captured on b1"
    assert {(f["src"], f["sport"], f["dst"], f["dst_mac"]) for f in b1_frames} == {
        (lab.vip, "80", lab.ip("client"), client_mac)
    }
    vip_in = after["counters"]["vserverPackets"][VSERVER] - before["counters"]["vserverPackets"].get(VSERVER, 0)
    forwarded = sum(after["counters"]["forwardedPackets"].values()) - sum(
        before["counters"]["forwardedPackets"].values()
    )
    sent_by_backends = sum(a[1] - b[1] for a, b in zip(replies_after, replies_before, strict=True))
    rx, tx = (a - b for a, b in zip(lb_after, lb_before, strict=True))
    assert vip_in >= 40 * 4 and forwarded == vip_in, (vip_in, forwarded)
    assert sent_by_backends >= 40 * 3
    # lb received the client→VIP frames and little else (ARP, probe answers): never the replies.
    assert vip_in <= rx < vip_in + sent_by_backends // 4, (rx, vip_in, sent_by_backends)
    assert forwarded <= tx < forwarded + sent_by_backends // 4, (tx, forwarded, sent_by_backends)


async def stat(sim: simctl.Simulator, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"{sim.url}/nitro/v1/stat/{path}", headers=AUTH) as resp:
        doc = await resp.json()
        assert resp.status == 200, doc
        return doc[path.split("/")[0].split("?")[0]]


async def test_nitro_stats_count_the_real_packets_and_flows(stand: Stand) -> None:
    """What monitoring tools read from /nitro/v1/stat: packets and flows the dataplane really saw."""
    lab, sim = stand.lab, stand.sim
    await stand.serving_on("n1", "n2")
    [before] = await stat(sim, f"lbvserver/{VSERVER}")
    replies = await gets(lab, 30)
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    [after] = await stat(sim, f"lbvserver/{VSERVER}")
    packets = int(after["totalpktsrecvd"]) - int(before["totalpktsrecvd"])
    hits = int(after["tothits"]) - int(before["tothits"])
    assert packets >= 30 * 4 and hits == 30, (packets, hits)  # one new flow per connection
    assert int(after["totalpktssent"]) - int(before["totalpktssent"]) == packets
    assert (after["state"], after["actsvcs"]) == ("UP", "2")
    for backend in ("b1", "b2"):
        args = f"servicegroupname:{GROUP},servername:{scenario.server_name(lab, backend)},port:{scenario.PORT}"
        [record] = await stat(sim, f"servicegroupmember?args={args}")
        assert record["state"] == "UP" and int(record["vsvrservicehits"]) > 0, record
    # Each connection's flow lives on until it has been idle for the flow timeout.

    async def flows_counted() -> bool:
        [now] = await stat(sim, f"lbvserver/{VSERVER}")
        return int(now["curclntconnections"]) >= 30

    await eventually(flows_counted, timeout=WAIT, interval=0.1, what="the connections' flows counted as clients")


async def test_a_backend_whose_agent_is_stopped_is_never_bound_until_its_agent_runs(stand: Stand) -> None:
    lab, sim, kube = stand.lab, stand.sim, stand.kube
    await stand.serving_on("n1", "n2")
    stand.agents.stop("n3")
    await stand.set_slice(("n1", "n2", "n3"))
    await eventually(lambda: kube.nodeconfig("n3"),
                     timeout=WAIT, interval=0.1, what="the operator asks n3 for the VIP")

    async def reported() -> bool:
        backends = (await kube.dsr_status()).get("backends") or {}
        return backends == {"desired": 3, "loopbackReady": 2, "bound": 2}

    await eventually(reported, timeout=WAIT, interval=0.1, what="status: 3 desired, 2 with the VIP, 2 bound")
    # Give the operator three full re-reads of NetScaler (resyncs) in which it could go wrong.
    reads = (await sim.stats())["byResource"].get("lbvserver", 0)
    await eventually(lambda: _at_least(sim, "lbvserver", reads + 3), timeout=WAIT, interval=0.1, what="three resyncs")
    assert member(lab, "b3") not in await members(sim)
    replies = await gets(lab, 20)
    assert all(r.ok and r.backend != "b3" for r in replies), replies
    assert (await asyncio.to_thread(lab.vip_packets, "b3"))[0] == 0
    assert not [j for j in await sim.journal() if j["resource"] == "servicegroup_servicegroupmember_binding"
                and scenario.on_member(j, lab, "b3")]  # fmt: skip
    stand.agents.start("n3")
    await eventually(lambda: _eq(stand.new_flows(), [member(lab, b) for b in ("b1", "b2", "b3")]),
                     timeout=WAIT, interval=0.1, what="b3 joins")
    replies = await gets(lab, 60)
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    assert set(collections.Counter(r.backend for r in replies)) == {"b1", "b2", "b3"}


async def test_a_removed_backend_drains_without_a_failure_then_loses_the_vip(stand: Stand) -> None:
    """Remove b1 while clients loop: connections held on b1 stay there for the whole drain, new ones go
    elsewhere, nothing fails; b1 is unbound only once NetScaler ended the drain, and loses the VIP after."""
    lab, sim, kube = stand.lab, stand.sim, stand.kube
    await stand.serving_on("n1", "n2", "n3")
    keepalive = None
    for _ in range(60):
        conn = lab.connection(timeout=10.0)
        conn.request("GET", "/")
        if conn.getresponse().read().decode().strip() == "b1":
            keepalive = conn
            break
        conn.close()
    assert keepalive is not None, "no keep-alive connection landed on b1"
    seq0 = await stand.journal_seq()
    vip_gone_from_spec = vip_gone_from_host = None
    with Loop(lab, keepalive=keepalive, pause=0.1) as held, Loop(lab) as fresh:
        started = time.time()
        await eventually(lambda: held.ok_since(started) >= 3 and fresh.ok_since(started) >= 3,
                         timeout=WAIT, interval=0.1, what="both loops run")
        removed_at = time.time()
        await stand.set_slice(("n2", "n3"))
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and vip_gone_from_host is None:
            if vip_gone_from_spec is None:
                cfg = await kube.nodeconfig("n1")
                if cfg is None or lab.vip not in (cfg.get("spec") or {}).get("vips", []):
                    vip_gone_from_spec = time.time()
            if not await asyncio.to_thread(lab.has_vip, "b1"):
                vip_gone_from_host = time.time()
            await asyncio.sleep(0.05)
        if vip_gone_from_spec is None and vip_gone_from_host is not None:
            # Spec and host changed between this loop's two looks: the spec left no later than the host did.
            cfg = await kube.nodeconfig("n1")
            if cfg is None or lab.vip not in (cfg.get("spec") or {}).get("vips", []):
                vip_gone_from_spec = vip_gone_from_host
        gone = time.time()
        await eventually(lambda: fresh.ok_since(gone) >= 3,
                         timeout=WAIT, interval=0.1, what="new connections after b1 left")
    keepalive.close()
    if vip_gone_from_spec is None or vip_gone_from_host is None:
        journal = [(j["resource"], j["action"], j["name"]) for j in await sim.journal(since=seq0)]
        log = stand.agents.log("n1", 25)
        raise AssertionError(
            f"b1 kept the VIP: gone from the spec at {vip_gone_from_spec}, from the host at {vip_gone_from_host}; "
            f"n1: {await kube.nodeconfig('n1')}; journal: {journal}; agent n1:\n" + "\n".join(log)
        )
    journal = await sim.journal(since=seq0)
    b1, server = member(lab, "b1"), scenario.server_name(lab, "b1")

    def when(resource: str, action: str) -> float:
        hits = [j["time"] for j in journal if j["resource"] == resource and j["action"] == action
                and (scenario.on_member(j, lab, "b1") or (resource == "server" and j["name"] == server))]  # fmt: skip
        assert hits, f"no {action} {resource} for {b1} in {journal}"
        return float(hits[0])

    disabled, unbound, deleted = (
        when("servicegroup", "disable"), when("servicegroup_servicegroupmember_binding", "unbind"),
        when("server", "delete"),
    )  # fmt: skip
    assert removed_at < disabled < unbound <= deleted < vip_gone_from_spec <= vip_gone_from_host
    assert unbound - disabled >= DRAIN - 0.05, "unbound before the drain ended on NetScaler"
    print(f"\ndrain end → unbind: {(unbound - disabled - DRAIN) * 1000:.0f} ms")

    # When the dataplane stopped giving b1 new connections (by the end of that ruleset's transaction),
    # and when it may have stopped serving b1's held ones (from the start of that transaction).
    history = [h for h in (await sim.dataplane())["history"] if h["applying"] >= removed_at]
    empty = {"newFlows": [], "serving": []}
    no_new = next((h["time"] for h in history if b1 not in h["vservers"].get(VSERVER, empty)["newFlows"]), None)
    cut = next((h["applying"] for h in history if b1 not in h["vservers"].get(VSERVER, empty)["serving"]), None)
    assert no_new is not None and cut is not None, history
    assert disabled <= no_new
    assert cut >= disabled + DRAIN - 0.05, "the dataplane cut b1's connections before the drain ended"

    failures = [r for r in fresh.results if not r.reply.ok]
    assert failures == [], failures[:5]
    late_on_b1 = [r for r in fresh.results if r.started > no_new and r.reply.backend == "b1"]
    assert late_on_b1 == [], "new connections went to the draining backend"
    during_drain = [r for r in held.results if disabled < r.started and r.finished < cut]
    off_b1 = [r for r in during_drain if not (r.reply.ok and r.reply.backend == "b1")]
    assert during_drain and off_b1 == [], off_b1
    b1_in = (await asyncio.to_thread(lab.vip_packets, "b1"))[0]
    replies = await gets(lab, 20)
    assert all(r.ok and r.backend in ("b2", "b3") for r in replies), replies
    assert (await asyncio.to_thread(lab.vip_packets, "b1"))[0] == b1_in, "traffic still reaches b1"


async def test_another_tenants_failing_check_on_the_same_nodes_takes_no_backend_away(stand: Stand) -> None:
    """Tenant team-a's DsrService has its endpoints on the same nodes and port as demo's, and a health
    check that fails (a closed port). Its monitor judges only its own servicegroup's members: demo's
    backends stay UP and answer every request, while team-a's own VIP gets no backend."""
    lab, sim, kube = stand.lab, stand.sim, stand.kube
    await stand.serving_on("n1", "n2")
    tenant, vip = "team-a", f"{lab.net}.101"
    group = f"dsr-{tenant}_{scenario.SERVICE}_{scenario.PORT}_sg"
    api = f"{scenario.DSR_API}/namespaces/{tenant}/dsrservices"
    service, slice_, dsr = scenario.service(vip), scenario.endpointslice(["n1", "n2"]), scenario.dsrservice(vip)
    for body in (service, slice_, dsr):
        body["metadata"]["namespace"] = tenant
    dsr["spec"]["healthCheck"] = {**scenario.HEALTH_CHECK, "port": 9}  # nothing listens there
    await kube.call("POST", f"/api/v1/namespaces/{tenant}/services", service)
    await kube.call("POST", f"/apis/discovery.k8s.io/v1/namespaces/{tenant}/endpointslices", slice_)
    await kube.call("POST", api, dsr)
    try:
        async def judged_down() -> bool:  # team-a's members exist, and its check took them DOWN
            rows = (await nitro(sim, "GET", f"servicegroup_servicegroupmember_binding/{group}")).get(
                "servicegroup_servicegroupmember_binding", [])  # fmt: skip
            return len(rows) == 2 and all(r["svrstate"] == "DOWN" for r in rows)

        await eventually(judged_down, timeout=WAIT, interval=0.1, what="team-a's members bound and DOWN")
        assert await stand.new_flows() == [member(lab, "b1"), member(lab, "b2")]
        replies = await gets(lab, 30)
        assert [r for r in replies if not r.ok] == [] and {r.backend for r in replies} == {"b1", "b2"}, replies
        theirs = [await asyncio.to_thread(lab.get, 0.5, vip=vip) for _ in range(3)]
        assert not any(r.ok for r in theirs), theirs
    finally:
        await kube.call("DELETE", f"{api}/{scenario.SERVICE}")
        await kube.call("DELETE", f"/apis/discovery.k8s.io/v1/namespaces/{tenant}/endpointslices/{scenario.SLICE}")
        await kube.call("DELETE", f"/api/v1/namespaces/{tenant}/services/{scenario.SERVICE}")

    async def gone() -> bool:
        configs = await kube.nodeconfigs()
        asked = any(vip in (c.get("spec") or {}).get("vips", []) for c in configs.values())
        held = [await asyncio.to_thread(_holds, lab, b, vip) for b in ("b1", "b2")]
        return not asked and not any(held)

    await eventually(gone, timeout=WAIT, interval=0.1, what="team-a's VIP gone from the nodes")


def _holds(lab: Lab, backend: str, vip: str) -> bool:
    out = subprocess.run(["ip", "-n", lab.ns(backend), "-o", "addr", "show", "dev", "lo"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return f" {vip}/" in out


async def test_negative_controls_a_broken_dsr_path_fails_visibly(stand: Stand) -> None:
    """With the operator stopped (so that it does not repair them): MBF off, m IP, and a backend without
    the VIP under a monitor that does not go through the DSR path, each break traffic; the transparent
    monitor takes such a backend out."""
    lab, sim = stand.lab, stand.sim
    await stand.serving_on("n2", "n3")
    await stand.stack.stop_operator()

    await nitro(sim, "POST", "nsmode?action=disable", {"nsmode": {"mode": ["MBF"]}})
    await eventually(lambda: _not_forwarded(stand.plane(), "MBF"),
                     timeout=WAIT, interval=0.1, what="MBF off in the dataplane")
    replies = await gets(lab, 5, 0.5)
    assert not any(r.ok for r in replies), replies
    await nitro(sim, "POST", "nsmode?action=enable", {"nsmode": {"mode": ["MBF"]}})
    await eventually(lambda: _ok(lab), timeout=WAIT, interval=0.1, what="forwarding again with MBF on")

    await nitro(sim, "PUT", "lbvserver", {"lbvserver": {"name": VSERVER, "m": "IP"}})
    await eventually(lambda: _not_forwarded(stand.plane(), "m=IP"),
                     timeout=WAIT, interval=0.1, what="m IP in the dataplane")
    replies = await gets(lab, 5, 0.5)
    assert not any(r.ok for r in replies), replies
    await nitro(sim, "PUT", "lbvserver", {"lbvserver": {"name": VSERVER, "m": "MAC"}})
    await eventually(lambda: _ok(lab), timeout=WAIT, interval=0.1, what="forwarding again in MAC mode")

    # b2 loses its VIP (its agent stopped; SIGTERM leaves VIPs, so take it away by hand).
    stand.agents.stop("n2")
    await asyncio.to_thread(
        subprocess.run, ["ip", "-n", lab.ns("b2"), "addr", "del", f"{lab.vip}/32", "dev", "lo"], check=True
    )
    b2, b3 = member(lab, "b2"), member(lab, "b3")
    binding = "servicegroup_lbmonitor_binding"
    monitor = next(b["monitor_name"] for b in (await nitro(sim, "GET", f"{binding}/{GROUP}"))[binding])
    # A monitor that does not go through the DSR path keeps b2 UP: its share of new connections fails.
    plain = {"monitorname": "ctl-plain", "type": "TCP", "interval": 2, "resptimeout": 1, "retries": 1, "destport": 80}
    await nitro(sim, "POST", "lbmonitor", {"lbmonitor": plain})
    await nitro(sim, "DELETE", f"{binding}/{GROUP}?args=monitor_name:{monitor}")
    await nitro(sim, "POST", binding, {binding: {"servicegroupname": GROUP, "monitor_name": "ctl-plain"}})
    # The group's monitors judge b3 too: it is probed afresh, and must be UP again for the control to count.
    await eventually(lambda: _eq(stand.new_flows(), [b2, b3]),
                     timeout=WAIT, interval=0.1, what="b2 (and b3) UP under the plain monitor")
    outcomes = []
    for _ in range(60):
        outcomes.append(await asyncio.to_thread(lab.get, 0.5))
        if not outcomes[-1].ok:
            break
    assert not outcomes[-1].ok, "a backend without the VIP took no connection: the control proves nothing"
    # The transparent monitor (destip = VIP, through b2's MAC) takes b2 out; nothing fails any more.
    await nitro(sim, "DELETE", f"{binding}/{GROUP}?args=monitor_name:ctl-plain")
    await nitro(sim, "POST", binding, {binding: {"servicegroupname": GROUP, "monitor_name": monitor}})
    await eventually(lambda: _eq(stand.new_flows(), [b3]),
                     timeout=WAIT, interval=0.1, what="b2 DOWN (and b3 UP) under the transparent monitor")
    assert (await members(sim))[b2]["svrstate"] == "DOWN"
    replies = await gets(lab, 20)
    assert all(r.ok and r.backend == "b3" for r in replies), replies


async def _eq(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def _at_least(sim: simctl.Simulator, resource: str, count: int) -> bool:
    return int((await sim.stats())["byResource"].get(resource, 0)) >= count


async def _not_forwarded(doc: Any, reason: str) -> bool:
    return any(reason in n["reason"] for n in (await doc)["notForwarded"])


async def _ok(lab: Lab) -> bool:
    return (await asyncio.to_thread(lab.get, 1.0)).ok
