"""The agent process with an IPv6 VIP: its `/metrics` (VIPs held and refused, per node), its IPv6 settings."""

from __future__ import annotations

import asyncio
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp

from dsr_operator import kube as kubeapi
from tests.conftest import KubeHandle
from tests.support.hostcheck import addresses, cidrs, sysctl
from tests.support.waiting import eventually

NODE = "node-m"


async def test_agent_exports_held_and_refused_vips_for_its_node(
    kube: KubeHandle, netns: str, tmp_path: pathlib.Path, unused_tcp_port: int
) -> None:
    client = kube.client()
    # 127.0.0.9 is refused by the agent (a loopback address is no VIP); the other two are held.
    spec = {"vips": ["192.0.2.80", "2001:db8::80", "127.0.0.9"]}
    await client.create(kubeapi.DsrNodeConfig(metadata={"name": NODE}, spec=spec))
    started = time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsr_operator.cli", "agent", "--node-name", NODE, "--netns", netns,
        "--server", kube.url, "--state-dir", str(tmp_path), "--resync-seconds", "0.5",
        "--metrics-port", str(unused_tcp_port), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        await eventually(lambda: {"192.0.2.80/32", "2001:db8::80/128"} <= cidrs(netns, "lo"), timeout=30, what="VIPs")
        scraped: dict[str, str] = {}

        async def scrape() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{unused_tcp_port}/metrics"
                ) as response:
                    scraped["text"] = await response.text()
            except aiohttp.ClientError:
                return False
            return f'dsr_agent_vips{{node="{NODE}"}} 2.0' in scraped["text"]

        await eventually(scrape, timeout=30, what="the VIP count on /metrics")
        text = scraped["text"]
        assert f'dsr_agent_refused_vips{{node="{NODE}"}} 1.0' in text
        assert f'dsr_agent_host_error{{node="{NODE}"}} 0.0' in text
        stamp = next(
            float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(f'dsr_agent_last_pass_timestamp_seconds{{node="{NODE}"}}')
        )  # fmt: skip
        assert stamp >= started - 1

        # The IPv6 VIP: no DAD (never tentative, never probed for), no unsolicited neighbour advertisement.
        (vip6,) = [a for a in addresses(netns) if a["local"] == "2001:db8::80"]
        assert vip6.get("nodad") is True, vip6
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.all.ndisc_notify", "net.ipv6.conf.lo.ndisc_notify"):
            assert sysctl(netns, key) == 0, key
        assert sysctl(netns, "net.ipv6.conf.lo.accept_dad") in (0, -1)

        async def reported() -> dict[str, Any] | None:
            status = dict((await client.get(kubeapi.DsrNodeConfig, NODE)).get("status") or {})
            return status if status.get("appliedCount") == 2 else None

        status = await eventually(reported, timeout=30, what="the status with both VIPs applied")
        assert status["failedCount"] == 1
        assert status["sysctls"]["net.ipv6.conf.lo.ndisc_notify"] == 0
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=15)
            print(out.decode())
