"""Reading our state and carrying out plans against the simulator, as real boxes answer them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from dsr_lab import simctl
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import executor
from dsr_operator.simulator import server

OP_ID = "test"
MARK = ns.marker(OP_ID, "uid-web")


async def test_bindings_are_read_in_bulk_and_filtered_on_our_side(nitro_sim: simctl.Simulator) -> None:
    async with nitro.NitroClient(nitro_sim.url, username="nsroot", password="nsroot") as ns_client:
        await ns_client.add("server", [{"name": "dsr-h1", "ipaddress": "10.0.0.1", "comment": MARK},
                                       {"name": "manual", "ipaddress": "10.0.0.2"}])
        await ns_client.add("service", [
            {"name": "dsr-s1", "servername": "dsr-h1", "servicetype": "ANY", "port": 80, "comment": MARK},
            {"name": "manual-s", "servername": "manual", "servicetype": "ANY", "port": 80},
        ])
        await ns_client.add("lbvserver", [
            {"name": "dsr-vs", "servicetype": "ANY", "ipv46": "192.0.2.10", "port": 80, "comment": MARK},
            {"name": "manual-vs", "servicetype": "ANY", "ipv46": "192.0.2.11", "port": 80},
        ])
        await ns_client.bind(ns.VSERVER_BINDING, [{"name": "dsr-vs", "servicename": "dsr-s1"},
                                                  {"name": "manual-vs", "servicename": "manual-s"}])

        actual = await executor.read_actual(ns_client, OP_ID)

    assert actual.bindings == frozenset({ns.Binding(ns.VSERVER_BINDING, "dsr-vs", "dsr-s1", "uid-web")})


Middleware = Callable[..., Awaitable[web.StreamResponse]]


def whole_request_error(path: str, action: str, status: int, errorcode: int) -> Middleware:
    """A middleware answering every bulk request to `path?action=...` with one error, as a box may."""

    @web.middleware
    async def answer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if request.path.endswith(path) and request.query.get("action") == action:
            body = {"errorcode": errorcode, "message": "refused as a whole", "severity": "ERROR"}
            return web.json_response(body, status=status)
        return await handler(request)

    return answer


@contextlib.asynccontextmanager
async def box(middleware: Middleware) -> AsyncIterator[str]:
    app = server.make_app()
    app.middlewares.insert(0, middleware)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def unbind_plan() -> tuple[nsops.Stage, ...]:
    ops = tuple(nsops.Op.binding("unbind", ns.Binding(ns.VSERVER_BINDING, "dsr-vs", f"dsr-s{i}", "uid-web"))
                for i in (1, 2))
    return (nsops.Stage("unbind", ns.VSERVER_BINDING, ops),)


async def test_a_whole_request_error_meaning_already_done_counts_as_done() -> None:
    async with box(whole_request_error(ns.VSERVER_BINDING, "unbind", 599, 1303)) as url, \
            nitro.NitroClient(url, username="nsroot", password="nsroot") as client:
        outcome = await executor.execute(client, unbind_plan())
    assert [(op.name, op.child) for op in outcome.applied] == [("dsr-vs", "dsr-s1"), ("dsr-vs", "dsr-s2")]
    assert outcome.failures == ()


async def test_a_whole_request_error_of_another_kind_fails_every_operation() -> None:
    async with box(whole_request_error(ns.VSERVER_BINDING, "unbind", 599, 278)) as url, \
            nitro.NitroClient(url, username="nsroot", password="nsroot") as client:
        outcome = await executor.execute(client, unbind_plan())
    assert outcome.applied == ()
    assert [f.error.errorcode for f in outcome.failures] == [278, 278]  # type: ignore[attr-defined]
