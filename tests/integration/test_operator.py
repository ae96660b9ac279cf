"""The operator in-process against the Kubernetes emulator and the NITRO simulator, over real HTTP.

The test plays the node agent by writing DsrNodeConfig status, and watches what a user would see:
NetScaler objects (read over NITRO) and the DsrService status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Any

import aiohttp
import httpx2
import lightkube
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

from dsr_lab import simctl
from dsr_operator import kube as kubeapi
from dsr_operator import settings as settings_mod
from dsr_operator.controller import cli as operator_cli
from dsr_operator.controller import config
from tests.conftest import KubeHandle
from tests.support.waiting import eventually

EndpointSlice = create_namespaced_resource("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices")
Service = create_namespaced_resource("", "v1", "Service", "services")
NodeRes = lightkube.generic_resource.create_global_resource("", "v1", "Node", "nodes")
VIP = "192.0.2.10"


class Cluster:
    def __init__(self, kube: KubeHandle, sim: simctl.Simulator, password: str) -> None:
        self.kube = kube
        self.client = kube.client()
        self.sim = sim
        self.password = password

    async def node(self, name: str, address: str) -> None:
        await self.client.create(NodeRes({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}))
        await self.client.patch(NodeRes.Status, name,
                                {"status": {"addresses": [{"type": "InternalIP", "address": address}]}},
                                patch_type=PatchType.MERGE)

    async def service(self, name: str = "web", namespace: str = "shop", external_ips: tuple[str, ...] = ()) -> None:
        await self.client.create(Service({"apiVersion": "v1", "kind": "Service",
                                          "metadata": {"name": name, "namespace": namespace},
                                          "spec": {"ports": [{"port": 80}], "externalIPs": list(external_ips)}}))

    async def slice(self, endpoints: dict[str, str], name: str = "web-abc", service: str = "web",
                    namespace: str = "shop") -> None:
        """endpoints: node → ready | notready | terminating."""
        eps = [
            {"addresses": [f"10.244.{i}.5"], "nodeName": node,
             "conditions": {"ready": state == "ready", "serving": state in ("ready", "terminating"),
                            "terminating": state == "terminating"}}
            for i, (node, state) in enumerate(sorted(endpoints.items()))
        ]
        body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": {"name": name, "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": service}},
                "endpoints": eps, "ports": [{"port": 8080}]}
        try:
            await self.client.create(EndpointSlice(body))
        except httpx2.HTTPStatusError:
            await self.client.patch(EndpointSlice, name, {"endpoints": eps}, namespace=namespace,
                                    patch_type=PatchType.MERGE)

    async def dsrservice(self, name: str = "web", namespace: str = "shop", vip: str = VIP,
                         **spec: Any) -> None:
        body = {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"vip": vip, "ports": [80], "backends": {"service": "web"}, "drainSeconds": 0, **spec}}
        await self.client.create(kubeapi.DsrService(body))

    async def dsr(self, name: str = "web", namespace: str = "shop") -> dict[str, Any]:
        obj = await self.client.get(kubeapi.DsrService, name, namespace=namespace)
        return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)

    async def condition(self, ctype: str, name: str = "web") -> dict[str, Any]:
        status = (await self.dsr(name)).get("status") or {}
        return next((c for c in status.get("conditions", ()) if c["type"] == ctype), {})

    async def nodeconfig(self, node: str) -> dict[str, Any] | None:
        try:
            obj = await self.client.get(kubeapi.DsrNodeConfig, node)
        except httpx2.HTTPStatusError as exc:
            if exc.response.status_code == 404:
                return None
            raise
        return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)

    async def agent_applies(self, node: str) -> None:
        """Play the node agent: report the spec's VIPs as applied at the current generation."""
        cfg = await eventually(lambda: self.nodeconfig(node))
        await self.client.patch(
            kubeapi.DsrNodeConfig.Status, node,
            {"status": {"observedGeneration": cfg["metadata"]["generation"], "appliedVips": cfg["spec"]["vips"]}},
            patch_type=PatchType.MERGE,
        )

    async def nitro(self, rtype: str, query: str = "") -> list[dict[str, Any]]:
        headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": self.password}
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.sim.url}/nitro/v1/config/{rtype}{query}", headers=headers
        ) as resp:
            return (await resp.json()).get(rtype, [])

    async def bound(self, vserver: str = "dsr-shop_web_80") -> list[str]:
        """The backends bound to a vserver, each named `dsr-<address>_<port>`: members of its servicegroups
        (and services bound to it directly, as earlier versions made them)."""
        rows = await self.nitro("lbvserver_service_binding", f"/{vserver}")
        found = [r["servicename"] for r in rows]
        for group in await self.nitro("lbvserver_servicegroup_binding", f"/{vserver}"):
            members = await self.nitro("servicegroup_servicegroupmember_binding", f"/{group['servicegroupname']}")
            found += [f"{m['servername']}_{m['port']}" for m in members]
        return sorted(found)

    async def configured(self) -> set[str]:
        """Every backend NetScaler holds for us, bound or not, named `dsr-<address>_<port>`: members of
        any servicegroup (and services, as earlier versions made them)."""
        found = {s["name"] for s in await self.nitro("service")}
        members = await self.nitro("servicegroup_servicegroupmember_binding", "?bulkbindings=yes")
        return found | {f"{m['servername']}_{m['port']}" for m in members}


def backend(entry: Mapping[str, Any]) -> str:
    """The backend a journal entry acts on, named `dsr-<address>_<port>` (a member, a service or its binding)."""
    key = entry.get("key") or {}
    if "servername" in key and "port" in key:
        return f"{key['servername']}_{key['port']}"
    return str(key.get("servicename") or entry["name"])


def backend_steps(journal: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(disable | unbind, backend) for each drain and each removal of a backend from its vserver, in order."""
    out = []
    for e in journal:
        step = (e["resource"], e["action"])
        if step in (("service", "disable"), ("servicegroup", "disable")):
            out.append(("disable", backend(e)))
        elif step in (("lbvserver_service_binding", "unbind"), ("servicegroup_servicegroupmember_binding", "unbind")):
            out.append(("unbind", backend(e)))
    return out


@contextlib.asynccontextmanager
async def running_operator(kube: KubeHandle, sim: simctl.Simulator, *, netscaler: Mapping[str, Any] | None = None,
                           etcd: Mapping[str, Any] | None = None, **overrides: Any
                           ) -> AsyncIterator[asyncio.Task[None]]:
    """The operator in this process until the block ends; `netscaler` and `etcd` go to their settings groups."""
    settings = config.OperatorSettings(**{
        "kube_server": kube.url, "metrics_port": 0, "liveness_port": 0, "resync_seconds": 2.0,
        "save_debounce_seconds": 0.1, "default_drain_seconds": 0,
        "netscaler": settings_mod.NitroSettings(**{"url": sim.url, "password": "nsroot", **(netscaler or {})}),
        "etcd": settings_mod.EtcdSettings(**(etcd or {})), **overrides,
    })
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(operator_cli.run(settings, stop_flag=stop, ready_flag=ready))
    await asyncio.wait_for(ready.wait(), timeout=10)
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)


async def test_create_binds_only_after_the_loopback_handshake(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.slice({"n1": "ready", "n2": "ready"})
    async with running_operator(kube, nitro_sim):
        await cluster.dsrservice()
        # The operator asks n1 and n2 for the VIP, creates the NetScaler objects, binds nothing yet.
        for node in ("n1", "n2"):
            cfg = await eventually(lambda node=node: cluster.nodeconfig(node))
            assert cfg["spec"]["vips"] == [VIP]
        vservers = await eventually(lambda: cluster.nitro("lbvserver"))
        assert [(v["name"], v["ipv46"], v["m"], v["servicetype"]) for v in vservers] == [
            ("dsr-shop_web_80", VIP, "MAC", "ANY")
        ]
        reason = await eventually(lambda: cluster.condition("Reconciling"))
        assert await cluster.bound() == []
        assert (await cluster.condition("Ready"))["reason"] == "WaitingForLoopback", reason
        # n1's agent reports the VIP: only n1 is bound.
        await cluster.agent_applies("n1")
        await eventually(lambda: cluster.bound())
        assert await cluster.bound() == ["dsr-198.51.100.1_80"]
        await cluster.agent_applies("n2")

        async def both_bound_and_ready() -> bool:
            ready = await cluster.condition("Ready")
            return await cluster.bound() == ["dsr-198.51.100.1_80", "dsr-198.51.100.2_80"] and \
                ready.get("status") == "True"
        await eventually(both_bound_and_ready)
        status = (await cluster.dsr())["status"]
        assert status["backends"] == {"desired": 2, "loopbackReady": 2, "bound": 2}
        # The Service does not carry the VIP in externalIPs: the status says kube-proxy won't deliver it.
        assert status["warnings"] == [
            f"Service shop/web does not list {VIP} in externalIPs: kube-proxy will not deliver VIP traffic "
            "to its pods unless they listen on the VIP with host networking"
        ]
        assert status["observedGeneration"] == (await cluster.dsr())["metadata"]["generation"]
        assert (await cluster.condition("Stalled"))["status"] == "False"


async def converged(cluster: Cluster, nodes: tuple[str, ...]) -> None:
    """Play each node's agent, as a real one does after every spec change, until all are bound and Ready."""
    for node in nodes:
        await cluster.agent_applies(node)
    want = sorted(f"dsr-198.51.100.{n[1:]}_80" for n in nodes)

    async def check() -> bool:
        for node in nodes:  # the operator may change a node's VIPs again (e.g. releasing another's)
            cfg = await cluster.nodeconfig(node)
            if cfg is not None and (cfg.get("status") or {}).get("observedGeneration") != cfg["metadata"]["generation"]:
                await cluster.agent_applies(node)
        return await cluster.bound() == want and (await cluster.condition("Ready")).get("status") == "True"

    await eventually(check)


@contextlib.asynccontextmanager
async def serving(cluster: Cluster, kube: KubeHandle, sim: simctl.Simulator,
                  nodes: tuple[str, ...], spec: dict[str, Any] | None = None, **settings: Any) -> AsyncIterator[None]:
    """The operator running, DsrService shop/web created, and every node in `nodes` ready and bound."""
    await cluster.slice(dict.fromkeys(nodes, "ready"))
    async with running_operator(kube, sim, **settings):
        await cluster.dsrservice(**(spec or {}))
        await converged(cluster, nodes)
        yield


async def test_scale_up_and_down_by_endpointslice_changes(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",), max_unbind_percent=100):
        await cluster.slice({"n1": "ready", "n2": "ready", "n3": "ready"})
        await converged(cluster, ("n1", "n2", "n3"))
        await cluster.slice({"n3": "ready"})

        async def scaled_down() -> bool:
            return await cluster.bound() == ["dsr-198.51.100.3_80"]

        await eventually(scaled_down)
        # n1 and n2 no longer carry the VIP once NetScaler stopped routing to them.
        for node in ("n1", "n2"):
            async def released(node: str = node) -> bool:
                cfg = await cluster.nodeconfig(node)
                return cfg is not None and cfg["spec"]["vips"] == []
            await eventually(released)
        assert await cluster.configured() == {"dsr-198.51.100.3_80"}


async def test_terminating_endpoint_is_drained_then_removed_then_its_vip_released(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    # A resync far away: the end of the drain alone must bring the removal.
    async with serving(
        cluster, kube, nitro_sim, ("n1", "n2"), spec={"drainSeconds": 1}, resync_seconds=60
    ):
        seq = max(e["seq"] for e in await nitro_sim.journal())
        await cluster.slice({"n1": "ready", "n2": "terminating"})

        async def drained() -> bool:
            return await cluster.bound() == ["dsr-198.51.100.1_80"]

        await eventually(drained)
        steps = backend_steps(await nitro_sim.journal(since=seq))
        assert steps.index(("disable", "dsr-198.51.100.2_80")) < steps.index(("unbind", "dsr-198.51.100.2_80"))
        # While terminating endpoints remain, n2 keeps the VIP; once gone, it is released.
        assert (await cluster.nodeconfig("n2"))["spec"]["vips"] == [VIP]
        await cluster.slice({"n1": "ready"})

        async def released() -> bool:
            return (await cluster.nodeconfig("n2"))["spec"]["vips"] == []

        await eventually(released)


async def test_a_node_going_away_is_unbound(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1", "n2")):
        await cluster.client.delete(NodeRes, "n2")

        async def unbound() -> bool:
            return await cluster.bound() == ["dsr-198.51.100.1_80"]

        await eventually(unbound)


async def test_an_agent_that_never_answers_is_never_bound(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.slice({"n1": "ready", "n2": "ready"})
    async with running_operator(kube, nitro_sim):
        await cluster.dsrservice()
        await cluster.agent_applies("n1")
        await eventually(lambda: cluster.bound())
        await asyncio.sleep(2.5)  # longer than a resync: still nothing for n2
        assert await cluster.bound() == ["dsr-198.51.100.1_80"]
        ready = await cluster.condition("Ready")
        assert ready["reason"] == "WaitingForLoopback" and "n2" in ready["message"]
        # An agent that reports an old generation does not count either.
        cfg = await cluster.nodeconfig("n2")
        await cluster.client.patch(kubeapi.DsrNodeConfig.Status, "n2",
                                   {"status": {"observedGeneration": cfg["metadata"]["generation"] - 1,
                                               "appliedVips": [VIP]}}, patch_type=PatchType.MERGE)
        await asyncio.sleep(1.0)
        assert await cluster.bound() == ["dsr-198.51.100.1_80"]


async def test_drift_on_netscaler_is_repaired_by_resync(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1", "n2")):
        headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nsroot"}
        async with aiohttp.ClientSession() as http:
            url = f"{nitro_sim.url}/nitro/v1/config/servicegroup_servicegroupmember_binding/dsr-shop_web_80_sg"
            async with http.delete(url, params={"args": "servername:dsr-198.51.100.2,port:80"}, headers=headers) as r:
                assert r.status == 200
            body = {"lbvserver": {"name": "dsr-shop_web_80", "lbmethod": "ROUNDROBIN"}}
            async with http.put(f"{nitro_sim.url}/nitro/v1/config/lbvserver", json=body, headers=headers) as r:
                assert r.status == 200
        assert await cluster.bound() == ["dsr-198.51.100.1_80"]

        async def repaired() -> bool:
            vs = (await cluster.nitro("lbvserver", "/dsr-shop_web_80"))[0]
            return len(await cluster.bound()) == 2 and vs["lbmethod"] == "LEASTCONNECTION"

        await eventually(repaired)


async def test_netscaler_outage_and_recovery(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",)):
        await nitro_sim.faults(errorRate=1.0, errorStatus=503)
        await cluster.slice({"n1": "ready", "n2": "ready"})  # a change that needs NetScaler

        async def unreachable() -> bool:
            return (await cluster.condition("Ready")).get("reason") == "NetScalerUnreachable"

        await eventually(unreachable)
        assert (await cluster.condition("Stalled"))["status"] == "True"
        await nitro_sim.clear_faults()
        await converged(cluster, ("n1", "n2"))


async def test_vip_conflict_stalls_the_younger_and_leaves_netscaler_alone(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",), max_unbind_percent=100):
        await asyncio.sleep(1.1)  # creation timestamps have one-second resolution
        await cluster.dsrservice(name="web-copy")

        async def stalled() -> bool:
            return (await cluster.condition("Stalled", "web-copy")).get("reason") == "VipConflict"

        await eventually(stalled)
        message = (await cluster.condition("Stalled", "web-copy"))["message"]
        assert message == f"{VIP}:80 is already served by DsrService shop/web"
        assert [v["name"] for v in await cluster.nitro("lbvserver")] == ["dsr-shop_web_80"]
        assert (await cluster.condition("Ready", "web"))["status"] == "True"
        # The stalled DsrService does not hold up the winner's VIP bookkeeping: n1 can be released.
        await cluster.slice({"n2": "ready"})
        await converged(cluster, ("n2",))

        async def n1_released() -> bool:
            return (await cluster.nodeconfig("n1"))["spec"]["vips"] == []

        await eventually(n1_released)


async def test_deletion_removes_netscaler_objects_then_node_vips_then_the_finalizer(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1", "n2")):
        await cluster.client.delete(kubeapi.DsrService, "web", namespace="shop")

        async def gone() -> bool:
            try:
                await cluster.dsr()
            except httpx2.HTTPStatusError as exc:
                return exc.response.status_code == 404
            return False

        await eventually(gone)
        for rtype in ("lbvserver", "service", "server", "lbmonitor"):
            assert await cluster.nitro(rtype) == [], rtype
        for node in ("n1", "n2"):
            assert (await cluster.nodeconfig(node))["spec"]["vips"] == []


async def test_restart_adopts_without_rebuilding_and_removes_orphans(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.slice({"n1": "ready", "n2": "ready"})
    await cluster.service("api", external_ips=("192.0.2.11",))
    await cluster.slice({"n3": "ready"}, name="api-xyz", service="api")
    async with running_operator(kube, nitro_sim):
        await cluster.dsrservice()
        await cluster.dsrservice(name="api", vip="192.0.2.11", backends={"service": "api"})
        await converged(cluster, ("n1", "n2"))
        await cluster.agent_applies("n3")
        await eventually(lambda: cluster.bound("dsr-shop_api_80"))
        assert (await cluster.dsr("api"))["status"]["warnings"] == []
        # Kill the operator in the middle of a reconcile: slow NetScaler, a change under way.
        await nitro_sim.faults(latencyMs=150)
        await cluster.slice({"n1": "ready", "n2": "ready", "n3": "ready"})
        await asyncio.sleep(0.4)
    # While it is down, `api` is deleted without it (finalizer removed by hand): its objects are orphans.
    await cluster.client.patch(kubeapi.DsrService, "api", {"metadata": {"finalizers": []}}, namespace="shop",
                               patch_type=PatchType.MERGE)
    await cluster.client.delete(kubeapi.DsrService, "api", namespace="shop")
    await nitro_sim.clear_faults()
    seq = max(e["seq"] for e in await nitro_sim.journal())
    async with running_operator(kube, nitro_sim):
        await converged(cluster, ("n1", "n2", "n3"))

        async def orphans_gone() -> bool:
            return [v["name"] for v in await cluster.nitro("lbvserver")] == ["dsr-shop_web_80"]

        await eventually(orphans_gone)
        journal = await nitro_sim.journal(since=seq)
        # Nothing of `web` was deleted and re-added: the restart adopted it.
        rebuilt = [e for e in journal if e["action"] in ("rm", "delete") and "shop_web" in str(e["name"])]
        assert rebuilt == []
        assert await cluster.configured() == {"dsr-198.51.100.1_80", "dsr-198.51.100.2_80", "dsr-198.51.100.3_80"}


async def test_metrics_endpoint_reports_requests_bound_backends_and_stalled(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator,
    unused_tcp_port: int,
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",), metrics_port=unused_tcp_port):
        await asyncio.sleep(1.1)
        await cluster.dsrservice(name="web-copy")  # a VIP conflict: stalled
        await eventually(lambda: cluster.condition("Stalled", "web-copy"))

        async def scrape() -> str:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as r:
                text = await r.text()
            return text if "dsr_stalled_dsrservices 1.0" in text else ""

        text = await eventually(scrape)
        assert 'dsr_bound_backends{name="web",namespace="shop"} 1.0' in text
        assert ('dsr_nitro_requests_total{method="PUT",resource="servicegroup_servicegroupmember_binding",status="201"}'
                in text)
        assert "dsr_reconcile_duration_seconds_count" in text


async def test_writes_go_to_the_ha_primary_only_and_the_config_is_saved(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.slice({"n1": "ready"})
    await nitro_sim.set_ha_state("Secondary")
    async with running_operator(kube, nitro_sim):
        await cluster.dsrservice()

        async def refused() -> bool:
            ready = await cluster.condition("Ready")
            return ready.get("reason") == "NetScalerUnreachable" and "not the HA primary" in ready["message"]

        await eventually(refused)
        assert (await nitro_sim.stats())["writes"] == 0
        await nitro_sim.set_ha_state("Primary")  # a failover: this node is primary now
        await converged(cluster, ("n1",))

        async def saved() -> bool:
            saves = [e for e in await nitro_sim.journal() if (e["resource"], e["action"]) == ("nsconfig", "save")]
            return bool(saves) and (await nitro_config(cluster))["configchanged"] is False

        await eventually(saved)


async def nitro_config(cluster: Cluster) -> dict[str, Any]:
    headers = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": cluster.password}
    async with aiohttp.ClientSession() as http, http.get(
        f"{cluster.sim.url}/nitro/v1/config/nsconfig", headers=headers
    ) as resp:
        return (await resp.json())["nsconfig"]


async def test_a_port_removed_from_the_spec_loses_its_vserver(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    # One backend: the guard's share of it rounds to zero, yet the unwanted vserver must go.
    async with serving(cluster, kube, nitro_sim, ("n1",), spec={"ports": [80, 443]}):
        assert await cluster.bound("dsr-shop_web_443") == ["dsr-198.51.100.1_443"]
        await cluster.client.patch(kubeapi.DsrService, "web", {"spec": {"ports": [80]}}, namespace="shop",
                                   patch_type=PatchType.MERGE)

        async def removed() -> bool:
            ready = await cluster.condition("Ready")
            return [v["name"] for v in await cluster.nitro("lbvserver")] == ["dsr-shop_web_80"] and \
                ready.get("reason") == "Converged"

        await eventually(removed, timeout=30)
        assert await cluster.configured() == {"dsr-198.51.100.1_80"}
        assert await cluster.bound() == ["dsr-198.51.100.1_80"]
        status = (await cluster.dsr())["status"]
        assert [v["name"] for v in status["vservers"]] == ["dsr-shop_web_80"]


async def test_a_guard_below_half_still_removes_backends_one_at_a_time(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    # floor(3 x 30 %) = 0 and floor(2 x 30 %) = 0: one removal per pass must still be allowed.
    async with serving(cluster, kube, nitro_sim, ("n1", "n2", "n3"), spec={"maxUnbindPercent": 30}):
        seq = max(e["seq"] for e in await nitro_sim.journal())
        await cluster.slice({"n3": "ready"})

        async def scaled_down() -> bool:
            ready = await cluster.condition("Ready")
            return await cluster.bound() == ["dsr-198.51.100.3_80"] and ready.get("reason") == "Converged"

        await eventually(scaled_down, timeout=40)
        unbinds = [b for step, b in backend_steps(await nitro_sim.journal(since=seq)) if step == "unbind"]
        assert unbinds == ["dsr-198.51.100.1_80", "dsr-198.51.100.2_80"]


async def test_monitor_fields_removed_from_the_spec_are_unset_once(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",), spec={"healthCheck": {"port": 8080}}):
        [mon] = await cluster.nitro("lbmonitor")
        assert (mon.get("destip"), mon.get("destport"), mon["transparent"]) == (VIP, 8080, "YES")
        await cluster.client.patch(kubeapi.DsrService, "web",
                                   {"spec": {"healthCheck": {"port": None, "throughVip": False}}},
                                   namespace="shop", patch_type=PatchType.MERGE)

        async def unset() -> bool:
            [mon] = await cluster.nitro("lbmonitor")
            return "destip" not in mon and "destport" not in mon and mon["transparent"] == "NO" and \
                (await nitro_config(cluster))["configchanged"] is False
        await eventually(unset)
        unsets = [e for e in await nitro_sim.journal() if (e["resource"], e["action"]) == ("lbmonitor", "unset")]
        assert len(unsets) == 1
        # The next passes (resyncs re-read the monitor) find nothing to change: no update, no save.
        seq = max(e["seq"] for e in await nitro_sim.journal())
        reads = (await nitro_sim.stats())["byResource"].get("lbmonitor", 0)

        async def resynced_twice() -> bool:
            return (await nitro_sim.stats())["byResource"].get("lbmonitor", 0) >= reads + 2
        await eventually(resynced_twice)
        assert await nitro_sim.journal(since=seq) == []


async def test_a_failed_save_is_retried_until_the_box_is_saved(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    # One request per save attempt: attempts are countable.
    async with serving(cluster, kube, nitro_sim, ("n1",), netscaler={"retries": 0}):
        await eventually(lambda: saved(cluster))
        await nitro_sim.faults(errorRate=1.0, errorStatus=503, errorResources=["nsconfig"])
        before = (await nitro_sim.stats())["byResource"].get("nsconfig", 0)
        await cluster.slice({"n1": "ready", "n2": "ready"})
        await converged(cluster, ("n1", "n2"))
        assert (await nitro_config_raw(nitro_sim))["configchanged"] is True

        async def refused_three_times() -> bool:
            return (await nitro_sim.stats())["byResource"].get("nsconfig", 0) >= before + 3
        await eventually(refused_three_times, timeout=30)
        assert (await nitro_config_raw(nitro_sim))["configchanged"] is True
        await nitro_sim.clear_faults()
        await eventually(lambda: saved(cluster), timeout=30)


async def test_an_operator_started_against_unsaved_changes_saves_them(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    # Killed within the save debounce: the changes are on the box, unsaved.
    async with serving(cluster, kube, nitro_sim, ("n1",), save_debounce_seconds=3600):
        pass
    assert (await nitro_config_raw(nitro_sim))["configchanged"] is True
    assert not [e for e in await nitro_sim.journal() if e["resource"] == "nsconfig"]
    seq = max(e["seq"] for e in await nitro_sim.journal())
    async with running_operator(kube, nitro_sim):
        await eventually(lambda: saved(cluster))
        # Saving is all the restart did: the objects were adopted, not rewritten.
        assert [(e["resource"], e["action"]) for e in await nitro_sim.journal(since=seq)] == [("nsconfig", "save")]


async def saved(cluster: Cluster) -> bool:
    saves = [e for e in await cluster.sim.journal() if (e["resource"], e["action"]) == ("nsconfig", "save")]
    return bool(saves) and (await nitro_config_raw(cluster.sim))["configchanged"] is False


async def nitro_config_raw(sim: simctl.Simulator) -> dict[str, Any]:
    """nsconfig as the store has it (not over NITRO: a fault on nsconfig must not hide it)."""
    record = sim.store.records("nsconfig")
    assert isinstance(record, dict)
    return record


async def test_a_vip_conflict_is_not_judged_while_netscaler_is_unreachable(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    """Who holds a VIP:port is on NetScaler. The older DsrService moved onto the VIP the younger serves and
    lost; then the younger changes while NetScaler cannot take writes (an HA node turned Secondary). Its
    status must say so, not VipConflict with the older one as winner (a decision made without the holders),
    which nothing would correct before a resync (an hour here)."""
    other = "192.0.2.11"
    nitro_sim.store.ha_peer = {"id": "1", "ipaddress": "192.0.2.254"}  # one node of a pair: asked every stage
    async with serving(cluster, kube, nitro_sim, ("n1",), resync_seconds=3600):
        await younger_on(cluster, other)

        async def reason(name: str) -> str | None:
            return (await cluster.condition("Ready", name)).get("reason")

        async def web2_ready() -> bool:
            return (await cluster.condition("Ready", "web2")).get("status") == "True"
        await eventually(web2_ready)
        await cluster.client.patch(kubeapi.DsrService, "web", {"spec": {"vip": other}}, namespace="shop",
                                   patch_type=PatchType.MERGE)
        await eventually(lambda: _equals(reason("web"), "VipConflict"))
        await nitro_sim.set_ha_state("Secondary")
        await cluster.client.patch(kubeapi.DsrService, "web2", {"spec": {"lbMethod": "ROUNDROBIN"}},
                                   namespace="shop", patch_type=PatchType.MERGE)
        await eventually(lambda: _equals(reason("web2"), "NetScalerUnreachable"))
        await nitro_sim.set_ha_state("Primary")

        async def holder_kept_it() -> bool:
            vservers = {v["name"]: v for v in await cluster.nitro("lbvserver")}
            return (await reason("web") == "VipConflict" and await web2_ready()
                    and vservers["dsr-shop_web2_80"]["lbmethod"] == "ROUNDROBIN")
        await eventually(holder_kept_it)
        assert (await cluster.condition("Stalled", "web"))["message"] == \
            f"{other}:80 is already served by DsrService shop/web2"


async def younger_on(cluster: Cluster, vip: str) -> None:
    """A second DsrService, web2, created after web (timestamps have one-second resolution), on `vip`, with
    n1 asked for both VIPs and its agent reporting them applied."""
    await asyncio.sleep(1.1)
    await cluster.dsrservice(name="web2", vip=vip)

    async def n1_asked() -> bool:
        return (await cluster.nodeconfig("n1"))["spec"]["vips"] == sorted([VIP, vip])
    await eventually(n1_asked)
    await cluster.agent_applies("n1")


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def test_moving_onto_a_served_vip_leaves_one_vserver_there_and_the_holder_keeps_it(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    other = "192.0.2.11"

    async def on(vip: str, port: int = 80) -> list[str]:
        return sorted(v["name"] for v in await cluster.nitro("lbvserver") if (v["ipv46"], v["port"]) == (vip, port))

    async with serving(cluster, kube, nitro_sim, ("n1",)):
        await younger_on(cluster, other)

        async def web2_serving() -> bool:
            return await cluster.bound("dsr-shop_web2_80") == ["dsr-198.51.100.1_80"] and \
                (await cluster.condition("Ready", "web2")).get("status") == "True"
        await eventually(web2_serving)

        # The older DsrService moves onto the younger's VIP: the younger already serves it and keeps it.
        await cluster.client.patch(kubeapi.DsrService, "web", {"spec": {"vip": other}}, namespace="shop",
                                   patch_type=PatchType.MERGE)

        async def web_in_conflict() -> bool:
            return (await cluster.condition("Stalled", "web")).get("reason") == "VipConflict"
        await eventually(web_in_conflict)
        assert (await cluster.condition("Stalled", "web"))["message"] == \
            f"{other}:80 is already served by DsrService shop/web2"
        assert (await cluster.condition("Ready", "web2"))["status"] == "True"
        # Over the next passes (resyncs re-read the vservers) it stays so: one vserver on the VIP:port.
        reads = (await nitro_sim.stats())["byResource"].get("lbvserver", 0)

        async def resynced_twice() -> bool:
            return (await nitro_sim.stats())["byResource"].get("lbvserver", 0) >= reads + 2
        await eventually(resynced_twice)
        assert await on(other) == ["dsr-shop_web2_80"]
        assert await on(VIP) == ["dsr-shop_web_80"]  # web keeps its last good configuration meanwhile
        assert (await cluster.condition("Stalled", "web"))["reason"] == "VipConflict"

        # The holder goes: its vserver is removed first, and only then does web move onto the VIP:port.
        seq = max(e["seq"] for e in await nitro_sim.journal())
        await cluster.client.delete(kubeapi.DsrService, "web2", namespace="shop")

        async def web_took_over() -> bool:
            ready = await cluster.condition("Ready", "web")
            return await on(other) == ["dsr-shop_web_80"] and ready.get("status") == "True"
        await eventually(web_took_over, timeout=30)
        assert await on(VIP) == []
        steps = [(e["resource"], e["action"], e["name"]) for e in await nitro_sim.journal(since=seq)]
        assert steps.index(("lbvserver", "delete", "dsr-shop_web2_80")) < \
            steps.index(("lbvserver", "update", "dsr-shop_web_80"))
