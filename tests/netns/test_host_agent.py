"""`dsr-operator host-agent` in a throwaway namespace against a real etcd: VIP first, registration after;
on SIGTERM draining first, deregistered after, the VIP removed last."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

from dsr_operator.registry import etcd
from tests.registry.conftest import ETCD, Etcd
from tests.support.hostcheck import run

pytestmark = pytest.mark.skipif(not os.access(ETCD, os.X_OK), reason=f"no etcd binary at {ETCD} (make controlplane)")

VIP = "192.0.2.77"
KEY = "/skydns/local/lab/web/h1"


def has_vip(netns: str) -> bool:
    out = run("ip", "-n", netns, "-j", "addr", "show", "dev", "lo").stdout
    return any(a.get("local") == VIP for link in json.loads(out) for a in link.get("addr_info", []))


def start_agent(netns: str, etcd_url: str, tmp: pathlib.Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dsr_operator.cli", "host-agent", "--etcd", etcd_url,
         "--prefix", "/skydns/local/lab/web", "--vip", VIP, "--address", "198.51.100.31", "--port", "80",
         "--name", "h1", "--ttl", "2", "--drain-seconds", "2", "--netns", netns, "--state-dir", str(tmp / "state")],
        stdout=(tmp / "agent.log").open("ab"), stderr=subprocess.STDOUT)


def phase(kvs: list[etcd.KeyValue]) -> str:
    return "none" if not kvs else ("drain" if json.loads(kvs[0].value).get("drain") else "up")


async def test_the_vip_comes_before_the_registration_and_leaves_after_it(netns: str, tmp_path: pathlib.Path) -> None:
    server = Etcd(tmp_path)
    server.start()
    proc = start_agent(netns, server.url, tmp_path)
    try:
        async with server.client() as client:
            phases: list[tuple[bool, str]] = []  # (VIP on lo, registration), each change as seen
            record: dict[str, object] | None = None
            while True:
                exited = proc.poll() is not None
                # The registration read before and after the VIP: both registered and the same write, so the
                # VIP was looked at while the host was registered.
                _, before = await client.range_prefix(KEY)
                vip = await asyncio.to_thread(has_vip, netns)
                _, after = await client.range_prefix(KEY)
                steady = bool(before and after and before[0].mod_revision == after[0].mod_revision)
                if steady:
                    assert vip, f"registered without the VIP: {after[0].value!r}"
                if phase(after) == "up":
                    record = json.loads(after[0].value)
                now = (vip, phase(after))
                if not phases or phases[-1] != now:
                    phases.append(now)
                if steady and now[1] == "up" and proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)  # registered and seen with its VIP: now leave
                if exited:
                    break
                await asyncio.sleep(0.02)
        assert proc.returncode == 0, (tmp_path / "agent.log").read_text()
        assert record == {"host": "198.51.100.31", "port": 80, "ttl": 2, "name": "h1"}, (
            phases, (tmp_path / "agent.log").read_text())
        # Registered, then draining with the VIP still there, then deregistered, and the VIP gone last.
        assert (True, "up") in phases and (True, "drain") in phases, phases
        assert phases.index((True, "up")) < phases.index((True, "drain")) < len(phases) - 1, phases
        assert phases[-1] == (False, "none"), phases
        assert (False, "up") not in phases and (False, "drain") not in phases, phases
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_bad_arguments_are_refused_before_anything_is_touched() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dsr_operator.cli", "host-agent", "--prefix", "/p", "--vip", "127.0.0.1",
         "--address", "pi.example", "--name", "Not_A_Label"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "DSR_ETCD_ENDPOINTS"})
    assert done.returncode == 2
    for message in ("--vip 127.0.0.1", "--address 'pi.example' is not an IP address", "--name 'Not_A_Label'",
                    "no etcd: give --etcd URL"):
        assert message in done.stderr, done.stderr
