"""Benchmark: registry change → NetScaler binding change, through `dsr-operator sync`'s reconcile loop.

A real etcd (the control-plane build's binary), the NITRO simulator with 5 ms latency per request, and
`sync` in-process following N registry-backed DsrServices (each its own prefix, three hosts of five
registered). Every change registers or deregisters one host (an etcd put or delete), which must bind or
unbind exactly one member of the DsrService's NetScaler servicegroup. Per change: the time from etcd
accepting the write to the simulator applying the binding change (watch delivery, batch, plan,
NITRO), and every NITRO request sent meanwhile. Baseline, measured in the same run: one NITRO member
bind request straight to the simulator.

Usage: python bench/registry_latency.py [--services 100] [--changes 500] [--latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.registry.conftest import ETCD, Etcd

from dsr_lab import simctl
from dsr_operator import settings as settings_mod
from dsr_operator import sync as sync_mod
from dsr_operator.controller import view
from dsr_operator.registry import etcd, source

HOSTS = [f"198.51.100.{i + 1}" for i in range(5)]
AUTH = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "bench"}


def record(host: str) -> str:
    return json.dumps({"host": host, "port": 80})


MEMBERS = "servicegroup_servicegroupmember_binding"


async def count_bindings(url: str) -> int:
    """How many servicegroup members NetScaler holds: the backends bound."""
    async with aiohttp.ClientSession() as http, http.get(
        f"{url}/nitro/v1/config/{MEMBERS}", params={"bulkbindings": "yes"}, headers=AUTH
    ) as resp:
        return len((await resp.json()).get(MEMBERS, []))


async def baseline(url: str, rounds: int = 100) -> list[float]:
    """One bind and one unbind of a servicegroup member, straight to the simulator: NITRO's own cost."""
    async with aiohttp.ClientSession() as http:
        async def call(method: str, path: str, body: Any = None) -> None:
            async with http.request(method, f"{url}/nitro/v1/config/{path}", json=body, headers=AUTH) as resp:
                assert resp.status in (200, 201), await resp.text()

        await call("POST", "server", {"server": {"name": "base-s", "ipaddress": "203.0.113.1"}})
        await call("POST", "servicegroup", {"servicegroup": {"servicegroupname": "base-sg", "servicetype": "ANY"}})
        member = {"servicegroupname": "base-sg", "servername": "base-s", "port": 80}
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            await call("POST", MEMBERS, {MEMBERS: member})
            times.append(time.perf_counter() - start)
            await call("DELETE", f"{MEMBERS}/base-sg?args=servername:base-s,port:80")
        for path in ("servicegroup/base-sg", "server/base-s"):
            await call("DELETE", path)
    return sorted(times)


def p99(values: list[float]) -> float:
    return values[max(0, int(len(values) * 0.99) - 1)]


async def main(services: int, changes: int, latency_ms: float) -> None:
    if not os.access(ETCD, os.X_OK):
        raise SystemExit(f"no etcd binary at {ETCD}: run `make controlplane` first")
    with tempfile.TemporaryDirectory() as tmp:
        registry_server = Etcd(Path(tmp))
        registry_server.start()
        try:
            await run(Path(tmp), registry_server, services, changes, latency_ms)
        finally:
            registry_server.stop()


async def run(tmp: Path, registry_server: Etcd, services: int, changes: int, latency_ms: float) -> None:
    manifests = tmp / "manifests"
    manifests.mkdir()
    docs = [{"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
             "metadata": {"name": f"svc{i}", "namespace": "bench"},
             "spec": {"vip": f"192.0.2.{i + 1}", "ports": [80], "drainSeconds": 0,
                      "backends": {"registry": {"etcd": {"prefix": f"/skydns/bench/svc{i}"}}}}}
            for i in range(services)]
    (manifests / "all.yaml").write_text("\n---\n".join(json.dumps(d) for d in docs))
    registered: dict[int, set[str]] = {}
    async with registry_server.client() as writer:
        for i in range(services):
            registered[i] = {HOSTS[(i + k) % len(HOSTS)] for k in range(3)}
            for host in registered[i]:
                await writer.put(f"/skydns/bench/svc{i}/{host}", record(host))
        async with simctl.running(users={"nsroot": "bench"}) as sim:
            await sim.faults(latencyMs=latency_ms)
            base = await baseline(sim.url)
            nitro_settings = settings_mod.NitroSettings(url=sim.url, password="bench")
            nitro = view.NetScalerView(nitro_settings, "bench", save_debounce=1.0)
            holder: list[sync_mod.Sync] = []
            followers = source.Registry(etcd.EtcdClient([registry_server.url]),
                                        lambda prefix: holder[0].registry_changed(prefix))
            runner = sync_mod.Sync([manifests], nitro, followers, sync_mod.SyncSettings(
                operator_id="bench", resync_seconds=3600, default_drain_seconds=0), io.StringIO())
            holder.append(runner)
            assert runner.load() == []
            stop = asyncio.Event()
            task = asyncio.create_task(runner.run(stop))
            t0 = time.perf_counter()
            while (bound := await count_bindings(sim.url)) < services * 3:
                if time.perf_counter() - t0 > 300:
                    raise SystemExit(f"did not converge: {bound} of {services * 3} bindings")
                await asyncio.sleep(0.2)
            print(f"Converged {services} registry-backed DsrServices x 3 hosts in {time.perf_counter() - t0:.1f}s")
            await asyncio.sleep(1.5)  # the debounced save goes out before counting

            changed = asyncio.Event()
            target: dict[str, Any] = {}

            def listener(change: Any) -> None:
                if change.resource == MEMBERS and change.name == target.get("group"):
                    target["at"] = time.perf_counter()
                    changed.set()

            sim.store.listeners.append(listener)
            await sim.reset_stats()
            rng = random.Random(7)
            latencies: list[float] = []
            while len(latencies) < changes:
                i = rng.randrange(services)
                host = rng.choice(HOSTS)
                key = f"/skydns/bench/svc{i}/{host}"
                if host in registered[i] and len(registered[i]) == 1:
                    continue  # the last one stays (the blast-radius guard would hold it)
                target["group"] = f"dsr-bench_svc{i}_80_sg"
                changed.clear()
                if host in registered[i]:
                    registered[i].discard(host)
                    await writer.delete(key)
                else:
                    registered[i].add(host)
                    await writer.put(key, record(host))
                accepted = time.perf_counter()
                await asyncio.wait_for(changed.wait(), timeout=10)
                latencies.append(target["at"] - accepted)
            await asyncio.sleep(1.5)
            stats = await sim.stats()
            stop.set()
            await asyncio.wait_for(task, timeout=30)
            await followers.close()
            await nitro.close()
    latencies.sort()
    print(f"{len(latencies)} registry changes over {services} DsrServices, simulator latency {latency_ms:g} ms/request")
    print(f"etcd write accepted → binding on NetScaler: p50 {statistics.median(latencies) * 1000:.1f} ms, "
          f"p99 {p99(latencies) * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms (target: p99 < 500 ms)")
    print(f"baseline, one NITRO member bind request: p50 {statistics.median(base) * 1000:.1f} ms, "
          f"p99 {p99(base) * 1000:.1f} ms; ratio p99/p99 {p99(latencies) / p99(base):.1f}x")
    print(f"NITRO requests: {stats['requests']} for {len(latencies)} changes = "
          f"{stats['requests'] / len(latencies):.2f} per change ({stats['byMethod']})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.changes, args.latency_ms))
