"""DSR end to end: a client reaches the VIP through the simulator's dataplane, the backend answers it directly.

Topology (`dsr_operator.dsrlab.Lab`): namespaces client, lb and b1..b3 on one bridge, 10.77.0.0/24, VIP
10.77.0.100. The NITRO simulator runs with its dataplane in lb; the operator runs in-process against
the Kubernetes emulator; one real node agent process per backend puts the VIP on the backend's `lo`.
Everything is configured from one DsrService and its EndpointSlice; Node InternalIPs are the
backend namespaces' addresses.
"""

from __future__ import annotations

import asyncio
import collections
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import aiohttp
import pytest

from dsr_operator.dsrlab import Lab, Reply
from dsr_operator.simulator import dataplane, server
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, running_operator

pytestmark = pytest.mark.skipif(
    shutil.which("nft") is None or shutil.which("tcpdump") is None,
    reason="the DSR end-to-end test needs nftables and tcpdump: apt-get install nftables tcpdump",
)

VSERVER = "dsr-shop_web_80"
NODES = {"n1": "b1", "n2": "b2", "n3": "b3"}
AUTH = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nsroot"}


def svc(lab: Lab, backend: str) -> str:
    return f"dsr-{lab.ip(backend)}_80"


async def wait_for(check: Any, what: str, within: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last: {last!r}")


async def gets(lab: Lab, count: int, each: float = 1.0) -> list[Reply]:
    return [await asyncio.to_thread(lab.get, each) for _ in range(count)]


class Agents:
    """One `dsr-operator agent` process per node, each in its backend's namespace."""

    def __init__(self, kube: KubeHandle, lab: Lab, tmp: pathlib.Path) -> None:
        self.kube, self.lab, self.tmp = kube, lab, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        backend = NODES[node]
        log = (self.tmp / f"agent-{node}.log").open("ab")
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "dsr_operator.cli", "agent", "--node-name", node, "--netns", self.lab.ns(backend),
             "--interface-mode", "loopback", "--server", self.kube.url, "--state-dir", str(self.tmp / node),
             "--resync-seconds", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for node in list(self.procs):
            self.stop(node)


class Loop:
    """A client making requests in a thread until stopped: new connections, or one keep-alive connection."""

    def __init__(self, lab: Lab, keepalive: Any = None, pause: float = 0.0) -> None:
        self.lab, self.keepalive, self.pause = lab, keepalive, pause
        self.results: list[tuple[float, Reply]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.results) < 5000:
            started = time.time()
            if self.keepalive is None:
                reply = self.lab.get(timeout=2.0)
            else:
                try:
                    self.keepalive.request("GET", "/")
                    reply = Reply(True, self.keepalive.getresponse().read().decode().strip())
                except OSError as exc:
                    reply = Reply(False, f"{type(exc).__name__}: {exc}")
                except Exception as exc:  # http.client protocol errors after a reset
                    reply = Reply(False, f"{type(exc).__name__}: {exc}")
            self.results.append((started, reply))
            if self.pause:
                self._stop.wait(self.pause)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


async def nitro(sim: server.Simulator, method: str, path: str, body: Any = None) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{sim.url}/nitro/v1/config/{path}", json=body, headers=AUTH) as resp,
    ):
        doc: dict[str, Any] = await resp.json()
        assert resp.status in (200, 201), (method, path, doc)
        return doc


async def test_dsr_end_to_end(kube: KubeHandle, monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    lab = Lab(f"dsre{os.getpid() % 100000}")
    await asyncio.to_thread(lab.up)
    agents = Agents(kube, lab, tmp_path)
    try:
        plane = dataplane.Dataplane(lab.ns("lb"), "eth0")
        async with server.running(users={"nsroot": "nsroot"}, dataplane=plane) as sim:
            await _scenario(kube, lab, sim, agents, monkeypatch)
    finally:
        agents.stop_all()
        await asyncio.to_thread(lab.down)
    assert not any(ns.startswith(lab.prefix) for ns in os.listdir("/run/netns")), "namespaces left behind"


async def _scenario(
    kube: KubeHandle, lab: Lab, sim: server.Simulator, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = Cluster(kube, sim, "nsroot")
    for node, backend in NODES.items():
        await cluster.node(node, lab.ip(backend))
    await cluster.service()
    await cluster.slice({"n1": "ready", "n2": "ready"})
    agents.start("n1")
    agents.start("n2")

    async def plane() -> dict[str, Any]:
        return await sim.dataplane()

    async def new_flows() -> list[str]:
        vservers = (await plane())["vservers"]
        return vservers[0]["newFlows"] if vservers else []

    async with running_operator(kube, sim, monkeypatch, resync_seconds=1.0):
        await cluster.dsrservice(
            vip=lab.vip, drainSeconds=4,
            healthCheck={"type": "TCP", "intervalSeconds": 2, "timeoutSeconds": 1, "retries": 1},
        )  # fmt: skip
        await wait_for(lambda: _eq(new_flows(), [svc(lab, "b1"), svc(lab, "b2")]), "b1 and b2 bound and UP", within=30)

        # 1 + 2. Requests succeed on both backends; replies leave the backend for the client's MAC, not via lb.
        before = await plane()
        lb_before = await asyncio.to_thread(lab.link_packets, "lb")
        replies_before = [await asyncio.to_thread(lab.vip_packets, b) for b in lab.backends]
        with (
            lab.capture("b1", f"tcp and src host {lab.vip}") as b1_frames,
            lab.capture("lb", f"src host {lab.vip}") as lb_frames,
        ):
            replies = await gets(lab, 40)
        assert all(r.ok for r in replies), [r for r in replies if not r.ok]
        assert {r.backend for r in replies} == {"b1", "b2"}
        after = await plane()
        lb_after = await asyncio.to_thread(lab.link_packets, "lb")
        replies_after = [await asyncio.to_thread(lab.vip_packets, b) for b in lab.backends]
        client_mac = await asyncio.to_thread(lab.mac, "client")
        assert lb_frames == [], f"replies crossed lb: {lb_frames[:3]}"
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

        # 4. A backend whose agent is stopped is never bound and gets no traffic; its agent starts, it joins.
        await cluster.slice({"n1": "ready", "n2": "ready", "n3": "ready"})
        await wait_for(lambda: cluster.nodeconfig("n3"), "the operator asks n3 for the VIP")
        await asyncio.sleep(4)  # several resyncs and probe intervals
        assert svc(lab, "b3") not in await cluster.bound()
        replies = await gets(lab, 20)
        assert all(r.ok and r.backend != "b3" for r in replies), replies
        assert (await asyncio.to_thread(lab.vip_packets, "b3"))[0] == 0
        assert not [j for j in await sim.journal() if j["resource"] == "lbvserver_service_binding"
                    and j["key"].get("servicename") == svc(lab, "b3")]  # fmt: skip
        agents.start("n3")
        await wait_for(lambda: _eq(new_flows(), [svc(lab, b) for b in ("b1", "b2", "b3")]), "b3 joins", within=20)
        replies = await gets(lab, 60)
        assert all(r.ok for r in replies), [r for r in replies if not r.ok]
        assert set(collections.Counter(r.backend for r in replies)) == {"b1", "b2", "b3"}

        # 3. Remove b1 while clients loop: a connection started on b1 stays there during the drain,
        # new ones go elsewhere, nothing fails; the VIP leaves b1 only after NetScaler unbound it.
        keepalive = None
        for _ in range(30):
            conn = lab.connection(timeout=5.0)  # generous: CI machines are busy
            conn.request("GET", "/")
            if conn.getresponse().read().decode().strip() == "b1":
                keepalive = conn
                break
            conn.close()
        assert keepalive is not None, "no keep-alive connection landed on b1"
        seq0 = max((j["seq"] for j in await sim.journal()), default=0)
        vip_gone_from_spec = vip_gone_from_host = None
        with Loop(lab, keepalive=keepalive, pause=0.1) as held, Loop(lab) as fresh:
            await asyncio.sleep(0.5)
            removed_at = time.time()
            await cluster.slice({"n2": "ready", "n3": "ready"})
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and vip_gone_from_host is None:
                if vip_gone_from_spec is None:
                    cfg = await cluster.nodeconfig("n1")
                    if cfg is None or lab.vip not in (cfg.get("spec") or {}).get("vips", []):
                        vip_gone_from_spec = time.time()
                if not await asyncio.to_thread(lab.has_vip, "b1"):
                    vip_gone_from_host = time.time()
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
        keepalive.close()
        assert vip_gone_from_spec is not None and vip_gone_from_host is not None, "b1 kept the VIP"
        journal = await sim.journal(since=seq0)
        b1 = svc(lab, "b1")

        def when(resource: str, action: str) -> float:
            hits = [j["time"] for j in journal if j["resource"] == resource and j["action"] == action
                    and b1 in (j["name"], j["key"].get("servicename"))]  # fmt: skip
            assert hits, f"no {action} {resource} for {b1} in {journal}"
            return float(hits[0])

        disabled, unbound, deleted = (
            when("service", "disable"), when("lbvserver_service_binding", "unbind"), when("service", "delete")
        )  # fmt: skip
        assert removed_at < disabled < unbound <= deleted < vip_gone_from_spec <= vip_gone_from_host
        assert unbound - disabled >= 4 - 0.5, "the drain lasted drainSeconds"
        failures = [(t, r) for t, r in fresh.results if not r.ok]
        assert len(fresh.results) > 20 and failures == [], failures[:5]
        late_on_b1 = [(t, r) for t, r in fresh.results if t > disabled + 1.0 and r.backend == "b1"]
        assert late_on_b1 == [], "new connections went to the draining backend"
        during_drain = [r for t, r in held.results if disabled < t < unbound - 0.5]
        off_b1 = [r for r in during_drain if not (r.ok and r.backend == "b1")]
        assert during_drain and off_b1 == [], off_b1
        b1_in = (await asyncio.to_thread(lab.vip_packets, "b1"))[0]
        replies = await gets(lab, 20)
        assert all(r.ok and r.backend in ("b2", "b3") for r in replies), replies
        assert (await asyncio.to_thread(lab.vip_packets, "b1"))[0] == b1_in, "traffic still reaches b1"

    # 5. Negative controls, with the operator stopped so that it does not repair them.
    async def refused() -> bool:
        return not (await asyncio.to_thread(lab.get, 0.5)).ok

    await nitro(sim, "POST", "nsmode?action=disable", {"nsmode": {"mode": ["MBF"]}})
    await wait_for(lambda: _not_forwarded(plane(), "MBF"), "MBF off in the dataplane")
    replies = await gets(lab, 5, 0.5)
    assert not any(r.ok for r in replies), replies
    await nitro(sim, "POST", "nsmode?action=enable", {"nsmode": {"mode": ["MBF"]}})
    await wait_for(lambda: _ok(lab), "forwarding again with MBF on")

    await nitro(sim, "PUT", "lbvserver", {"lbvserver": {"name": VSERVER, "m": "IP"}})
    await wait_for(lambda: _not_forwarded(plane(), "m=IP"), "m IP in the dataplane")
    replies = await gets(lab, 5, 0.5)
    assert not any(r.ok for r in replies), replies
    await nitro(sim, "PUT", "lbvserver", {"lbvserver": {"name": VSERVER, "m": "MAC"}})
    await wait_for(lambda: _ok(lab), "forwarding again in MAC mode")

    # b2 loses its VIP (its agent stopped; SIGTERM leaves VIPs, so take it away by hand).
    agents.stop("n2")
    await asyncio.to_thread(
        subprocess.run, ["ip", "-n", lab.ns("b2"), "addr", "del", f"{lab.vip}/32", "dev", "lo"], check=True
    )
    b2 = svc(lab, "b2")
    monitor = next(b["monitor_name"] for b in (await nitro(sim, "GET", f"service_lbmonitor_binding/{b2}"))[
        "service_lbmonitor_binding"])  # fmt: skip
    # A monitor that does not go through the DSR path keeps b2 UP: its share of new connections fails.
    plain = {"monitorname": "ctl-plain", "type": "TCP", "interval": 2, "resptimeout": 1, "retries": 1, "destport": 80}
    await nitro(sim, "POST", "lbmonitor", {"lbmonitor": plain})
    await nitro(sim, "DELETE", f"service_lbmonitor_binding/{b2}?args=monitor_name:{monitor}")
    await nitro(sim, "POST", "service_lbmonitor_binding",
                {"service_lbmonitor_binding": {"name": b2, "monitor_name": "ctl-plain"}})  # fmt: skip
    await wait_for(lambda: _contains(new_flows(), b2), "b2 UP under the plain monitor")
    outcomes = []
    for _ in range(40):
        outcomes.append(await asyncio.to_thread(lab.get, 0.5))
        if not outcomes[-1].ok:
            break
    assert not outcomes[-1].ok, "a backend without the VIP took no connection: the control proves nothing"
    # The transparent monitor (destip = VIP, through b2's MAC) takes b2 out; nothing fails any more.
    await nitro(sim, "DELETE", f"service_lbmonitor_binding/{b2}?args=monitor_name:ctl-plain")
    await nitro(sim, "POST", "service_lbmonitor_binding",
                {"service_lbmonitor_binding": {"name": b2, "monitor_name": monitor}})  # fmt: skip
    await wait_for(lambda: _lacks(new_flows(), b2), "b2 DOWN under the transparent monitor", within=10)
    rows = await nitro(sim, "GET", f"service/{b2}")
    assert rows["service"][0]["svrstate"] == "DOWN"
    replies = await gets(lab, 20)
    assert all(r.ok and r.backend == "b3" for r in replies), replies


async def _eq(value: Any, want: Any) -> bool:
    return bool(await value == want)


async def _contains(value: Any, item: str) -> bool:
    return item in await value


async def _lacks(value: Any, item: str) -> bool:
    return item not in await value


async def _not_forwarded(doc: Any, reason: str) -> bool:
    return any(reason in n["reason"] for n in (await doc)["notForwarded"])


async def _ok(lab: Lab) -> bool:
    return (await asyncio.to_thread(lab.get, 1.0)).ok
