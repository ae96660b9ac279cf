"""The `dsr-operator agent` process: restarts without a VIP gap, SIGTERM keeps VIPs, --uninstall undoes."""

from __future__ import annotations

import asyncio
import json
import pathlib
import signal
import subprocess
import sys
import threading
from typing import Any

import lightkube.types

from dsr_operator import kube as kubeapi
from tests.conftest import KubeHandle
from tests.support.hostcheck import cidrs, set_sysctl, sysctl
from tests.support.waiting import eventually

NODE = "node-p"
VIPS = {"192.0.2.70/32", "2001:db8::70/128"}


async def start_agent(kube: KubeHandle, ns: str, state_dir: pathlib.Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsr_operator.cli", "agent", "--node-name", NODE, "--netns", ns,
        "--server", kube.url, "--state-dir", str(state_dir), "--resync-seconds", "0.5",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
    return proc.returncode or 0, out.decode()


class GapWatch:
    """Samples `ip -j addr` in a tight loop in a thread; counts samples where a VIP was missing."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.samples = 0
        self.missing: list[set[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["ip", "-n", self.ns, "-j", "addr", "show", "dev", "lo"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            held = {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link["addr_info"]}
            self.samples += 1
            if not VIPS <= held:
                self.missing.append(VIPS - held)

    def __enter__(self) -> GapWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


async def test_restart_keeps_vips_sigterm_leaves_them_uninstall_restores(
    kube: KubeHandle, netns: str, tmp_path: pathlib.Path
) -> None:
    set_sysctl(netns, "net.ipv4.conf.all.arp_announce", 1)  # a host value the agent must give back
    before = {key: sysctl(netns, key) for key in (
        "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce",
        "net.ipv4.conf.lo.arp_ignore", "net.ipv4.conf.lo.arp_announce",
    )}  # fmt: skip
    client = kube.client()
    await client.create(kubeapi.DsrNodeConfig(metadata={"name": NODE}, spec={"vips": ["192.0.2.70", "2001:db8::70"]}))

    async def status() -> dict[str, Any]:
        return dict((await client.get(kubeapi.DsrNodeConfig, NODE)).get("status") or {})

    first = await start_agent(kube, netns, tmp_path)
    try:
        await eventually(lambda: VIPS <= cidrs(netns, "lo"), what="VIPs from the first agent")
        await eventually(lambda: _generation(status(), 1), what="status from the first agent")
        assert sysctl(netns, "net.ipv4.conf.all.arp_announce") == 2

        with GapWatch(netns) as watch:
            code, out = await stop(first)
            assert code == 0, out
            assert "VIPs stay in place" in out
            second = await start_agent(kube, netns, tmp_path)
            more = {"spec": {"vips": ["192.0.2.70", "2001:db8::70", "192.0.2.71"]}}
            await client.patch(kubeapi.DsrNodeConfig, NODE, more, patch_type=lightkube.types.PatchType.MERGE)
            await eventually(lambda: "192.0.2.71/32" in cidrs(netns, "lo"), what="the second agent at work")
            await eventually(lambda: _generation(status(), 2), what="status from the second agent")
            await eventually(lambda: watch.samples >= 50, what="enough samples")
        assert watch.samples >= 50
        assert watch.missing == [], f"VIP missing in {len(watch.missing)} of {watch.samples} samples"

        code, out = await stop(second)
        assert code == 0, out
        assert VIPS | {"192.0.2.71/32"} <= cidrs(netns, "lo"), "SIGTERM must leave the VIPs"
    finally:
        for proc in (first, locals().get("second")):
            if proc is not None and proc.returncode is None:
                proc.kill()
                leftover, _ = await proc.communicate()
                print(leftover.decode())

    uninstall = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsr_operator.cli", "agent", "--uninstall", "--netns", netns,
        "--state-dir", str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await uninstall.communicate()
    assert uninstall.returncode == 0, out.decode()
    assert "restored net.ipv4.conf.all.arp_announce=1" in out.decode()
    assert not (VIPS | {"192.0.2.71/32"}) & cidrs(netns, "lo")
    assert "127.0.0.1/8" in cidrs(netns, "lo")
    assert {key: sysctl(netns, key) for key in before} == before
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == [], "the state file is gone"


async def _generation(status: Any, generation: int) -> bool:
    return (await status).get("observedGeneration") == generation
