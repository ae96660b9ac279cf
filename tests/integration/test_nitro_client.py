"""The NITRO client against the NITRO simulator over real HTTP: sessions, bulk results, retries, limits.

Every test talks to a fresh simulator (`nitro_sim`) through a real socket; faults are injected with
the simulator's `/_sim/faults` endpoint. The credentials are overridden here so that the password is
a string found nowhere else, which lets the tests look for it in logs, reprs and errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import types
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dsr_lab import simctl
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors
from dsr_operator.simulator import server

PASSWORD = "Pa55-w0rd-never-printed"

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}


@pytest.fixture
def nitro_credentials() -> tuple[str, str]:
    return ("dsr-operator", PASSWORD)


@pytest.fixture
def connect(nitro_sim: simctl.Simulator, nitro_credentials: tuple[str, str]) -> Callable[..., nitro.NitroClient]:
    """A factory of (unopened) clients aimed at the simulator, with fast backoff."""
    user, password = nitro_credentials

    def make(**kwargs: Any) -> nitro.NitroClient:
        options: dict[str, Any] = {**FAST, **kwargs}
        return nitro.NitroClient(nitro_sim.url, username=user, password=password, **options)

    return make


@pytest.fixture
async def ns(connect: Callable[..., nitro.NitroClient]) -> AsyncIterator[nitro.NitroClient]:
    async with connect() as client:
        yield client


def servers(*names: str) -> list[dict[str, Any]]:
    """Server objects, each with an address of its own (derived from the name)."""
    return [{"name": name, "ipaddress": f"10.{zlib.crc32(name.encode()) % 250}.{len(name)}.1"} for name in names]


def live_sessions(sim: simctl.Simulator) -> int:
    return len(sim.app[server.SESSIONS])


# Sessions


async def test_login_sends_the_token_and_logout_ends_the_session(
    nitro_sim: simctl.Simulator, connect: Callable[..., nitro.NitroClient]
) -> None:
    async with connect() as ns:
        assert ns.state.value == "opened"
        assert live_sessions(nitro_sim) == 1
        assert await ns.get("lbvserver") == []  # authenticated by the cookie alone
    assert ns.state is nitro.State.CLOSED
    assert live_sessions(nitro_sim) == 0
    stats = await nitro_sim.stats()
    assert stats["byResource"] == {"login": 1, "lbvserver": 1, "logout": 1}
    assert ns.stats.requests == 3


async def test_logout_happens_even_when_the_block_raises(
    nitro_sim: simctl.Simulator, connect: Callable[..., nitro.NitroClient]
) -> None:
    with pytest.raises(errors.NitroNotFound):
        async with connect() as ns:
            await ns.get("server", "missing")
    assert live_sessions(nitro_sim) == 0
    assert (await nitro_sim.stats())["byResource"]["logout"] == 1


async def test_expired_session_is_renewed_once_for_concurrent_requests(
    nitro_sim: simctl.Simulator, ns: nitro.NitroClient
) -> None:
    await ns.add("server", servers("web-1"))
    await nitro_sim.faults(expireSessions=True)

    results = await asyncio.gather(*(ns.get("server") for _ in range(5)))

    assert all(len(records) == 1 for records in results)
    assert ns.stats.relogins == 1
    assert ns.stats.errors_by_code[444] == 5
    assert (await nitro_sim.stats())["byResource"]["login"] == 2
    assert live_sessions(nitro_sim) == 1


async def test_session_expiring_again_after_the_relogin_raises(
    nitro_sim: simctl.Simulator, ns: nitro.NitroClient
) -> None:
    def expire_every_session(method: str, rtype: str, status: int, errorcode: int, seconds: float) -> None:
        nitro_sim.app[server.SESSIONS].expire_all()  # in-process, so it happens before the next request

    await nitro_sim.faults(expireSessions=True)
    ns.on_request = expire_every_session
    with pytest.raises(errors.NitroSessionExpired) as raised:
        await ns.get("server")
    ns.on_request = None
    assert raised.value.errorcode == 444
    assert ns.stats.relogins == 1  # one re-login and one repeat, no more
    assert (await nitro_sim.stats())["byResource"]["server"] == 2


async def test_bulk_write_on_an_expired_session_is_sent_again_after_a_relogin(
    nitro_sim: simctl.Simulator, ns: nitro.NitroClient
) -> None:
    # A real box answers a bulk request on an expired session with HTTP 200 and errorcode 444.
    await nitro_sim.faults(expireSessions=True)

    results = await ns.add("server", servers("web-1", "web-2"))

    assert [r.ok for r in results] == [True, True]
    assert ns.stats.relogins == 1
    assert sorted(r["name"] for r in await ns.get("server")) == ["web-1", "web-2"]  # really on the box
    assert [(c["resource"], c["action"]) for c in await nitro_sim.journal()] == [("server", "add")] * 2


async def test_a_2xx_answer_with_an_errorcode_is_an_error(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    def expire_every_session(method: str, rtype: str, status: int, errorcode: int, seconds: float) -> None:
        nitro_sim.app[server.SESSIONS].expire_all()

    await nitro_sim.faults(expireSessions=True)
    ns.on_request = expire_every_session  # the session is gone again after the re-login
    with pytest.raises(errors.NitroSessionExpired) as raised:
        await ns.add("server", servers("web-1"))
    ns.on_request = None
    assert (raised.value.status, raised.value.errorcode) == (200, 444)
    assert nitro_sim.store.objects["server"] == {}


async def test_bad_credentials_fail_at_once_without_retry(
    nitro_sim: simctl.Simulator, nitro_credentials: tuple[str, str]
) -> None:
    ns = nitro.NitroClient(nitro_sim.url, username=nitro_credentials[0], password="wrong", **FAST)
    with pytest.raises(errors.NitroAuthenticationFailed) as raised:
        async with ns:
            pass
    assert raised.value.status == 401
    assert raised.value.errorcode == 354
    assert ns.state is nitro.State.CLOSED
    assert ns.stats.retries == 0
    assert (await nitro_sim.stats())["requests"] == 1


# Bulk writes and per-item results


async def test_bulk_add_reports_the_duplicate_on_its_own_item(
    nitro_sim: simctl.Simulator, ns: nitro.NitroClient
) -> None:
    assert [r.ok for r in await ns.add("server", servers("web-1"))] == [True]
    batch = [*servers("web-2"), {"name": "web-1", "ipaddress": "198.51.100.99"}, *servers("web-3")]

    results = await ns.add("server", batch)

    assert [(r.index, r.ok, r.attempted) for r in results] == [(0, True, True), (1, False, True), (2, True, True)]
    assert [r.object for r in results] == batch
    assert results[0].error is None and results[2].error is None
    failed = results[1].error
    assert isinstance(failed, errors.NitroAlreadyExists)
    assert failed.errorcode == 273
    assert sorted(r["name"] for r in await ns.get("server")) == ["web-1", "web-2", "web-3"]
    assert ns.stats.errors_by_code[273] == 1
    assert (await nitro_sim.stats())["byResource"]["server"] == 3  # one request per call, no retry


async def test_onerror_exit_stops_at_the_failing_item(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    await ns.add("server", servers("web-1"))
    batch = [*servers("a", "web-1", "c")]

    results = await ns.add("server", batch, onerror="exit")

    assert [(r.ok, r.attempted) for r in results] == [(True, True), (False, True), (False, False)]
    assert isinstance(results[1].error, errors.NitroAlreadyExists)
    assert results[2].error is None
    assert sorted(r["name"] for r in await ns.get("server")) == ["a", "web-1"]
    with pytest.raises(errors.NitroNotFound):
        await ns.get("server", "c")


async def test_onerror_continue_is_sent_by_default(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    results = await ns.add("server", [{"name": "-bad", "ipaddress": "198.51.100.1"}, *servers("ok")])
    assert [r.ok for r in results] == [False, True]
    assert isinstance(results[0].error, errors.NitroInvalidArgument)
    assert results[0].error.errorcode == 1075
    with pytest.raises(ValueError, match="onerror"):
        await ns.add("server", servers("z"), onerror="rollback")  # type: ignore[arg-type]
    assert await ns.add("server", []) == []


async def test_bulk_unbind_and_delete(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    await ns.add("server", servers("h1", "h2"))
    services = [
        {"name": f"svc-{h}", "servername": h, "servicetype": "ANY", "port": 65535, "usip": "YES"} for h in ("h1", "h2")
    ]
    assert all(r.ok for r in await ns.add("service", services))
    vserver = {"name": "vs", "servicetype": "ANY", "ipv46": "192.0.2.10", "port": 65535, "m": "MAC"}
    assert all(r.ok for r in await ns.add("lbvserver", [vserver]))
    bindings = [{"name": "vs", "servicename": s["name"]} for s in services]
    assert all(r.ok for r in await ns.bind("lbvserver_service_binding", bindings))
    assert len(await ns.get("lbvserver_service_binding", "vs")) == 2

    assert all(r.ok for r in await ns.unbind("lbvserver_service_binding", bindings[:1]))
    remaining = await ns.get("lbvserver_service_binding", "vs")
    assert [b["servicename"] for b in remaining] == ["svc-h2"]
    again = await ns.unbind("lbvserver_service_binding", bindings[:1])
    assert isinstance(again[0].error, errors.NitroNotBound)

    in_use = await ns.delete("server", [{"name": "h1"}])
    assert isinstance(in_use[0].error, errors.NitroInUse)
    results = await ns.delete("service", [{"name": "svc-h1"}, {"name": "nope"}, {"name": "svc-h2"}])
    assert [r.ok for r in results] == [True, False, True]
    assert isinstance(results[1].error, errors.NitroNotFound)
    assert all(r.ok for r in await ns.delete("server", [{"name": "h1"}, {"name": "h2"}]))
    assert await ns.get("service") == [] and await ns.get("server") == []
    assert await ns.get("lbvserver_service_binding", "vs") == []
    journal = await nitro_sim.journal()
    assert [(c["resource"], c["action"]) for c in journal][-3:] == [
        ("service", "delete"),
        ("server", "delete"),
        ("server", "delete"),
    ]


async def test_update_and_actions(ns: nitro.NitroClient) -> None:
    await ns.add("server", servers("web-1"))
    assert (await ns.update("server", [{"name": "web-1", "comment": "dsr"}]))[0].ok
    assert (await ns.action("server", "disable", [{"name": "web-1"}]))[0].ok
    [record] = await ns.get("server", "web-1")
    assert record["comment"] == "dsr"
    assert record["state"] == "DISABLED"
    assert (await ns.action("server", "rename", [{"name": "web-1", "newname": "web-one"}]))[0].ok
    assert [r["name"] for r in await ns.get("server")] == ["web-one"]


# Reading


async def test_get_with_filter_attrs_and_args(ns: nitro.NitroClient) -> None:
    await ns.add("server", servers("dsr-a", "dsr-b", "manual"))

    assert sorted(r["name"] for r in await ns.get("server", filter={"name": "/^dsr-/"})) == ["dsr-a", "dsr-b"]
    exact = await ns.get("server", filter={"ipaddress": servers("manual")[0]["ipaddress"]})
    assert [r["name"] for r in exact] == ["manual"]
    slim = await ns.get("server", attrs=["ipaddress"])
    assert all(set(r) <= {"name", "ipaddress"} and "ipaddress" in r for r in slim)
    assert [r["name"] for r in await ns.get("server", args={"name": "dsr-b"})] == ["dsr-b"]
    assert await ns.get("server", filter={"name": "none"}) == []
    with pytest.raises(errors.NitroNotFound) as raised:
        await ns.get("server", "missing")
    assert raised.value.status == 404 and raised.value.errorcode == 258


async def test_names_with_odd_characters_survive_the_path(ns: nitro.NitroClient) -> None:
    await ns.add("server", [{"name": "web 1:a@b=c#d", "ipaddress": "198.51.100.7"}])
    [record] = await ns.get("server", "web 1:a@b=c#d")
    assert record["ipaddress"] == "198.51.100.7"


async def test_modes_config_and_ha(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    await ns.enable_modes(["MBF"])
    modes = await ns.get_modes()
    assert modes["mbf"] is True
    assert len(await ns.get("nsmode")) == 1  # a singleton object comes back as a list of one
    assert await ns.config_changed() is True
    await ns.save_config()
    assert await ns.config_changed() is False
    assert await ns.ha_state() == "Primary"
    await nitro_sim.set_ha_state("Secondary")
    assert await ns.ha_state() == "Secondary"


async def test_as_int_coerces_nitro_numbers() -> None:
    assert nitro.as_int("536936451") == 536936451
    assert nitro.as_int(80) == 80
    assert nitro.as_int("1.0") == 1
    for nothing in (None, "", " "):
        with pytest.raises(ValueError):
            nitro.as_int(nothing)


# Retries: transient faults only


async def test_validation_error_599_is_not_retried(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    with pytest.raises(errors.NitroInvalidArgument) as raised:
        await ns.enable_modes(["NOT-A-MODE"])
    assert raised.value.status == 599
    assert raised.value.errorcode == 1097
    assert ns.stats.retries == 0
    assert (await nitro_sim.stats())["byResource"]["nsmode"] == 1


async def test_server_errors_are_retried_until_success(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    seen: list[int] = []

    def heal_after_two(method: str, rtype: str, status: int, errorcode: int, seconds: float) -> None:
        seen.append(status)
        if seen.count(503) == 2:
            nitro_sim.app[server.FAULTS].clear()  # in-process, so the third attempt succeeds

    await nitro_sim.faults(errorRate=1.0, errorStatus=503)
    ns.on_request = heal_after_two
    assert await ns.get("server") == []
    assert seen == [503, 503, 200]
    assert ns.stats.retries == 2
    assert ns.stats.errors_by_code == {503: 2}
    assert (await nitro_sim.stats())["byResource"]["server"] == 3


async def test_server_errors_exhaust_the_retries(nitro_sim: simctl.Simulator, connect: Any) -> None:
    async with connect(retries=2) as ns:
        await nitro_sim.faults(errorRate=1.0, errorStatus=502)
        with pytest.raises(errors.NitroServerError) as raised:
            await ns.get("server")
        await nitro_sim.clear_faults()
    assert raised.value.status == 502
    assert ns.stats.retries == 2
    assert (await nitro_sim.stats())["byResource"]["server"] == 3


async def test_dropped_connections_are_retried(nitro_sim: simctl.Simulator, ns: nitro.NitroClient) -> None:
    await nitro_sim.faults(dropConnections=2)
    assert await ns.add("server", servers("web-1")) == [nitro.ItemResult(0, servers("web-1")[0], ok=True)]
    assert ns.stats.retries == 2
    assert (await nitro_sim.stats())["byResource"]["server"] == 3


async def test_timeouts_are_retried_then_raised_as_timeout_errors(nitro_sim: simctl.Simulator, connect: Any) -> None:
    async with connect(retries=1, timeout=aiohttp.ClientTimeout(total=0.1)) as ns:
        await nitro_sim.faults(latencyMs=300)
        with pytest.raises(errors.NitroTimeoutError) as raised:
            await ns.get("server")
        await nitro_sim.clear_faults()
    assert isinstance(raised.value, asyncio.TimeoutError)
    assert isinstance(raised.value, errors.NitroTransportError)
    assert raised.value.__cause__ is not None
    assert ns.stats.retries == 1


async def test_unreachable_box_is_a_transport_error() -> None:
    ns = nitro.NitroClient("http://127.0.0.1:9", username="u", password=PASSWORD, retries=1, **FAST)
    with pytest.raises(errors.NitroTransportError) as raised:
        await ns.open()
    assert isinstance(raised.value.__cause__, aiohttp.ClientConnectionError)
    assert ns.stats.requests == 2
    assert ns.state is nitro.State.CLOSED


# Concurrency


async def test_concurrency_stays_within_the_bound(nitro_sim: simctl.Simulator, connect: Any) -> None:
    in_flight = 0
    peak = 0

    async def started(session: aiohttp.ClientSession, ctx: types.SimpleNamespace, params: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)

    async def ended(session: aiohttp.ClientSession, ctx: types.SimpleNamespace, params: Any) -> None:
        nonlocal in_flight
        in_flight -= 1

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(started)
    trace.on_request_end.append(ended)
    trace.on_request_exception.append(ended)

    def traced_session(**kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(trace_configs=[trace], **kwargs)

    async with connect(max_concurrency=4, session_factory=traced_session) as ns:
        await nitro_sim.faults(latencyMs=50)
        results = await asyncio.gather(*(ns.get("server") for _ in range(20)))
        await nitro_sim.clear_faults()
    assert results == [[]] * 20
    assert 2 <= peak <= 4


# Secrets, lifecycle, TLS


async def test_password_never_appears_in_repr_str_errors_or_logs(
    nitro_sim: simctl.Simulator, connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ns = connect(retries=1)
    assert PASSWORD not in repr(ns) and PASSWORD not in str(ns)
    assert PASSWORD not in repr(vars(ns)) and PASSWORD not in str(vars(ns))
    async with ns:
        await nitro_sim.faults(expireSessions=True, dropConnections=1)
        await ns.get("server")
        with pytest.raises(errors.NitroNotFound) as raised:
            await ns.get("server", "missing")
        assert PASSWORD not in repr(ns)
    assert PASSWORD not in str(raised.value) and PASSWORD not in repr(raised.value)
    bad = nitro.NitroClient(nitro_sim.url, username="dsr-operator", password=PASSWORD + "x", **FAST)
    with pytest.raises(errors.NitroAuthenticationFailed) as denied:
        await bad.open()
    assert PASSWORD not in str(denied.value) and PASSWORD not in repr(denied.value)
    assert "attempt 1/2" in caplog.text
    assert PASSWORD not in caplog.text


def test_errors_scrub_secrets_and_trim_bodies() -> None:
    echoed = errors.error_from_response(
        599, {"errorcode": 278, "message": f"Invalid argument [{PASSWORD}]"}, redact=[PASSWORD]
    )
    assert isinstance(echoed, errors.NitroInvalidArgument)
    assert PASSWORD not in str(echoed) and str(echoed).startswith("errorcode 278: Invalid argument [***]")
    page = errors.error_from_response(502, b"<html>" + b"x" * 1000 + b"</html>")
    assert isinstance(page, errors.NitroServerError) and len(page.message) == 256
    assert isinstance(errors.error_from_response(403, "Forbidden"), errors.NitroNotAuthorized)
    assert isinstance(errors.error_from_response(503, {"errorcode": 258}), errors.NitroServerError)
    assert isinstance(errors.error_from_response(401, '{"errorcode": "444"}'), errors.NitroSessionExpired)
    assert type(errors.error_from_response(599, {"errorcode": 9999})) is errors.NitroApiError


async def test_closed_client_refuses_use(connect: Any) -> None:
    ns = connect()
    with pytest.raises(RuntimeError, match="unopened"):
        await ns.get("server")
    async with ns:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await ns.get("server")
    with pytest.raises(RuntimeError, match="closed"):
        async with ns:
            pass
    await ns.close()  # idempotent


def test_base_url_must_not_carry_credentials() -> None:
    with pytest.raises(ValueError, match="credentials") as raised:
        nitro.NitroClient(f"https://admin:{PASSWORD}@10.0.0.5", username="admin", password=PASSWORD)
    assert PASSWORD not in str(raised.value)


@pytest.fixture
async def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    except FileNotFoundError:
        pytest.skip("openssl is missing: apt-get install openssl")
    _, stderr = await proc.communicate()
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {stderr.decode()[:200]}")
    return cert, key


@pytest.fixture
async def tls_sim(self_signed: tuple[Path, Path], nitro_credentials: tuple[str, str]) -> AsyncIterator[str]:
    """The simulator behind HTTPS with a self-signed certificate; yields its base URL."""
    cert, key = self_signed
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner = web.AppRunner(server.make_app(users=dict([nitro_credentials])), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"https://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_tls_is_verified_by_default(
    tls_sim: str, self_signed: tuple[Path, Path], nitro_credentials: tuple[str, str]
) -> None:
    user, password = nitro_credentials
    strict = nitro.NitroClient(tls_sim, username=user, password=password, **FAST)
    with pytest.raises(errors.NitroTransportError) as raised:
        await strict.open()
    assert isinstance(raised.value.__cause__, aiohttp.ClientConnectorCertificateError)
    assert strict.stats.retries == 0  # a certificate problem is not transient

    cert, _ = self_signed
    async with nitro.NitroClient(tls_sim, username=user, password=password, ca_file=str(cert)) as trusting:
        assert await trusting.get("server") == []
    async with nitro.NitroClient(tls_sim, username=user, password=password, verify_tls=False) as lax:
        assert await lax.get("server") == []
