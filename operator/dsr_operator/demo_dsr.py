"""`dsr-operator demo-dsr`: real DSR traffic in network namespaces, end to end, then everything removed.

Builds `dsrlab.Lab` (client, lb, three backends on one bridge), starts the NITRO simulator with its
nftables dataplane in lb, prepares each backend with `host-setup --apply` (the node agent's own
code: VIP on lo, arp_ignore/arp_announce), applies a DsrService with static backends through the
planner and NITRO client (`dsr-operator apply`), sends HTTP requests from the client to the VIP and
prints which backend answered each, then the packet counters that show the replies bypassed lb.
Needs root, iproute2, nftables and tcpdump. Tears everything down at the end and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import TextIO

from dsr_operator import dsrlab, oneshot
from dsr_operator.netscaler import client as nitro
from dsr_operator.simulator import dataplane, server

MANIFEST = """\
apiVersion: dsr.operators.dev/v1alpha1
kind: DsrService
metadata: {{name: web, namespace: demo}}
spec:
  vip: {vip}
  ports: [80]
  backends:
    static:
{backends}
  healthCheck: {{type: TCP, intervalSeconds: 2, timeoutSeconds: 1, retries: 1}}
  drainSeconds: 2
"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo-dsr",
        help="real DSR traffic in network namespaces: client → VIP → backend → client directly (root)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, default=12, help="HTTP requests to send (default %(default)s)")
    parser.add_argument("--prefix", default="dsrdemo", help="namespace name prefix (default %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    why = dsrlab.missing_tools()
    if why:
        print(f"demo-dsr: {why}", file=sys.stderr)
        return 2
    lab = dsrlab.Lab(args.prefix)
    try:
        print(f"# Building the lab: namespaces {lab.prefix}-{{br,client,lb,b1,b2,b3}}, 10.77.0.0/24, VIP {lab.vip}")
        lab.up()
        return asyncio.run(_demo(lab, max(1, args.requests), sys.stdout))
    except KeyboardInterrupt:
        print("\n# Interrupted", file=sys.stderr)
        return 130
    finally:
        lab.down()
        print("# Lab removed (namespaces, links, nftables state, processes)")


async def _demo(lab: dsrlab.Lab, requests: int, out: TextIO) -> int:
    with tempfile.TemporaryDirectory(prefix="dsr-demo-") as tmp:
        for backend in lab.backends:
            await _host_setup(lab, backend, pathlib.Path(tmp) / backend)
        print(f"# Backends b1..b3 hold {lab.vip} on lo (arp_ignore=1, arp_announce=2), HTTP on :80", file=out)
        plane = dataplane.Dataplane(lab.ns("lb"), "eth0")
        async with server.running(users={"nsroot": "demo-password"}, dataplane=plane) as sim:
            print(f"# NITRO simulator on {sim.url}, dataplane in {lab.ns('lb')} (MAC {plane.mac})", file=out)
            manifest = pathlib.Path(tmp) / "dsrservice.yaml"
            static = "\n".join(f"      - {{name: {b}, address: {lab.ip(b)}}}" for b in lab.backends)
            manifest.write_text(MANIFEST.format(vip=lab.vip, backends=static))
            loaded, problems, _ = oneshot.load_manifests([manifest])
            if problems:
                print("\n".join(problems), file=out)
                return oneshot.EXIT_INVALID
            print("\n## Apply the DsrService (the NetScaler configuration, as NetScaler CLI)", file=out)
            async with nitro.NitroClient(sim.url, username="nsroot", password="demo-password") as client:
                code = await oneshot.run_apply(client, oneshot._intents(loaded), "demo-dsr", False, out)
            if code:
                return code
            deadline = time.monotonic() + 20
            while True:
                view = await sim.dataplane()
                ready = view["vservers"] and len(view["vservers"][0]["newFlows"]) == len(lab.backends)
                if ready or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            for probe in view["probes"]:
                print(f"# monitor {probe['monitor']} on {probe['service']}: {'UP' if probe['up'] else 'DOWN'} "
                      f"({probe['last']})", file=out)  # fmt: skip
            before = {b: await asyncio.to_thread(lab.vip_packets, b) for b in lab.backends}
            lb_rx_before, lb_tx_before = await asyncio.to_thread(lab.link_packets, "lb")
            print(f"\n## {requests} HTTP requests from {lab.ns('client')} to http://{lab.vip}/", file=out)
            failed = 0
            for i in range(1, requests + 1):
                reply = await asyncio.to_thread(lab.get, 2.0)
                failed += not reply.ok
                answer = f"answered by {reply.backend}" if reply.ok else f"FAILED: {reply.backend}"
                print(f"request {i:3}: client port {reply.sport:5}  {answer}", file=out)
            view = await sim.dataplane()
            counters = view["counters"]
            lb_rx, lb_tx = await asyncio.to_thread(lab.link_packets, "lb")
            print("\n## Packet counters", file=out)
            print(f"lb nftables, frames to the VIP at ingress: {counters['vserverPackets']}", file=out)
            print(f"lb nftables, frames forwarded per service: {counters['forwardedPackets']}", file=out)
            print(f"lb eth0 during the requests: rx {lb_rx - lb_rx_before}, tx {lb_tx - lb_tx_before} frames", file=out)
            replies = 0
            for b in lab.backends:
                got, sent = await asyncio.to_thread(lab.vip_packets, b)
                replies += sent - before[b][1]
                print(f"{b}: received {got - before[b][0]} client packets for the VIP, "
                      f"sent {sent - before[b][1]} replies from the VIP straight to the client", file=out)  # fmt: skip
            print(f"# {replies} reply packets went from the backends to the client without crossing lb "
                  f"(lb's eth0 counted only what it received and forwarded).", file=out)  # fmt: skip
            return 1 if failed else 0


async def _host_setup(lab: dsrlab.Lab, backend: str, state_dir: pathlib.Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dsr_operator.cli", "host-setup", "--vip", lab.vip, "--apply",
        "--netns", lab.ns(backend), "--state-dir", str(state_dir),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )  # fmt: skip
    output, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"host-setup in {backend} failed: {output.decode()}")
