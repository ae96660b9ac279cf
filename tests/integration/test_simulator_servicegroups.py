"""The simulator's service groups over real HTTP: `servicegroup`, its member, monitor and vserver bindings,
member state (per group), drains, persistence, HA sync, stats, and what the dataplane is told."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dsr_lab import simctl
from dsr_operator.simulator import dataplane
from tests.integration.test_simulator import AUTH, DONE, Nitro, dsr_setup, one

SG = "servicegroup"
MEMBER = "servicegroup_servicegroupmember_binding"
MON = "servicegroup_lbmonitor_binding"
VSB = "lbvserver_servicegroup_binding"


@pytest.fixture
async def nitro(nitro_sim: simctl.Simulator) -> AsyncIterator[Nitro]:
    async with aiohttp.ClientSession() as http:
        yield Nitro(nitro_sim.url, http)


async def expect(nitro: Nitro, method: str, path: str, body: Any, status: int, code: int) -> dict[str, Any]:
    got, doc = await nitro.call(method, path, body)
    assert (got, doc["errorcode"]) == (status, code), doc
    return doc


async def group(nitro: Nitro, name: str, servicetype: str = "ANY", **fields: Any) -> None:
    await nitro.ok("POST", SG, {SG: {"servicegroupname": name, "servicetype": servicetype, **fields}})


async def member(nitro: Nitro, grp: str, port: int = 65535, **fields: Any) -> None:
    await nitro.ok("PUT", MEMBER, {MEMBER: {"servicegroupname": grp, "port": port, **fields}}, 201)


async def records(nitro: Nitro, path: str) -> list[dict[str, Any]]:
    status, doc = await nitro.get(path)
    assert status == 200, doc
    found: list[dict[str, Any]] = doc.get(path.split("/")[0].split("?")[0], [])
    return found


async def members(nitro: Nitro, grp: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(m["servername"], m["port"]): m for m in await records(nitro, f"{MEMBER}/{grp}")}


async def two_groups(nitro: Nitro) -> None:
    """DSR setup (vserver vs, servers web1/web2, services svc1/svc2, monitor tcp) plus groups a and b,
    each with web1 and web2 on port 65535; a has monitor tcp, b monitor ping; both bound to vs."""
    await dsr_setup(nitro)
    await nitro.ok("POST", "lbmonitor", {"lbmonitor": {"monitorname": "ping", "type": "PING"}})
    for grp, mon in (("a", "tcp"), ("b", "ping")):
        await group(nitro, grp, usip="YES")
        for server in ("web1", "web2"):
            await member(nitro, grp, servername=server)
        await nitro.ok("PUT", MON, {MON: {"servicegroupname": grp, "monitor_name": mon}}, 201)
        await nitro.ok("PUT", VSB, {VSB: {"name": "vs", "servicegroupname": grp}}, 201)


# ---------------------------------------------------------------------------- servicegroup


async def test_servicegroup_add_get_update_unset_delete(nitro: Nitro) -> None:
    await group(nitro, "sg", comment="tenant a", maxclient=0, cip="DISABLED")
    rec = await one(nitro, f"{SG}/sg")
    assert {k: rec[k] for k in ("servicegroupname", "servicetype", "usip", "healthmonitor", "comment", "state",
                                "maxclient", "cip", "servicegroupeffectivestate", "numofconnections")} == {
        "servicegroupname": "sg", "servicetype": "ANY", "usip": "NO", "healthmonitor": "YES",
        "comment": "tenant a", "state": "ENABLED", "maxclient": "0", "cip": "DISABLED",
        "servicegroupeffectivestate": "DOWN", "numofconnections": 0,
    }  # fmt: skip
    await expect(nitro, "POST", SG, {SG: {"servicegroupname": "sg", "servicetype": "ANY"}}, 409, 273)
    await expect(nitro, "POST", SG, {SG: {"servicegroupname": "x"}}, 599, 1095)
    await expect(nitro, "POST", SG, {SG: {"servicegroupname": "x", "servicetype": "NOPE"}}, 599, 1097)
    await expect(nitro, "POST", SG, {SG: {"servicegroupname": "x", "servicetype": "ANY", "ip": "10.0.0.1"}}, 599, 278)
    await expect(nitro, "POST", SG, {SG: {"servicegroupname": "-x", "servicetype": "ANY"}}, 599, 1075)

    # An update changes usip, healthmonitor, comment, maxclient; servicetype is immutable (ignored).
    body = {SG: {"servicegroupname": "sg", "usip": "YES", "healthmonitor": "NO", "comment": "b", "maxclient": 10,
                 "servicetype": "TCP"}}  # fmt: skip
    await nitro.ok("PUT", f"{SG}/sg", body)
    rec = await one(nitro, f"{SG}/sg")
    assert (rec["usip"], rec["healthmonitor"], rec["comment"], rec["maxclient"], rec["servicetype"]) == (
        "YES", "NO", "b", "10", "ANY")
    unset = {"servicegroupname": "sg", "comment": True, "healthmonitor": True}
    await nitro.ok("POST", f"{SG}?action=unset", {SG: unset})
    rec = await one(nitro, f"{SG}/sg")
    assert "comment" not in rec and rec["healthmonitor"] == "YES"

    await nitro.ok("DELETE", f"{SG}/sg")
    assert (await nitro.get(f"{SG}/sg"))[1]["message"] == "No such resource [servicegroupname, sg]"
    await expect(nitro, "DELETE", f"{SG}/sg", None, 404, 258)


async def test_usip_follows_the_global_mode_when_not_given(nitro: Nitro) -> None:
    await nitro.ok("POST", "nsmode?action=enable", {"nsmode": {"mode": ["USIP"]}})
    await group(nitro, "sg")
    assert (await one(nitro, f"{SG}/sg"))["usip"] == "YES"


async def test_bulk_add_bind_and_unbind(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await nitro.ok("POST", SG, {SG: [{"servicegroupname": f"g{i}", "servicetype": "ANY"} for i in (1, 2)]})
    await nitro.ok("POST", MEMBER, {MEMBER: [
        {"servicegroupname": "g1", "ip": "10.0.0.1", "port": 80},
        {"servicegroupname": "g1", "ip": "10.0.0.2", "port": 80},
        {"servicegroupname": "g2", "ip": "10.0.0.1", "port": 80},
    ]})  # fmt: skip
    assert sorted(await members(nitro, "g1")) == [("10.0.0.1", 80), ("10.0.0.2", 80)]
    got, doc = await nitro.post(MEMBER, {MEMBER: [{"servicegroupname": "g2", "ip": "10.0.0.1", "port": 80},
                                                  {"servicegroupname": "g2", "ip": "10.0.0.2", "port": 80}]},
                                headers=AUTH | {"X-NITRO-ONERROR": "continue"})  # fmt: skip
    assert (got, [r["errorcode"] for r in doc["response"]]) == (207, [273, 0])
    await nitro.ok("POST", f"{MEMBER}?action=unbind", {MEMBER: [
        {"servicegroupname": "g1", "servername": "10.0.0.1", "port": 80},
        {"servicegroupname": "g2", "ip": "10.0.0.2", "port": 80},
    ]}, 200)  # fmt: skip
    assert sorted(await members(nitro, "g1")) == [("10.0.0.2", 80)]
    assert sorted(await members(nitro, "g2")) == [("10.0.0.1", 80)]
    await nitro.ok("POST", f"{SG}?action=rm", {SG: [{"servicegroupname": "g1"}, {"servicegroupname": "g2"}]}, 200)
    assert await records(nitro, SG) == []
    assert await records(nitro, f"{MEMBER}?bulkbindings=yes") == []


# ---------------------------------------------------------------------------- members


async def test_member_bind_get_and_unbind(nitro: Nitro) -> None:
    await nitro.ok("POST", "server", {"server": {"name": "web1", "ipaddress": "10.0.0.1"}})
    await group(nitro, "sg")
    await member(nitro, "sg", 65535, servername="web1", weight=3)
    await member(nitro, "sg", 8080, ip="10.0.0.1")  # the server that holds the IP
    await member(nitro, "sg", 80, ip="10.0.0.9", state="DISABLED")  # no server there: one named after the IP
    assert (await one(nitro, "server/10.0.0.9"))["ipaddress"] == "10.0.0.9"
    got = await members(nitro, "sg")
    assert sorted(got) == [("10.0.0.9", 80), ("web1", 8080), ("web1", 65535)]
    assert {k: got[("web1", 65535)][k] for k in ("servicegroupname", "ip", "port", "servername", "weight", "state",
                                                 "svrstate")} == {
        "servicegroupname": "sg", "ip": "10.0.0.1", "port": 65535, "servername": "web1", "weight": "3",
        "state": "ENABLED", "svrstate": "UP",
    }  # fmt: skip
    assert (got[("10.0.0.9", 80)]["state"], got[("10.0.0.9", 80)]["svrstate"]) == ("DISABLED", "OUT OF SERVICE")
    assert sorted(m["port"] for m in await records(nitro, f"{MEMBER}/sg?filter=servername:web1")) == [8080, 65535]
    assert len(await records(nitro, f"{MEMBER}?bulkbindings=yes")) == 3

    await nitro.ok("DELETE", f"{MEMBER}/sg?args=servername:web1,port:8080")
    await nitro.ok("DELETE", f"{MEMBER}/sg?args=ip:10.0.0.9,port:80")
    assert sorted(await members(nitro, "sg")) == [("web1", 65535)]
    doc = await expect(nitro, "DELETE", f"{MEMBER}/sg?args=servername:web1,port:8080", None, 404, 258)
    assert doc["message"] == "No such resource [servername, web1]"
    await expect(nitro, "DELETE", f"{MEMBER}/sg?args=ip:10.0.0.5,port:80", None, 404, 258)
    await expect(nitro, "DELETE", f"{MEMBER}/sg?args=servername:web1", None, 599, 1095)
    await expect(nitro, "DELETE", f"{MEMBER}/ghost?args=servername:web1,port:65535", None, 404, 258)
    assert (await nitro.get(f"{MEMBER}/ghost"))[0] == 404
    assert await nitro.get(f"{MEMBER}/sg?filter=servername:nobody") == (200, DONE)


async def test_member_bind_errors(nitro: Nitro) -> None:
    await nitro.ok("POST", "server", {"server": {"name": "web1", "ipaddress": "10.0.0.1"}})
    await group(nitro, "sg")
    await member(nitro, "sg", 80, servername="web1")

    def body(**fields: Any) -> dict[str, Any]:
        return {MEMBER: {"servicegroupname": "sg", "port": 80} | fields}

    doc = await expect(nitro, "PUT", MEMBER, body(servername="web1"), 409, 273)
    assert doc["message"] == "Resource already exists"
    await expect(nitro, "PUT", MEMBER, body(ip="10.0.0.1"), 409, 273)  # the same server, by its IP
    doc = await expect(nitro, "PUT", MEMBER, body(servername="ghost"), 404, 258)
    assert doc["message"] == "No such resource [servername, ghost]"
    doc = await expect(nitro, "PUT", MEMBER, body(servername="web1", ip="10.0.0.1"), 599, 1092)
    assert doc["message"] == "Arguments cannot both be specified [ip, servername]"
    doc = await expect(nitro, "PUT", MEMBER, body(servicegroupname="ghost", servername="web1"), 404, 258)
    assert doc["message"] == "No such resource [servicegroupname, ghost]"
    await expect(nitro, "PUT", MEMBER, body(), 599, 1095)
    await expect(nitro, "PUT", MEMBER, {MEMBER: {"servicegroupname": "sg", "servername": "web1"}}, 599, 1095)
    await expect(nitro, "PUT", MEMBER, body(servername="web1", port=0), 599, 1109)
    await expect(nitro, "PUT", MEMBER, body(servername="web1", port=65536), 599, 1108)
    await expect(nitro, "PUT", MEMBER, body(servername="web1", port=81, weight=101), 599, 1108)
    await expect(nitro, "PUT", MEMBER, body(ip="10.0.0.300"), 599, 1110)
    await expect(nitro, "PUT", MEMBER, body(servername="web1", port=81, bogus=1), 599, 278)
    # A server that is a member is in use; so is one with a service.
    doc = await expect(nitro, "DELETE", "server/web1", None, 599, 1070)
    assert doc["message"] == "Object in use, cannot delete"


async def test_one_server_port_in_several_groups_and_as_a_service(nitro: Nitro) -> None:
    await nitro.ok("POST", "server", {"server": {"name": "web1", "ipaddress": "10.0.0.1"}})
    await nitro.ok("POST", "service", {"service": {"name": "svc", "servername": "web1", "servicetype": "ANY",
                                                   "port": 65535}})  # fmt: skip
    for grp in ("a", "b", "c"):
        await group(nitro, grp)
        await member(nitro, grp, servername="web1")
    bound = await records(nitro, f"{MEMBER}?bulkbindings=yes")
    assert [(m["servicegroupname"], m["servername"], m["port"]) for m in bound] == [
        ("a", "web1", 65535), ("b", "web1", 65535), ("c", "web1", 65535)]


async def test_server_rename_and_address_change_follow_into_members(nitro: Nitro) -> None:
    await nitro.ok("POST", "server", {"server": {"name": "web1", "ipaddress": "10.0.0.1"}})
    await group(nitro, "sg")
    await member(nitro, "sg", 80, servername="web1")
    await nitro.ok("POST", "server?action=rename", {"server": {"name": "web1", "newname": "web9"}})
    await nitro.ok("PUT", "server/web9", {"server": {"name": "web9", "ipaddress": "10.0.0.9"}})
    [rec] = await records(nitro, f"{MEMBER}/sg")
    assert (rec["servername"], rec["ip"]) == ("web9", "10.0.0.9")
    await nitro.ok("DELETE", f"{MEMBER}/sg?args=servername:web9,port:80")
    await nitro.ok("DELETE", "server/web9")  # no longer in use


# ---------------------------------------------------------------------------- monitors


async def test_monitor_bindings_and_their_errors(nitro: Nitro) -> None:
    await group(nitro, "sg")
    await nitro.ok("POST", "lbmonitor", {"lbmonitor": {"monitorname": "tcp", "type": "TCP"}})
    await nitro.ok("PUT", MON, {MON: {"servicegroupname": "sg", "monitor_name": "tcp", "weight": 2}}, 201)
    [rec] = await records(nitro, f"{MON}/sg")
    assert {k: rec[k] for k in ("servicegroupname", "monitor_name", "weight", "monstate")} == {
        "servicegroupname": "sg", "monitor_name": "tcp", "weight": "2", "monstate": "ENABLED"}
    assert [b["servicegroupname"] for b in await records(nitro, f"{MON}?bulkbindings=yes")] == ["sg"]

    doc = await expect(nitro, "PUT", MON, {MON: {"servicegroupname": "sg", "monitor_name": "tcp"}}, 599, 2133)
    assert doc["message"] == "The monitor is already bound to the service"
    doc = await expect(nitro, "PUT", MON, {MON: {"servicegroupname": "sg", "monitor_name": "ghost"}}, 599, 2171)
    assert doc["message"] == "Monitor does not exist [ghost]"
    await expect(nitro, "PUT", MON, {MON: {"servicegroupname": "ghost", "monitor_name": "tcp"}}, 404, 258)
    await expect(nitro, "DELETE", "lbmonitor/tcp?args=type:TCP", None, 599, 1070)  # bound to the group
    await nitro.ok("DELETE", f"{MON}/sg?args=monitor_name:tcp")
    doc = await expect(nitro, "DELETE", f"{MON}/sg?args=monitor_name:tcp", None, 599, 2170)
    assert doc["message"] == "Monitor not bound to service"
    await expect(nitro, "DELETE", f"{MON}/sg?args=monitor_name:ghost", None, 599, 2171)
    await nitro.ok("DELETE", "lbmonitor/tcp?args=type:TCP")


# ---------------------------------------------------------------------------- vserver bindings


async def test_vserver_binding_type_match_get_and_unbind(nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await group(nitro, "any", usip="YES")
    await group(nitro, "http", "HTTP")
    await nitro.ok("PUT", VSB, {VSB: {"name": "vs", "servicegroupname": "any", "weight": 2}}, 201)
    await expect(nitro, "PUT", VSB, {VSB: {"name": "vs", "servicegroupname": "http", "weight": 101}}, 599, 1108)
    doc = await expect(nitro, "PUT", VSB, {VSB: {"name": "vs", "servicegroupname": "http"}}, 599, 1304)
    assert doc["message"] == "Service type mismatch between the vserver and service"
    await expect(nitro, "PUT", VSB, {VSB: {"name": "vs", "servicegroupname": "any"}}, 409, 273)
    doc = await expect(nitro, "PUT", VSB, {VSB: {"name": "vs", "servicegroupname": "ghost"}}, 404, 258)
    assert doc["message"] == "No such resource [servicegroupname, ghost]"
    doc = await expect(nitro, "PUT", VSB, {VSB: {"name": "nope", "servicegroupname": "any"}}, 404, 258)
    assert doc["message"] == "No such resource [name, nope]"
    # lbvserver_service_binding stays for services.
    b = "lbvserver_service_binding"
    await expect(nitro, "PUT", b, {b: {"name": "vs", "servicegroupname": "any"}}, 404, 258)

    assert [(r["name"], r["servicegroupname"], r["weight"], r["servicetype"])
            for r in await records(nitro, f"{VSB}/vs")] == [("vs", "any", "2", "ANY")]  # fmt: skip
    assert len(await records(nitro, f"{VSB}?bulkbindings=yes")) == 1
    assert [r["servicename"] for r in await records(nitro, f"{b}/vs")] == ["svc1", "svc2"]  # apart
    doc = await expect(nitro, "DELETE", f"{VSB}/vs?args=servicegroupname:http", None, 599, 1303)
    await nitro.ok("DELETE", f"{VSB}/vs?args=servicegroupname:any")
    assert await nitro.get(f"{VSB}/vs") == (200, DONE)
    assert (await nitro.get(f"{VSB}/ghost"))[0] == 404


async def test_sessionless_vserver_needs_usip_groups(nitro: Nitro) -> None:
    vs = {"name": "sl", "servicetype": "ANY", "ipv46": "192.0.2.20", "port": 65535, "m": "MAC",
          "sessionless": "ENABLED"}  # fmt: skip
    await nitro.ok("POST", "lbvserver", {"lbvserver": vs})
    await group(nitro, "nousip", usip="NO")
    await expect(nitro, "PUT", VSB, {VSB: {"name": "sl", "servicegroupname": "nousip"}}, 599, 1284)


async def test_vserver_state_counts_group_members(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await nitro.ok("POST", "lbvserver", {"lbvserver": {"name": "vs", "servicetype": "ANY", "ipv46": "192.0.2.10",
                                                       "port": 65535, "m": "MAC"}})  # fmt: skip
    await group(nitro, "sg")
    await nitro.ok("PUT", VSB, {VSB: {"name": "vs", "servicegroupname": "sg"}}, 201)
    vs = await one(nitro, "lbvserver/vs")
    assert (vs["curstate"], vs["totalservices"], vs["activeservices"]) == ("DOWN", "0", "0")
    await member(nitro, "sg", ip="10.0.0.1", weight=1)
    await member(nitro, "sg", ip="10.0.0.2", weight=3)
    await nitro_sim.set_hosts({"10.0.0.2": "DOWN"})
    vs = await one(nitro, "lbvserver/vs")
    assert (vs["curstate"], vs["totalservices"], vs["activeservices"], vs["health"]) == ("UP", "2", "1", "25")
    assert (await one(nitro, f"{SG}/sg"))["servicegroupeffectivestate"] == "PARTIAL-UP"
    await nitro_sim.set_hosts({"10.0.0.1": "DOWN"})
    assert (await one(nitro, "lbvserver/vs"))["curstate"] == "DOWN"
    assert (await one(nitro, f"{SG}/sg"))["servicegroupeffectivestate"] == "DOWN"
    await nitro.ok("POST", f"{SG}?action=disable", {SG: {"servicegroupname": "sg", "servername": "10.0.0.1",
                                                         "port": 65535}})  # fmt: skip
    assert (await one(nitro, f"{SG}/sg"))["servicegroupeffectivestate"] == "PARTIAL-DOWN"
    await nitro.ok("POST", f"{SG}?action=enable", {SG: {"servicegroupname": "sg", "servername": "10.0.0.1",
                                                        "port": 65535}})  # fmt: skip
    await nitro.ok("PUT", f"{SG}/sg", {SG: {"servicegroupname": "sg", "healthmonitor": "NO"}})
    assert (await one(nitro, f"{SG}/sg"))["servicegroupeffectivestate"] == "UP"
    assert (await one(nitro, "lbvserver/vs"))["activeservices"] == "2"


async def test_deleting_a_group_or_vserver_drops_their_bindings(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await two_groups(nitro)
    await nitro.ok("DELETE", f"{SG}/a")
    assert [b["servicegroupname"] for b in await records(nitro, f"{VSB}?bulkbindings=yes")] == ["b"]
    assert {m["servicegroupname"] for m in await records(nitro, f"{MEMBER}?bulkbindings=yes")} == {"b"}
    assert [b["servicegroupname"] for b in await records(nitro, f"{MON}?bulkbindings=yes")] == ["b"]
    vs = await one(nitro, "lbvserver/vs")
    assert vs["totalservices"] == "4"  # svc1, svc2 and b's two members
    await nitro.ok("DELETE", "lbvserver/vs")
    assert await records(nitro, f"{VSB}?bulkbindings=yes") == []
    assert len(await records(nitro, f"{MEMBER}?bulkbindings=yes")) == 2  # the group keeps its members


async def test_rename_keeps_members_monitors_and_vserver_bindings(nitro: Nitro) -> None:
    await two_groups(nitro)
    await nitro.ok("POST", f"{SG}?action=rename", {SG: {"servicegroupname": "a", "newname": "z"}})
    assert [g["servicegroupname"] for g in await records(nitro, SG)] == ["z", "b"]
    assert sorted(await members(nitro, "z")) == [("web1", 65535), ("web2", 65535)]
    assert [b["monitor_name"] for b in await records(nitro, f"{MON}/z")] == ["tcp"]
    assert sorted(b["servicegroupname"] for b in await records(nitro, f"{VSB}/vs")) == ["b", "z"]
    await expect(nitro, "POST", f"{SG}?action=rename", {SG: {"servicegroupname": "z", "newname": "b"}}, 409, 273)
    await expect(nitro, "POST", f"{SG}?action=rename", {SG: {"servicegroupname": "a", "newname": "y"}}, 404, 258)
    await expect(nitro, "POST", f"{SG}?action=rename", {SG: {"name": "z", "newname": "y"}}, 599, 278)


# ---------------------------------------------------------------------------- runtime


async def test_a_member_is_judged_by_its_own_groups_monitors(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await two_groups(nitro)
    store = nitro_sim.store
    # As a dataplane reports them: web1 answers pings, not TCP; web2 answers both.
    store.set_probe_results({
        ("a/web1:65535", "tcp"): False, ("a/web2:65535", "tcp"): True,
        ("b/web1:65535", "ping"): True, ("b/web2:65535", "ping"): True,
        ("svc1", "tcp"): True, ("svc2", "tcp"): True,
    })  # fmt: skip
    a, b = await members(nitro, "a"), await members(nitro, "b")
    assert (a[("web1", 65535)]["svrstate"], b[("web1", 65535)]["svrstate"]) == ("DOWN", "UP")
    assert (a[("web2", 65535)]["svrstate"], b[("web2", 65535)]["svrstate"]) == ("UP", "UP")
    assert (await one(nitro, "service/svc1"))["svrstate"] == "UP"  # the service has its own monitor
    assert (await one(nitro, f"{SG}/a"))["servicegroupeffectivestate"] == "PARTIAL-UP"
    assert (await one(nitro, f"{SG}/b"))["servicegroupeffectivestate"] == "UP"
    vs = await one(nitro, "lbvserver/vs")
    assert (vs["totalservices"], vs["activeservices"]) == ("6", "5")
    # A member without a verdict for a monitor of its group is DOWN (not probed yet).
    await member(nitro, "b", 80, servername="web1")
    assert (await members(nitro, "b"))[("web1", 80)]["svrstate"] == "DOWN"
    # A monitor unbound from the group no longer counts.
    await nitro.ok("DELETE", f"{MON}/a?args=monitor_name:tcp")
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "UP"


async def test_member_and_group_disable_and_enable(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await two_groups(nitro)
    one_member = {"servicegroupname": "a", "servername": "web1", "port": 65535}
    await nitro.ok("POST", f"{SG}?action=disable", {SG: one_member})
    a, b = await members(nitro, "a"), await members(nitro, "b")
    assert (a[("web1", 65535)]["state"], a[("web1", 65535)]["svrstate"]) == ("DISABLED", "OUT OF SERVICE")
    assert a[("web2", 65535)]["svrstate"] == b[("web1", 65535)]["svrstate"] == "UP"  # only that member
    assert (await one(nitro, f"{SG}/a"))["state"] == "ENABLED"
    await nitro.ok("POST", f"{SG}?action=enable", {SG: one_member})
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "UP"

    await nitro.ok("POST", f"{SG}?action=disable", {SG: {"servicegroupname": "b"}})
    rec = await one(nitro, f"{SG}/b")
    assert (rec["state"], rec["servicegroupeffectivestate"]) == ("DISABLED", "OUT OF SERVICE")
    assert {m["svrstate"] for m in await records(nitro, f"{MEMBER}/b")} == {"OUT OF SERVICE"}
    assert (await one(nitro, "lbvserver/vs"))["activeservices"] == "4"
    await nitro.ok("POST", f"{SG}?action=enable", {SG: {"servicegroupname": "b"}})
    # The server's state counts too, as for services.
    await nitro.ok("POST", "server?action=disable", {"server": {"name": "web2"}})
    assert (await members(nitro, "b"))[("web2", 65535)]["svrstate"] == "OUT OF SERVICE"
    await nitro.ok("POST", "server?action=enable", {"server": {"name": "web2"}})

    await expect(nitro, "POST", f"{SG}?action=disable", {SG: {**one_member, "port": 80}}, 404, 258)
    await expect(nitro, "POST", f"{SG}?action=disable", {SG: {"servicegroupname": "a", "port": 80}}, 599, 1095)
    await expect(nitro, "POST", f"{SG}?action=enable", {SG: {**one_member, "delay": 5}}, 599, 278)
    await expect(nitro, "POST", f"{SG}?action=disable", {SG: {**one_member, "graceful": "MAYBE"}}, 599, 1097)
    await expect(nitro, "POST", f"{SG}?action=disable", {SG: {"servicegroupname": "ghost"}}, 404, 258)

    journal = [(j["resource"], j["action"], j["key"]) for j in await nitro_sim.journal() if j["resource"] == SG]
    assert journal[2:] == [
        (SG, "disable", one_member | {"port": "65535"}), (SG, "enable", one_member | {"port": "65535"}),
        (SG, "disable", {"servicegroupname": "b"}), (SG, "enable", {"servicegroupname": "b"}),
    ]  # fmt: skip


async def test_graceful_member_disable_drains_then_goes_out_of_service(
    nitro_sim: simctl.Simulator, nitro: Nitro
) -> None:
    await two_groups(nitro)
    now = [1_000_000.0]
    nitro_sim.store.clock = lambda: now[0]  # the simulator's own clock, moved by hand
    name = "a/web1:65535"
    await nitro_sim.set_clients({name: 2, "b/web1:65535": 5})
    drained = {"servicegroupname": "a", "servername": "web1", "port": 65535, "delay": 30, "graceful": "YES"}
    await nitro.ok("POST", f"{SG}?action=disable", {SG: drained})
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "GOING OUT OF SERVICE"
    assert (await members(nitro, "b"))[("web1", 65535)]["svrstate"] == "UP"  # the other group's member
    assert (await one(nitro, "lbvserver/vs"))["activeservices"] == "5"
    assert (await one(nitro, f"{SG}/a"))["numofconnections"] == 2
    [stat] = await stats(nitro, "servicegroupmember?args=servicegroupname:a,servername:web1,port:65535")
    assert (stat["state"], stat["curclntconnections"]) == ("GOING OUT OF SERVICE", "2")
    now[0] += 29
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "GOING OUT OF SERVICE"
    now[0] += 2  # the delay passed, clients or not
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "OUT OF SERVICE"

    # Graceful with clients: ends when the last one leaves, long before the delay.
    await nitro.ok("POST", f"{SG}?action=enable", {SG: {"servicegroupname": "a", "servername": "web1",
                                                        "port": 65535}})  # fmt: skip
    await nitro.ok("POST", f"{SG}?action=disable", {SG: drained | {"delay": 0}})
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "GOING OUT OF SERVICE"
    now[0] += 3600
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "GOING OUT OF SERVICE"
    await nitro_sim.set_clients({name: 0})
    assert (await members(nitro, "a"))[("web1", 65535)]["svrstate"] == "OUT OF SERVICE"
    # A whole group disabled with a delay drains every member.
    await nitro.ok("POST", f"{SG}?action=disable", {SG: {"servicegroupname": "b", "delay": 10}})
    assert {m["svrstate"] for m in await records(nitro, f"{MEMBER}/b")} == {"GOING OUT OF SERVICE"}
    now[0] += 11
    assert {m["svrstate"] for m in await records(nitro, f"{MEMBER}/b")} == {"OUT OF SERVICE"}

    drains = [j for j in await nitro_sim.journal() if j["resource"] == SG and j["action"] == "disable"]
    assert [(j["time"], j["key"].get("servername")) for j in drains] == [
        (1_000_000.0, "web1"), (1_000_031.0, "web1"), (1_003_631.0, None)]


async def stats(nitro: Nitro, path: str) -> Any:
    async with nitro.http.get(f"{nitro.base}/nitro/v1/stat/{path}", headers=nitro.headers) as response:
        doc = await response.json()
        assert response.status == 200, doc
        return doc[path.split("/")[0].split("?")[0]]


async def test_stats_of_groups_members_and_vservers(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await two_groups(nitro)
    await nitro_sim.set_clients({"a/web2:65535": 3, "svc1": 1})
    [rec] = await stats(nitro, "servicegroupmember?args=servicegroupname:a,servername:web2,port:65535")
    assert (rec["servicegroupname"], rec["servername"], rec["port"], rec["primaryipaddress"], rec["state"],
            rec["curclntconnections"]) == ("a", "web2", 65535, "10.0.0.2", "UP", "3")  # fmt: skip
    [rec] = await stats(nitro, "servicegroupmember?args=servicegroupname:a,ip:10.0.0.2,port:65535")
    assert rec["servername"] == "web2"
    [rec] = await stats(nitro, "servicegroup/a")
    assert (rec["servicegroupname"], rec["state"], rec["servicetype"]) == ("a", "UP", "ANY")
    [vs] = await stats(nitro, "lbvserver/vs")
    assert (vs["curclntconnections"], vs["actsvcs"], vs["inactsvcs"]) == ("4", "6", "0")
    async with nitro.http.get(f"{nitro.base}/nitro/v1/stat/servicegroupmember?args=servicegroupname:a,port:1",
                              headers=nitro.headers) as response:  # fmt: skip
        assert (response.status, (await response.json())["errorcode"]) == (599, 1095)
    async with nitro.http.get(f"{nitro.base}/nitro/v1/stat/servicegroup/ghost", headers=nitro.headers) as response:
        assert (response.status, (await response.json())["errorcode"]) == (404, 258)


async def test_journal_records_binds_and_unbinds(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await group(nitro, "sg")
    await member(nitro, "sg", 80, ip="10.0.0.1")
    await nitro.ok("DELETE", f"{MEMBER}/sg?args=ip:10.0.0.1,port:80")
    journal = [(j["method"], j["resource"], j["action"], j["name"], j["key"]) for j in await nitro_sim.journal()]
    assert journal == [
        ("POST", SG, "add", "sg", {"servicegroupname": "sg"}),
        ("PUT", MEMBER, "bind", "sg", {"servicegroupname": "sg", "servername": "10.0.0.1", "port": "80"}),
        ("DELETE", MEMBER, "unbind", "sg", {"servicegroupname": "sg", "servername": "10.0.0.1", "port": "80"}),
    ]


# ---------------------------------------------------------------------------- persistence and HA


async def test_groups_survive_restart(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "sim.state.json"
    async with simctl.running(state_path=state) as sim, aiohttp.ClientSession() as http:
        nitro = Nitro(sim.url, http)
        await two_groups(nitro)
        await nitro.ok("POST", f"{SG}?action=disable", {SG: {"servicegroupname": "b", "servername": "web2",
                                                             "port": 65535}})  # fmt: skip
        saved = json.loads(await asyncio.to_thread(state.read_text))
        assert [g["servicegroupname"] for g in saved["objects"][SG]] == ["a", "b"]
    async with simctl.running(state_path=state) as sim, aiohttp.ClientSession() as http:
        nitro = Nitro(sim.url, http)
        assert [g["servicegroupname"] for g in await records(nitro, SG)] == ["a", "b"]
        assert sorted(await members(nitro, "a")) == [("web1", 65535), ("web2", 65535)]
        assert (await members(nitro, "b"))[("web2", 65535)]["svrstate"] == "OUT OF SERVICE"
        assert [(b["servicegroupname"], b["monitor_name"]) for b in await records(nitro, f"{MON}?bulkbindings=yes")
                ] == [("a", "tcp"), ("b", "ping")]  # fmt: skip
        assert (await one(nitro, "lbvserver/vs"))["totalservices"] == "6"
        await expect(nitro, "PUT", MEMBER, {MEMBER: {"servicegroupname": "a", "servername": "web1",
                                                     "port": 65535}}, 409, 273)  # fmt: skip


async def test_an_ha_primary_propagates_groups() -> None:
    async with simctl.running_pair(users={"nsroot": "nsroot"}) as pair, aiohttp.ClientSession() as http:
        a, b = Nitro(pair.a.url, http), Nitro(pair.b.url, http)
        await group(a, "sg")
        await member(a, "sg", 80, ip="10.0.0.1")
        assert sorted(await members(b, "sg")) == [("10.0.0.1", 80)]
        await a.ok("DELETE", f"{SG}/sg")
        assert await records(b, f"{MEMBER}?bulkbindings=yes") == []


# ---------------------------------------------------------------------------- what the dataplane is told


async def test_the_dataplane_forwards_to_up_members_and_probes_each_group_monitor(
    nitro_sim: simctl.Simulator, nitro: Nitro
) -> None:
    await two_groups(nitro)
    store = nitro_sim.store
    specs = dataplane.probe_specs(store)
    assert sorted(k for k in specs if "/" in k[0]) == [
        ("a/web1:65535", "tcp"), ("a/web2:65535", "tcp"), ("b/web1:65535", "ping"), ("b/web2:65535", "ping")]
    spec = specs[("b/web1:65535", "ping")]
    assert (spec.service_ip, spec.dst_ip, spec.type) == ("10.0.0.1", "10.0.0.1", "PING")
    assert specs[("a/web1:65535", "tcp")].dst_ip == "192.0.2.10"  # the monitor's destip, transparent
    store.set_probe_results({k: k != ("a/web1:65535", "tcp") for k in specs})
    macs = {"10.0.0.1": "02:00:00:00:00:01", "10.0.0.2": "02:00:00:00:00:02"}
    [vs] = dataplane.desired_state(store, macs).vservers
    assert [m.service for m in vs.active] == ["svc1", "svc2", "a/web2:65535", "b/web1:65535", "b/web2:65535"]
    assert [(m.ip, m.mac) for m in vs.active][2:] == [
        ("10.0.0.2", "02:00:00:00:00:02"), ("10.0.0.1", "02:00:00:00:00:01"), ("10.0.0.2", "02:00:00:00:00:02")]
    # A draining member keeps its flows but gets no new ones.
    await nitro_sim.set_clients({"b/web1:65535": 1})
    await nitro.ok("POST", f"{SG}?action=disable", {SG: {"servicegroupname": "b", "servername": "web1",
                                                         "port": 65535, "delay": 60}})  # fmt: skip
    [vs] = dataplane.desired_state(store, macs).vservers
    assert "b/web1:65535" not in [m.service for m in vs.active]
    assert "b/web1:65535" in [m.service for m in vs.serving]
    script, _ = dataplane.render(dataplane.desired_state(store, macs), dev="eth0", mac="02:00:00:00:00:ff",
                                 names=dataplane.Names())  # fmt: skip
    assert 'comment "newflow b/web2:65535"' in script
