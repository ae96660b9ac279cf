"""The reconcile loop as users see it: inputs reach the DsrServices that read them, without a resync.

The operator runs in-process against the Kubernetes emulator and the NITRO simulator. Every test here
sets the resync far away (600 s), so only event routing can bring what the test waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pydantic
import pytest
from lightkube.types import PatchType

from dsr_lab import simctl
from dsr_operator import kube as kubeapi
from dsr_operator import settings as settings_mod
from dsr_operator.controller import cli as operator_cli
from dsr_operator.controller import config
from tests.conftest import KubeHandle
from tests.integration.test_operator import VIP, Cluster, backend_steps, converged, running_operator, serving
from tests.support.waiting import eventually

FAR = 600.0


def box(sim: simctl.Simulator, password: str = "nsroot") -> settings_mod.NitroSettings:
    """The operator's NetScaler settings for the simulator `sim`."""
    return settings_mod.NitroSettings(url=sim.url, password=pydantic.SecretStr(password))


async def create(cluster: Cluster, name: str, spec: dict[str, Any], namespace: str = "shop") -> None:
    await cluster.client.create(kubeapi.DsrService({
        "apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
        "metadata": {"name": name, "namespace": namespace}, "spec": spec,
    }))


def static(*addresses: str) -> dict[str, Any]:
    return {"static": [{"name": f"h{i}", "address": a} for i, a in enumerate(addresses)]}


async def ready(cluster: Cluster, name: str, reason: str = "Converged") -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def check() -> dict[str, Any] | None:
        c = await cluster.condition("Ready", name)
        seen[:] = [c]
        return c if c.get("reason") == reason else None

    try:
        return await eventually(check, timeout=30)
    except AssertionError:
        raise AssertionError(f"{name} never {reason}: last {seen}") from None


async def test_a_huge_dsrservice_is_removed_in_steps_and_a_small_change_is_not_behind_it(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    """Fair work on deletion too: with `step_changes` 100, deleting a 10-port, 30-host DsrService (about
    1,000 removals) goes in steps, and a DsrService created once the removal has begun is bound before
    the last of it (in one step, it would wait for all of it)."""
    big = {"vip": "192.0.2.62", "ports": list(range(8000, 8010)), "healthCheck": {"port": 8000},
           "backends": static(*(f"10.62.0.{i}" for i in range(1, 31))), "drainSeconds": 0}
    async with running_operator(kube, nitro_sim, resync_seconds=FAR, step_changes=100):
        await create(cluster, "big", big)
        await eventually(lambda: _ready_reason(cluster, "big", "Converged"), timeout=120)
        start = max(e["seq"] for e in await nitro_sim.journal())
        await cluster.client.delete(kubeapi.DsrService, "big", namespace="shop")

        async def removal_started() -> bool:
            return any("shop_big" in str(e["name"]) or "shop_big" in str(e.get("key"))
                       for e in await nitro_sim.journal(since=start) if e["action"] not in ("get", "stat"))

        await eventually(removal_started, timeout=60)
        await create(cluster, "small", {"vip": "192.0.2.63", "ports": [80], "backends": static("10.63.0.1")})
        await ready(cluster, "small")

        async def big_gone() -> bool:
            try:
                await cluster.dsr("big")
            except httpx2.HTTPStatusError as exc:
                return exc.response.status_code == 404
            return False

        await eventually(big_gone, timeout=120)
        journal = await nitro_sim.journal(since=start)
    writes = [e for e in journal if e["action"] not in ("get", "stat")]
    small_bound = next(i for i, e in enumerate(writes)
                       if "shop_small_80" in str(e["name"]) and "binding" in e["resource"])
    big_last = max(i for i, e in enumerate(writes) if "10.62.0." in str(e) or "shop_big" in str(e))
    assert small_bound < big_last, "the small DsrService waited for all of the big one's removal"
    assert [v for v in await cluster.nitro("lbvserver") if v.get("ipv46") == "192.0.2.62"] == []
    assert not [s for s in await cluster.nitro("server") if str(s.get("ipaddress", "")).startswith("10.62.0.")]


async def test_an_older_versions_kopf_bookkeeping_leaves_the_status_with_the_next_write(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    """An upgrade from a version whose kopf kept its finalizer and `status.kopf`: the finalizer is the
    same name (the object is still cleaned up on deletion), and `status.kopf` goes at the first status
    write, so the status carries only the operator's own fields."""
    await create(cluster, "old", {"vip": "192.0.2.64", "ports": [80], "backends": static("10.64.0.1")})
    await cluster.client.patch(kubeapi.DsrService, "old", {"metadata": {"finalizers": ["dsr.operators.dev/finalizer"]}},
                               namespace="shop", patch_type=PatchType.MERGE)
    await cluster.client.patch(kubeapi.DsrService.Status, "old",
                               {"status": {"kopf": {"dsr.operators.dev/last-handled-configuration": "{}"}}},
                               namespace="shop", patch_type=PatchType.MERGE)
    async with running_operator(kube, nitro_sim, resync_seconds=FAR):
        await ready(cluster, "old")
        await eventually(lambda: _status_without_kopf(cluster, "old"), timeout=30)
        body = await cluster.dsr("old")
        assert body["metadata"]["finalizers"] == ["dsr.operators.dev/finalizer"]


async def _status_without_kopf(cluster: Cluster, name: str) -> bool:
    return "kopf" not in ((await cluster.dsr(name)).get("status") or {})


async def test_a_deleted_dsrnodeconfig_is_written_again(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with serving(cluster, kube, nitro_sim, ("n1",), resync_seconds=FAR):
        await cluster.client.delete(kubeapi.DsrNodeConfig, "n1")

        async def rewritten() -> bool:
            cfg = await cluster.nodeconfig("n1")
            return cfg is not None and cfg["spec"]["vips"] == [VIP]

        await eventually(rewritten, timeout=30)
        await converged(cluster, ("n1",))


async def test_a_node_created_after_the_endpointslice_that_names_it_is_picked_up(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.slice({"n1": "ready", "n4": "ready"})
    async with running_operator(kube, nitro_sim, resync_seconds=FAR):
        await cluster.dsrservice()
        await eventually(lambda: cluster.nodeconfig("n1"), timeout=30)
        assert await cluster.nodeconfig("n4") is None
        await cluster.node("n4", "198.51.100.4")
        await eventually(lambda: cluster.nodeconfig("n4"), timeout=30)
        await converged(cluster, ("n1", "n4"))


async def test_the_loser_of_a_vip_conflict_takes_over_when_the_winner_moves(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with running_operator(kube, nitro_sim, resync_seconds=FAR):
        await create(cluster, "first", {"vip": VIP, "ports": [80], "backends": static("10.0.0.1")})
        await ready(cluster, "first")
        await create(cluster, "second", {"vip": VIP, "ports": [80], "backends": static("10.0.0.2")})
        await ready(cluster, "second", "VipConflict")
        await cluster.client.patch(kubeapi.DsrService, "first", {"spec": {"vip": "192.0.2.99"}}, namespace="shop")
        await ready(cluster, "second")
        await ready(cluster, "first")
        vservers = {v["name"]: v["ipv46"] for v in await cluster.nitro("lbvserver")}
        assert vservers == {"dsr-shop_first_80": "192.0.2.99", "dsr-shop_second_80": VIP}


async def test_the_operators_default_drain_applies_when_the_spec_sets_none(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with running_operator(kube, nitro_sim, resync_seconds=FAR, default_drain_seconds=1):
        await create(cluster, "web", {"vip": VIP, "ports": [80], "backends": static("10.0.0.1", "10.0.0.2")})
        await ready(cluster, "web")
        await cluster.client.patch(kubeapi.DsrService, "web", {"spec": {"backends": static("10.0.0.1")}},
                                   namespace="shop")

        async def drained() -> bool:
            return await cluster.bound() == ["dsr-10.0.0.1_80"]

        await eventually(drained, timeout=30)
        journal = await nitro_sim.journal()
        steps = backend_steps(journal)
        assert [b for step, b in steps if step == "disable"] == ["dsr-10.0.0.2_80"]
        disabled = next(e for e in journal if (e["resource"], e["action"]) == ("servicegroup", "disable"))
        unbound = next(e for e in journal
                       if (e["resource"], e["action"]) == ("servicegroup_servicegroupmember_binding", "unbind"))
        assert unbound["time"] - disabled["time"] >= 1 - 0.05, "drained for the default 1 s"


async def test_a_wrong_password_is_its_own_reason(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    settings = config.OperatorSettings(kube_server=kube.url, metrics_port=0, liveness_port=0, resync_seconds=FAR,
                                       netscaler=box(nitro_sim, password="wrong"))
    async with _operator(settings):
        await create(cluster, "web", {"vip": VIP, "ports": [80], "backends": static("10.0.0.1")})
        c = await ready(cluster, "web", "NetScalerAuthFailed")
        assert "wrong" not in c["message"]
        assert (await nitro_sim.stats())["writes"] == 0


async def test_invalid_specs_missing_services_and_no_ready_backends_are_reported_and_leave_netscaler_alone(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    await cluster.slice({"n1": "notready"})
    async with running_operator(kube, nitro_sim, resync_seconds=FAR):
        # The emulator does not apply the CRD schema: the operator sees what the API server would refuse.
        await create(cluster, "bad", {"vip": "not-an-ip", "ports": [80], "backends": static("10.0.0.1")})
        await create(cluster, "lost", {"vip": "192.0.2.20", "ports": [80], "backends": {"service": "nope"}})
        await create(cluster, "idle", {"vip": "192.0.2.21", "ports": [80], "backends": {"service": "web"}})
        bad = await ready(cluster, "bad", "InvalidSpec")
        assert "vip" in bad["message"]
        assert (await cluster.condition("Stalled", "bad"))["status"] == "True"
        await ready(cluster, "lost", "ServiceNotFound")
        # A missing Service is a wait (it heals when the Service appears), not a failure.
        assert (await cluster.condition("Stalled", "lost"))["status"] == "False"
        assert (await cluster.condition("Reconciling", "lost"))["reason"] == "ServiceNotFound"
        await ready(cluster, "idle", "NoReadyBackends")
        vservers = {v["name"] for v in await cluster.nitro("lbvserver")}
        assert vservers == {"dsr-shop_idle_80"}, "only the valid DsrService is on NetScaler"
        # A not-ready endpoint's node gets the VIP and a server, ready for later, and is no member yet.
        cfg = await eventually(lambda: cluster.nodeconfig("n1"))
        assert cfg["spec"]["vips"] == ["192.0.2.21"]
        assert await cluster.bound("dsr-shop_idle_80") == []
        assert [s["name"] for s in await cluster.nitro("server")] == ["dsr-198.51.100.1"]
        assert await cluster.configured() == set()


async def test_static_backends_several_ports_the_wildcard_and_an_ipv6_vip(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    async with running_operator(kube, nitro_sim, resync_seconds=FAR):
        await create(cluster, "two", {"vip": "192.0.2.30", "ports": [80, 443], "backends": static("10.0.1.1")})
        await create(cluster, "all", {"vip": "192.0.2.31", "ports": ["*"], "backends": static("10.0.1.2"),
                                     "healthCheck": {"type": "TCP", "port": 22}})
        await create(cluster, "six", {"vip": "2001:db8::10", "ports": [80], "backends": static("2001:db8::21")})
        for name in ("two", "all", "six"):
            await ready(cluster, name)
        vservers = {v["name"]: (v["ipv46"], int(v["port"])) for v in await cluster.nitro("lbvserver")}
        assert vservers == {
            "dsr-shop_two_80": ("192.0.2.30", 80), "dsr-shop_two_443": ("192.0.2.30", 443),
            "dsr-shop_all_any": ("192.0.2.31", 65535), "dsr-shop_six_80": ("2001:db8::10", 80),
        }
        status = (await cluster.dsr("two"))["status"]
        assert status["backends"] == {"desired": 1, "loopbackReady": 1, "bound": 1}


async def test_a_restart_killed_in_the_middle_of_a_batch_adopts_and_never_rebuilds(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = config.OperatorSettings(kube_server=kube.url, metrics_port=0, liveness_port=0, resync_seconds=FAR,
                                       save_debounce_seconds=0.1, default_drain_seconds=0, netscaler=box(nitro_sim))
    async with _operator(settings):
        for i in range(3):
            await create(cluster, f"s{i}", {"vip": f"192.0.2.{40 + i}", "ports": [80],
                                            "backends": static(f"10.0.2.{i + 1}", f"10.0.3.{i + 1}")})
        for i in range(3):
            await ready(cluster, f"s{i}")
    before = {(e["resource"], e["name"], str(e["key"])) for e in await nitro_sim.journal()}
    seq0 = max(e["seq"] for e in await nitro_sim.journal())
    # Kill the operator right after its first write of the next batch (a journal hook, not a sleep).
    task_box: dict[str, asyncio.Task[None]] = {}

    def kill_after_first_write(change: Any) -> None:
        task = task_box.get("task")
        if task is not None and not task.done():
            task.cancel()

    nitro_sim.store.listeners.append(kill_after_first_write)
    stop, ready_flag = asyncio.Event(), asyncio.Event()
    task_box["task"] = asyncio.create_task(operator_cli.run(settings, stop_flag=stop, ready_flag=ready_flag))
    await asyncio.wait_for(ready_flag.wait(), timeout=30)
    await create(cluster, "s3", {"vip": "192.0.2.43", "ports": [80, 443],
                                 "backends": static("10.0.2.4", "10.0.3.4")})
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task_box["task"], timeout=30)
    nitro_sim.store.listeners.remove(kill_after_first_write)
    assert max(e["seq"] for e in await nitro_sim.journal()) > seq0, "the hook fired after a write"
    async with _operator(settings):
        for i in range(4):
            await ready(cluster, f"s{i}")
    journal = await nitro_sim.journal(since=seq0)
    undone = [e for e in journal if e["action"] in ("rm", "delete", "unbind", "disable")]
    assert undone == [], undone
    readded = [e for e in journal if (e["resource"], e["name"], str(e["key"])) in before and e["action"] == "add"]
    assert readded == [], readded
    assert "Will escalate" not in caplog.text


@contextlib.asynccontextmanager
async def _operator(settings: config.OperatorSettings) -> AsyncIterator[None]:
    stop, ready_flag = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(operator_cli.run(settings, stop_flag=stop, ready_flag=ready_flag))
    await asyncio.wait_for(ready_flag.wait(), timeout=30)
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=15)



async def test_a_huge_dsrservice_goes_in_steps_and_a_small_change_is_not_behind_it(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    """Fair work: with `step_changes` 100, a 20-port, 40-host DsrService (about 900 changes) goes in
    steps, and a one-host DsrService created once the big one's first writes are on NetScaler is bound
    before the big one is done (without steps it would wait for all of it: one batch, one plan)."""
    big = {"vip": "192.0.2.60", "ports": list(range(8000, 8020)), "healthCheck": {"port": 8000},
           "backends": static(*(f"10.60.0.{i}" for i in range(1, 41)))}
    async with running_operator(kube, nitro_sim, resync_seconds=FAR, step_changes=100):
        start = max((e["seq"] for e in await nitro_sim.journal()), default=0)
        await create(cluster, "big", big)

        async def big_started() -> bool:
            return any("shop_big" in str(e["name"]) for e in await nitro_sim.journal(since=start))

        await eventually(big_started, timeout=60)
        await create(cluster, "small", {"vip": "192.0.2.61", "ports": [80], "backends": static("10.61.0.1")})
        await ready(cluster, "small")
        await eventually(lambda: _ready_reason(cluster, "big", "Converged"), timeout=120)
        journal = await nitro_sim.journal(since=start)
    writes = [e for e in journal if e["action"] not in ("get", "stat")]
    small_bound = next(i for i, e in enumerate(writes)
                       if "shop_small_80" in str(e["name"]) and "binding" in e["resource"])
    big_last = max(i for i, e in enumerate(writes) if "shop_big" in str(e["name"]))
    assert small_bound < big_last, "the small DsrService waited for all of the big one"
    vservers = [v for v in await cluster.nitro("lbvserver") if v.get("ipv46") == "192.0.2.60"]
    assert len(vservers) == 20


async def _ready_reason(cluster: Cluster, name: str, reason: str) -> bool:
    return (await cluster.condition("Ready", name)).get("reason") == reason


async def test_asked_to_stop_the_operator_first_finishes_the_change_that_arrives_with_the_signal(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    """`kubectl drain` evicts the leader together with an app Pod: the Pod's endpoint turns terminating just
    after the operator's SIGTERM. The stopping operator still disables that node on NetScaler, instead of
    leaving it to the next leader (which needs seconds to start, while the node's Pod shuts down)."""
    await _stopping_operator_removes_the_terminating_node(cluster, kube, nitro_sim)


async def _stopping_operator_removes_the_terminating_node(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator,
    **overrides: Any,
) -> None:
    await cluster.slice({"n1": "ready", "n2": "ready"})
    settings = config.OperatorSettings(kube_server=kube.url, metrics_port=0, liveness_port=0, resync_seconds=FAR,
                                       max_unbind_percent=100, netscaler=box(nitro_sim), **overrides)
    stop, ready_flag = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(operator_cli.run(settings, stop_flag=stop, ready_flag=ready_flag))
    try:
        await asyncio.wait_for(ready_flag.wait(), timeout=30)
        await cluster.dsrservice()
        await converged(cluster, ("n1", "n2"))
        start = max(e["seq"] for e in await nitro_sim.journal())
        stop.set()  # SIGTERM
        await cluster.slice({"n1": "ready", "n2": "terminating"})
        await asyncio.wait_for(task, timeout=60)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    writes = [(e["resource"], e["action"], e["name"]) for e in await nitro_sim.journal(since=start)]
    # Its DsrService drains in 0 s: the node's member and server go at once (with a drain time: disabled first).
    assert ("server", "delete", "dsr-198.51.100.2") in writes, writes



async def test_a_new_leader_takes_back_a_vip_its_predecessor_left_on_a_node(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator
) -> None:
    """Leadership moved while a node was drained: its VIP, announced by the old leader, is needed by no
    DsrService; once every DsrService has reported, the new leader removes it."""
    await cluster.client.create(kubeapi.DsrNodeConfig(metadata={"name": "n1"}, spec={"vips": [VIP]}))
    async with running_operator(kube, nitro_sim, resync_seconds=FAR):
        await create(cluster, "other", {"vip": "192.0.2.70", "ports": [80], "backends": static("10.70.0.1")})
        await ready(cluster, "other")

        async def taken_back() -> bool:
            cfg = await cluster.nodeconfig("n1")
            return cfg is not None and not cfg["spec"].get("vips")

        await eventually(taken_back, timeout=30)
