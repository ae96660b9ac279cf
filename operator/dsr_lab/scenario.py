"""The DSR scenario that `dsr-operator demo-dsr` plays and the netns end-to-end test asserts on.

On a `dsr_lab.lab.Lab` (client, lb and the backends b1..b3 on one bridge, VIP `lab.vip`): three Nodes
n1..n3 whose InternalIP is a backend's address, a Service with the VIP in externalIPs, its EndpointSlice
(one ready endpoint on each node it lists) and a DsrService backed by that Service. `running` brings up
what serves it, in this process: the in-memory Kubernetes API (`dsr_lab.kubeemu`), the NITRO simulator
with its nftables dataplane in lb, the operator (kopf); plus `Agents`, one `dsr-operator agent --netns`
process per node, started and stopped by the caller. `Loop` is a client making requests in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http.client
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp
import pydantic

from dsr_lab import simctl
from dsr_lab.lab import Lab, Reply, stop_processes
from dsr_operator.api import models
from dsr_operator.simulator import dataplane

NODES: Mapping[str, str] = {"n1": "b1", "n2": "b2", "n3": "b3"}
"""Node name → the backend (lab namespace) that node is: its agent runs there, its InternalIP is its address."""
NAMESPACE = "demo"
SERVICE = "web"
PORT = 80
VSERVER = f"dsr-{NAMESPACE}_{SERVICE}_{PORT}"
"""The lbvserver the operator creates for the DsrService."""
GROUP = f"{VSERVER}_sg"
"""The servicegroup the operator creates for the DsrService's port: its backends are the group's members."""
SLICE = f"{SERVICE}-abc"
USER = "nsroot"
PASSWORD = "demo-password"
DRAIN_SECONDS = 2
HEALTH_CHECK: Mapping[str, Any] = {"type": "TCP", "intervalSeconds": 2, "timeoutSeconds": 1, "retries": 1}
DSR_API = f"/apis/{models.GROUP}/{models.VERSION}"
SLICE_API = f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"


def server_name(lab: Lab, backend: str) -> str:
    """The NetScaler server the operator creates for a backend's address."""
    return f"dsr-{lab.ip(backend)}"


def member_name(lab: Lab, backend: str) -> str:
    """A backend as the simulator's dataplane and `/_sim/clients` name it: `<group>/<server>:<port>`."""
    return f"{GROUP}/{server_name(lab, backend)}:{PORT}"


def on_member(change: Mapping[str, Any], lab: Lab, backend: str) -> bool:
    """Whether a journal entry acts on the backend's membership of the group (bind, unbind, enable, disable)."""
    key = change.get("key") or {}
    return (change["resource"] in ("servicegroup", "servicegroup_servicegroupmember_binding")
            and key.get("servicegroupname", change.get("name")) == GROUP
            and key.get("servername") == server_name(lab, backend) and str(key.get("port")) == str(PORT))  # fmt: skip


# The Kubernetes objects of the scenario.


def node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def node_status(address: str) -> dict[str, Any]:
    """A Node's status patch: its InternalIP."""
    return {"status": {"addresses": [{"type": "InternalIP", "address": address}]}}


def service(vip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [{"port": PORT}], "externalIPs": [vip]}}  # fmt: skip


def endpoints(nodes: Iterable[str]) -> list[dict[str, Any]]:
    """The EndpointSlice's endpoints: one ready pod endpoint on each of these nodes."""
    return [{"addresses": [f"10.244.{i}.5"], "nodeName": name,
             "conditions": {"ready": True, "serving": True, "terminating": False}}
            for i, name in enumerate(nodes, start=1)]  # fmt: skip


def endpointslice(nodes: Iterable[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": SLICE, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": SERVICE}},
            "endpoints": endpoints(nodes), "ports": [{"port": PORT}]}  # fmt: skip


def dsrservice(vip: str, drain_seconds: float = DRAIN_SECONDS) -> dict[str, Any]:
    return {"apiVersion": f"{models.GROUP}/{models.VERSION}", "kind": models.SERVICE_KIND,
            "metadata": {"name": SERVICE, "namespace": NAMESPACE},
            "spec": {"vip": vip, "ports": [PORT], "backends": {"service": SERVICE},
                     "healthCheck": dict(HEALTH_CHECK), "drainSeconds": drain_seconds}}  # fmt: skip


class Kube:
    """Plain JSON calls to the Kubernetes API (the emulator): enough to play the cluster's other actors."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http, self.url = http, url
        self.slice: tuple[str, ...] | None = None
        """The nodes the EndpointSlice lists (None: not created yet)."""

    async def call(self, method: str, path: str, body: Any = None, merge: bool = False) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if merge else None
        async with self.http.request(method, self.url + path, json=body, headers=headers) as resp:
            doc = await resp.json(content_type=None)
            if resp.status == 404 and method == "GET":
                return None
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {doc}")
            return doc

    async def node(self, name: str, address: str) -> None:
        await self.call("POST", "/api/v1/nodes", node(name))
        await self.call("PATCH", f"/api/v1/nodes/{name}/status", node_status(address), merge=True)

    async def service(self, vip: str) -> None:
        await self.call("POST", f"/api/v1/namespaces/{NAMESPACE}/services", service(vip))

    async def endpoints(self, nodes: Iterable[str]) -> None:
        """The Service's EndpointSlice, created on the first call: one ready endpoint on each of these nodes."""
        nodes = tuple(nodes)
        if self.slice is None:
            await self.call("POST", SLICE_API, endpointslice(nodes))
        else:
            await self.call("PATCH", f"{SLICE_API}/{SLICE}", {"endpoints": endpoints(nodes)}, merge=True)
        self.slice = nodes

    async def dsrservice(self, vip: str, drain_seconds: float = DRAIN_SECONDS) -> None:
        body = dsrservice(vip, drain_seconds)
        await self.call("POST", f"{DSR_API}/namespaces/{NAMESPACE}/{models.SERVICE_PLURAL}", body)

    async def dsr_status(self) -> dict[str, Any]:
        doc = await self.call("GET", f"{DSR_API}/namespaces/{NAMESPACE}/{models.SERVICE_PLURAL}/{SERVICE}")
        return dict((doc or {}).get("status") or {})

    async def nodeconfig(self, name: str) -> dict[str, Any] | None:
        doc = await self.call("GET", f"{DSR_API}/{models.NODECONFIG_PLURAL}/{name}")
        return dict(doc) if doc is not None else None

    async def nodeconfigs(self) -> dict[str, dict[str, Any]]:
        doc = await self.call("GET", f"{DSR_API}/{models.NODECONFIG_PLURAL}")
        return {item["metadata"]["name"]: item for item in (doc or {}).get("items", [])}


class Agents:
    """One `dsr-operator agent` process per node, in its backend's namespace; logs and state under `tmp`."""

    def __init__(self, lab: Lab, kube_url: str, tmp: pathlib.Path) -> None:
        self.lab, self.kube_url, self.tmp = lab, kube_url, tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        if node in self.procs:
            return
        with (self.tmp / f"agent-{node}.log").open("ab") as log:
            self.procs[node] = subprocess.Popen(
                [sys.executable, "-m", "dsr_operator.cli", "agent", "--node-name", node,
                 "--netns", self.lab.ns(NODES[node]), "--interface-mode", "loopback", "--server", self.kube_url,
                 "--state-dir", str(self.tmp / node), "--resync-seconds", "1"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def stop(self, node: str) -> None:
        """SIGTERM, and SIGKILL if it outlives 10 s. An agent stopped so leaves its VIPs on the host."""
        proc = self.procs.pop(node, None)
        if proc is not None:
            stop_processes([proc], timeout=10)

    def stop_all(self) -> None:
        stop_processes(self.procs.values(), timeout=10)
        self.procs.clear()

    def log(self, node: str, lines: int) -> list[str]:
        """The last lines of a node's agent log."""
        path = self.tmp / f"agent-{node}.log"
        return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []

    def logs(self, lines: int = 8) -> str:
        parts = []
        for log in sorted(self.tmp.glob("agent-*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name} (last lines)\n" + "\n".join(tail))
        return "\n".join(parts)


@dataclasses.dataclass(frozen=True)
class Result:
    started: float
    finished: float
    reply: Reply


class Loop:
    """A client making requests in a thread until the block ends: new connections, or one keep-alive connection."""

    def __init__(self, lab: Lab, keepalive: http.client.HTTPConnection | None = None, pause: float = 0.0,
                 timeout: float = 5.0) -> None:  # fmt: skip
        self.lab, self.keepalive, self.pause, self.timeout = lab, keepalive, pause, timeout
        self.results: list[Result] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The cap only bounds memory: an idle machine makes 5,000 requests before a drain ends.
        while not self._stop.is_set() and len(self.results) < 200_000:
            started = time.time()
            if self.keepalive is None:
                reply = self.lab.get(timeout=self.timeout)
            else:
                try:
                    self.keepalive.request("GET", "/")
                    reply = Reply(True, self.keepalive.getresponse().read().decode().strip())
                except OSError as exc:
                    reply = Reply(False, f"{type(exc).__name__}: {exc}")
                except Exception as exc:  # http.client protocol errors after a reset
                    reply = Reply(False, f"{type(exc).__name__}: {exc}")
            self.results.append(Result(started, time.time(), reply))
            if self.pause:
                self._stop.wait(self.pause)

    def ok_since(self, since: float) -> int:
        return sum(1 for r in self.results if r.started >= since and r.reply.ok)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@contextlib.asynccontextmanager
async def running_operator(kube_url: str, sim_url: str) -> AsyncIterator[asyncio.Task[None]]:
    """The operator (kopf) in this process, against the emulator and the simulator, until the block ends."""
    from dsr_operator import settings as settings_mod
    from dsr_operator.controller import cli as operator_cli
    from dsr_operator.controller import config

    settings = config.OperatorSettings(
        kube_server=kube_url, metrics_port=0, liveness_port=0, resync_seconds=1.0,
        save_debounce_seconds=0.5, namespaces=[],
        netscaler=settings_mod.NitroSettings(url=sim_url, username=USER, password=pydantic.SecretStr(PASSWORD)),
    )  # fmt: skip
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(operator_cli.run(settings, stop_flag=stop, ready_flag=ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait([task, waiter], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task in done:
            task.result()
            raise RuntimeError("the operator stopped while starting")
        if not ready.is_set():
            raise RuntimeError("the operator did not start within 15 s")
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
            await asyncio.wait_for(task, timeout=15)


@dataclasses.dataclass
class Stack:
    """What serves the scenario: the Kubernetes API, NetScaler with its dataplane, the operator, the agents."""

    lab: Lab
    kube_url: str
    kube: Kube
    sim: simctl.Simulator
    plane: dataplane.Dataplane
    agents: Agents
    operator: asyncio.Task[None]
    _operator: contextlib.AsyncExitStack

    async def node(self, name: str) -> None:
        """Create Node `name` with its backend's address as InternalIP."""
        await self.kube.node(name, self.lab.ip(NODES[name]))

    async def stop_operator(self) -> None:
        """Stop the operator now (it repairs nothing any more); the rest keeps running."""
        await self._operator.aclose()


@contextlib.asynccontextmanager
async def running(lab: Lab, tmp: pathlib.Path) -> AsyncIterator[Stack]:
    """The emulator, the simulator with its dataplane in the lab's lb, and the operator, until the block ends;
    then the agents started meanwhile are stopped, and the rest. The lab must be up; `tmp` takes the agents'
    logs and state."""
    from dsr_lab import kubeemu  # the lab extra (kmock)

    if set(NODES.values()) != set(lab.backends):
        raise ValueError(f"the scenario's nodes are backends {sorted(NODES.values())}, the lab has {lab.backends}")
    plane = dataplane.Dataplane(lab.ns("lb"), "eth0")
    async with (
        kubeemu.serve() as (_, kube_url),
        simctl.running(users={USER: PASSWORD}, dataplane=plane) as sim,
        aiohttp.ClientSession() as http,
        contextlib.AsyncExitStack() as operator_stack,
    ):
        agents = Agents(lab, kube_url, tmp)
        try:
            operator = await operator_stack.enter_async_context(running_operator(kube_url, sim.url))
            yield Stack(lab, kube_url, Kube(http, kube_url), sim, plane, agents, operator, operator_stack)
        finally:
            agents.stop_all()
