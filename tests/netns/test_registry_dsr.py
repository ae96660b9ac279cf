"""Registry hosts end to end, without Kubernetes: `dsr-operator sync` and one `dsr-operator host-agent` per host.

The DSR lab (`dsr_lab.lab.Lab`: client, lb and b1..b3 on one bridge), the NITRO simulator with its
dataplane in lb, a real etcd, `sync` as a process following a registry-backed DsrService, and a host
agent process per backend that puts the VIP on the backend's `lo` and then registers it. A client loops
through the VIP while hosts join, leave gracefully and crash: joins and graceful leaves fail no request.
Assertions are on state (the dataplane's forwarding choices, the journal, each request's reply); waits poll
with generous limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dsr_lab import simctl
from dsr_lab.lab import Lab
from dsr_lab.scenario import Loop
from dsr_operator.simulator import dataplane
from tests.netns.test_dsr_e2e import WAIT, gets
from tests.registry.conftest import ETCD, Etcd
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.skipif(shutil.which("nft") is None, reason="the dataplane needs nftables: apt-get install nftables"),
    pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason=f"no etcd binary at {ETCD} (make controlplane)"),
]

PREFIX = "/skydns/local/shop/web"
VSERVER = "dsr-shop_web_80"
DRAIN = 3
TTL = 3


GROUP = f"{VSERVER}_sg"


def member(lab: Lab, backend: str) -> str:
    """A backend as the dataplane names it: a member of the DsrService's servicegroup."""
    return f"{GROUP}/dsr-{lab.ip(backend)}:80"


def on_member(entry: dict[str, Any], lab: Lab, backend: str) -> bool:
    """Whether a journal entry acts on the backend's membership (bind, unbind, enable, disable)."""
    key = entry.get("key") or {}
    return (key.get("servicegroupname") == GROUP and key.get("servername") == f"dsr-{lab.ip(backend)}"
            and str(key.get("port")) == "80")  # fmt: skip


class Hosts:
    """One `dsr-operator host-agent` process per backend, in the host's namespace, configuring the backend's."""

    def __init__(self, lab: Lab, etcd_url: str, tmp: pathlib.Path) -> None:
        self.lab, self.etcd_url, self.tmp = lab, etcd_url, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def join(self, backend: str) -> None:
        log = (self.tmp / f"host-agent-{backend}.log").open("ab")
        self.procs[backend] = subprocess.Popen(
            [sys.executable, "-m", "dsr_operator.cli", "host-agent", "--etcd", self.etcd_url, "--prefix", PREFIX,
             "--vip", self.lab.vip, "--address", self.lab.ip(backend), "--port", "80", "--name", backend,
             "--ttl", str(TTL), "--drain-seconds", str(DRAIN + 2), "--netns", self.lab.ns(backend),
             "--state-dir", str(self.tmp / backend)],
            stdout=log, stderr=subprocess.STDOUT)

    def log(self, backend: str) -> str:
        return (self.tmp / f"host-agent-{backend}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def start_sync(tmp: pathlib.Path, netscaler: str, etcd_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dsr_operator.cli", "sync", "-f", str(tmp / "web.yaml"),
         "--netscaler", netscaler, "--etcd", etcd_url, "--resync-seconds", "2"],
        stdout=(tmp / "sync.log").open("ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "DSR_NETSCALER_PASSWORD": "nsroot"})


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[dict[str, Any]]:
    lab = Lab(f"dsrr{os.getpid() % 100000}")
    etcd = Etcd(tmp_path)
    hosts = Hosts(lab, etcd.url, tmp_path)
    sync: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(lab.up)
        await asyncio.to_thread(etcd.start)
        plane = dataplane.Dataplane(lab.ns("lb"), "eth0")
        async with simctl.running(users={"nsroot": "nsroot"}, dataplane=plane) as sim:
            manifest = {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
                        "metadata": {"name": "web", "namespace": "shop"},
                        "spec": {"vip": lab.vip, "ports": [80], "backends": {"registry": {"etcd": {"prefix": PREFIX}}},
                                 "drainSeconds": DRAIN,
                                 "healthCheck": {"type": "TCP", "intervalSeconds": 2, "timeoutSeconds": 1,
                                                 "retries": 1}}}
            (tmp_path / "web.yaml").write_text(json.dumps(manifest))
            sync = start_sync(tmp_path, sim.url, etcd.url)
            try:
                yield {"lab": lab, "sim": sim, "hosts": hosts, "tmp": tmp_path}
            finally:  # the simulator's clients go before it does, so its shutdown waits for no one
                await asyncio.to_thread(stop, sync, hosts)
    finally:
        await asyncio.to_thread(stop, sync, hosts)
        etcd.stop()
        await asyncio.to_thread(lab.down)


def stop(sync: subprocess.Popen[bytes] | None, hosts: Hosts) -> None:
    hosts.stop_all()
    if sync is not None and sync.poll() is None:
        sync.send_signal(signal.SIGTERM)
        try:
            sync.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sync.kill()
            sync.wait()


async def new_flows(sim: simctl.Simulator) -> list[str]:
    vservers = (await sim.dataplane())["vservers"]
    return sorted(vservers[0]["newFlows"]) if vservers else []


async def test_hosts_join_and_leave_through_etcd_without_a_failed_request_then_a_crash_is_unbound(
        rig: dict[str, Any]) -> None:
    lab, sim, hosts = rig["lab"], rig["sim"], rig["hosts"]

    async def flows_are(*backends: str) -> bool:
        return await new_flows(sim) == sorted(member(lab, b) for b in backends)

    hosts.join("b1")
    hosts.join("b2")
    await eventually(lambda: flows_are("b1", "b2"), timeout=WAIT, interval=0.1, what="b1 and b2 bound and UP")
    assert await asyncio.to_thread(lab.has_vip, "b1")
    with Loop(lab) as fresh:
        await eventually(lambda: len(fresh.results) >= 5, timeout=WAIT, interval=0.1, what="the client loop runs")
        hosts.join("b3")  # joins while requests flow: VIP first, registered after, bound after that
        await eventually(lambda: flows_are("b1", "b2", "b3"), timeout=WAIT, interval=0.1, what="b3 joins")
        seq = max((j["seq"] for j in await sim.journal()), default=0)
        hosts.procs["b1"].send_signal(signal.SIGTERM)  # b1 leaves gracefully
        await eventually(lambda: flows_are("b2", "b3"), timeout=WAIT, interval=0.1, what="b1 out of new connections")
        code = await asyncio.to_thread(hosts.procs["b1"].wait, 60)
        assert code == 0, hosts.log("b1")
        assert not await asyncio.to_thread(lab.has_vip, "b1"), "b1 kept the VIP after leaving"
        count = len(fresh.results)
        await eventually(lambda: len(fresh.results) >= count + 5,
                         timeout=WAIT, interval=0.1, what="requests after b1 left")
    failures = [r for r in fresh.results if not r.reply.ok]
    assert failures == [], failures[:5]
    assert {r.reply.backend for r in fresh.results} >= {"b1", "b2", "b3"}
    journal = [(j["resource"], j["action"]) for j in await sim.journal(since=seq) if on_member(j, lab, "b1")]
    unbind = ("servicegroup_servicegroupmember_binding", "unbind")
    assert journal.index(("servicegroup", "disable")) < journal.index(unbind), journal

    # b2 crashes: its agent and its web server die; the lease runs out and NetScaler unbinds it.
    hosts.procs["b2"].kill()
    lab._procs["http-b2"].kill()
    await eventually(lambda: flows_are("b3"), timeout=WAIT, interval=0.1, what="b2 out (its monitor, then its lease)")

    async def unbound() -> bool:
        return any(j["resource"] == "servicegroup_servicegroupmember_binding" and j["action"] == "unbind"
                   and on_member(j, lab, "b2") for j in await sim.journal(since=seq))

    await eventually(unbound, timeout=WAIT, interval=0.1, what="b2 unbound once its lease ran out")
    replies = await gets(lab, 20)
    assert all(r.ok and r.backend == "b3" for r in replies), replies
