"""IPv6 DSR end to end: a client reaches an IPv6 VIP through the simulator's dataplane, backends answer directly.

Topology (`dsr_lab.lab.Lab` with `net6`): namespaces client, lb, b1, b2 on one bridge, on
10.78.0.0/24 and fd78::/64, VIP fd78::100. The backends hold the VIP as the node agent holds it: its
host code (`agent.host.Host.apply`) puts fd78::100/128 on `lo` with `nodad` and sets accept_dad and
ndisc_notify to 0, so no backend announces or defends the VIP; only lb answers neighbour discovery for
it. NetScaler is configured as `dsr-operator apply` does it (planner and NITRO client, static
backends), and the simulator's dataplane forwards with nftables netdev `ip6` rules to the MACs it
learnt by neighbour discovery, after real TCP probes over IPv6 through the VIP (transparent monitor).

Assertions are on state: the dataplane's forwarding choices and rule counters, the backends' packet
counters, captures on lb and b1; waits poll with generous limits.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import yaml

from dsr_lab import simctl
from dsr_lab.lab import Lab, Reply
from dsr_operator import oneshot
from dsr_operator.agent import core, host
from dsr_operator.netscaler import client as nitro
from dsr_operator.simulator import dataplane
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.skipif(
        shutil.which("nft") is None or shutil.which("tcpdump") is None,
        reason="the IPv6 DSR test needs nftables and tcpdump: apt-get install nftables tcpdump",
    ),
    pytest.mark.asyncio(loop_scope="module"),
]

NET6 = "fd78::"
VSERVER = "dsr-shop_web6_80"
WAIT = 90.0


def _manifest(lab: Lab) -> dict[str, Any]:
    return {
        "apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
        "metadata": {"name": "web6", "namespace": "shop", "uid": "web6-uid"},
        "spec": {
            "vip": lab.v6vip, "ports": [80], "drainSeconds": 0, "lbMethod": "ROUNDROBIN",
            "backends": {"static": [{"name": b, "address": lab.ip6(b)} for b in lab.backends]},
            "healthCheck": {"type": "TCP", "intervalSeconds": 2, "timeoutSeconds": 1, "retries": 1},
        },
    }  # fmt: skip


class Stand:
    def __init__(self, lab: Lab, sim: simctl.Simulator, plane: dataplane.Dataplane) -> None:
        self.lab, self.sim, self.plane = lab, sim, plane


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stand(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stand]:
    lab = Lab(f"dsr6{os.getpid() % 100000}", backends=("b1", "b2"), net="10.78.0", vip="10.78.0.100", net6=NET6)
    tmp = tmp_path_factory.mktemp("dsr-ipv6")
    try:
        await asyncio.to_thread(lab.up)
        # The node agent's host code holds the VIP on each backend.
        for backend in lab.backends:
            async with host.Host(netns=lab.ns(backend), mode="loopback", state_dir=tmp / backend) as the_host:
                vips, _ = core.parse_vips([lab.v6vip])
                outcome = await the_host.apply(vips)
            assert outcome.applied == (lab.v6vip,) and outcome.error is None, outcome
        plane = dataplane.Dataplane(lab.ns("lb"), "eth0")
        async with simctl.running(users={"nsroot": "nsroot"}, dataplane=plane) as sim:
            manifest = tmp / "web6.yaml"
            manifest.write_text(yaml.safe_dump(_manifest(lab)))
            loaded, problems, _ = oneshot.load_manifests([manifest])
            assert not problems, problems
            out = io.StringIO()
            async with nitro.NitroClient(sim.url, username="nsroot", password="nsroot") as client:
                code = await oneshot.run_apply(client, oneshot.intents(loaded), "ipv6test", False, out, wait=False)
            assert code == 0, out.getvalue()
            yield Stand(lab, sim, plane)
    finally:
        await asyncio.to_thread(lab.down)
    assert not any(ns.startswith(lab.prefix) for ns in os.listdir("/run/netns")), "namespaces left behind"


def _addr6(lab: Lab, role: str, dev: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-n", lab.ns(role), "-6", "-j", "addr", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [a for link in json.loads(out) for a in link.get("addr_info", [])]


def _sysctl(lab: Lab, role: str, key: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", lab.ns(role), "sysctl", "-n", key],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return int(out.split()[0])


async def gets(lab: Lab, n: int) -> list[Reply]:
    return [await asyncio.to_thread(lab.get, 2.0, "/", ipv6=True) for _ in range(n)]


async def test_backends_hold_the_ipv6_vip_without_announcing_it(stand: Stand) -> None:
    lab = stand.lab
    for backend in lab.backends:
        (vip,) = [a for a in _addr6(lab, backend, "lo") if a["local"] == lab.v6vip]
        assert vip["prefixlen"] == 128
        assert vip.get("nodad") is True, vip  # never tentative, never probed with DAD
        for key in ("net.ipv6.conf.all.ndisc_notify", "net.ipv6.conf.lo.ndisc_notify",
                    "net.ipv6.conf.all.accept_dad"):  # fmt: skip
            assert _sysctl(lab, backend, key) == 0, key
        assert _sysctl(lab, backend, "net.ipv6.conf.lo.accept_dad") in (0, -1)
    # lb holds the VIP on its interface (it alone answers neighbour discovery for it), also without DAD.
    (on_lb,) = await eventually(
        lambda: asyncio.to_thread(lambda: [a for a in _addr6(lab, "lb", "eth0") if a["local"] == lab.v6vip]),
        timeout=WAIT, interval=0.2, what="the VIP on lb's eth0",
    )
    assert on_lb["prefixlen"] == 128 and on_lb.get("nodad") is True


async def test_ipv6_requests_spread_over_the_backends_and_replies_bypass_lb(stand: Stand) -> None:
    lab, sim = stand.lab, stand.sim

    async def forwarding() -> dict[str, Any] | None:
        view = await sim.dataplane()
        vservers = {v["name"]: v for v in view["vservers"]}
        v = vservers.get(VSERVER)
        return view if v and len(v["newFlows"]) == 2 else None

    before = await eventually(forwarding, timeout=WAIT, interval=0.2,
                              what="both IPv6 services UP (probed over IPv6) and forwarded")
    assert before["address6"] == lab.ip6("lb")
    assert set(before["macs"]) >= {lab.ip6(b) for b in lab.backends}, before["macs"]
    assert all(p["up"] for p in before["probes"]), before["probes"]
    assert f"ip6 daddr {lab.v6vip}" in stand.plane.script

    lb_before = await asyncio.to_thread(lab.link_packets, "lb")
    replies_before = [await asyncio.to_thread(lab.vip6_packets, b) for b in lab.backends]
    # Replies to the client only: the monitor's probes through the VIP are answered to lb, as they must be.
    replies_to_client = f"ip6 and tcp and src host {lab.v6vip} and dst host {lab.ip6('client')}"
    with (
        lab.capture("b1", replies_to_client) as b1_frames,
        lab.capture("lb", replies_to_client) as lb_frames,
    ):
        replies = await gets(lab, 30)
    assert all(r.ok for r in replies), [r for r in replies if not r.ok]
    assert {r.backend for r in replies} == {"b1", "b2"}
    after = await sim.dataplane()
    lb_after = await asyncio.to_thread(lab.link_packets, "lb")
    replies_after = [await asyncio.to_thread(lab.vip6_packets, b) for b in lab.backends]

    lb_mac = await asyncio.to_thread(lab.mac, "lb")  # a frame the bridge floods reaches lb too: not sent to it
    crossed = [f for f in lb_frames if f["dst_mac"] == lb_mac]
    assert crossed == [], f"replies crossed lb: {crossed[:3]}"
    assert b1_frames, "no reply captured on b1"
    client_mac = await asyncio.to_thread(lab.mac, "client")
    assert {(f["src"], f["sport"], f["dst"], f["dst_mac"]) for f in b1_frames} == {
        (lab.v6vip, "80", lab.ip6("client"), client_mac)
    }
    vip_in = after["counters"]["vserverPackets"][VSERVER] - before["counters"]["vserverPackets"].get(VSERVER, 0)
    forwarded = sum(after["counters"]["forwardedPackets"].values()) - sum(
        before["counters"]["forwardedPackets"].values()
    )
    sent_by_backends = sum(a[1] - b[1] for a, b in zip(replies_after, replies_before, strict=True))
    received_by_backends = sum(a[0] - b[0] for a, b in zip(replies_after, replies_before, strict=True))
    rx, tx = (a - b for a, b in zip(lb_after, lb_before, strict=True))
    assert vip_in >= 30 * 4 and forwarded == vip_in, (vip_in, forwarded)
    assert received_by_backends >= vip_in
    assert sent_by_backends >= 30 * 3
    # lb received the client→VIP frames and little else (neighbour discovery, probe answers): no reply.
    assert vip_in <= rx < vip_in + sent_by_backends // 4, (rx, vip_in, sent_by_backends)
    assert forwarded <= tx < forwarded + sent_by_backends // 4, (tx, forwarded, sent_by_backends)


def _neighbours6(lab: Lab, role: str) -> dict[str, str | None]:
    out = subprocess.run(["ip", "-n", lab.ns(role), "-6", "-j", "neigh", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return {n["dst"]: n.get("lladdr") for n in json.loads(out)}


async def test_ipv6_neighbour_solicitation_for_the_vip_is_answered_by_lb_only(stand: Stand) -> None:
    lab = stand.lab
    flush = ["ip", "-n", lab.ns("client"), "-6", "neigh", "flush", "dev", "eth0"]
    await asyncio.to_thread(subprocess.run, flush, check=True)
    reply = await asyncio.to_thread(lab.get, 2.0, "/", ipv6=True)
    assert reply.ok, reply
    entries = await asyncio.to_thread(_neighbours6, lab, "client")
    assert entries.get(lab.v6vip) == await asyncio.to_thread(lab.mac, "lb"), entries


if pathlib.Path("/proc/sys/net/ipv6").exists() is False:  # pragma: no cover - a kernel without IPv6
    pytestmark.append(pytest.mark.skip(reason="this kernel has no IPv6"))
