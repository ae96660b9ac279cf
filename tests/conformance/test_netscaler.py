"""Conformance: what dsr-operator relies on, checked against a real NetScaler (or the simulator).

The NITRO client's behaviours (sessions, bulk per-item results, errors by errorcode, reads, stats,
HA state, the real-box behaviours README "The NITRO simulator" lists) and one full DSR apply / verify /
delete of a throwaway DsrService. See `conftest.py` for the variables; README "Check against your
own NetScaler" for what is created. Every test removes what it created, also when it fails.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dsr_operator import oneshot
from dsr_operator.api import models
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as nsmodels
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors, executor
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner
from dsr_operator.simulator import server
from tests.conformance.conftest import Target

pytestmark = pytest.mark.netscaler

#: TEST-NET addresses (RFC 5737): never a real host, so never one of the box's own objects.
BACKENDS = ipaddress.ip_network("203.0.113.0/24")
VIPS = ipaddress.ip_network("192.0.2.0/24")


def addresses(count: int, network: ipaddress.IPv4Network = BACKENDS) -> list[str]:
    hosts = list(network.hosts())
    return [str(ip) for ip in random.sample(hosts, count)]


async def sweep(client: nitro.NitroClient, prefix: str) -> None:
    """Remove every object whose name starts with `prefix` (services first: their bindings go with them)."""
    pattern = {"name": f"/^{prefix}/"}
    for rtype, key in (("service", "name"), ("lbvserver", "name"), ("lbmonitor", "monitorname"),
                       ("server", "name")):
        with contextlib.suppress(errors.NitroError):
            rows = await client.get(rtype, filter={key: f"/^{prefix}/"} if key != "name" else pattern)
            keys = [{key: r[key], **({"type": r["type"]} if rtype == "lbmonitor" else {})} for r in rows]
            if keys:
                await client.delete(rtype, keys)


@pytest.fixture
async def mine(target: Target, ns: nitro.NitroClient) -> AsyncIterator[str]:
    """The run's name prefix; whatever carries it is removed after the test."""
    try:
        yield target.prefix
    finally:
        await sweep(ns, target.prefix)
        left = [r["name"] for rtype in ("service", "lbvserver", "server")
                for r in await ns.get(rtype, filter={"name": f"/^{target.prefix}/"})]
        assert left == [], f"left behind on NetScaler: {left}"


# ---------------------------------------------------------------------------- sessions


async def test_login_reads_and_logout(target: Target) -> None:
    async with target.client() as client:
        assert await client.ha_state() in ("Primary", "Secondary", "UNKNOWN")
        assert isinstance(await client.config_changed(), bool)
        modes = await client.get_modes()
        assert isinstance(modes.get("mbf"), bool | str)
    assert client.state is nitro.State.CLOSED
    if target.sim is not None:
        assert len(target.sim.app[server.SESSIONS]) == 0  # logged out (a real box would not tell us)


async def test_a_bulk_write_on_a_killed_session_is_repeated_after_a_relogin(
    target: Target, ns: nitro.NitroClient, mine: str
) -> None:
    # End the client's session behind its back (a real box answers the next bulk write 200 / 444).
    tls: ssl.SSLContext | bool = False
    if target.verify_tls:
        tls = ssl.create_default_context(cafile=target.ca_file)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http, http.post(
        f"{target.url}/nitro/v1/config/logout", json={"logout": {}},
        headers={"Cookie": f"{nitro.AUTH_COOKIE}={ns._token}"},
    ) as resp:
        assert resp.status == 200
    ips = addresses(2)
    results = await ns.add("server", [{"name": f"{mine}s{i}", "ipaddress": ip} for i, ip in enumerate(ips)])
    assert [r.ok for r in results] == [True, True]
    assert ns.stats.relogins == 1
    found = await ns.get("server", filter={"name": f"/^{mine}/"})
    assert sorted(r["ipaddress"] for r in found) == sorted(ips)  # really created, not only reported


# ---------------------------------------------------------------------------- writes and errors


async def test_bulk_results_per_item_and_errors_by_errorcode(ns: nitro.NitroClient, mine: str) -> None:
    ip1, ip2 = addresses(2)
    batch = [{"name": f"{mine}a", "ipaddress": ip1}, {"name": "-bad name", "ipaddress": ip2}]
    results = await ns.add("server", batch)
    assert results[0].ok and not results[1].ok
    assert isinstance(results[1].error, errors.NitroInvalidArgument)
    again = await ns.add("server", [{"name": f"{mine}a", "ipaddress": ip1}])
    assert isinstance(again[0].error, errors.NitroAlreadyExists), again
    with pytest.raises(errors.NitroNotFound) as missing:
        await ns.get("server", f"{mine}missing")
    assert missing.value.errorcode == 258
    assert (await ns.update("server", [{"name": f"{mine}a", "comment": "conformance"}]))[0].ok
    [record] = await ns.get("server", f"{mine}a")
    assert record["comment"] == "conformance"


async def test_reads_filters_attrs_and_bulk_bindings(ns: nitro.NitroClient, mine: str) -> None:
    ip = addresses(1)[0]
    vip = addresses(1, VIPS)[0]
    await ns.add("server", [{"name": f"{mine}h", "ipaddress": ip}])
    assert (await ns.add("service", [{"name": f"{mine}svc", "servername": f"{mine}h", "servicetype": "ANY",
                                      "port": 80, "usip": "YES"}]))[0].ok
    assert (await ns.add("lbvserver", [{"name": f"{mine}vs", "servicetype": "ANY", "ipv46": vip, "port": 80,
                                        "m": "MAC"}]))[0].ok
    assert (await ns.bind(nsmodels.VSERVER_BINDING, [{"name": f"{mine}vs", "servicename": f"{mine}svc"}]))[0].ok
    rows = await ns.get("service", filter={"name": f"/^{mine}/"}, attrs=["name", "svrstate", "port"])
    assert [(r["name"], int(r["port"])) for r in rows] == [(f"{mine}svc", 80)] and "svrstate" in rows[0]
    # bulkbindings=yes for a get-all, filtered on our side (never together with filter=).
    every = await ns.get(nsmodels.VSERVER_BINDING, bulkbindings=True)
    assert [(b["name"], b["servicename"]) for b in every if b["name"].startswith(mine)] == [(f"{mine}vs", f"{mine}svc")]
    assert [b["servicename"] for b in await ns.get(nsmodels.VSERVER_BINDING, f"{mine}vs")] == [f"{mine}svc"]


async def test_an_unbind_of_what_is_not_bound_counts_as_done(ns: nitro.NitroClient, mine: str) -> None:
    await ns.add("server", [{"name": f"{mine}h", "ipaddress": addresses(1)[0]}])
    await ns.add("service", [{"name": f"{mine}svc", "servername": f"{mine}h", "servicetype": "ANY", "port": 80}])
    await ns.add("lbvserver", [{"name": f"{mine}vs", "servicetype": "ANY", "ipv46": addresses(1, VIPS)[0],
                                "port": 80, "m": "MAC"}])
    op = nsops.Op.binding("unbind", nsmodels.Binding(nsmodels.VSERVER_BINDING, f"{mine}vs", f"{mine}svc", "x"))
    outcome = await executor.execute(ns, (nsops.Stage("unbind", nsmodels.VSERVER_BINDING, (op,)),))
    assert outcome.applied == (op,) and outcome.failures == ()


async def test_a_monitor_interval_of_a_minute_is_sixty_seconds(ns: nitro.NitroClient, mine: str) -> None:
    name = f"{mine}mon"
    assert (await ns.add("lbmonitor", [{"monitorname": name, "type": "TCP", "interval": 60, "resptimeout": 2}]))[0].ok
    [raw] = await ns.get("lbmonitor", args={"monitorname": name, "type": "TCP"})
    # NetScaler reads it back as 1 MIN (ansible-collection-netscaleradc #324); either way it is 60 s.
    assert (nitro.as_int(raw["interval"]), raw.get("units3", "SEC")) in ((1, "MIN"), (60, "SEC")), raw
    assert nsmodels.in_seconds(raw["interval"], raw.get("units3")) == 60


async def test_service_groups_members_monitors_and_vserver_bindings(ns: nitro.NitroClient, mine: str) -> None:
    """One server and port may be a member of two groups; a duplicate member is 273 (ISS-376)."""
    ip = addresses(1)[0]
    groups = [f"{mine}sg1", f"{mine}sg2"]
    await ns.add("server", [{"name": f"{mine}h", "ipaddress": ip}])
    await ns.add("lbmonitor", [{"monitorname": f"{mine}mon", "type": "TCP"}])
    await ns.add("lbvserver", [{"name": f"{mine}vs", "servicetype": "ANY", "ipv46": addresses(1, VIPS)[0],
                                "port": 80, "m": "MAC"}])
    try:
        results = await ns.add("servicegroup", [{"servicegroupname": g, "servicetype": "ANY", "usip": "YES"}
                                                for g in groups])  # fmt: skip
        assert all(r.ok for r in results), results
        [record] = await ns.get("servicegroup", groups[0])
        assert (record["servicegroupname"], record["servicetype"]) == (groups[0], "ANY")
        members = [{"servicegroupname": g, "servername": f"{mine}h", "port": 80} for g in groups]
        assert all(r.ok for r in await ns.bind("servicegroup_servicegroupmember_binding", members))
        again = await ns.bind("servicegroup_servicegroupmember_binding", members[:1])
        assert isinstance(again[0].error, errors.NitroAlreadyExists) and again[0].error.errorcode == 273, again
        [bound] = await ns.get("servicegroup_servicegroupmember_binding", groups[1])
        assert (bound["servername"], nitro.as_int(bound["port"])) == (f"{mine}h", 80)
        monitor = [{"servicegroupname": groups[0], "monitor_name": f"{mine}mon"}]
        assert (await ns.bind("servicegroup_lbmonitor_binding", monitor))[0].ok
        assert [b["monitor_name"] for b in await ns.get("servicegroup_lbmonitor_binding", groups[0])] == [
            f"{mine}mon"]
        assert (await ns.bind("lbvserver_servicegroup_binding", [{"name": f"{mine}vs",
                                                                  "servicegroupname": groups[0]}]))[0].ok
        assert [b["servicegroupname"] for b in await ns.get("lbvserver_servicegroup_binding", f"{mine}vs")] == [
            groups[0]]
        assert (await ns.unbind("servicegroup_servicegroupmember_binding", members[1:]))[0].ok
        assert await ns.get("servicegroup_servicegroupmember_binding", groups[1]) == []
    finally:
        await ns.delete("servicegroup", [{"servicegroupname": g} for g in groups])
    assert await ns.get("lbvserver_servicegroup_binding", f"{mine}vs") == []  # the group took its binding along
    with pytest.raises(errors.NitroNotFound):
        await ns.get("servicegroup", groups[0])


# ---------------------------------------------------------------------------- statistics and HA


async def test_stat_endpoints_carry_what_monitoring_tools_read(ns: nitro.NitroClient, mine: str) -> None:
    await ns.add("server", [{"name": f"{mine}h", "ipaddress": addresses(1)[0]}])
    await ns.add("service", [{"name": f"{mine}svc", "servername": f"{mine}h", "servicetype": "ANY", "port": 80}])
    await ns.add("lbvserver", [{"name": f"{mine}vs", "servicetype": "ANY", "ipv46": addresses(1, VIPS)[0],
                                "port": 80, "m": "MAC"}])
    [svc] = await ns.stat("service", f"{mine}svc")
    assert {"state", "curclntconnections", "cursrvrconnections", "totalrequests"} <= set(svc), svc
    assert nitro.as_int(svc["curclntconnections"]) == 0
    [vs] = await ns.stat("lbvserver", f"{mine}vs")
    assert {"state", "curclntconnections", "tothits"} <= set(vs), vs
    [hanode] = await ns.stat("hanode")
    assert {"hacurstatus", "hacurstate", "hacurmasterstate"} <= set(hanode), hanode


async def test_this_node_reports_its_ha_state(ns: nitro.NitroClient) -> None:
    [node] = await ns.get("hanode", "0")
    assert node["state"] in ("Primary", "Secondary", "UNKNOWN"), node
    nodes = await ns.get("hanode")
    assert nodes[0]["id"] in (0, "0")


# ---------------------------------------------------------------------------- DSR end to end


def throwaway(target: Target, backends: list[str], vip: str) -> desired_mod.Intent:
    svc = models.DsrService.model_validate({
        "apiVersion": models.API_VERSION, "kind": models.SERVICE_KIND,
        "metadata": {"name": "web", "namespace": target.operator_id, "uid": f"uid-{target.run}"},
        "spec": {"vip": vip, "ports": [80], "drainSeconds": 0, "lbMethod": "ROUNDROBIN",
                 "backends": {"static": [{"name": f"b{i}", "address": a} for i, a in enumerate(backends)]},
                 "healthCheck": {"type": "TCP", "intervalSeconds": 60, "timeoutSeconds": 2, "port": 80}},
    })
    return desired_mod.Intent(svc.ref, svc.spec, desired_mod.static_backends(svc.spec))


async def remove_everything_of(client: nitro.NitroClient, operator_id: str) -> None:
    """Whatever carries this run's marker goes (the marker is unique to the run)."""
    actual = await executor.read_actual(client, operator_id)
    plan = planner.diff(nsmodels.NetScalerState(), actual, planner.Policy(operator_id, default_drain_seconds=0,
                                                                    default_guard_percent=100))
    await executor.execute(client, plan.stages)


async def test_dsr_apply_verify_and_delete_of_a_throwaway_dsrservice(target: Target, ns: nitro.NitroClient) -> None:
    if await ns.ha_state() == "Secondary":
        pytest.skip("NETSCALER_URL is an HA secondary: point it at the primary")
    mbf = (await ns.get_modes()).get("mbf")
    if target.real and not truthy(mbf) and os.environ.get("NETSCALER_ENABLE_MBF") != "yes":
        pytest.skip("MAC-based forwarding is off on this box and DSR needs it: set NETSCALER_ENABLE_MBF=yes to let "
                    "the test enable it (it is never disabled again)")
    backends, vip = addresses(2), addresses(1, VIPS)[0]
    intent = throwaway(target, backends, vip)
    out = io.StringIO()
    try:
        code = await oneshot.run_apply(ns, [intent], target.operator_id, False, out, save=False)
        assert code == 0, out.getvalue()
        actual = await executor.read_actual(ns, target.operator_id)
        [vserver] = actual.of_kind("lbvserver")
        assert vserver.data == {"servicetype": "ANY", "ipv46": vip, "port": 80, "lbmethod": "ROUNDROBIN", "m": "MAC"}
        assert list(actual.of_kind("service")) == []
        [group] = actual.of_kind("servicegroup")
        assert (group.get("servicetype"), group.get("usip"), group.get("healthmonitor")) == ("ANY", "YES", "YES")
        [monitor] = actual.of_kind("lbmonitor")
        assert (monitor.get("interval"), monitor.get("destip"), monitor.get("transparent")) == (60, vip, "YES")
        kinds = [(b.kind, b.parent, b.child) for b in actual.bindings if b.kind != nsmodels.MEMBER_BINDING]
        assert sorted(kinds) == sorted([(nsmodels.GROUP_BINDING, vserver.name, group.name),
                                        (nsmodels.GROUP_MONITOR_BINDING, group.name, monitor.name)])
        members = [(b.parent, b.child, b.port) for b in actual.bindings if b.kind == nsmodels.MEMBER_BINDING]
        assert sorted(members) == sorted((group.name, f"dsr-{a}", 80) for a in backends)
        # Read back, nothing differs: a second plan is empty (server-side normalisation included).
        again = io.StringIO()
        await oneshot.run_plan(ns, [intent], target.operator_id, False, again)
        assert again.getvalue().startswith("No changes"), again.getvalue()
        code = await oneshot.run_apply(ns, [intent], target.operator_id, True, out, save=False)
        assert code == 0, out.getvalue()
        left = await executor.read_actual(ns, target.operator_id)
        assert not left.objects and not left.bindings, left
    finally:
        await remove_everything_of(ns, target.operator_id)


def truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "enabled"))
