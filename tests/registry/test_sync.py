"""`dsr-operator sync` as a user runs it: a process, manifests on disk, a real etcd, the simulator.

No Kubernetes anywhere: hosts register, crash and leave; the manifests change and SIGHUP reads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dsr_lab import simctl
from tests.registry.conftest import Etcd
from tests.support.waiting import eventually

PREFIX = "/skydns/local/shop/web"


def manifest(name: str, vip: str, backends: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"vip": vip, "ports": [80], "backends": backends, "drainSeconds": 1}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SyncProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.fixture
async def sync_proc(tmp_path: Path, nitro_sim: simctl.Simulator, etcd_server: Etcd) -> AsyncIterator[SyncProcess]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "web.yaml").write_text(json.dumps(manifest("web", "192.0.2.10",
                                                            {"registry": {"etcd": {"prefix": PREFIX}}})))
    (manifests / "pi.yaml").write_text(json.dumps(manifest("pi", "192.0.2.11", {"static": [
        {"name": "pi-9", "address": "198.51.100.99"}]})))
    env = {**os.environ, "DSR_NETSCALER_PASSWORD": "nsroot"}
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsr_operator.cli", "sync", "-f", str(manifests), "--netscaler", nitro_sim.url,
        "--etcd", etcd_server.url, "--resync-seconds", "2", "--operator-id", "sync", "--metrics-port", str(port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    handle = SyncProcess(proc)
    handle.manifests = manifests  # type: ignore[attr-defined]
    handle.metrics = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    try:
        yield handle
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        print("\n".join(handle.lines))


async def bound(sim: simctl.Simulator, vserver: str = "dsr-shop_web_80") -> list[str]:
    """The backends of the vserver's servicegroup, named `dsr-<address>_<port>`."""
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nsroot"}
    binding = "servicegroup_servicegroupmember_binding"
    async with aiohttp.ClientSession() as http, http.get(
            f"{sim.url}/nitro/v1/config/{binding}/{vserver}_sg", headers=headers) as resp:
        return sorted(f"{r['servername']}_{r['port']}" for r in (await resp.json()).get(binding, []))


async def test_sync_follows_registrations_and_manifests_without_kubernetes(
        sync_proc: SyncProcess, nitro_sim: simctl.Simulator, etcd_server: Etcd) -> None:
    async def has(want: list[str], vserver: str = "dsr-shop_web_80") -> bool:
        return await bound(nitro_sim, vserver) == want

    await eventually(lambda: has(["dsr-198.51.100.99_80"], "dsr-shop_pi_80"), timeout=30)
    await eventually(lambda: sync_proc.said("DsrService shop/web: not ready: NoReadyBackends"), timeout=30)
    async with etcd_server.client() as registry:
        lease = await registry.grant(3)
        await registry.put(f"{PREFIX}/pi-1", json.dumps({"host": "198.51.100.21", "port": 80}))
        await registry.put(f"{PREFIX}/pi-2", json.dumps({"host": "198.51.100.22", "port": 80}), lease=lease)
        await eventually(lambda: has(["dsr-198.51.100.21_80", "dsr-198.51.100.22_80"]), timeout=30)
        assert sync_proc.said("DsrService shop/web: Ready (2/2 bound)")
        async with aiohttp.ClientSession() as http, http.get(sync_proc.metrics) as resp:  # type: ignore[attr-defined]
            metrics = await resp.text()
        assert 'dsr_bound_backends{name="web",namespace="shop"} 2.0' in metrics, metrics
        assert sync_proc.said("applied: bind servicegroup dsr-shop_web_80_sg dsr-198.51.100.21 80")
        # pi-2 crashes (its lease runs out); pi-1 leaves gracefully.
        await eventually(lambda: has(["dsr-198.51.100.21_80"]), timeout=60)
        await registry.put(f"{PREFIX}/pi-1", json.dumps({"host": "198.51.100.21", "port": 80, "drain": True}))
        await eventually(lambda: has([]), timeout=30)
    # The static DsrService leaves the manifests: SIGHUP, and its objects leave NetScaler.
    (sync_proc.manifests / "pi.yaml").unlink()  # type: ignore[attr-defined]
    sync_proc.proc.send_signal(signal.SIGHUP)
    await eventually(lambda: sync_proc.said("DsrService shop/pi: removed"), timeout=30)
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nsroot"}
    async with aiohttp.ClientSession() as http, http.get(f"{nitro_sim.url}/nitro/v1/config/lbvserver",
                                                         headers=headers) as resp:
        assert [v["name"] for v in (await resp.json()).get("lbvserver", [])] == ["dsr-shop_web_80"]
    sync_proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(sync_proc.proc.wait(), 30) == 0


def test_sync_refuses_a_broken_manifest(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(json.dumps(manifest("web", "192.0.2.10", {"static": []})))
    env = {**os.environ, "DSR_NETSCALER_PASSWORD": "x"}
    done = subprocess.run([sys.executable, "-m", "dsr_operator.cli", "sync", "-f", str(tmp_path),
                           "--netscaler", "http://127.0.0.1:9"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2, done
    assert "spec.backends.static: List should have at least 1 item" in done.stderr
