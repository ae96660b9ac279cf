"""The node agent against real netlink in a throwaway namespace and the Kubernetes emulator over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import lightkube.resources.core_v1
import lightkube.resources.discovery_v1
import lightkube.types
import pytest

from dsr_operator import kube as kubeapi
from dsr_operator.agent import core, host, loop
from dsr_operator.agent import sysctl as sysctl_mod
from tests.conftest import KubeHandle
from tests.support.hostcheck import addresses, cidrs, run, set_sysctl, sysctl
from tests.support.waiting import eventually

NODE = "node-a"


async def create_config(client: Any, vips: list[Any], name: str = NODE) -> None:
    await client.create(kubeapi.DsrNodeConfig(metadata={"name": name}, spec={"vips": vips}))


async def set_vips(client: Any, vips: list[Any], name: str = NODE) -> None:
    await client.patch(
        kubeapi.DsrNodeConfig, name, {"spec": {"vips": vips}}, patch_type=lightkube.types.PatchType.MERGE
    )


async def status_of(client: Any, name: str = NODE) -> dict[str, Any]:
    obj = await client.get(kubeapi.DsrNodeConfig, name)
    return dict(obj.get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


@contextlib.asynccontextmanager
async def running_agent(
    kube: KubeHandle, ns: str, state_dir: pathlib.Path, *, mode: host.Mode = "auto", resync: float = 0.3
) -> AsyncIterator[loop.Agent]:
    settings = loop.Settings(
        node_name=NODE,
        interface_mode=mode,
        netns=ns,
        state_dir=state_dir,
        resync_seconds=resync,
        backoff_initial_seconds=0.1,
    )
    async with host.Host(netns=ns, mode=mode, state_dir=state_dir) as the_host:
        agent = loop.Agent(settings, the_host, kube.client("agent"))
        task = asyncio.create_task(agent.run())
        try:
            yield agent
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert not task.done() or task.cancelled(), task.exception()


async def test_vips_follow_the_spec_and_status_reports_them(
    kube: KubeHandle, netns: str, tmp_path: pathlib.Path
) -> None:
    client = kube.client()
    await create_config(client, ["192.0.2.10", "2001:db8::10"])
    async with running_agent(kube, netns, tmp_path) as agent:
        await eventually(lambda: {"192.0.2.10/32", "2001:db8::10/128"} <= cidrs(netns, "lo"), what="VIPs on lo")
        labels = {a["local"]: a.get("label") for a in addresses(netns)}
        assert labels["192.0.2.10"] == "lo:dsr"
        assert sysctl(netns, "net.ipv4.conf.all.arp_ignore") == 1
        assert sysctl(netns, "net.ipv4.conf.all.arp_announce") == 2
        assert sysctl(netns, "net.ipv4.conf.lo.arp_ignore") == 1
        assert sysctl(netns, "net.ipv4.conf.lo.arp_announce") == 2

        async def reported() -> dict[str, Any] | None:
            status = await status_of(client)
            return status if status.get("observedGeneration") == 1 else None

        status = await eventually(reported, what="status of generation 1")
        assert status["appliedVips"] == ["192.0.2.10", "2001:db8::10"]
        assert status["mode"] == "loopback" and status["interface"] == "lo"  # this kernel has no dummy type
        assert status["sysctls"]["net.ipv4.conf.all.arp_ignore"] == 1
        assert "all" in status["rpFilter"] and "lo" in status["rpFilter"]
        assert condition(status, "Ready")["status"] == "True"
        assert condition(status, "Degraded")["status"] == "False"
        assert "failedVips" not in status or status["failedVips"] == []

        await set_vips(client, ["192.0.2.11"])
        await eventually(
            lambda: cidrs(netns, "lo") & {"192.0.2.10/32", "192.0.2.11/32", "2001:db8::10/128"} == {"192.0.2.11/32"},
            what="VIP set replaced",
        )

        async def second() -> dict[str, Any] | None:
            status = await status_of(client)
            return status if status.get("observedGeneration") == 2 else None

        status = await eventually(second, what="status of generation 2")
        assert status["appliedVips"] == ["192.0.2.11"]

        # Two passes to settle after the change, then three passes with nothing to change: no status write.
        settle = agent.passes + 2
        await eventually(lambda: agent.passes >= settle, what="two more passes")
        status_writes = [r for r in list(kube.emulator) if r.subresource == "status"]
        quiet = agent.passes + 3
        await eventually(lambda: agent.passes >= quiet, what="three passes with nothing to change")
        assert [r for r in list(kube.emulator) if r.subresource == "status"] == status_writes, "status rewritten"


async def test_invalid_vip_is_reported_and_does_not_block_the_others(
    kube: KubeHandle, netns: str, tmp_path: pathlib.Path
) -> None:
    client = kube.client()
    await create_config(client, ["192.0.2.20", "not-an-ip", "300.1.1.1", 7])
    async with running_agent(kube, netns, tmp_path, mode="loopback"):
        await eventually(lambda: "192.0.2.20/32" in cidrs(netns, "lo"), what="valid VIP applied")

        async def reported() -> dict[str, Any] | None:
            status = await status_of(client)
            return status if status.get("failedVips") else None

        status = await eventually(reported, what="failedVips")
        assert status["appliedVips"] == ["192.0.2.20"]
        assert {f["address"] for f in status["failedVips"]} == {"not-an-ip", "300.1.1.1", "7"}
        assert condition(status, "Degraded")["status"] == "True"
        assert condition(status, "Ready") == condition(status, "Ready") | {
            "status": "False",
            "reason": "PartiallyApplied",
        }

        await set_vips(client, ["192.0.2.20", "192.0.2.21"])  # still alive, still applying
        await eventually(lambda: "192.0.2.21/32" in cidrs(netns, "lo"), what="agent still reconciling")


async def test_addresses_we_did_not_add_are_left_alone(kube: KubeHandle, netns: str, tmp_path: pathlib.Path) -> None:
    run("ip", "-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    run("ip", "-n", netns, "addr", "add", "198.51.100.1/24", "dev", "v0")
    run("ip", "-n", netns, "addr", "add", "192.0.2.99/32", "dev", "lo")  # someone else's /32 on lo
    run("ip", "-n", netns, "addr", "add", "192.0.2.30/32", "dev", "lo", "label", "lo:dsr")  # same IP as a VIP, by hand
    client = kube.client()
    await create_config(client, ["192.0.2.30", "192.0.2.31"])
    async with running_agent(kube, netns, tmp_path):
        await eventually(lambda: "192.0.2.31/32" in cidrs(netns, "lo"), what="VIP applied")
        status = await eventually(lambda: status_of(client), what="status")
        await set_vips(client, [])
        await eventually(lambda: "192.0.2.31/32" not in cidrs(netns, "lo"), what="our VIP removed")
        await asyncio.sleep(0.5)  # a resync later, nothing else went
    assert {"192.0.2.99/32", "192.0.2.30/32", "127.0.0.1/8"} <= cidrs(netns, "lo")
    assert "198.51.100.1/24" in cidrs(netns, "v0")
    assert status is not None


async def test_drift_is_repaired_and_reported(kube: KubeHandle, netns: str, tmp_path: pathlib.Path) -> None:
    client = kube.client()
    await create_config(client, ["192.0.2.40", "2001:db8::40"])
    async with running_agent(kube, netns, tmp_path, resync=0.2):
        await eventually(lambda: "192.0.2.40/32" in cidrs(netns, "lo"), what="VIP applied")

        async def converged() -> bool:
            return (await status_of(client)).get("observedGeneration") == 1

        await eventually(converged, what="first status")
        run("ip", "-n", netns, "addr", "del", "192.0.2.40/32", "dev", "lo")
        run("ip", "-n", netns, "addr", "del", "2001:db8::40/128", "dev", "lo")
        set_sysctl(netns, "net.ipv4.conf.all.arp_ignore", 0)
        await eventually(lambda: {"192.0.2.40/32", "2001:db8::40/128"} <= cidrs(netns, "lo"), what="VIPs back")
        await eventually(lambda: sysctl(netns, "net.ipv4.conf.all.arp_ignore") == 1, what="arp_ignore back")

        async def drift_reported() -> dict[str, Any] | None:
            return (await status_of(client)).get("lastDriftRepair")

        drift = await eventually(drift_reported, what="lastDriftRepair in status")
        assert drift["repaired"], drift

        async def events() -> list[Any]:
            found = [e async for e in client.list(lightkube.resources.core_v1.Event, namespace="default")]
            return [e for e in found if e.reason == "DriftRepaired"]

        # One pass may repair all three, or (on a busy machine) the agent may run between the three
        # changes: every repair is reported, in one event or several.
        async def all_reported() -> list[Any] | None:
            found = await events()
            text = " ".join(e.message for e in found)
            return found if all(x in text for x in ("192.0.2.40", "2001:db8::40", "arp_ignore")) else None

        found = await eventually(all_reported, what="every repair reported in DriftRepaired events")
        assert all(e.involvedObject.kind == "DsrNodeConfig" and e.involvedObject.name == NODE for e in found)


async def test_dummy_mode_where_the_kernel_has_it(kube: KubeHandle, netns: str, tmp_path: pathlib.Path) -> None:
    probe = run("ip", "-n", netns, "link", "add", "dsrprobe", "type", "dummy", check=False)
    if probe.returncode != 0:
        pytest.skip(f"this kernel has no dummy link type ({probe.stderr.strip()}); loopback mode is what runs here")
    run("ip", "-n", netns, "link", "del", "dsrprobe")
    client = kube.client()
    await create_config(client, ["192.0.2.60"])
    async with running_agent(kube, netns, tmp_path, mode="dummy"):
        await eventually(lambda: "192.0.2.60/32" in cidrs(netns, "dsr0"), what="VIP on dsr0")
        link = run("ip", "-n", netns, "-j", "link", "show", "dsr0").stdout
        assert "NOARP" in link and "UP" in link


@pytest.mark.parametrize("proto_supported", [True, False], ids=["ifa-proto-kernel", "pre-6.1-kernel"])
async def test_ownership_marks(netns: str, tmp_path: pathlib.Path, proto_supported: bool) -> None:
    """With IFA_PROTO our tag alone decides; without it, the lo:dsr label and the state record do."""
    for args in (
        ("192.0.2.80/32", "label", "lo:dsr"),  # our label, no tag
        ("2001:db8::80/128",),  # recorded in the state file, no tag
        ("192.0.2.81/32",),  # someone else's
        ("2001:db8::81/128",),  # someone else's
    ):
        run("ip", "-n", netns, "addr", "add", args[0], "dev", "lo", *args[1:])
    state_file = tmp_path / f"netns-{netns}.json"
    state_file.write_text('{"version": 1, "mode": "loopback", "interface": "lo", "addresses": ["lo 2001:db8::80"]}')
    async with host.Host(netns=netns, mode="loopback", state_dir=tmp_path) as the_host:
        the_host.proto_supported = proto_supported
        outcome = await the_host.apply([])
    assert not outcome.error
    held = cidrs(netns, "lo")
    assert {"192.0.2.81/32", "2001:db8::81/128"} <= held
    if proto_supported:
        assert outcome.removed == ()
        assert {"192.0.2.80/32", "2001:db8::80/128"} <= held
    else:
        assert sorted(outcome.removed) == ["192.0.2.80", "2001:db8::80"]
        assert not {"192.0.2.80/32", "2001:db8::80/128"} & held


async def test_api_errors_are_retried_with_backoff(kube: KubeHandle, netns: str, tmp_path: pathlib.Path) -> None:
    client = kube.client()
    await create_config(client, ["192.0.2.90"])
    nodeconfigs = kmock.resource("dsr.operators.dev", "v1alpha1", "dsrnodeconfigs")
    kube.emulator[kmock.action.LIST, nodeconfigs][:2] << 503  # the first two listings fail
    async with running_agent(kube, netns, tmp_path):
        await eventually(lambda: "192.0.2.90/32" in cidrs(netns, "lo"), what="VIP applied after the API recovered")
    lists = [r for r in list(kube.emulator) if r.action == kmock.action.LIST and r.resource == nodeconfigs]
    assert len(lists) >= 3


async def test_no_vip_is_added_while_the_arp_sysctls_cannot_be_set(
    netns: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The arp sysctls come first: a VIP on a node that answers ARP for it would race NetScaler."""
    monkeypatch.setattr(sysctl_mod, "PROC_SYS", tmp_path / "no-proc-sys")  # every sysctl write fails
    vips, _ = core.parse_vips(["192.0.2.70"])
    async with host.Host(netns=netns, mode="loopback", state_dir=tmp_path) as the_host:
        outcome = await the_host.apply(vips)
    assert outcome.error and "arp" in outcome.error, outcome
    assert outcome.applied == () and "192.0.2.70/32" not in cidrs(netns, "lo")


async def test_vips_no_longer_wanted_go_even_while_the_arp_sysctls_cannot_be_set(
    netns: str, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vips, _ = core.parse_vips(["192.0.2.71"])
    async with host.Host(netns=netns, mode="loopback", state_dir=tmp_path) as the_host:
        assert (await the_host.apply(vips)).applied == ("192.0.2.71",)
        monkeypatch.setattr(sysctl_mod, "PROC_SYS", tmp_path / "no-proc-sys")
        outcome = await the_host.apply([])
    assert outcome.removed == ("192.0.2.71",) and "192.0.2.71/32" not in cidrs(netns, "lo")
    assert outcome.error and "arp" in outcome.error, outcome


async def test_the_node_refuses_vips_that_would_cut_it_off(
    kube: KubeHandle, netns: str, tmp_path: pathlib.Path
) -> None:
    """Whatever the DsrNodeConfig asks, the agent never takes an address the node or the cluster needs."""
    run("ip", "-n", netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    run("ip", "-n", netns, "addr", "add", "198.51.100.1/24", "dev", "v0")
    run("ip", "-n", netns, "link", "set", "v0", "up")
    run("ip", "-n", netns, "route", "add", "default", "via", "198.51.100.254")
    client = kube.client()
    await client.create(lightkube.resources.core_v1.Node.from_dict(
        {"metadata": {"name": "node-b"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}))
    await client.patch(lightkube.resources.core_v1.Node.Status, "node-b", {"status": {"addresses": [
        {"type": "InternalIP", "address": "198.51.100.7"}, {"type": "Hostname", "address": "node-b"}]}})
    await client.create(lightkube.resources.discovery_v1.EndpointSlice.from_dict({
        "metadata": {"name": "kubernetes", "namespace": "default"}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["198.51.100.5"]}]}))
    refused = {
        "198.51.100.1": "assigned to v0 on this node",
        "198.51.100.254": "this node's gateway",
        "198.51.100.7": "node node-b's InternalIP",
        "198.51.100.5": "the API server's address",  # from the default/kubernetes EndpointSlice
        "198.51.100.6": "the API server's address",  # the host the agent reaches it by
        "10.244.1.9": "node node-b's pod CIDR",
        "10.96.0.1": "a protected range (--protected-cidr)",
        "240.0.0.1": "reserved",
        "255.255.255.255": "reserved (or broadcast)",
    }
    await create_config(client, ["192.0.2.40", *refused])
    settings = loop.Settings(node_name=NODE, interface_mode="loopback", netns=netns, state_dir=tmp_path,
                             resync_seconds=0.3, backoff_initial_seconds=0.1,
                             api_hosts=("198.51.100.6",), protected_cidrs=("10.96.0.0/12",))
    async with host.Host(netns=netns, mode="loopback", state_dir=tmp_path) as the_host:
        agent = loop.Agent(settings, the_host, kube.client("agent"))
        task = asyncio.create_task(agent.run())
        try:
            async def reported() -> dict[str, Any] | None:
                status = await status_of(client)
                return status if status.get("appliedVips") == ["192.0.2.40"] else None

            status = await eventually(reported, what="the harmless VIP applied, the others reported")
            passes = agent.passes
            await eventually(lambda: agent.passes >= passes + 3, what="three more passes")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    errors = {f["address"]: f["error"] for f in status["failedVips"]}
    assert set(errors) == set(refused), errors
    for address, why in refused.items():
        assert errors[address].startswith("refused: ") and why in errors[address], (address, errors[address])
    on_the_node = {a["local"] for a in addresses(netns)}
    assert on_the_node & set(refused) == {"198.51.100.1"}  # v0's own address, untouched
    assert "192.0.2.40/32" in cidrs(netns, "lo") and cidrs(netns, "v0") == {"198.51.100.1/24"}
    assert condition(status, "Degraded")["status"] == "True"


async def test_vips_just_added_go_again_when_the_api_server_falls_silent(
    kube: KubeHandle, netns: str, tmp_path: pathlib.Path
) -> None:
    """Second line of defence: a VIP that cut the node off from the API server (as an unlisted address of
    the API server would) is removed again after the grace time, reported once the API answers, and
    retried only after the quarantine."""
    client = kube.client()
    await create_config(client, ["192.0.2.95"])
    cut_off = {"on": True}
    # The API answers 503 to everything while the VIP is on the node (and the test has not lifted it).
    kube.emulator[lambda: cut_off["on"] and "192.0.2.95/32" in cidrs(netns, "lo")] << 503
    settings = loop.Settings(node_name=NODE, interface_mode="loopback", netns=netns, state_dir=tmp_path,
                             resync_seconds=0.3, backoff_initial_seconds=0.1, api_grace_seconds=1.0,
                             quarantine_seconds=600.0)
    async with host.Host(netns=netns, mode="loopback", state_dir=tmp_path) as the_host:
        agent = loop.Agent(settings, the_host, kube.client("agent"))
        task = asyncio.create_task(agent.run())
        try:
            await eventually(lambda: "192.0.2.95/32" in cidrs(netns, "lo"), what="VIP added")
            await eventually(lambda: "192.0.2.95/32" not in cidrs(netns, "lo"), what="VIP removed after the grace time")

            async def reported() -> dict[str, Any] | None:
                status = await status_of(client)
                return status if status.get("failedVips") else None

            status = await eventually(reported, what="the removal reported once the API answers")
            passes = agent.passes
            await eventually(lambda: agent.passes >= passes + 5, what="five more passes")
            assert "192.0.2.95/32" not in cidrs(netns, "lo")  # quarantined, not re-added in a loop
            cut_off["on"] = False
            await set_vips(client, ["192.0.2.96"])  # the rest of the spec is still served
            await eventually(lambda: "192.0.2.96/32" in cidrs(netns, "lo"), what="another VIP applied")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    [failure] = status["failedVips"]
    assert failure["address"] == "192.0.2.95" and "did not answer" in failure["error"], failure
    assert status.get("appliedVips", []) == []
