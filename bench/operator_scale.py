"""Benchmark: the operator as a process against a real kube-apiserver, from scratch and after a restart.

Per scenario (N DsrServices x M static backends, simulator at 5 ms per request):
- baseline, in the same run: the one-shot planner (`planner.diff` + `executor.execute`, what
  `dsr-operator apply` does) configures the same work on an empty simulator, in this process and as
  users run it (`dsr-operator apply -f`, a process of its own, like the operator); its NITRO requests
  and wall time;
- from scratch: N DsrServices exist, the operator starts; time until every one is Ready at its
  generation, the NITRO requests it sent, and its RSS once converged;
- restart: SIGTERM (time to exit), start again; time until every DsrService was reconciled once
  (`dsr_reconciled_total`), and the NITRO writes meanwhile (must be 0).

Needs the control-plane binaries (`make controlplane`) and openssl.
Usage: python bench/operator_scale.py [--scenarios 200x10,1000x20] [--latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import lightkube
import yaml
from lightkube.config.kubeconfig import KubeConfig

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.controlplane import conftest as cpfix

from dsr_operator import kube as kubeapi
from dsr_operator.api import models
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import executor
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "nsroot", "bench-password"


def spec(i: int, backends: int) -> dict[str, Any]:
    """DsrService i: its own VIP and M backend hosts of its own (no sharing, so no shortcuts)."""
    host = f"{i // 62500}.{i // 250 % 250}.{1 + i % 250}"
    return {"vip": f"10.{200 + int(host.split('.')[0])}.{host.split('.', 1)[1]}", "ports": [80],
            "backends": {"static": [{"name": f"h{j}", "address": f"{20 + j}.{host}"} for j in range(backends)]},
            "drainSeconds": 0}


def sim(url: str, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(f"{url}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        text = resp.read()
        return json.loads(text) if text else None


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def baseline(url: str, services: int, backends: int) -> tuple[int, float]:
    intents = []
    for i in range(services):
        s = models.DsrServiceSpec.model_validate(spec(i, backends))
        ref = models.ObjectRef(namespace="bench", name=f"svc{i}", uid=f"uid-{i}")
        intents.append(desired_mod.Intent(ref, s, desired_mod.static_backends(s)))
    start = time.perf_counter()
    async with nitro.NitroClient(url, username=USER, password=PASSWORD) as client:
        before = client.stats.requests
        actual = await executor.read_actual(client, "baseline")
        plan = planner.diff(desired_mod.desired(intents), actual, planner.Policy("baseline"))
        outcome = await executor.execute(client, plan.stages)
        assert not outcome.failures, outcome.failures[:3]
        requests = client.stats.requests - before
    return requests, time.perf_counter() - start


def baseline_process(url: str, work: Path, services: int, backends: int) -> tuple[int, float]:
    """The same one-shot work as users run it: `dsr-operator apply -f FILE` as a process of its own."""
    manifests = work / f"manifests-{services}x{backends}.yaml"
    manifests.write_text(yaml.safe_dump_all(
        {"apiVersion": models.API_VERSION, "kind": models.SERVICE_KIND,
         "metadata": {"name": f"svc{i}", "namespace": "bench"}, "spec": spec(i, backends)}
        for i in range(services)))
    (work / "password").write_text(PASSWORD)
    sim(url, "POST", "/_sim/stats/reset")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dsr_operator.cli", "apply", "-f", str(manifests), "--netscaler", url,
                    "--user", USER, "--password-file", str(work / "password"), "--operator-id", "baseline"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return sim(url, "GET", "/_sim/stats")["requests"], seconds


async def create_all(client: lightkube.AsyncClient, namespace: str, services: int, backends: int) -> None:
    semaphore = asyncio.Semaphore(32)

    async def one(i: int) -> None:
        async with semaphore:
            await client.create(kubeapi.DsrService({
                "apiVersion": models.API_VERSION, "kind": models.SERVICE_KIND,
                "metadata": {"name": f"svc{i}", "namespace": namespace}, "spec": spec(i, backends)}))

    await asyncio.gather(*(one(i) for i in range(services)))


async def ready_count(client: lightkube.AsyncClient, namespace: str) -> int:
    count = 0
    async for obj in client.list(kubeapi.DsrService, namespace=namespace, chunk_size=2000):
        body = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
        status = body.get("status") or {}
        ready = next((c for c in status.get("conditions", ()) if c.get("type") == "Ready"), {})
        if ready.get("status") == "True" and status.get("observedGeneration") == body["metadata"].get("generation"):
            count += 1
    return count


class Operator:
    def __init__(self, cp: cpfix.ControlPlane, work: Path, namespace: str, sim_url: str) -> None:
        self.metrics_port = cpfix._free_port()
        (work / "password").write_text(PASSWORD)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DSR_", "KUBE"))}
        self.env.update({
            "DSR_KUBECONFIG": str(cp.kubeconfig), "DSR_NETSCALER_URL": sim_url, "DSR_NETSCALER_USERNAME": USER,
            "DSR_NETSCALER_PASSWORD_FILE": str(work / "password"), "DSR_OPERATOR_ID": namespace,
            "DSR_RESYNC_SECONDS": "3600", "DSR_METRICS_PORT": str(self.metrics_port), "DSR_LIVENESS_PORT": "0",
            "DSR_SAVE_DEBOUNCE_SECONDS": "1",
        })
        self.args = [sys.executable, "-m", "dsr_operator.cli", "run", "--namespace", namespace]
        self.log = work / f"operator-{namespace}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return time.perf_counter()

    def stop(self) -> float:
        assert self.proc is not None
        start = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.perf_counter() - start


async def scenario(cp: cpfix.ControlPlane, work: Path, sim_url: str, services: int, backends: int,
                   latency_ms: float) -> dict[str, Any]:
    namespace = f"bench{services}x{backends}"
    cp.kc("create", "namespace", namespace)
    sim(sim_url, "POST", "/_sim/reset")
    sim(sim_url, "POST", "/_sim/faults", {"latencyMs": latency_ms})
    base_requests, base_seconds = await baseline(sim_url, services, backends)
    sim(sim_url, "POST", "/_sim/reset")
    sim(sim_url, "POST", "/_sim/faults", {"latencyMs": latency_ms})
    process_requests, process_seconds = baseline_process(sim_url, work, services, backends)
    sim(sim_url, "POST", "/_sim/reset")
    config = KubeConfig.from_file(str(cp.kubeconfig))
    client = lightkube.AsyncClient(config=config, field_manager="bench")
    await create_all(client, namespace, services, backends)
    sim(sim_url, "POST", "/_sim/stats/reset")
    op = Operator(cp, work, namespace, sim_url)
    started = op.start()
    while await ready_count(client, namespace) < services:
        if op.proc is not None and op.proc.poll() is not None:
            raise SystemExit(f"the operator exited; see {op.log}")
        if time.perf_counter() - started > 900:
            raise SystemExit(f"not converged in 15 min: {await ready_count(client, namespace)} of {services}")
        await asyncio.sleep(0.5)
    converged = time.perf_counter() - started
    requests = sim(sim_url, "GET", "/_sim/stats")["requests"]
    assert op.proc is not None
    rss = rss_mib(op.proc.pid)
    await asyncio.sleep(2.5)  # the debounced save
    stop_seconds = op.stop()
    sim(sim_url, "POST", "/_sim/stats/reset")
    restarted = op.start()
    while True:
        try:
            if metric(op.metrics_port, "dsr_reconciled_total") >= services:
                break
        except OSError:
            pass
        if time.perf_counter() - restarted > 600:
            raise SystemExit("restart did not reconcile everything in 10 min")
        await asyncio.sleep(0.2)
    restart_seconds = time.perf_counter() - restarted
    stats = sim(sim_url, "GET", "/_sim/stats")
    rss_restart = rss_mib(op.proc.pid)
    op.stop()
    await client.close()
    return {"services": services, "backends": backends, "baseline_requests": base_requests,
            "baseline_seconds": base_seconds, "process_requests": process_requests,
            "process_seconds": process_seconds, "requests": requests, "seconds": converged, "rss": rss,
            "stop_seconds": stop_seconds, "restart_seconds": restart_seconds, "restart_writes": stats["writes"],
            "restart_requests": stats["requests"], "rss_restart": rss_restart}


async def main(scenarios: list[tuple[int, int]], latency_ms: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="dsr-bench-scale-"))
    cp = cpfix._boot(work / "cp")
    sim_port = cpfix._free_port()
    sim_log = (work / "sim.log").open("wb")
    sim_proc = subprocess.Popen([sys.executable, "-m", "dsr_operator.cli", "nitro-sim", "--listen",  # noqa: ASYNC220
                                 f"127.0.0.1:{sim_port}", "--user", USER],
                                env={**os.environ, "DSR_SIM_PASSWORD": PASSWORD}, stdout=sim_log,
                                stderr=subprocess.STDOUT)
    sim_url = f"http://127.0.0.1:{sim_port}"
    try:
        cp.kc("apply", "--server-side", "-f", str(REPO / "crds"))
        cp.kc("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        # Established is not served: a new CRD's storage answers 429 for a moment, and kopf then waits
        # a second before its next attempt. Users install CRDs long before they start an operator.
        cp.wait_for(lambda: _served(cp), 30, "the CRDs' storage")
        cp.wait_for(lambda: _answers(sim_url), 30, "the simulator")
        results = [await scenario(cp, work, sim_url, n, m, latency_ms) for n, m in scenarios]
    finally:
        sim_proc.terminate()
        sim_proc.wait()
        cp.stop()
    print(f"operator as a process, real kube-apiserver, simulator at {latency_ms:g} ms/request")
    for r in results:
        print(f"{r['services']} x {r['backends']} from scratch: all Ready in {r['seconds']:.1f} s with "
              f"{r['requests']} NITRO requests; one-shot planner: {r['baseline_requests']} requests in "
              f"{r['baseline_seconds']:.1f} s -> {r['requests'] / r['baseline_requests']:.2f}x its requests, "
              f"{r['seconds'] / r['baseline_seconds']:.2f}x its wall time; RSS {r['rss']:.0f} MiB converged")
        print(f"   one-shot as a process (`dsr-operator apply -f`, as users run it): {r['process_requests']} "
              f"requests in {r['process_seconds']:.1f} s -> {r['requests'] / r['process_requests']:.2f}x its "
              f"requests, {r['seconds'] / r['process_seconds']:.2f}x its wall time")
        print(f"   restart: SIGTERM to exit {r['stop_seconds']:.2f} s; every DsrService reconciled in "
              f"{r['restart_seconds']:.1f} s with {r['restart_writes']} NITRO writes "
              f"({r['restart_requests']} requests); RSS {r['rss_restart']:.0f} MiB")


def _served(cp: cpfix.ControlPlane) -> bool:
    try:
        for plural in (models.SERVICE_PLURAL, models.NODECONFIG_PLURAL, "dsrvippools"):
            cp.kc("get", f"{plural}.{models.GROUP}", "--all-namespaces")
        return True
    except cpfix.ControlPlaneError:
        return False


def _answers(url: str) -> bool:
    try:
        sim(url, "GET", "/_sim/stats")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="200x10,1000x20")
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args()
    pairs = [tuple(int(x) for x in s.split("x")) for s in args.scenarios.split(",")]
    asyncio.run(main([(n, m) for n, m in pairs], args.latency_ms))
