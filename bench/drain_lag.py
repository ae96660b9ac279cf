"""Benchmark: the lag from the end of a backend's drain on NetScaler to its unbind, through the whole operator.

The operator and the NITRO simulator run as processes of their own (as they do for users: the
operator in its Pod, NetScaler on its box); the bench process serves the Kubernetes API emulator
(kmock, real HTTP) and drives the changes. The simulator answers with 5 ms latency per request.
N DsrServices each have three static backends of their own
and `drainSeconds: 1`. Each round removes one backend from C of them at once (C drains end together),
waits until all of them are unbound, then puts the backends back. For every removal the simulator's
journal gives when the graceful disable was applied and when the unbind was: the drain ends on the
box at disable + 1 s, and the lag is unbind minus that end. It runs with C = 1 (one drain at a time) and
with C = N (every DsrService drains at once).

Baseline, measured in the same run against the same simulator: one NITRO round trip (a bulk unbind
of N bindings sent by this script and bound again), the least time any client needs to act on the
end of a drain. Every backend has one client (`/_sim/clients`), so no drain ends before its time.
The script prints the lag's percentiles and their ratio to that round trip.

Usage: python bench/drain_lag.py [--services 20] [--rounds 10] [--latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
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
from lightkube.types import PatchType

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests import conftest as kube_fixture

from dsr_lab import kubeemu, simctl
from dsr_operator import kube as kubeapi

HEADERS = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "bench"}
DRAIN = 1


def backends(i: int, count: int = 3) -> list[dict[str, str]]:
    return [{"name": f"h{k}", "address": f"10.1.{i}.{k + 1}"} for k in range(count)]


MEMBERS = "servicegroup_servicegroupmember_binding"


async def bindings(url: str) -> list[dict[str, Any]]:
    """Every servicegroup member: the backends bound, one group per DsrService."""
    async with aiohttp.ClientSession() as http, http.get(
        f"{url}/nitro/v1/config/{MEMBERS}", params={"bulkbindings": "yes"}, headers=HEADERS
    ) as resp:
        rows: list[dict[str, Any]] = (await resp.json()).get(MEMBERS, [])
        return rows


def member(entry: dict[str, Any]) -> tuple[str, str, str]:
    """The member a journal entry acts on: (servicegroup, server, port)."""
    key = entry["key"]
    return key["servicegroupname"], key["servername"], str(key["port"])


async def wait_bound(url: str, want: int) -> None:
    deadline = time.monotonic() + 300
    while len(await bindings(url)) != want:
        if time.monotonic() > deadline:
            raise SystemExit(f"bindings did not reach {want}")
        await asyncio.sleep(0.05)


async def round_trip(url: str, rows: list[dict[str, Any]]) -> float:
    """One bulk unbind of `rows` (timed), then bind them again (not timed)."""
    body = [{k: r[k] for k in ("servicegroupname", "servername", "port")} for r in rows]
    async with aiohttp.ClientSession() as http:
        start = time.perf_counter()
        async with http.post(f"{url}/nitro/v1/config/{MEMBERS}?action=unbind", headers=HEADERS,
                             json={MEMBERS: body}) as resp:
            assert resp.status == 200, await resp.text()
        took = time.perf_counter() - start
        async with http.put(f"{url}/nitro/v1/config/{MEMBERS}", headers=HEADERS, json={MEMBERS: body}) as resp:
            assert resp.status in (200, 201), await resp.text()
    return took


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_simulator(work: Path, env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """`dsr-operator nitro-sim` as a process of its own (user nsroot, password bench): its URL and process."""
    url = f"http://127.0.0.1:{_free_port()}"
    with (work / "sim.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dsr_operator.cli", "nitro-sim", "--listen",
                                 url.removeprefix("http://"), "--user", "nsroot"],
                                env={**env, "DSR_SIM_PASSWORD": "bench"}, stdout=log, stderr=subprocess.STDOUT)
    return url, proc


async def simulator_answers(sim: simctl.Simulator, latency_ms: float, work: Path) -> None:
    """Wait until the simulator process answers, and set its latency."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await sim.faults(latencyMs=latency_ms)
            return
        except aiohttp.ClientError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the simulator did not start: see {work / 'sim.log'}") from None
            await asyncio.sleep(0.2)


def start_operator(work: Path, env: dict[str, str], kube_url: str, sim_url: str) -> subprocess.Popen[bytes]:
    """`dsr-operator run` against the emulator and the simulator, resync far away, logs in the work dir."""
    (work / "password").write_text("bench")
    with (work / "operator.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dsr_operator.cli", "run"], stdout=log, stderr=subprocess.STDOUT,
            env={**env, "DSR_KUBE_SERVER": kube_url, "DSR_NETSCALER_URL": sim_url,
                 "DSR_NETSCALER_USERNAME": "nsroot", "DSR_NETSCALER_PASSWORD_FILE": str(work / "password"),
                 "DSR_RESYNC_SECONDS": "3600", "DSR_METRICS_PORT": "0", "DSR_LIVENESS_PORT": "0",
                 "DSR_SAVE_DEBOUNCE_SECONDS": "1"})


async def main(services: int, rounds: int, latency_ms: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="dsr-bench-drain-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSR_", "KUBE"))}
    sim_url, sim_proc = start_simulator(work, env)
    operator: subprocess.Popen[bytes] | None = None
    try:
        async with kubeemu.KubeEmulator() as emulator, kmock.Server(emulator) as kserver, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            # The simulator is another process: only its /_sim control endpoints are used from here.
            sim = simctl.Simulator(url=sim_url, app=web.Application(), http=http)
            for resource, kind, namespaced, status in kube_fixture.RESOURCES:
                emulator.register(resource, kind=kind, namespaced=namespaced, status=status)
            handle = kube_fixture.KubeHandle(emulator=emulator, url=str(kserver.url).rstrip("/"))
            client = handle.client()
            for i in range(services):
                await client.create(kubeapi.DsrService({
                    "apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
                    "metadata": {"name": f"svc{i}", "namespace": "bench"},
                    "spec": {"vip": f"192.0.2.{i + 1}", "ports": [80], "backends": {"static": backends(i)},
                             "drainSeconds": DRAIN}}))
            await simulator_answers(sim, latency_ms, work)
            operator = start_operator(work, env, handle.url, sim_url)
            await wait_bound(sim.url, services * 3)
            # A client on every backend: a graceful disable then lasts its full drainSeconds (with none
            # left, NetScaler would end it at once).
            await sim.set_clients({f"dsr-bench_svc{i}_80_sg/dsr-{b['address']}:80": 1
                                   for i in range(services) for b in backends(i)})
            print(f"Converged {services} DsrServices x 3 static backends")

            baseline = [await round_trip(sim.url, await bindings(sim.url)) for _ in range(5)]
            results = {1: await drains(client, sim, services, 1, rounds),
                       services: await drains(client, sim, services, services, max(1, rounds // 3))}
            await asyncio.to_thread(_stop, operator)
    finally:
        if operator is not None and operator.poll() is None:
            _stop(operator)
        _stop(sim_proc)

    rtt = statistics.median(baseline)
    print(f"operator and simulator as processes; drainSeconds {DRAIN}, simulator latency {latency_ms:g} ms/request; "
          f"baseline: one bulk NITRO unbind round trip, p50 {rtt * 1000:.1f} ms")
    for together, lags in results.items():
        lags.sort()
        p50 = statistics.median(lags)
        p99 = lags[max(0, int(len(lags) * 0.99) - 1)]
        print(f"{together:>3} drain(s) ending together, {len(lags)} drains: drain end on NetScaler → unbind "
              f"p50 {p50 * 1000:.1f} ms ({p50 / rtt:.1f}x baseline), p99 {p99 * 1000:.1f} ms ({p99 / rtt:.1f}x), "
              f"max {lags[-1] * 1000:.1f} ms; target p99 < 200 ms {'met' if p99 < 0.2 else 'NOT met'}")


async def drains(client: Any, sim: simctl.Simulator, services: int, together: int, rounds: int) -> list[float]:
    """`rounds` rounds of `together` DsrServices losing a backend at once; the lag of each drain."""
    lags: list[float] = []
    for r in range(rounds):
        chosen = [(r * together + k) % services for k in range(together)]
        seq = max((j["seq"] for j in await sim.journal()), default=0)
        for i in chosen:
            await client.patch(kubeapi.DsrService, f"svc{i}", {"spec": {"backends": {"static": backends(i, 2)}}},
                               namespace="bench", patch_type=PatchType.MERGE)
        await wait_bound(sim.url, services * 3 - together)
        journal = await sim.journal(since=seq)
        steps = [((j["resource"], j["action"]), member(j), j["time"]) for j in journal if "servername" in j["key"]]
        disabled = {m: t for step, m, t in steps if step == ("servicegroup", "disable")}
        unbound = {m: t for step, m, t in steps if step == (MEMBERS, "unbind")}
        assert set(disabled) == set(unbound) and len(disabled) == together, (disabled, unbound)
        lags.extend(unbound[s] - (disabled[s] + DRAIN) for s in disabled)
        for i in chosen:
            await client.patch(kubeapi.DsrService, f"svc{i}", {"spec": {"backends": {"static": backends(i)}}},
                               namespace="bench", patch_type=PatchType.MERGE)
        await wait_bound(sim.url, services * 3)
    return lags


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.rounds, args.latency_ms))
