"""Benchmark: EndpointSlice change → NetScaler binding change, through the whole operator.

The operator and the NITRO simulator run as processes of their own (as users run them); the bench
process serves the Kubernetes API emulator (kmock, real HTTP) and plays the node agents. The
simulator answers with 5 ms latency per request. N DsrServices each front a Service with endpoints on
three of five nodes; every change flips one endpoint's readiness (ready → not ready → ready), which
must bind or unbind exactly one member of the DsrService's NetScaler servicegroup. The script
measures, per change, the time from the API server accepting the EndpointSlice write to the simulator
applying the binding change (watch delivery, operator, NITRO; the simulator's journal gives when it
applied the change, on the same clock), and counts every NITRO request the operator sends meanwhile.

Usage: python bench/endpoint_latency.py [--services 100] [--changes 500] [--latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import kmock
from aiohttp import web
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import PatchType

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench.drain_lag import _stop, simulator_answers, start_operator, start_simulator
from tests import conftest as kube_fixture

from dsr_lab import kubeemu, simctl
from dsr_operator import kube as kubeapi

EndpointSlice = create_namespaced_resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
Service = create_namespaced_resource("", "v1", "Service", "services")
Node = create_global_resource("", "v1", "Node", "nodes")
NODES = [f"n{i}" for i in range(5)]


def endpoints(nodes: list[str], ready: dict[str, bool]) -> list[dict[str, Any]]:
    return [{"addresses": [f"10.244.{i}.9"], "nodeName": n, "conditions": {"ready": ready[n], "serving": ready[n],
             "terminating": False}} for i, n in enumerate(nodes)]


async def play_agents(client: Any) -> None:
    """Report every node's VIPs applied at the current generation (what the agents would do)."""
    for node in NODES:
        try:
            cfg = (await client.get(kubeapi.DsrNodeConfig, node)).to_dict()
        except Exception:
            continue
        status = cfg.get("status") or {}
        if status.get("observedGeneration") == cfg["metadata"]["generation"]:
            continue
        await client.patch(kubeapi.DsrNodeConfig.Status, node, {"status": {
            "observedGeneration": cfg["metadata"]["generation"], "appliedVips": cfg["spec"].get("vips", [])}},
            patch_type=PatchType.MERGE)


async def ready_count(client: Any) -> int:
    count = 0
    async for obj in client.list(kubeapi.DsrService, namespace="bench"):
        body = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        status = body.get("status") or {}
        ready = next((c for c in status.get("conditions", ()) if c.get("type") == "Ready"), {})
        count += ready.get("status") == "True" and status.get("observedGeneration") == body["metadata"]["generation"]
    return count


MEMBERS = "servicegroup_servicegroupmember_binding"


async def count_bindings(url: str) -> int:
    """How many servicegroup members NetScaler holds: the backends bound."""
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "bench"}
    async with aiohttp.ClientSession() as http, http.get(
        f"{url}/nitro/v1/config/{MEMBERS}", params={"bulkbindings": "yes"}, headers=headers
    ) as resp:
        return len((await resp.json()).get(MEMBERS, []))


def vip(i: int) -> str:
    return f"10.200.{i // 250}.{i % 250 + 1}"


async def main(services: int, changes: int, latency_ms: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="dsr-bench-endpoints-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSR_", "KUBE"))}
    sim_url, sim_proc = start_simulator(work, env)
    operator: subprocess.Popen[bytes] | None = None
    try:
        async with kubeemu.KubeEmulator() as emulator, kmock.Server(emulator) as kserver, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            sim = simctl.Simulator(url=sim_url, app=web.Application(), http=http)  # its /_sim endpoints only
            for resource, kind, namespaced, status in kube_fixture.RESOURCES:
                emulator.register(resource, kind=kind, namespaced=namespaced, status=status)
            handle = kube_fixture.KubeHandle(emulator=emulator, url=str(kserver.url).rstrip("/"))
            client = handle.client()
            for i, node in enumerate(NODES):
                await client.create(Node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
                await client.patch(Node.Status, node, {"status": {"addresses": [
                    {"type": "InternalIP", "address": f"198.51.100.{i + 1}"}]}}, patch_type=PatchType.MERGE)
            placement: dict[int, list[str]] = {}
            readiness: dict[int, dict[str, bool]] = {}
            for i in range(services):
                nodes = [NODES[(i + k) % len(NODES)] for k in range(3)]
                placement[i], readiness[i] = nodes, dict.fromkeys(nodes, True)
                await client.create(Service({"apiVersion": "v1", "kind": "Service",
                                             "metadata": {"name": f"svc{i}", "namespace": "bench"},
                                             "spec": {"ports": [{"port": 80}], "externalIPs": [vip(i)]}}))
                await client.create(EndpointSlice({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                    "metadata": {"name": f"svc{i}-a", "namespace": "bench",
                                 "labels": {"kubernetes.io/service-name": f"svc{i}"}},
                    "endpoints": endpoints(nodes, readiness[i]), "ports": [{"port": 8080}]}))
                await client.create(kubeapi.DsrService({
                    "apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
                    "metadata": {"name": f"svc{i}", "namespace": "bench"},
                    "spec": {"vip": vip(i), "ports": [80], "backends": {"service": f"svc{i}"}, "drainSeconds": 0}}))
            await simulator_answers(sim, latency_ms, work)
            operator = start_operator(work, env, handle.url, sim_url)

            # Converge: every DsrService bound to its three nodes.
            t0 = time.perf_counter()
            want = services * 3
            while True:
                await play_agents(client)
                net = await count_bindings(sim.url)
                if net >= want:
                    break
                if time.perf_counter() - t0 > 600:
                    raise SystemExit(f"did not converge: {net} of {want} bindings; see {work}")
                await asyncio.sleep(0.5)
            bound = time.perf_counter() - t0
            while await ready_count(client) < services:  # every status written: the operator is idle
                if time.perf_counter() - t0 > 900:
                    raise SystemExit(f"not every DsrService Ready; see {work}")
                await asyncio.sleep(1.0)
            print(f"Converged {services} DsrServices x 3 nodes: bound in {bound:.1f}s, "
                  f"all Ready in {time.perf_counter() - t0:.1f}s")
            await asyncio.sleep(1.5)  # let the debounced save go out before counting

            await sim.reset_stats()
            rng = random.Random(7)
            latencies: list[float] = []
            api_times: list[float] = []
            while len(latencies) < changes:
                i = rng.randrange(services)
                node = rng.choice(placement[i])
                readiness[i][node] = not readiness[i][node]
                if not any(readiness[i].values()):
                    readiness[i][node] = True
                    continue
                group = f"dsr-bench_svc{i}_80_sg"
                seq = max((j["seq"] for j in await sim.journal()), default=0)
                start = time.perf_counter()
                await client.patch(EndpointSlice, f"svc{i}-a", {"endpoints": endpoints(placement[i], readiness[i])},
                                   namespace="bench", patch_type=PatchType.MERGE)
                accepted, accepted_wall = time.perf_counter(), time.time()
                applied = None
                limit = time.monotonic() + 30
                while applied is None:
                    applied = next((j["time"] for j in await sim.journal(since=seq)
                                    if j["resource"] == MEMBERS and j["name"] == group), None)
                    if applied is None:
                        if time.monotonic() > limit:
                            raise SystemExit(f"change {len(latencies)} of {group} not applied within 30 s")
                        await asyncio.sleep(0.01)
                latencies.append(applied - accepted_wall)
                api_times.append(accepted - start)
            await asyncio.sleep(1.5)
            stats = await sim.stats()
            await asyncio.to_thread(_stop, operator)
    finally:
        if operator is not None and operator.poll() is None:
            _stop(operator)
        _stop(sim_proc)

    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"{len(latencies)} EndpointSlice changes over {services} DsrServices, operator and simulator as "
          f"processes, simulator latency {latency_ms:g} ms/request")
    print(f"change accepted by the API → binding on NetScaler: p50 {p50 * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    print(f"(the emulated API server itself took p50 {statistics.median(api_times) * 1000:.1f} ms to accept "
          "each EndpointSlice write; that time is not counted above)")
    print(f"NITRO requests: {stats['requests']} for {len(latencies)} changes = "
          f"{stats['requests'] / len(latencies):.2f} per change ({stats['byMethod']})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.changes, args.latency_ms))
