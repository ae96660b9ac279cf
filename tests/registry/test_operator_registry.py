"""The operator with registry-backed DsrServices: a real etcd, the Kubernetes emulator, the simulator.

Hosts register, leave with a drain, crash (lease expiry), and etcd goes away: what a user sees is
the NetScaler bindings and the DsrService status.
"""

from __future__ import annotations

import json
from typing import Any

from dsr_lab import simctl
from dsr_operator.registry import etcd
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, running_operator
from tests.registry.conftest import Etcd, Link
from tests.support.waiting import eventually

PREFIX = "/skydns/local/shop/web"
VIP = "192.0.2.10"
REGISTRY = {"registry": {"etcd": {"prefix": PREFIX}}}


def record(host: str, **fields: Any) -> str:
    return json.dumps({"host": host, "port": 80, "ttl": 30, **fields})


async def test_hosts_that_register_are_bound_and_hosts_that_leave_or_crash_are_unbound(
    kube: KubeHandle, nitro_sim: simctl.Simulator, etcd_server: Etcd
) -> None:
    cluster = Cluster(kube, nitro_sim, "nsroot")
    async with etcd_server.client() as registry, \
            running_operator(kube, nitro_sim, etcd={"endpoints": [etcd_server.url]}):
        await registry.put(f"{PREFIX}/pi-1", record("198.51.100.21"))
        await registry.put(f"{PREFIX}/iis-1", record("198.51.100.22", name="iis"))
        await registry.put(f"{PREFIX}/broken", "{not json")
        await cluster.dsrservice(backends=REGISTRY, drainSeconds=1)

        async def bound(want: list[str]) -> bool:
            return await cluster.bound() == want

        await eventually(lambda: bound(["dsr-198.51.100.21_80", "dsr-198.51.100.22_80"]), timeout=30)
        async def ready() -> dict[str, Any]:
            status = (await cluster.dsr()).get("status") or {}
            assert status.get("backends") == {"desired": 2, "loopbackReady": 2, "bound": 2}, status
            assert (await cluster.condition("Ready")).get("status") == "True"
            return status

        status = await eventually(ready, timeout=30)
        assert status["warnings"] == [f"1 registry key(s) not used: {PREFIX}/broken is not JSON"]

        # A new host registers with a lease (as `dsr-operator host-agent` does) ...
        lease = await registry.grant(3)
        await registry.put(f"{PREFIX}/pi-2", record("198.51.100.23"), lease=lease)
        await eventually(lambda: bound(["dsr-198.51.100.21_80", "dsr-198.51.100.22_80", "dsr-198.51.100.23_80"]),
                         timeout=30)
        # ... and crashes: nobody renews its lease, etcd deletes the key, NetScaler unbinds it.
        await eventually(lambda: bound(["dsr-198.51.100.21_80", "dsr-198.51.100.22_80"]), timeout=60)

        # A graceful leave: the host asks to drain; NetScaler disables it gracefully, then unbinds it.
        await registry.put(f"{PREFIX}/iis-1", record("198.51.100.22", name="iis", drain=True))
        await eventually(lambda: bound(["dsr-198.51.100.21_80"]), timeout=30)
        journal = [(e["resource"], e["action"]) for e in await nitro_sim.journal()
                   if "198.51.100.22" in e["name"] or "198.51.100.22" in json.dumps(e["key"])]
        disabled = journal.index(("servicegroup", "disable"))
        unbound = journal.index(("servicegroup_servicegroupmember_binding", "unbind"))
        assert disabled < unbound, journal  # drained first, then unbound

async def test_etcd_unreachable_keeps_every_binding_and_says_so_then_changes_flow_again(
    kube: KubeHandle, nitro_sim: simctl.Simulator, etcd_server: Etcd
) -> None:
    cluster = Cluster(kube, nitro_sim, "nsroot")
    async with Link(etcd_server.port) as link, etcd_server.client() as registry:
        await registry.put(f"{PREFIX}/pi-1", record("198.51.100.21"))
        await registry.put(f"{PREFIX}/pi-2", record("198.51.100.22"))
        async with running_operator(kube, nitro_sim, etcd={"endpoints": [link.url]}):
            await cluster.dsrservice(backends=REGISTRY)
            both = ["dsr-198.51.100.21_80", "dsr-198.51.100.22_80"]

            async def bound(want: list[str]) -> bool:
                return await cluster.bound() == want

            await eventually(lambda: bound(both), timeout=30)
            link.cut()

            async def warned() -> bool:
                warnings = ((await cluster.dsr()).get("status") or {}).get("warnings") or []
                return any(w.startswith("etcd unreachable") and "last good" not in w and "registered at revision" in w
                           for w in warnings)

            await eventually(warned, timeout=30)
            assert await cluster.bound() == both  # a broken watch never unbinds anything
            await registry.delete(f"{PREFIX}/pi-2")  # a change the operator cannot see yet
            link.heal()
            await eventually(lambda: bound(["dsr-198.51.100.21_80"]), timeout=30)

            async def clear() -> bool:
                return not ((await cluster.dsr()).get("status") or {}).get("warnings")

            await eventually(clear, timeout=30)


async def test_a_registry_backed_dsrservice_without_an_etcd_is_stalled_and_touches_nothing(
    kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    cluster = Cluster(kube, nitro_sim, "nsroot")
    async with running_operator(kube, nitro_sim, etcd={"endpoints": []}):
        await cluster.dsrservice(backends=REGISTRY)

        async def stalled() -> dict[str, Any]:
            condition = await cluster.condition("Stalled")
            return condition if condition.get("status") == "True" else {}

        condition = await eventually(stalled, timeout=30)
        assert condition["reason"] == "RegistryNotConfigured"
        assert "DSR_ETCD_ENDPOINTS" in condition["message"]
        assert await cluster.nitro("lbvserver") == []


async def test_an_etcd_that_refuses_the_password_is_an_error_in_status(
    kube: KubeHandle, nitro_sim: simctl.Simulator, etcd_server: Etcd
) -> None:
    async with etcd_server.client() as root:  # etcd with auth on: root, and a user for the operator
        await root._call("/v3/auth/user/add", {"name": "root", "password": "rootpw"})
        await root._call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        await root._call("/v3/auth/enable", {})
    async with etcd.EtcdClient([etcd_server.url], username="root", password="rootpw") as admin:
        await admin.put(f"{PREFIX}/pi-1", record("198.51.100.21"))
    cluster = Cluster(kube, nitro_sim, "nsroot")
    etcd_as_root = {"endpoints": [etcd_server.url], "username": "root"}
    async with running_operator(kube, nitro_sim, etcd={**etcd_as_root, "password": "wrong"}):
        await cluster.dsrservice(backends=REGISTRY)

        async def waiting() -> dict[str, Any]:
            condition = await cluster.condition("Ready")
            return condition if condition.get("reason") == "RegistryNotRead" and "refused" in condition.get(
                "message", "") else {}

        condition = await eventually(waiting, timeout=30)
        assert "wrong" not in condition["message"]  # never the password
        assert await cluster.nitro("lbvserver") == []
    async with running_operator(kube, nitro_sim, etcd={**etcd_as_root, "password": "rootpw"}):
        await eventually(lambda: cluster.bound(), timeout=30)
