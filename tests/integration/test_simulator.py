"""The NITRO simulator over real HTTP, as a NITRO client sees it (plain aiohttp, not our client)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import pathlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from dsr_lab import simctl
from dsr_operator import cli
from dsr_operator.simulator import nitro as nitro_
from dsr_operator.simulator import server
from tests.support.waiting import eventually

AUTH = {"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nsroot"}
DONE = {"errorcode": 0, "message": "Done", "severity": "NONE"}


@dataclasses.dataclass
class Nitro:
    """A bare NITRO caller: paths are relative to /nitro/v1/config/, auth by per-request headers."""

    base: str
    http: aiohttp.ClientSession
    headers: dict[str, str] = dataclasses.field(default_factory=lambda: dict(AUTH))

    async def call(
        self, method: str, path: str, body: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        hdrs = self.headers if headers is None else headers
        url = f"{self.base}/nitro/v1/config/{path}"
        async with self.http.request(method, url, json=body, headers=hdrs) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def get(self, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.call("POST", path, body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.call("PUT", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        return await self.call("DELETE", path, **kw)

    async def ok(self, method: str, path: str, body: Any = None, status: int | None = None) -> dict[str, Any]:
        got, doc = await self.call(method, path, body)
        expected = status or (201 if method == "POST" and "action=" not in path else 200)
        assert (got, doc["errorcode"]) == (expected, 0), doc
        return doc


@pytest.fixture
async def nitro(nitro_sim: simctl.Simulator) -> AsyncIterator[Nitro]:
    async with aiohttp.ClientSession() as http:
        yield Nitro(nitro_sim.url, http)


async def dsr_setup(nitro: Nitro) -> None:
    """One DSR vserver (ANY, port *, MAC) with two backends and a TCP monitor."""
    await nitro.ok("POST", "nsmode?action=enable", {"nsmode": {"mode": ["MBF"]}})
    for i in (1, 2):
        await nitro.ok("POST", "server", {"server": {"name": f"web{i}", "ipaddress": f"10.0.0.{i}"}})
        svc = {"name": f"svc{i}", "servername": f"web{i}", "servicetype": "ANY", "port": 65535, "usip": "YES"}
        await nitro.ok("POST", "service", {"service": svc})
    vs = {"name": "vs", "servicetype": "ANY", "ipv46": "192.0.2.10", "port": 65535, "m": "MAC"}
    await nitro.ok("POST", "lbvserver", {"lbvserver": vs})
    await nitro.ok(
        "PUT", "lbvserver_service_binding", {"lbvserver_service_binding": {"name": "vs", "servicename": "svc1"}}, 201
    )
    await nitro.ok(
        "POST",
        "lbvserver_service_binding",
        {"lbvserver_service_binding": {"name": "vs", "servicename": "svc2", "weight": 3}},
    )
    mon = {
        "monitorname": "tcp",
        "type": "TCP",
        "interval": 5,
        "resptimeout": 2,
        "destip": "192.0.2.10",
        "transparent": "YES",
    }
    await nitro.ok("POST", "lbmonitor", {"lbmonitor": mon})
    for i in (1, 2):
        await nitro.ok(
            "PUT",
            "service_lbmonitor_binding",
            {"service_lbmonitor_binding": {"name": f"svc{i}", "monitor_name": "tcp"}},
            201,
        )


async def one(nitro: Nitro, path: str) -> dict[str, Any]:
    status, doc = await nitro.get(path)
    assert status == 200, doc
    resource = path.split("/")[0].split("?")[0]
    assert isinstance(doc[resource], list) and len(doc[resource]) == 1, doc
    record: dict[str, Any] = doc[resource][0]
    return record


# ---------------------------------------------------------------------------- sessions and auth


async def test_login_cookie_session_and_logout(nitro_sim: simctl.Simulator) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # the simulator listens on an IP address
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        nitro = Nitro(nitro_sim.url, http, headers={})
        status, doc = await nitro.post("login", {"login": {"username": "nsroot", "password": "nsroot"}})
        assert status == 201
        assert doc["errorcode"] == 0 and doc["severity"] == "NONE" and doc["sessionid"].startswith("##")
        async with http.post(
            f"{nitro_sim.url}/nitro/v1/config/login", json={"login": {"username": "nsroot", "password": "nsroot"}}
        ) as raw:
            cookie = raw.headers["Set-Cookie"]
            token = (await raw.json())["sessionid"]
        assert cookie == f"NITRO_AUTH_TOKEN={urllib.parse.quote(token, safe='')}; path=/nitro/v1"
        assert cookie.startswith("NITRO_AUTH_TOKEN=%23%23")

        assert await nitro.get("lbvserver") == (200, DONE)  # cookie from the jar; empty list = no key
        assert await nitro.post("logout", {"logout": {}}) == (200, DONE)
        status, doc = await nitro.get("lbvserver")
        assert (status, doc["errorcode"]) == (401, 444)
        assert doc["message"] == "Session expired or killed. Please login again"
        assert doc["severity"] == "ERROR"


async def test_bad_credentials_and_missing_auth(nitro: Nitro) -> None:
    status, doc = await nitro.post("login", {"login": {"username": "nsroot", "password": "wrong"}}, headers={})
    assert (status, doc) == (401, {"errorcode": 354, "message": "Invalid username or password", "severity": "ERROR"})
    status, doc = await nitro.get("server", headers={})
    assert (status, doc["errorcode"], doc["message"]) == (401, 1027, "Not logged in or connection timed out")
    status, doc = await nitro.get("server", headers={"Cookie": "NITRO_AUTH_TOKEN=%23%23DEADBEEF"})
    assert (status, doc["errorcode"]) == (401, 1027)
    status, doc = await nitro.get("server", headers={"X-NITRO-USER": "nsroot", "X-NITRO-PASS": "nope"})
    assert (status, doc["errorcode"]) == (401, 354)
    assert await nitro.get("server") == (200, DONE)  # per-request auth, no session


async def test_idle_sessions_expire_and_login_timeout_is_honoured() -> None:
    async with simctl.running(session_timeout=0.3) as sim, aiohttp.ClientSession() as http:
        nitro = Nitro(sim.url, http, headers={})
        tokens = []
        for extra in ({}, {"timeout": 60}):
            _, doc = await nitro.post("login", {"login": {"username": "nsroot", "password": "nsroot"} | extra})
            tokens.append({"Cookie": "NITRO_AUTH_TOKEN=" + urllib.parse.quote(doc["sessionid"], safe="")})
        await asyncio.sleep(0.4)
        status, doc = await nitro.get("server", headers=tokens[0])
        assert (status, doc["errorcode"]) == (401, 444)
        assert await nitro.get("server", headers=tokens[1]) == (200, DONE)


async def test_expire_sessions_fault(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    _, doc = await nitro.post("login", {"login": {"username": "nsroot", "password": "nsroot"}}, headers={})
    cookie = {"Cookie": f"NITRO_AUTH_TOKEN={doc['sessionid']}"}  # an unencoded token is accepted too
    assert (await nitro.get("server", headers=cookie))[0] == 200
    await nitro_sim.faults(expireSessions=True)
    status, doc = await nitro.get("server", headers=cookie)
    assert (status, doc["errorcode"]) == (401, 444)
    assert (await nitro.get("server"))[0] == 200


async def test_bulk_write_on_an_expired_session_answers_200_with_errorcode_444(
    nitro_sim: simctl.Simulator, nitro: Nitro
) -> None:
    _, doc = await nitro.post("login", {"login": {"username": "nsroot", "password": "nsroot"}}, headers={})
    cookie = {"Cookie": f"NITRO_AUTH_TOKEN={doc['sessionid']}"}
    await nitro_sim.faults(expireSessions=True)
    status, doc = await nitro.post("server", _servers("a", "b"), headers=cookie)
    assert (status, doc["errorcode"], doc["severity"]) == (200, 444, "ERROR")
    status, doc = await nitro.post("server", {"server": _servers("a")["server"][0]}, headers=cookie)
    assert (status, doc["errorcode"]) == (401, 444)  # a single object: the usual 401
    status, doc = await nitro.put("server", {"server": [{"name": "a", "comment": "x"}]}, headers={})
    assert (status, doc["errorcode"]) == (200, 1027)
    assert nitro_sim.store.objects["server"] == {}


# ---------------------------------------------------------------------------- validation and error codes

VALIDATION_CASES = [
    ("server", {"name": "s", "ipaddress": "10.0.0.1", "bogus": 1}, 599, 278, "Invalid argument [bogus]"),
    ("server", {"name": "s", "ipaddress": "10.0.0.999"}, 599, 1110, "Invalid IP address [ipaddress, 10.0.0.999]"),
    ("server", {"name": "s", "ipaddress": "10.0.0.1", "state": "ON"}, 599, 1097, "Invalid argument value [state, ON]"),
    ("server", {"name": "-bad", "ipaddress": "10.0.0.1"}, 599, 1075, "Invalid name"),
    ("server", {"name": "a/b", "ipaddress": "10.0.0.1"}, 599, 1075, "Invalid name"),
    ("server", {"name": "x" * 128, "ipaddress": "10.0.0.1"}, 599, 1075, "Invalid name"),
    ("server", {"name": "s"}, 599, 1095, "Required argument missing [ipaddress]"),
    ("service", {"name": "v", "ip": "10.0.0.1", "port": 80}, 599, 1095, "Required argument missing [servicetype]"),
    (
        "service",
        {"name": "v", "ip": "10.0.0.1", "servername": "s", "servicetype": "TCP", "port": 80},
        599,
        1092,
        "Arguments cannot both be specified [ip, servername]",
    ),
    ("service", {"name": "v", "ip": "10.0.0.1", "servicetype": "TCP", "port": 65536}, 599, 1108, "[port, 65536]"),
    ("service", {"name": "v", "ip": "10.0.0.1", "servicetype": "TCP", "port": 0}, 599, 1109, "[port, 0]"),
    ("service", {"name": "v", "ip": "10.0.0.1", "servicetype": "TCP", "port": "*"}, 599, 1097, "[port, *]"),
    (
        "service",
        {"name": "v", "ipaddress": "10.0.0.1", "servicetype": "TCP", "port": 80},
        599,
        278,
        "Invalid argument [ipaddress]",
    ),
    (
        "service",
        {"name": "v", "servername": "nope", "servicetype": "TCP", "port": 80},
        404,
        258,
        "No such resource [servername, nope]",
    ),
    (
        "lbvserver",
        {"name": "vs", "servicetype": "ANY", "ipv46": "192.0.2.1", "port": 80, "m": "DSR"},
        599,
        1097,
        "Invalid argument value [m, DSR]",
    ),
    (
        "lbvserver",
        {"name": "vs", "servicetype": "TCP", "ipv46": "192.0.2.1", "port": 80, "sessionless": "ENABLED", "m": "MAC"},
        599,
        1282,
        "Sessionless",
    ),
    (
        "lbvserver",
        {"name": "vs", "servicetype": "ANY", "ipv46": "192.0.2.1", "port": 80, "sessionless": "ENABLED"},
        599,
        1283,
        "MAC or IPTUNNEL",
    ),
    (
        "lbmonitor",
        {"monitorname": "m", "type": "TCP", "interval": 2, "resptimeout": 2},
        599,
        278,
        "Invalid argument [resptimeout]",
    ),
    ("lbmonitor", {"monitorname": "m", "type": "TCPX"}, 599, 1097, "Invalid argument value [type, TCPX]"),
    ("lbmonitor", {"monitorname": "m", "type": "TCP", "transparent": "MAYBE"}, 599, 1097, "[transparent, MAYBE]"),
]


@pytest.mark.parametrize(("resource", "payload", "status", "code", "message"), VALIDATION_CASES)
async def test_validation_errors(
    nitro: Nitro, resource: str, payload: dict[str, Any], status: int, code: int, message: str
) -> None:
    got, doc = await nitro.post(resource, {resource: payload})
    assert (got, doc["errorcode"], doc["severity"]) == (status, code, "ERROR"), doc
    assert message in doc["message"]
    assert (await nitro.get(resource))[1] == DONE  # nothing was created


async def test_names_up_to_127_characters_with_allowed_punctuation(nitro: Nitro) -> None:
    name = "_a#.b :c@d=e-" + "x" * 114
    assert len(name) == 127
    await nitro.ok("POST", "server", {"server": {"name": name, "ipaddress": "10.0.0.1"}})
    # Official clients double-encode names in the URL.
    record = await one(nitro, "server/" + urllib.parse.quote(urllib.parse.quote(name, safe=""), safe=""))
    assert record["name"] == name


async def test_not_found_duplicates_and_references(nitro: Nitro) -> None:
    status, doc = await nitro.get("lbvserver/nope")
    assert (status, doc) == (404, {"errorcode": 258, "message": "No such resource [name, nope]", "severity": "ERROR"})
    assert (await nitro.delete("server/nope"))[0] == 404
    await dsr_setup(nitro)
    status, doc = await nitro.post("server", {"server": {"name": "web1", "ipaddress": "10.0.0.9"}})
    assert (status, doc["errorcode"], doc["message"]) == (409, 273, "Resource already exists")
    status, doc = await nitro.post("server", {"server": {"name": "other", "ipaddress": "10.0.0.1"}})
    assert (status, doc["errorcode"], doc["message"]) == (409, 1335, "Server already exists [web1]")
    same = {"name": "svc9", "ip": "10.0.0.1", "servicetype": "ANY", "port": 65535}
    assert (await nitro.post("service", {"service": same}))[1]["errorcode"] == 273

    status, doc = await nitro.delete("server/web1")
    assert (status, doc["errorcode"], doc["message"]) == (599, 1070, "Object in use, cannot delete")
    await nitro.ok("DELETE", "service/svc1")  # also drops its bindings
    assert [
        b["servicename"] for b in (await nitro.get("lbvserver_service_binding/vs"))[1]["lbvserver_service_binding"]
    ] == ["svc2"]
    await nitro.ok("DELETE", "server/web1")


async def test_a_vserver_cannot_move_onto_an_ip_port_another_one_holds(nitro: Nitro) -> None:
    await dsr_setup(nitro)  # vs: ANY 192.0.2.10 *
    other = {"name": "vs2", "servicetype": "ANY", "ipv46": "192.0.2.11", "port": 65535, "m": "MAC"}
    await nitro.ok("POST", "lbvserver", {"lbvserver": other})
    refused = await nitro.post("lbvserver", {"lbvserver": other | {"name": "vs3", "ipv46": "192.0.2.10"}})
    status, doc = await nitro.put("lbvserver/vs2", {"lbvserver": {"ipv46": "192.0.2.10"}})
    assert (status, doc) == refused == (
        409, {"errorcode": 273, "message": "Resource already exists", "severity": "ERROR"}
    )
    assert (await one(nitro, "lbvserver/vs2"))["ipv46"] == "192.0.2.11"  # unchanged
    status, doc = await nitro.put("lbvserver", {"lbvserver": [{"name": "vs2", "ipv46": "192.0.2.10"}]})
    assert (status, doc["response"][0]["errorcode"]) == (207, 273)
    # Its own address, a free one, or the same IP on another port are fine.
    await nitro.ok("PUT", "lbvserver/vs2", {"lbvserver": {"ipv46": "192.0.2.11", "lbmethod": "ROUNDROBIN"}})
    await nitro.ok("PUT", "lbvserver/vs2", {"lbvserver": {"ipv46": "192.0.2.12"}})
    await nitro.ok("POST", "lbvserver", {"lbvserver": other | {"name": "vs4", "ipv46": "192.0.2.13", "port": 80}})
    await nitro.ok("PUT", "lbvserver/vs4", {"lbvserver": {"ipv46": "192.0.2.10"}})


async def test_binding_errors(nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro.ok(
        "POST", "service", {"service": {"name": "http", "ip": "10.0.0.3", "servicetype": "HTTP", "port": 80}}
    )
    b = "lbvserver_service_binding"

    status, doc = await nitro.put(b, {b: {"name": "vs", "servicename": "svc1"}})
    assert (status, doc["errorcode"]) == (409, 273)
    status, doc = await nitro.put(b, {b: {"name": "vs", "servicename": "http"}})
    assert (status, doc["errorcode"]) == (599, 1304)
    assert doc["message"] == "Service type mismatch between the vserver and service"
    status, doc = await nitro.put(b, {b: {"name": "nope", "servicename": "svc1"}})
    assert (status, doc["errorcode"], doc["message"]) == (404, 258, "No such resource [name, nope]")
    status, doc = await nitro.put(b, {b: {"name": "vs", "servicename": "svc1", "weight": 101}})
    assert (status, doc["errorcode"]) == (599, 1108)
    status, doc = await nitro.delete(f"{b}/vs?args=servicename:http")
    assert (status, doc["errorcode"], doc["message"]) == (599, 1303, "Service not bound to Vserver")
    await nitro.ok("DELETE", f"{b}/vs?args=servicename:svc1")
    assert (await nitro.delete(f"{b}/vs?args=servicename:svc1"))[1]["errorcode"] == 1303

    m = "service_lbmonitor_binding"
    status, doc = await nitro.put(m, {m: {"name": "svc1", "monitor_name": "tcp"}})
    assert (status, doc["errorcode"]) == (599, 2133)
    status, doc = await nitro.put(m, {m: {"name": "svc1", "monitor_name": "ghost"}})
    assert (status, doc["errorcode"]) == (599, 2171)
    status, doc = await nitro.delete(f"{m}/http?args=monitor_name:tcp")
    assert (status, doc["errorcode"]) == (599, 2170)
    status, doc = await nitro.delete("lbmonitor/tcp?args=type:TCP")
    assert (status, doc["errorcode"]) == (599, 1070)
    await nitro.ok("DELETE", f"{m}/svc1?args=monitor_name:tcp")


async def test_unknown_types_actions_and_bad_json(nitro: Nitro) -> None:
    status, doc = await nitro.get("csvserver")
    assert (status, doc["errorcode"]) == (599, 1232)
    status, doc = await nitro.post("lbvserver?action=explode", {"lbvserver": {"name": "x"}})
    assert (status, doc["errorcode"]) == (599, 1240)
    url = f"{nitro.base}/nitro/v1/config/server"
    async with nitro.http.post(url, data=b"{not json", headers=AUTH | {"Content-Type": "application/json"}) as r:
        assert (r.status, (await r.json())["errorcode"]) == (400, 1233)
    status, doc = await nitro.post("server", {"lbvserver": {"name": "x"}})
    assert (status, doc["errorcode"], doc["message"]) == (599, 1095, "Required argument missing [server]")


async def test_idempotent_add_and_form_encoded_body(nitro: Nitro) -> None:
    body = {"server": {"name": "a", "ipaddress": "10.0.0.1", "comment": "one"}}
    assert (await nitro.post("server?idempotent=yes", body))[0] == 201
    body["server"]["comment"] = "two"
    assert await nitro.post("server?idempotent=yes", body) == (200, DONE)
    assert (await one(nitro, "server/a"))["comment"] == "two"
    # The old SDKs post `object=<json>` as a form.
    form = {"object": json.dumps({"server": {"name": "b", "ipaddress": "10.0.0.2"}})}
    async with nitro.http.post(f"{nitro.base}/nitro/v1/config/server", data=form, headers=AUTH) as r:
        assert r.status == 201
    assert (await one(nitro, "server/b"))["ipaddress"] == "10.0.0.2"


# ---------------------------------------------------------------------------- resources and reads


async def test_dsr_objects_as_get_shows_them(nitro: Nitro) -> None:
    await dsr_setup(nitro)
    svc = await one(nitro, "service/svc1")
    assert svc["port"] == 65535 and svc["servicetype"] == "ANY" and svc["usip"] == "YES"
    assert (svc["ipaddress"], svc["servername"], svc["svrstate"]) == ("10.0.0.1", "web1", "UP")
    assert "ip" not in svc and "state" not in svc
    assert svc["maxclient"] == "0"  # NITRO doubles come back as strings

    server_ = await one(nitro, "server/web1")
    assert (server_["ipaddress"], server_["state"]) == ("10.0.0.1", "ENABLED")

    vs = await one(nitro, "lbvserver/vs")
    assert (vs["ipv46"], vs["port"], vs["m"], vs["lbmethod"]) == ("192.0.2.10", 65535, "MAC", "LEASTCONNECTION")
    assert (vs["curstate"], vs["effectivestate"], vs["health"]) == ("UP", "UP", "100")
    assert (vs["totalservices"], vs["activeservices"]) == ("2", "2")
    assert "state" not in vs

    _, doc = await nitro.get("lbvserver_service_binding/vs")
    bindings = doc["lbvserver_service_binding"]
    assert [(b["servicename"], b["weight"], b["curstate"], b["port"]) for b in bindings] == [
        ("svc1", "1", "UP", 65535),
        ("svc2", "3", "UP", 65535),
    ]
    mon = await one(nitro, "lbmonitor?args=monitorname:tcp,type:TCP")
    assert (mon["destip"], mon["transparent"], mon["interval"], mon["resptimeout"]) == ("192.0.2.10", "YES", 5, 2)
    _, doc = await nitro.get("service_lbmonitor_binding/svc1")
    (mb,) = doc["service_lbmonitor_binding"]
    assert (mb["monitor_name"], mb["weight"], mb["monitor_state"]) == ("tcp", "1", "UP")


async def test_service_with_ip_uses_or_creates_server(nitro: Nitro) -> None:
    await nitro.ok("POST", "service", {"service": {"name": "a", "ip": "10.0.0.5", "servicetype": "TCP", "port": 80}})
    assert (await one(nitro, "server/10.0.0.5"))["ipaddress"] == "10.0.0.5"
    await nitro.ok("POST", "server", {"server": {"name": "named", "ipaddress": "10.0.0.6"}})
    await nitro.ok("POST", "service", {"service": {"name": "b", "ip": "10.0.0.6", "servicetype": "TCP", "port": 80}})
    assert (await one(nitro, "service/b"))["servername"] == "named"
    assert (await nitro.get("server?count=yes"))[1]["server"] == [{"__count": 2}]


async def test_monitors_are_keyed_by_name_and_type(nitro: Nitro) -> None:
    for kind in ("TCP", "PING"):
        await nitro.ok("POST", "lbmonitor", {"lbmonitor": {"monitorname": "m", "type": kind}})
    assert (await nitro.post("lbmonitor", {"lbmonitor": {"monitorname": "m", "type": "TCP"}}))[0] == 409
    _, doc = await nitro.get("lbmonitor?args=monitorname:m")
    assert sorted(m["type"] for m in doc["lbmonitor"]) == ["PING", "TCP"]
    assert (await one(nitro, "lbmonitor/m?args=type:PING"))["type"] == "PING"
    status, doc = await nitro.delete("lbmonitor/m")
    assert (status, doc["errorcode"], doc["message"]) == (599, 1095, "Required argument missing [type]")
    await nitro.ok("DELETE", "lbmonitor/m?args=type:TCP")
    assert [m["type"] for m in (await nitro.get("lbmonitor"))[1]["lbmonitor"]] == ["PING"]
    assert (await nitro.get("lbmonitor/m?args=type:TCP"))[0] == 404
    await nitro.ok("PUT", "lbmonitor", {"lbmonitor": {"monitorname": "m", "type": "PING", "interval": 10}})
    assert (await one(nitro, "lbmonitor/m?args=type:PING"))["interval"] == 10


async def test_unset_resets_fields_to_their_defaults(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    mon = {"monitorname": "m", "type": "TCP", "destip": "192.0.2.10", "destport": 8080, "transparent": "YES"}
    await nitro.ok("POST", "lbmonitor", {"lbmonitor": mon})
    await nitro.ok("POST", "nsconfig?action=save", {"nsconfig": {}})
    body = {"lbmonitor": {"monitorname": "m", "type": "TCP", "destip": True, "transparent": True}}
    assert await nitro.ok("POST", "lbmonitor?action=unset", body) == DONE
    got = await one(nitro, "lbmonitor/m?args=type:TCP")
    assert "destip" not in got and got["transparent"] == "NO" and got["destport"] == 8080  # no default: gone
    assert (await nitro.get("nsconfig"))[1]["nsconfig"]["configchanged"] is True
    assert [(e["resource"], e["action"], e["key"]) for e in await nitro_sim.journal()][-1] == (
        "lbmonitor", "unset", {"monitorname": "m", "type": "TCP"}
    )
    # Bulk, as our client sends it; unsetting what is already unset is fine.
    bulk = {"lbmonitor": [{"monitorname": "m", "type": "TCP", "destport": True, "destip": True}]}
    await nitro.ok("POST", "lbmonitor?action=unset", bulk)
    assert "destport" not in await one(nitro, "lbmonitor/m?args=type:TCP")
    # Errors: unknown or unchangeable fields, a missing object, a missing key.
    status, doc = await nitro.post("lbmonitor?action=unset", {"lbmonitor": {"monitorname": "m", "type": "TCP",
                                                                            "bogus": True}})
    assert (status, doc["errorcode"]) == (599, 278)
    status, doc = await nitro.post("service?action=unset", {"service": {"name": "nope", "comment": True}})
    assert (status, doc["errorcode"]) == (404, 258)
    status, doc = await nitro.post("lbmonitor?action=unset", {"lbmonitor": {"monitorname": "m", "destip": True}})
    assert (status, doc["errorcode"]) == (599, 1095)
    await dsr_setup(nitro)
    status, doc = await nitro.post("service?action=unset", {"service": {"name": "svc1", "port": True}})
    assert (status, doc["errorcode"]) == (599, 278)
    await nitro.ok("POST", "lbvserver?action=unset", {"lbvserver": {"name": "vs", "lbmethod": True}})
    assert (await one(nitro, "lbvserver/vs"))["lbmethod"] == "LEASTCONNECTION"


async def test_monitor_times_in_whole_minutes_read_back_in_minutes(nitro: Nitro) -> None:
    body = {"monitorname": "m", "type": "TCP", "interval": 60, "resptimeout": 2}
    await nitro.ok("POST", "lbmonitor", {"lbmonitor": body})
    mon = await one(nitro, "lbmonitor/m")
    assert (mon["interval"], mon["units3"], mon["resptimeout"], mon["units4"]) == (1, "MIN", 2, "SEC")
    await nitro.ok("PUT", "lbmonitor", {"lbmonitor": {"monitorname": "m", "type": "TCP", "interval": 90,
                                                      "units3": "SEC"}})
    mon = await one(nitro, "lbmonitor/m")
    assert (mon["interval"], mon["units3"]) == (90, "SEC")
    await nitro.ok("PUT", "lbmonitor", {"lbmonitor": {"monitorname": "m", "type": "TCP", "interval": 180,
                                                      "units3": "SEC", "resptimeout": 120, "units4": "SEC"}})
    mon = await one(nitro, "lbmonitor/m")
    assert (mon["interval"], mon["units3"], mon["resptimeout"], mon["units4"]) == (3, "MIN", 2, "MIN")


async def test_update_ignores_immutable_fields(nitro: Nitro) -> None:
    await dsr_setup(nitro)
    body = {"lbvserver": {"lbmethod": "ROUNDROBIN", "port": 80, "servicetype": "TCP", "comment": "x"}}
    await nitro.ok("PUT", "lbvserver/vs", body)
    vs = await one(nitro, "lbvserver/vs")
    assert (vs["lbmethod"], vs["port"], vs["servicetype"], vs["comment"]) == ("ROUNDROBIN", 65535, "ANY", "x")
    await nitro.ok("PUT", "service", {"service": {"name": "svc1", "ipaddress": "10.0.0.7", "port": 1}})
    svc = await one(nitro, "service/svc1")
    assert (svc["ipaddress"], svc["port"]) == ("10.0.0.7", 65535)
    assert (await nitro.put("lbvserver/vs", {"lbvserver": {"bogus": 1}}))[1]["errorcode"] == 278
    assert (await nitro.put("lbvserver/vs", {"lbvserver": {"m": "BAD"}}))[1]["errorcode"] == 1097
    assert (await nitro.put("lbvserver/zz", {"lbvserver": {"comment": "y"}}))[0] == 404


async def test_rename_keeps_references(nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro.ok("POST", "service?action=rename", {"service": {"name": "svc1", "newname": "svc-one"}})
    await nitro.ok("POST", "lbvserver?action=rename", {"lbvserver": {"name": "vs", "newname": "vs2"}})
    await nitro.ok("POST", "server?action=rename", {"server": {"name": "web1", "newname": "w1"}})
    _, doc = await nitro.get("lbvserver_service_binding/vs2")
    assert [b["servicename"] for b in doc["lbvserver_service_binding"]] == ["svc-one", "svc2"]
    assert (await one(nitro, "service/svc-one"))["servername"] == "w1"
    assert (await one(nitro, "service_lbmonitor_binding/svc-one"))["monitor_name"] == "tcp"
    status, doc = await nitro.post("service?action=rename", {"service": {"name": "svc2", "newname": "svc-one"}})
    assert (status, doc["errorcode"]) == (409, 273)


async def test_filter_attrs_count_and_bulkbindings(nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro.ok("POST", "service", {"service": {"name": "web", "ip": "10.1.0.1", "servicetype": "HTTP", "port": 80}})
    _, doc = await nitro.get("service?filter=servicetype:ANY")
    assert [s["name"] for s in doc["service"]] == ["svc1", "svc2"]
    _, doc = await nitro.get("service?filter=servicetype:ANY,name:svc2")
    assert [s["name"] for s in doc["service"]] == ["svc2"]
    _, doc = await nitro.get("service?filter=" + urllib.parse.quote("name:/^svc[0-9]$/"))
    assert [s["name"] for s in doc["service"]] == ["svc1", "svc2"]
    assert await nitro.get("service?filter=name:nothing") == (200, DONE)
    status, doc = await nitro.get("service?filter=" + urllib.parse.quote("name:/[/"))
    assert (status, doc["errorcode"]) == (599, 278)
    _, doc = await nitro.get("service?attrs=port,svrstate")
    assert doc["service"][0] == {"name": "svc1", "port": 65535, "svrstate": "UP"}
    _, doc = await nitro.get("service?count=yes&filter=servicetype:ANY")
    assert doc["service"] == [{"__count": 2}]
    assert (await nitro.get("lbvserver?count=yes"))[1]["lbvserver"] == [{"__count": 1}]

    _, doc = await nitro.get("lbvserver_service_binding?bulkbindings=yes")
    assert [(b["name"], b["servicename"]) for b in doc["lbvserver_service_binding"]] == [("vs", "svc1"), ("vs", "svc2")]
    status, doc = await nitro.get("lbvserver_service_binding?bulkbindings=yes&filter=name:vs")
    assert (status, doc["errorcode"]) == (599, 1092)  # undocumented together: refused
    _, doc = await nitro.get("lbvserver_service_binding/vs?filter=servicename:svc2")
    assert [b["weight"] for b in doc["lbvserver_service_binding"]] == ["3"]
    await nitro.ok("POST", "lbvserver", {"lbvserver": {"name": "empty", "servicetype": "ANY"}})
    assert await nitro.get("lbvserver_service_binding/empty") == (200, DONE)
    assert (await nitro.get("lbvserver_service_binding/ghost"))[0] == 404


async def test_nsmode_nsconfig_and_hanode(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    _, doc = await nitro.get("nsmode")
    assert isinstance(doc["nsmode"], dict) and doc["nsmode"]["mbf"] is False and "MBF" not in doc["nsmode"]["mode"]
    _, doc = await nitro.get("nsconfig")
    assert doc["nsconfig"]["configchanged"] is False and doc["nsconfig"]["systemtype"] == "Stand-alone"

    await nitro.ok("POST", "nsmode?action=enable", {"nsmode": {"mode": ["MBF", "USIP"]}})
    mode = (await nitro.get("nsmode"))[1]["nsmode"]
    assert mode["mbf"] is True and mode["usip"] is True and {"MBF", "USIP"} <= set(mode["mode"])
    status, doc = await nitro.post("nsmode?action=enable", {"nsmode": {"mode": ["WARP"]}})
    assert (status, doc["errorcode"]) == (599, 1097)
    await nitro.ok("POST", "nsmode?action=disable", {"nsmode": {"mode": ["USIP"]}})
    assert (await nitro.get("nsmode"))[1]["nsmode"]["usip"] is False

    cfg = (await nitro.get("nsconfig"))[1]["nsconfig"]
    assert cfg["configchanged"] is True and cfg["lastconfigchangedtime"] and not cfg["lastconfigsavetime"]
    await nitro.ok("POST", "nsconfig?action=save", {"nsconfig": {}})
    cfg = (await nitro.get("nsconfig"))[1]["nsconfig"]
    assert cfg["configchanged"] is False and cfg["lastconfigsavetime"]

    assert (await one(nitro, "hanode/0"))["state"] == "Primary"
    await nitro_sim.set_ha_state("Secondary")
    assert (await one(nitro, "hanode/0"))["state"] == "Secondary"


# ---------------------------------------------------------------------------- runtime state


async def test_health_follows_hosts_and_disable(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro_sim.set_hosts({"10.0.0.1": "DOWN"})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "DOWN"
    assert (await one(nitro, "service_lbmonitor_binding/svc1"))["monitor_state"] == "DOWN"
    vs = await one(nitro, "lbvserver/vs")
    assert (vs["curstate"], vs["activeservices"], vs["health"]) == ("UP", "1", "75")
    await nitro_sim.set_hosts({"10.0.0.2": "DOWN"})
    assert (await one(nitro, "lbvserver/vs"))["curstate"] == "DOWN"
    _, doc = await nitro.get("lbvserver_service_binding/vs")
    assert {b["curstate"] for b in doc["lbvserver_service_binding"]} == {"DOWN"}

    await nitro.ok("PUT", "service/svc2", {"service": {"healthmonitor": "NO"}})
    assert (await one(nitro, "service/svc2"))["svrstate"] == "UP"
    await nitro_sim.set_hosts({"10.0.0.1": "UP"})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "UP"

    await nitro.ok("POST", "service?action=disable", {"service": {"name": "svc1"}})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "OUT OF SERVICE"
    await nitro.ok("POST", "service?action=enable", {"service": {"name": "svc1"}})
    await nitro.ok("POST", "server?action=disable", {"server": {"name": "web1"}})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "OUT OF SERVICE"
    assert (await one(nitro, "server/web1"))["state"] == "DISABLED"
    await nitro.ok("POST", "server?action=enable", {"server": {"name": "web1"}})
    await nitro.ok("POST", "lbvserver?action=disable", {"lbvserver": {"name": "vs"}})
    assert (await one(nitro, "lbvserver/vs"))["curstate"] == "OUT OF SERVICE"
    status, doc = await nitro.post("lbvserver?action=disable", {"lbvserver": {"name": "vs", "delay": 3}})
    assert (status, doc["errorcode"]) == (599, 278)


async def test_graceful_disable_goes_out_of_service_after_delay(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro_sim.set_clients({"svc1": 2})
    body = {"service": {"name": "svc1", "delay": 0.4, "graceful": "YES"}}
    await nitro.ok("POST", "service?action=disable", body)
    assert (await one(nitro, "service/svc1"))["svrstate"] == "GOING OUT OF SERVICE"
    assert (await one(nitro, "lbvserver/vs"))["activeservices"] == "1"
    await asyncio.sleep(0.5)
    assert (await one(nitro, "service/svc1"))["svrstate"] == "OUT OF SERVICE"


async def test_graceful_disable_ends_early_when_the_last_client_leaves(
    nitro_sim: simctl.Simulator, nitro: Nitro
) -> None:
    await dsr_setup(nitro)
    await nitro.ok("POST", "service?action=disable", {"service": {"name": "svc2", "delay": 60, "graceful": "YES"}})
    assert (await one(nitro, "service/svc2"))["svrstate"] == "OUT OF SERVICE"  # no clients: done at once
    await nitro_sim.set_clients({"svc1": 2})
    await nitro.ok("POST", "service?action=disable", {"service": {"name": "svc1", "delay": 60, "graceful": "YES"}})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "GOING OUT OF SERVICE"
    await nitro_sim.set_clients({"svc1": 1})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "GOING OUT OF SERVICE"
    await nitro_sim.set_clients({"svc1": 0})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "OUT OF SERVICE"  # long before 60 s
    # delay 0 waits for the last client; without graceful the delay alone counts.
    await nitro.ok("POST", "service?action=enable", {"service": {"name": "svc1"}})
    await nitro_sim.set_clients({"svc1": 1})
    await nitro.ok("POST", "service?action=disable", {"service": {"name": "svc1", "delay": 0, "graceful": "YES"}})
    assert (await one(nitro, "service/svc1"))["svrstate"] == "GOING OUT OF SERVICE"
    await nitro.ok("POST", "service?action=enable", {"service": {"name": "svc2"}})
    await nitro.ok("POST", "service?action=disable", {"service": {"name": "svc2", "delay": 60}})
    assert (await one(nitro, "service/svc2"))["svrstate"] == "GOING OUT OF SERVICE"


async def stat(nitro: Nitro, path: str) -> Any:
    async with nitro.http.get(f"{nitro.base}/nitro/v1/stat/{path}", headers=nitro.headers) as response:
        doc = await response.json()
        assert response.status == 200, doc
        return doc[path.split("/")[0]]


async def test_stat_endpoints_serve_what_monitoring_tools_read(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro_sim.set_clients({"svc1": 3})
    await nitro_sim.set_hosts({"10.0.0.2": "DOWN"})
    [svc] = await stat(nitro, "service/svc1")
    assert (svc["name"], svc["state"], svc["servicetype"], svc["primaryipaddress"], svc["primaryport"]) == (
        "svc1", "UP", "ANY", "10.0.0.1", 65535)
    assert (svc["curclntconnections"], svc["cursrvrconnections"], svc["totalrequests"]) == ("3", "3", "0")
    assert svc["requestsrate"] == 0  # counters are strings, rates numbers, as on the appliance
    services = await stat(nitro, "service")
    assert [(s["name"], s["state"]) for s in services] == [("svc1", "UP"), ("svc2", "DOWN")]
    [vs] = await stat(nitro, "lbvserver/vs")
    assert (vs["state"], vs["type"], vs["primaryipaddress"], vs["actsvcs"], vs["inactsvcs"]) == (
        "UP", "ANY", "192.0.2.10", "1", "1")
    assert (vs["curclntconnections"], vs["tothits"], vs["totalpktsrecvd"], vs["vslbhealth"]) == ("3", "0", "0", "25")
    ha = await stat(nitro, "hanode")
    assert (ha["hacurstatus"], ha["hacurmasterstate"]) == ("NO", "Primary")
    assert {"hacurstate", "transtime", "haerrsyncfailure"} <= set(ha)
    async with nitro.http.get(f"{nitro.base}/nitro/v1/stat/service/nope", headers=AUTH) as r:
        assert (r.status, (await r.json())["errorcode"]) == (404, 258)
    async with nitro.http.get(f"{nitro.base}/nitro/v1/stat/service") as r:
        assert (r.status, (await r.json())["errorcode"]) == (401, 1027)
    assert (await nitro_sim.stats())["byResource"]["stat/service"] == 4


# ---------------------------------------------------------------------------- bulk


def _servers(*names: str) -> dict[str, Any]:
    return {"server": [{"name": n, "ipaddress": f"10.9.0.{i + 1}"} for i, n in enumerate(names)]}


async def _server_names(nitro: Nitro) -> list[str]:
    return [s["name"] for s in (await nitro.get("server"))[1].get("server", [])]


async def test_bulk_add_success_and_default_exit(nitro: Nitro) -> None:
    assert await nitro.post("server", _servers("a", "b")) == (201, DONE)
    # "b" again fails; without X-NITRO-ONERROR the request stops there (exit), keeping "c" out.
    status, doc = await nitro.post(
        "server",
        {
            "server": [
                {"name": "c", "ipaddress": "10.9.1.1"},
                {"name": "b", "ipaddress": "10.9.1.2"},
                {"name": "d", "ipaddress": "10.9.1.3"},
            ]
        },
    )
    assert (status, doc["errorcode"], doc["message"], doc["severity"]) == (207, 1243, "Bulk operation failed", "ERROR")
    assert doc["response"] == [DONE, {"errorcode": 273, "message": "Resource already exists", "severity": "ERROR"}]
    assert await _server_names(nitro) == ["a", "b", "c"]


async def test_bulk_continue_and_rollback(nitro: Nitro) -> None:
    await nitro.ok("POST", "server", {"server": {"name": "b", "ipaddress": "10.9.9.9"}})
    items = {
        "server": [
            {"name": "a", "ipaddress": "10.9.0.1"},
            {"name": "b", "ipaddress": "10.9.0.2"},
            {"name": "c", "ipaddress": "10.9.0.3"},
        ]
    }
    status, doc = await nitro.post("server", items, headers=AUTH | {"X-NITRO-ONERROR": "rollback"})
    assert (status, doc["errorcode"]) == (207, 1243)
    assert [r["errorcode"] for r in doc["response"]] == [0, 273]
    assert await _server_names(nitro) == ["b"]

    status, doc = await nitro.post("server", items, headers=AUTH | {"X-NITRO-ONERROR": "continue"})
    assert (status, [r["errorcode"] for r in doc["response"]]) == (207, [0, 273, 0])
    assert await _server_names(nitro) == ["b", "a", "c"]

    status, doc = await nitro.put(
        "server", {"server": [{"name": "a", "comment": "x"}]}, headers=AUTH | {"X-NITRO-ONERROR": "rollback"}
    )
    assert (status, doc["errorcode"]) == (599, 1242)


async def test_bulk_update_actions_bind_unbind_and_rm(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro.ok(
        "PUT", "service", {"service": [{"name": "svc1", "comment": "c1"}, {"name": "svc2", "comment": "c2"}]}
    )
    assert (await one(nitro, "service/svc2"))["comment"] == "c2"
    await nitro.ok("POST", "service?action=disable", {"service": [{"name": "svc1"}, {"name": "svc2"}]})
    assert (await one(nitro, "lbvserver/vs"))["curstate"] == "DOWN"
    await nitro.ok("POST", "service?action=enable", {"service": [{"name": "svc1"}, {"name": "svc2"}]})

    b = "lbvserver_service_binding"
    unbind = {b: [{"name": "vs", "servicename": "svc1"}, {"name": "vs", "servicename": "svc2"}]}
    await nitro.ok("POST", f"{b}?action=unbind", unbind, 200)
    assert await nitro.get(f"{b}/vs") == (200, DONE)
    status, doc = await nitro.post(f"{b}?action=unbind", unbind, headers=AUTH | {"X-NITRO-ONERROR": "continue"})
    assert (status, [r["errorcode"] for r in doc["response"]]) == (207, [1303, 1303])
    await nitro.ok("PUT", b, unbind, 201)  # bulk bind

    await nitro.ok("POST", f"{b}?action=unbind", unbind, 200)
    m = "service_lbmonitor_binding"
    await nitro.ok(
        "POST",
        f"{m}?action=unbind",
        {m: [{"name": "svc1", "monitor_name": "tcp"}, {"name": "svc2", "monitor_name": "tcp"}]},
        200,
    )
    await nitro.ok("POST", "service?action=rm", {"service": [{"name": "svc1"}, {"name": "svc2"}]})
    await nitro.ok("POST", "lbmonitor?action=rm", {"lbmonitor": [{"monitorname": "tcp", "type": "TCP"}]})
    await nitro.ok("POST", "server?action=rm", {"server": [{"name": "web1"}, {"name": "web2"}]})
    assert await nitro.get("server") == (200, DONE)

    actions = [(e["resource"], e["action"], e["name"]) for e in await nitro_sim.journal()]
    assert actions[-5:] == [
        ("service", "delete", "svc1"),
        ("service", "delete", "svc2"),
        ("lbmonitor", "delete", "tcp"),
        ("server", "delete", "web1"),
        ("server", "delete", "web2"),
    ]


# ---------------------------------------------------------------------------- control endpoints


async def test_journal_orders_successful_writes(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro.post("server", {"server": {"name": "web1", "ipaddress": "10.0.0.1"}})  # fails: not journaled
    await nitro.post("server", _servers("x", "web1"), headers=AUTH | {"X-NITRO-ONERROR": "rollback"})
    journal = await nitro_sim.journal()
    seqs = [e["seq"] for e in journal]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e["time"] for e in journal] == sorted(e["time"] for e in journal)
    steps = [(e["method"], e["resource"], e["action"], e["name"]) for e in journal]
    assert steps[:4] == [
        ("POST", "nsmode", "enable", "MBF"),
        ("POST", "server", "add", "web1"),
        ("POST", "service", "add", "svc1"),
        ("POST", "server", "add", "web2"),
    ]
    assert ("PUT", "lbvserver_service_binding", "bind", "vs") in steps
    assert journal[-1]["key"] == {"name": "svc2", "monitor_name": "tcp"}
    assert not any(e["name"] == "x" for e in journal)  # rolled back
    assert await nitro_sim.journal(since=seqs[-2]) == journal[-1:]


async def test_stats_count_nitro_requests(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await nitro.get("server")
    await nitro.post("server", _servers("a"))
    await nitro.post("login", {"login": {"username": "nsroot", "password": "nsroot"}})
    await nitro_sim.faults()  # /_sim calls are not counted
    stats = await nitro_sim.stats()
    assert stats == {
        "requests": 3,
        "writes": 1,
        "byMethod": {"GET": 1, "POST": 2},
        "byResource": {"server": 2, "login": 1},
    }
    await nitro_sim.reset_stats()
    assert (await nitro_sim.stats())["requests"] == 0


async def test_latency_error_rate_and_dropped_connections(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    settings = await nitro_sim.faults(latencyMs=150)
    assert settings == {
        "latencyMs": 150, "errorRate": 0.0, "errorStatus": 503, "errorResources": [], "dropConnections": 0
    }
    started = time.monotonic()
    assert (await nitro.get("server"))[0] == 200
    assert time.monotonic() - started >= 0.15

    await nitro_sim.faults(latencyMs=0, errorRate=1.0)
    status, doc = await nitro.get("server")
    assert (status, doc) == (503, {"errorcode": 503, "message": "Service Unavailable", "severity": "ERROR"})
    await nitro_sim.faults(errorRate=1.0, errorStatus=502)
    assert (await nitro.get("server"))[0] == 502
    await nitro_sim.faults(errorRate=0.5, seed=7)
    statuses = [(await nitro.get("server"))[0] for _ in range(40)]
    assert {200, 502} == set(statuses)
    await nitro_sim.clear_faults()
    assert (await nitro.get("server"))[0] == 200

    # POST, because aiohttp itself retries an idempotent GET once after a disconnect.
    await nitro_sim.faults(dropConnections=2)
    for _ in range(2):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await nitro.post("server", _servers("a"))
    assert await _server_names(nitro) == []  # dropped before anything was done
    assert (await nitro_sim.faults())["dropConnections"] == 0
    await nitro.ok("POST", "server", _servers("a"))

    async with nitro.http.post(f"{nitro_sim.url}/_sim/faults", json={"errorRate": 2}) as r:
        assert r.status == 400
    async with nitro.http.post(f"{nitro_sim.url}/_sim/faults", json={"latency": 1}) as r:
        assert r.status == 400


async def test_a_client_that_gives_up_mid_request_is_not_an_error(
    nitro_sim: simctl.Simulator, nitro: Nitro, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await nitro_sim.faults(latencyMs=300)
    url = f"{nitro_sim.url}/nitro/v1/config/server"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.05)) as impatient:
        for method, body in (("GET", None), ("POST", _servers("a"))):
            with pytest.raises(TimeoutError):
                async with impatient.request(method, url, json=body, headers=AUTH):
                    pass

    def finished(method: str) -> bool:
        return any(
            r.name == server.logger.name and r.getMessage().startswith(f"NITRO {method} /nitro/v1/config/server")
            for r in caplog.records
        )

    async def both_finished() -> bool:  # the simulator has come to the end of both requests
        return finished("GET") and finished("POST")

    await eventually(both_finished)
    troubles = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info or "-> 500" in r.getMessage()]
    assert troubles == []
    await nitro_sim.clear_faults()
    await nitro.ok("POST", "server", _servers("b"))  # still serving
    assert await _server_names(nitro) == ["b"]  # the request nobody waited for was not carried out


async def test_error_rate_limited_to_some_resources(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    settings = await nitro_sim.faults(errorRate=1.0, errorResources=["nsconfig"])
    assert settings["errorResources"] == ["nsconfig"]
    await nitro.ok("POST", "server", _servers("a"))  # other resources are untouched
    status, doc = await nitro.post("nsconfig?action=save", {"nsconfig": {}})
    assert (status, doc["errorcode"]) == (503, 503)
    assert (await nitro.get("nsconfig"))[0] == 503
    assert (await nitro.get("nsconfig"))[0] == 503
    await nitro_sim.faults(errorResources=[])  # every resource again
    assert (await nitro.get("server"))[0] == 503
    await nitro_sim.clear_faults()
    assert (await nitro_sim.faults())["errorResources"] == []
    await nitro.ok("POST", "nsconfig?action=save", {"nsconfig": {}})
    async with nitro.http.post(f"{nitro_sim.url}/_sim/faults", json={"errorResources": "nsconfig"}) as r:
        assert r.status == 400


async def test_journal_records_the_ha_state_of_each_write(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await nitro.ok("POST", "server", _servers("a"))
    await nitro_sim.set_ha_state("Secondary")
    await nitro.ok("POST", "server", {"server": {"name": "b", "ipaddress": "10.9.0.2"}})
    await nitro_sim.set_ha_state("Primary")
    await nitro.ok("POST", "server?action=rm", {"server": [{"name": "a"}]}, status=200)
    assert [(e["name"], e["haState"]) for e in await nitro_sim.journal()] == [
        ("a", "Primary"), ("b", "Secondary"), ("a", "Primary"),
    ]


async def test_sim_reset_and_hosts_endpoints(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    await dsr_setup(nitro)
    await nitro_sim.set_hosts({"10.0.0.1": "DOWN"})
    async with nitro.http.get(f"{nitro_sim.url}/_sim/hosts") as r:
        assert await r.json() == {"down": ["10.0.0.1"]}
    async with nitro.http.post(f"{nitro_sim.url}/_sim/hosts", json={"10.0.0.1": "SLEEPY"}) as r:
        assert r.status == 400
    await nitro_sim.reset()
    for resource in ("server", "service", "lbvserver", "lbmonitor"):
        assert await nitro.get(resource) == (200, DONE)
    assert (await nitro.get("nsmode"))[1]["nsmode"]["mbf"] is False
    assert await nitro_sim.journal() == []
    assert (await nitro.get("server"))[0] == 200  # users kept


async def test_change_listeners_see_each_write(nitro_sim: simctl.Simulator, nitro: Nitro) -> None:
    seen: list[nitro_.Change] = []
    nitro_sim.store.listeners.append(seen.append)
    await nitro.post("server", _servers("a", "b"))
    await nitro.post("server", _servers("a"))  # fails: no notification
    assert [(c.resource, c.action, c.name) for c in seen] == [("server", "add", "a"), ("server", "add", "b")]


async def test_status_lines_onerror_in_the_query_and_double_slashes(nitro_sim: simctl.Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        base = f"{nitro_sim.url}/nitro/v1/config"
        async with http.post(f"{base}/server", json={"server": {"name": "-bad", "ipaddress": "10.0.0.1"}},
                             headers=AUTH) as r:
            assert (r.status, r.reason) == (599, "Netscaler specific error")
        # No X-NITRO-ONERROR header: `?onerror=continue` goes on past the failing item.
        body = {"server": [{"name": "-bad", "ipaddress": "10.0.0.1"}, {"name": "ok", "ipaddress": "10.0.0.2"}]}
        async with http.post(f"{base}/server?onerror=continue", json=body, headers=AUTH) as r:
            assert (r.status, r.reason) == (207, "Multi Status")
            assert [item["errorcode"] for item in (await r.json())["response"]] == [1075, 0]
        async with http.get(f"{nitro_sim.url}/nitro/v1//config//server/ok", headers=AUTH) as r:
            assert r.status == 200 and (await r.json())["server"][0]["ipaddress"] == "10.0.0.2"
        async with http.post(f"{nitro_sim.url}//nitro/v1/config/server?action=rm", json={"server": [{"name": "ok"}]},
                             headers=AUTH) as r:
            assert r.status == 200, await r.text()
    assert nitro_sim.store.objects["server"] == {}


# ---------------------------------------------------------------------------- persistence and CLI


def _files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_state_survives_restart(tmp_path: pathlib.Path) -> None:
    state = tmp_path / "sim.state.json"
    async with simctl.running(state_path=state) as sim, aiohttp.ClientSession() as http:
        nitro = Nitro(sim.url, http)
        await dsr_setup(nitro)
        await nitro.ok("POST", "nsconfig?action=save", {"nsconfig": {}})
        await nitro.ok("POST", "service?action=disable", {"service": {"name": "svc2"}})
        # Saved after each write already, not only at shutdown.
        saved = json.loads(await asyncio.to_thread(state.read_text))
        assert [s["name"] for s in saved["objects"]["service"]] == ["svc1", "svc2"]
    assert await asyncio.to_thread(_files, tmp_path) == [state.name]  # no temp file left behind

    async with simctl.running(state_path=state) as sim, aiohttp.ClientSession() as http:
        nitro = Nitro(sim.url, http)
        vs = await one(nitro, "lbvserver/vs")
        assert (vs["m"], vs["totalservices"], vs["activeservices"]) == ("MAC", "2", "1")
        assert (await one(nitro, "service/svc2"))["svrstate"] == "OUT OF SERVICE"
        assert (await nitro.get("nsmode"))[1]["nsmode"]["mbf"] is True
        assert (await nitro.get("nsconfig"))[1]["nsconfig"]["configchanged"] is True
        assert (await one(nitro, "lbmonitor/tcp?args=type:TCP"))["transparent"] == "YES"


def test_cli_registers_nitro_sim(tmp_path: pathlib.Path) -> None:
    password = tmp_path / "pw"
    password.write_text("secret\n")
    args = cli.build_parser().parse_args(
        [
            "nitro-sim",
            "--listen",
            "127.0.0.1:0",
            "--state",
            "s.json",
            "--user",
            "admin",
            "--password-file",
            str(password),
        ]
    )
    from dsr_operator.simulator import cli as sim_cli

    assert args.func is sim_cli.run
    assert sim_cli.parse_listen(args.listen) == ("127.0.0.1", 0)
    assert sim_cli.parse_listen("[::1]:9080") == ("::1", 9080)
    assert sim_cli.credentials(args) == {"admin": "secret"}
    assert args.state == pathlib.Path("s.json")


@pytest.mark.parametrize("command", [["nitro-sim"], ["plan", "-f", "x.yaml"], ["apply", "-f", "x.yaml"]])
def test_password_is_never_taken_for_password_file(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.build_parser().parse_args([*command, "--password", "secret"])
    assert raised.value.code == 2
    assert "unrecognized arguments: --password" in capsys.readouterr().err


def test_with_live_client_counts_a_drain_waits_for_a_count_taken_after_the_disable() -> None:
    now = [1000.0]
    model = nitro_.Store(clock=lambda: now[0])
    model.execute("POST", "server", "add", {"name": "h", "ipaddress": "10.0.0.1"})
    model.execute("POST", "service", "add", {"name": "s", "servername": "h", "servicetype": "ANY", "port": 80})
    model.set_clients({}, replace=True, live=True)  # a dataplane counted no flows, a moment ago
    now[0] += 1
    model.execute("POST", "service", "disable", {"name": "s", "delay": 30, "graceful": "YES"})
    service = model.objects["service"][("s",)]
    assert model.svrstate(service) == "GOING OUT OF SERVICE"  # flows may have started since the count
    now[0] += 0.25
    model.set_clients({"s": 2}, replace=True, live=True)
    assert model.svrstate(service) == "GOING OUT OF SERVICE"
    now[0] += 0.25
    model.set_clients({}, replace=True, live=True)
    assert model.svrstate(service) == "OUT OF SERVICE"
