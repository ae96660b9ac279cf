"""`dsr-operator demo-dsr`: the whole chain with real DSR traffic in network namespaces, then everything removed.

Builds `dsr_lab.lab.Lab` (client, lb, three backends on one bridge, VIP 10.77.0.100) and runs, in this
one process: the in-memory Kubernetes API (`dsr_lab.kubeemu`, from the lab extra), the NITRO
simulator with its nftables dataplane in lb, and the operator (kopf); plus one node agent process
per backend (`dsr-operator agent --netns ...`). It creates three Nodes (InternalIP = a backend's
address), a Service with the VIP in externalIPs, its EndpointSlice (one ready endpoint per node) and
a DsrService backed by that Service, and prints each step as it happens: the operator asks the
nodes for the VIP, the agents report it applied, NetScaler binds the backends. Then HTTP requests
from the client, which backend answered each, and lb's and the backends' packet counters (replies
bypass lb). Act 2: one node leaves the EndpointSlice; its backend is drained, unbound, its VIP
released, while requests keep succeeding on the others. Needs root, iproute2, nftables, tcpdump.
Tears everything down at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import pathlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TextIO

import aiohttp

from dsr_lab import lab as dsrlab
from dsr_lab import scenario, simctl
from dsr_operator import aio

NAMESPACE, SERVICE, DRAIN_SECONDS = scenario.NAMESPACE, scenario.SERVICE, scenario.DRAIN_SECONDS


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "demo-dsr",
        help="the whole chain with real DSR traffic in network namespaces: operator, agents, NetScaler (root)",
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
    try:
        from dsr_lab import kubeemu  # noqa: F401  (only to fail early, with what to install)
    except ImportError as exc:
        print(f"demo-dsr: {exc}", file=sys.stderr)
        return 2
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(logging.WARNING)  # the steps are printed; kopf's INFO log is noise here
        logging.getLogger("kopf").setLevel(logging.ERROR)  # e.g. its daemons' cancellation at shutdown
    lab = dsrlab.Lab(args.prefix)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(f"# Building the lab: namespaces {lab.prefix}-{{br,client,lb,b1,b2,b3}}, {lab.net}.0/24, VIP {lab.vip}")
        lab.up()
        return _in_thread(lambda: _demo(lab, max(1, args.requests), sys.stdout))
    except KeyboardInterrupt:
        print("\n# Interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # after printing the steps so far, say what failed; the teardown still runs
        print(f"demo-dsr: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        lab.down()
        signal.signal(signal.SIGTERM, previous)
        print("# Lab removed (agents, operator, simulator stopped; namespaces, links, nftables state deleted)")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM tears down like Ctrl-C


def _in_thread(demo: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run the demo's event loop in a worker thread and cancel it on Ctrl-C or SIGTERM.

    kopf, in the main thread, takes SIGINT and SIGTERM for itself: they would stop only the operator
    (and kopf would then SIGKILL the process, skipping the teardown). In a worker thread it leaves
    signals alone; the main thread keeps them and cancels the demo, whose cleanup then runs.
    """
    box: dict[str, Any] = {}
    cancelled = threading.Event()

    async def main() -> int:
        box["loop"], box["task"] = asyncio.get_running_loop(), asyncio.current_task()
        if cancelled.is_set():
            raise asyncio.CancelledError
        return await demo()

    def target() -> None:
        try:
            box["result"] = asyncio.run(main())
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            finished.set()

    finished = threading.Event()
    thread = threading.Thread(target=target, name="demo-dsr")
    thread.start()
    while not finished.is_set():
        # Not `thread.join(timeout)`: on Python 3.11 a KeyboardInterrupt inside it can mark the thread
        # as finished while it still runs, and the teardown would be cut short.
        try:
            time.sleep(0.1)
        except KeyboardInterrupt:
            cancelled.set()
            if "task" in box:
                box["loop"].call_soon_threadsafe(box["task"].cancel)
    thread.join()
    if cancelled.is_set() or isinstance(box.get("error"), asyncio.CancelledError):
        raise KeyboardInterrupt
    if "error" in box:
        raise box["error"]
    return int(box["result"])


def ready_condition(status: Mapping[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", ()) if c.get("type") == "Ready"), {})


class Narrator:
    """Polls the Kubernetes API and NetScaler's write journal, and prints each step as it happens."""

    def __init__(
        self, kube: scenario.Kube, sim: simctl.Simulator, lab: dsrlab.Lab, nodes: Mapping[str, str], out: TextIO
    ) -> None:
        self.kube, self.sim, self.lab, self.nodes, self.out = kube, sim, lab, nodes, out
        self.started = time.monotonic()
        self.seq = 0
        self.asked: dict[str, bool] = {}
        self.applied: dict[str, bool] = {}
        self.ready: tuple[str, str] = ("", "")
        self.journal: list[dict[str, Any]] = []

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", file=self.out, flush=True)

    async def poll(self) -> None:
        """Print what changed since the last poll, in causal order: the operator asks the nodes and the
        agents apply, NetScaler is written (binds after the agents applied, unbinds after drains), then
        the operator takes the VIP back and the agents release it."""
        changes = await self.sim.journal(since=self.seq)
        configs = await self.kube.nodeconfigs()
        later: list[str] = []
        for node, backend in self.nodes.items():
            cfg = configs.get(node) or {}
            meta, status = cfg.get("metadata") or {}, cfg.get("status") or {}
            asked = self.lab.vip in ((cfg.get("spec") or {}).get("vips") or [])
            applied = self.lab.vip in (status.get("appliedVips") or [])
            current = status.get("observedGeneration") == meta.get("generation")
            emit = self.say if asked else later.append  # a release is printed after NetScaler's unbind
            if asked != self.asked.get(node, False):
                self.asked[node] = asked
                what = "asks node {} for the VIP" if asked else "takes the VIP back from node {}"
                text = f"operator {what.format(node)} (DsrNodeConfig {node}, generation {meta.get('generation')})"
                emit(text)
            if current and applied != self.applied.get(node, False):
                self.applied[node] = applied
                where = f"lo in {self.lab.ns(backend)}"
                text = f"agent on {node} reports the VIP {'applied on' if applied else 'released from'} {where}"
                emit(text)
        for change in changes:
            self.seq = max(self.seq, change["seq"])
            self.journal.append(change)
            self.say(f"NetScaler: {_cli(change)}")
        for text in later:
            self.say(text)
        cond = ready_condition(await self.kube.dsr_status())
        ready = (str(cond.get("status", "")), str(cond.get("reason", "")))
        if cond and ready != self.ready:
            self.ready = ready
            self.say(f"DsrService {NAMESPACE}/{SERVICE}: Ready={ready[0]} ({ready[1]}: {cond.get('message', '')})")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError, RuntimeError):
                await self.poll()
            await aio.wait(stop, 0.15)

    def when(self, action: str, resource: str, backend: str) -> float | None:
        """When NetScaler applied the first `action` on `resource` for the backend's group membership."""
        for c in self.journal:
            if c["action"] == action and c["resource"] == resource and scenario.on_member(c, self.lab, backend):
                return float(c["time"])
        return None


def _cli(change: Mapping[str, Any]) -> str:
    """A journal entry in NetScaler CLI words."""
    key = dict(change.get("key") or {})
    name = change.get("name", "")
    rest = " ".join(str(v) for v in key.values() if v != name)  # a binding's other end, a member's server and port
    return f"{change['action']} {change['resource'].split('_')[0]} {name} {rest}".strip()


async def wait_for(check: Callable[[], Any], within: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False


async def _demo(lab: dsrlab.Lab, requests: int, out: TextIO) -> int:
    nodes = scenario.NODES
    stop_narrator = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="dsr-demo-") as tmp:
        async with scenario.running(lab, pathlib.Path(tmp)) as stack:
            kube, sim = stack.kube, stack.sim
            print(f"# Kubernetes API (in-memory emulator) on {stack.kube_url}", file=out)
            print(f"# NITRO simulator on {sim.url}, dataplane in {lab.ns('lb')} (MAC {stack.plane.mac})", file=out)
            print("# Operator (kopf) running in this process; one agent process per node:", file=out)
            for node, backend in nodes.items():
                stack.agents.start(node)
                print(f"#   node {node}: InternalIP {lab.ip(backend)}, "
                      f"`dsr-operator agent --netns {lab.ns(backend)} --interface-mode loopback`", file=out)
                await stack.node(node)
            await kube.service(lab.vip)
            await kube.endpoints(nodes)
            print(f"# Service {NAMESPACE}/{SERVICE} (externalIPs [{lab.vip}]) with one ready endpoint on "
                  f"each of {', '.join(nodes)}", file=out)  # fmt: skip
            narrator = Narrator(kube, sim, lab, nodes, out)
            watcher = asyncio.create_task(narrator.run(stop_narrator))
            try:
                return await _acts(stack, narrator, requests, out)
            finally:
                stop_narrator.set()
                await watcher


async def _acts(stack: scenario.Stack, narrator: Narrator, requests: int, out: TextIO) -> int:
    lab, kube, sim, agents, operator = stack.lab, stack.kube, stack.sim, stack.agents, stack.operator
    nodes = scenario.NODES
    print(f"\n## Create DsrService {NAMESPACE}/{SERVICE}: VIP {lab.vip}:80, backends from Service {SERVICE}, "
          f"drainSeconds {DRAIN_SECONDS}", file=out)  # fmt: skip
    await kube.dsrservice(lab.vip)

    async def flows() -> list[str]:
        vservers = (await sim.dataplane())["vservers"]
        return sorted(vservers[0]["newFlows"]) if vservers else []

    async def converged() -> bool:
        if operator.done():
            raise RuntimeError("the operator stopped")
        cond = ready_condition(await kube.dsr_status())
        return cond.get("status") == "True" and len(await flows()) == len(nodes)

    if not await wait_for(converged, within=90):
        print(f"# The DsrService did not become Ready with every backend UP: {await kube.dsr_status()}", file=out)
        print(agents.logs(), file=out)
        return 1
    await narrator.poll()
    for probe in (await sim.dataplane())["probes"]:
        narrator.say(f"monitor {probe['monitor']} on {probe['service']}: {'UP' if probe['up'] else 'DOWN'} "
                     f"({probe['last']})")  # fmt: skip
    failed = await _traffic(lab, sim, requests, out)

    # Act 2: the last node's endpoint goes away.
    gone_node, gone = list(nodes.items())[-1]
    stay = [n for n in nodes if n != gone_node]
    print(f"\n## Act 2: node {gone_node}'s endpoint leaves the EndpointSlice; {gone} is drained "
          f"({DRAIN_SECONDS} s), unbound, and releases the VIP while the client keeps sending requests", file=out)
    with scenario.Loop(lab, pause=0.05, timeout=2.0) as during:
        await asyncio.sleep(0.3)
        removed = time.time()
        await kube.endpoints(stay)

        async def released() -> bool:  # the operator took it back, the host dropped it, its agent said so
            await narrator.poll()
            return (narrator.asked.get(gone_node) is False and narrator.applied.get(gone_node) is False
                    and not await asyncio.to_thread(lab.has_vip, gone))

        done = await wait_for(released, within=90)
        await asyncio.sleep(0.3)
    await narrator.poll()
    disabled = narrator.when("disable", "servicegroup", gone)
    unbound = narrator.when("unbind", "servicegroup_servicegroupmember_binding", gone)
    if not done or disabled is None or unbound is None:
        print(f"# {gone} was not drained and released in time: {await kube.dsr_status()}", file=out)
        print(agents.logs(), file=out)
        return 1
    by = collections.Counter(r.reply.backend for r in during.results if r.reply.ok)
    late = sum(1 for r in during.results if r.reply.ok and r.reply.backend == gone and r.started > disabled + 1.0)
    bad = [r for r in during.results if not r.reply.ok]
    print(f"# {gone} drained: disabled {disabled - removed:.1f} s after the EndpointSlice change, unbound "
          f"{unbound - disabled:.1f} s later (drainSeconds {DRAIN_SECONDS}), then its VIP was released", file=out)
    print(f"# requests during the change: {len(during.results)}, failed {len(bad)}; answered by "
          f"{', '.join(f'{b} {n}' for b, n in sorted(by.items()))}; new connections on {gone} after the drain "
          f"began: {late}", file=out)  # fmt: skip
    gone_in_before = (await asyncio.to_thread(lab.vip_packets, gone))[0]
    after = [await asyncio.to_thread(lab.get, 2.0) for _ in range(min(requests, 6))]
    answered = collections.Counter(r.backend for r in after if r.ok)
    gone_in = (await asyncio.to_thread(lab.vip_packets, gone))[0] - gone_in_before
    print(f"# {len(after)} more requests: {', '.join(f'{b} {n}' for b, n in sorted(answered.items()))}"
          f"{'' if all(r.ok for r in after) else '  (SOME FAILED)'}; {gone} received {gone_in} client packets "
          f"for the VIP and holds it: {await asyncio.to_thread(lab.has_vip, gone)}", file=out)  # fmt: skip
    ok = (not failed and not bad and not late and not gone_in and all(r.ok and r.backend != gone for r in after)
          and unbound - disabled >= DRAIN_SECONDS - 0.5)  # fmt: skip
    verdict = "OK" if ok else "PROBLEMS"
    print(f"\n# {verdict}: the whole chain ran (operator, agents, NetScaler, DSR dataplane)", file=out)
    return 0 if ok else 1


async def _traffic(lab: dsrlab.Lab, sim: simctl.Simulator, requests: int, out: TextIO) -> int:
    before = {b: await asyncio.to_thread(lab.vip_packets, b) for b in lab.backends}
    lb_rx_before, lb_tx_before = await asyncio.to_thread(lab.link_packets, "lb")
    counters_before = (await sim.dataplane())["counters"]
    print(f"\n## {requests} HTTP requests from {lab.ns('client')} to http://{lab.vip}/", file=out)
    failed = 0
    answered: collections.Counter[str] = collections.Counter()
    i = 0
    while i < requests or (i < 3 * requests and not failed and len(answered) < len(lab.backends)):
        i += 1
        if i == requests + 1:
            missing = ", ".join(b for b in lab.backends if b not in answered)
            print(f"# {missing} did not answer yet (the source port hash chose otherwise): more requests", file=out)
        reply = await asyncio.to_thread(lab.get, 2.0)
        failed += not reply.ok
        if reply.ok:
            answered[reply.backend] += 1
        answer = f"answered by {reply.backend}" if reply.ok else f"FAILED: {reply.backend}"
        print(f"request {i:3}: client port {reply.sport:5}  {answer}", file=out)
    counters = (await sim.dataplane())["counters"]
    lb_rx, lb_tx = await asyncio.to_thread(lab.link_packets, "lb")
    vip_in = {k: v - counters_before["vserverPackets"].get(k, 0) for k, v in counters["vserverPackets"].items()}
    forwarded = {k: v - counters_before["forwardedPackets"].get(k, 0) for k, v in counters["forwardedPackets"].items()}
    print(f"# answered: {', '.join(f'{b} {answered[b]}' for b in lab.backends)}; failed {failed}", file=out)
    print("\n## Packet counters during the requests", file=out)
    print(f"lb nftables, frames to the VIP at ingress: {vip_in}", file=out)
    print(f"lb nftables, frames forwarded per backend: {forwarded}", file=out)
    print(f"lb eth0: rx {lb_rx - lb_rx_before}, tx {lb_tx - lb_tx_before} frames", file=out)
    replies = 0
    for b in lab.backends:
        got, sent = await asyncio.to_thread(lab.vip_packets, b)
        replies += sent - before[b][1]
        print(f"{b}: received {got - before[b][0]} client packets for the VIP, "
              f"sent {sent - before[b][1]} replies from the VIP straight to the client", file=out)  # fmt: skip
    print(f"# {replies} reply packets went from the backends to the client without crossing lb "
          f"(lb's eth0 counted only what it received and forwarded).", file=out)  # fmt: skip
    return failed

