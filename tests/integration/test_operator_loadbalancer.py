"""Services of type LoadBalancer: the operator in-process against the Kubernetes emulator and the simulator.

What a user sees: the owned DsrService the operator makes (VIP from a DsrVipPool), NetScaler's objects,
the Service's `status.loadBalancer`, the Events on the Service, and the pool's status.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from dsr_lab import simctl
from dsr_operator import kube as kubeapi
from dsr_operator.controller import lbservices
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, Service, running_operator
from tests.support.waiting import eventually

CLASS = "dsr.operators.dev/netscaler"


async def lb_service(cluster: Cluster, name: str = "web", *, namespace: str = "shop", policy: str = "Local",
                     cls: str | None = CLASS, ports: tuple[tuple[int, str], ...] = ((80, "TCP"),),
                     annotations: dict[str, str] | None = None, ip: str | None = None) -> None:
    spec: dict[str, Any] = {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ipFamilies": ["IPv4"],
                            "ports": [{"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto,
                                       "targetPort": 8080} for port, proto in ports]}
    if cls is not None:
        spec["loadBalancerClass"] = cls
    if ip is not None:
        spec["loadBalancerIP"] = ip
    await cluster.client.create(Service({"apiVersion": "v1", "kind": "Service", "spec": spec,
                                         "metadata": {"name": name, "namespace": namespace,
                                                      "annotations": annotations or {}}}))


async def pool(cluster: Cluster, name: str, *addresses: str, **spec: Any) -> None:
    body = {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrVipPool", "metadata": {"name": name},
            "spec": {"addresses": list(addresses), **spec}}
    await cluster.client.create(kubeapi.DsrVipPool.from_dict(body))


async def get(cluster: Cluster, resource: Any, name: str, namespace: str | None = "shop") -> dict[str, Any] | None:
    try:
        obj = await cluster.client.get(resource, name, namespace=namespace)
    except httpx2.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return None
        raise
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


async def ingress(cluster: Cluster, name: str = "web") -> list[dict[str, Any]]:
    svc = await get(cluster, Service, name)
    assert svc is not None
    return list(((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])


async def condition(cluster: Cluster, name: str = "web") -> dict[str, Any] | None:
    """The operator's condition in the Service's status.conditions."""
    svc = await get(cluster, Service, name)
    assert svc is not None
    return next((c for c in (svc.get("status") or {}).get("conditions") or ()
                 if c["type"] == lbservices.CONDITION), None)


async def condition_is(cluster: Cluster, name: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
    found = await condition(cluster, name)
    if found is None or found["status"] != status or (reason is not None and found["reason"] != reason):
        return None
    return found


async def events(cluster: Cluster, name: str, reason: str) -> list[dict[str, Any]]:
    found = [e.to_dict() if hasattr(e, "to_dict") else dict(e)
             async for e in cluster.client.list(Event, namespace="shop")]
    return [e for e in found if e["involvedObject"]["kind"] == "Service" and e["involvedObject"]["name"] == name
            and e["reason"] == reason]


async def test_a_load_balancer_service_gets_a_vip_from_the_pool_and_its_status_once_bound(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.client.delete(Service, "web", namespace="shop")  # the fixture's, of type ClusterIP
    await cluster.slice({"n1": "ready"})
    await pool(cluster, "lab", "192.0.2.0/30")  # .0 and .3 are never handed out: .1 and .2
    async with running_operator(kube, nitro_sim):
        await lb_service(cluster, annotations={"dsr.operators.dev/lb-method": "ROUNDROBIN"})
        dsr = await eventually(lambda: get(cluster, kubeapi.DsrService, "web"))
        assert dsr["spec"] == {"vip": "192.0.2.1", "ports": [80], "backends": {"service": "web"},
                               "lbMethod": "ROUNDROBIN"}
        svc = await get(cluster, Service, "web")
        assert svc is not None
        assert dsr["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Service", "name": "web", "uid": svc["metadata"]["uid"], "controller": True}]
        assert (await events(cluster, "web", "VipAllocated"))[0]["message"] == "192.0.2.1 from DsrVipPool lab"
        # Not bound yet (no node holds the VIP): no address in the Service's status, and its condition says why.
        assert await ingress(cluster) == []
        waiting = await eventually(lambda: condition_is(cluster, "web", "False", "WaitingForLoopback"))
        assert waiting["message"].startswith("DsrService shop/web: ")
        await cluster.agent_applies("n1")
        await eventually(lambda: ingress(cluster))
        assert await ingress(cluster) == [{"ip": "192.0.2.1", "ipMode": "VIP"}]
        serving = await eventually(lambda: condition_is(cluster, "web", "True", "Serving"))
        assert serving["message"] == "192.0.2.1 is served through NetScaler (DsrService shop/web)"
        assert serving["lastTransitionTime"] >= waiting["lastTransitionTime"]
        vservers = await cluster.nitro("lbvserver")
        assert [(v["name"], v["ipv46"], v["lbmethod"]) for v in vservers] == [
            ("dsr-shop_web_80", "192.0.2.1", "ROUNDROBIN")]
        # The DsrService does not warn about externalIPs: the Service's status delivers the VIP.
        assert (await cluster.dsr())["status"]["warnings"] == []

        async def pool_counted() -> dict[str, Any] | None:
            status = ((await get(cluster, kubeapi.DsrVipPool, "lab", None)) or {}).get("status") or {}
            return status if status.get("addressesUsed") == 1 else None
        status = await eventually(pool_counted)
        assert status["addressesTotal"] == "2"
        assert [(c["type"], c["status"]) for c in status["conditions"]] == [("Ready", "True"), ("Stalled", "False")]

        # The node loses its endpoint: nothing bound, the address leaves the Service's status.
        await cluster.slice({"n1": "notready"})
        await eventually(lambda: _not(ingress(cluster)))
        await eventually(lambda: condition_is(cluster, "web", "False"))


async def _not(value: Any) -> bool:
    return not await value


async def test_an_exhausted_pool_is_reported_and_a_freed_vip_goes_to_the_waiting_service(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await pool(cluster, "one", "192.0.2.7")
    async with running_operator(kube, nitro_sim):
        await lb_service(cluster, "first")
        first = await eventually(lambda: get(cluster, kubeapi.DsrService, "first"))
        assert first["spec"]["vip"] == "192.0.2.7"
        await lb_service(cluster, "second")
        exhausted = await eventually(lambda: events(cluster, "second", "PoolExhausted"))
        assert exhausted[0]["type"] == "Warning"
        assert await get(cluster, kubeapi.DsrService, "second") is None
        # Events expire; the Service's condition says it for as long as it lasts.
        waiting = await eventually(lambda: condition_is(cluster, "second", "False", "PoolExhausted"))
        assert waiting["message"] == exhausted[0]["message"]
        # Deleting the first Service removes its DsrService (and its NetScaler objects); the second gets the VIP.
        await cluster.client.delete(Service, "first", namespace="shop")
        await eventually(lambda: _not(get(cluster, kubeapi.DsrService, "first")))
        second = await eventually(lambda: get(cluster, kubeapi.DsrService, "second"))
        assert second["spec"]["vip"] == "192.0.2.7"
        assert (await condition(cluster, "second") or {}).get("reason") != "PoolExhausted"
        names = [v["name"] for v in await eventually(lambda: cluster.nitro("lbvserver"))]
        assert names == ["dsr-shop_second_80"]


async def test_the_allocation_survives_a_restart_and_a_requested_address_is_honoured(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await pool(cluster, "lab", "192.0.2.10-192.0.2.20")
    async with running_operator(kube, nitro_sim):
        await lb_service(cluster, "a")
        await lb_service(cluster, "b", ip="192.0.2.15")
        a = await eventually(lambda: get(cluster, kubeapi.DsrService, "a"))
        b = await eventually(lambda: get(cluster, kubeapi.DsrService, "b"))
    assert (a["spec"]["vip"], b["spec"]["vip"]) == ("192.0.2.10", "192.0.2.15")
    # A pool that now starts later, and a restart: the VIPs given out stay where they are.
    await cluster.client.patch(kubeapi.DsrVipPool, "lab", {"spec": {"addresses": ["192.0.2.11-192.0.2.20"]}},
                               patch_type=PatchType.MERGE)
    async with running_operator(kube, nitro_sim):
        await lb_service(cluster, "c")
        c = await eventually(lambda: get(cluster, kubeapi.DsrService, "c"))
        assert c["spec"]["vip"] == "192.0.2.11"
        for name, vip in (("a", "192.0.2.10"), ("b", "192.0.2.15")):
            now = await get(cluster, kubeapi.DsrService, name)
            assert now is not None and now["spec"]["vip"] == vip
            assert now["metadata"]["generation"] == 1  # never rewritten


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"policy": "Cluster"}, "ExternalTrafficPolicyNotLocal"),
    ({"ports": ((80, "TCP"), (9000, "SCTP"))}, "UnsupportedProtocol"),
    ({"ip": "203.0.113.9"}, "AddressNotInPool"),
    ({"annotations": {"dsr.operators.dev/pool": "nope"}}, "PoolNotFound"),
    ({"annotations": {"dsr.operators.dev/drain-seconds": "soon"}}, "InvalidAnnotation"),
    ({"annotations": {"dsr.operators.dev/lb-method": "FASTEST"}}, "InvalidAnnotation"),
])
async def test_a_service_we_cannot_serve_gets_a_warning_and_nothing_reaches_netscaler(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator,
    kwargs: dict[str, Any], reason: str,
) -> None:
    await pool(cluster, "lab", "192.0.2.0/29")
    async with running_operator(kube, nitro_sim):
        await lb_service(cluster, "bad", **kwargs)
        await lb_service(cluster, "other-class", cls="example.com/other")
        await lb_service(cluster, "good")
        found = await eventually(lambda: events(cluster, "bad", reason))
        assert found[0]["type"] == "Warning", found
        await eventually(lambda: get(cluster, kubeapi.DsrService, "good"))
        assert await get(cluster, kubeapi.DsrService, "bad") is None
        assert await get(cluster, kubeapi.DsrService, "other-class") is None
        assert [v["name"] for v in await eventually(lambda: cluster.nitro("lbvserver"))] == ["dsr-shop_good_80"]


async def test_a_udp_and_tcp_service_is_probed_on_its_tcp_port_and_overlapping_pools_are_reported(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await pool(cluster, "a-first", "192.0.2.0/29")
    await pool(cluster, "b-overlaps", "192.0.2.4-192.0.2.9")
    async with running_operator(kube, nitro_sim):
        await lb_service(cluster, "dns", ports=((53, "UDP"), (53, "TCP"), (5353, "UDP"), (8053, "TCP")))
        dsr = await eventually(lambda: get(cluster, kubeapi.DsrService, "dns"))
        assert dsr["spec"]["ports"] == [53, 5353, 8053]
        assert dsr["spec"]["healthCheck"] == {"port": 53}

        async def stalled() -> dict[str, Any] | None:
            status = ((await get(cluster, kubeapi.DsrVipPool, "b-overlaps", None)) or {}).get("status") or {}
            return next((c for c in status.get("conditions", ()) if c["type"] == "Stalled"
                         and c["status"] == "True"), None)
        condition = await eventually(stalled)
        assert condition["reason"] == "Overlap" and "a-first" in condition["message"]


def test_the_labels_and_owner_of_a_made_dsrservice() -> None:
    svc = lbservices.LbService.of({
        "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS, "externalTrafficPolicy": "Local",
                 "ports": [{"port": 80}]},
    })
    assert svc is not None
    context = lbservices.Context(CLASS, False, [], {}, {}, frozenset())
    refused = lbservices.plan(svc, None, context)
    assert refused.manifest is None and refused.refusal is not None and refused.refusal.reason == "NoPool"
