"""A NITRO simulator under test, and its control calls.

`nitro-sim` (the product's `dsr_operator.simulator`) serves NITRO plus `/_sim/` endpoints that the
tests, the benchmarks and the demos drive: faults, request statistics, the journal of applied writes,
host reachability, HA roles and failover, client counts, reset, the dataplane's view. This module is
their client: `running()` and `running_pair()` start simulators in this process (as the server's own
functions do) and yield handles that also carry these calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any, TypeAlias

import aiohttp
from aiohttp import web

from dsr_operator.simulator import server


@dataclasses.dataclass
class Simulator(server.Simulator):
    """A running simulator (its base URL, its app in this process) with its `/_sim/` control calls."""

    http: aiohttp.ClientSession

    async def _call(self, method: str, path: str, doc: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=doc) as response:
            payload = await response.json()
            if response.status != 200:
                raise RuntimeError(f"{method} {path} failed: {payload}")
            return payload

    async def faults(self, **settings: Any) -> dict[str, Any]:
        """Merge fault settings, e.g. `await sim.faults(latencyMs=5, errorRate=0.1)`."""
        result: dict[str, Any] = await self._call("POST", "/_sim/faults", settings)
        return result

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/_sim/faults")

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/_sim/stats")
        return result

    async def reset_stats(self) -> None:
        await self._call("POST", "/_sim/stats/reset")

    async def journal(self, since: int = 0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("GET", f"/_sim/journal?since={since}")
        return result

    async def set_hosts(self, states: Mapping[str, str]) -> None:
        """Mark hosts reachable or not: `await sim.set_hosts({"10.0.0.1": "DOWN"})`."""
        await self._call("POST", "/_sim/hosts", dict(states))

    async def set_ha_state(self, state: str) -> None:
        await self._call("POST", "/_sim/ha", {"state": state})

    async def ha(self) -> dict[str, Any]:
        """This node's HA state, peer and role transitions (`transitions[i].seq`: journal at that moment)."""
        result: dict[str, Any] = await self._call("GET", "/_sim/ha")
        return result

    async def failover(self, after_writes: int | None = None) -> dict[str, Any]:
        """Swap the pair's roles now, or right after this node applied `after_writes` more write requests."""
        result: dict[str, Any] = await self._call(
            "POST", "/_sim/failover", {} if after_writes is None else {"afterWrites": after_writes}
        )
        return result

    async def set_clients(self, counts: Mapping[str, int]) -> None:
        """Current client connections per service or member (`<group>/<server>:<port>`):
        `await sim.set_clients({"svc1": 3})` (0 ends a drain)."""
        await self._call("POST", "/_sim/clients", dict(counts))

    async def reset(self) -> None:
        await self._call("POST", "/_sim/reset")

    async def dataplane(self) -> dict[str, Any]:
        """The dataplane's view and counters (only when started with one)."""
        result: dict[str, Any] = await self._call("GET", "/_sim/dataplane")
        return result


Pair: TypeAlias = server.Pair[Simulator]
"""An HA pair of simulators with their control calls."""


@contextlib.asynccontextmanager
async def _control() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per control call: a pooled keep-alive connection can outlive what a test tore
    # down around it (a stopped operator sharing the loop) and then never be answered.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        yield http


def _with(sim: server.Simulator, http: aiohttp.ClientSession) -> Simulator:
    return Simulator(url=sim.url, app=sim.app, http=http)


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, **make_app_kwargs: Any) -> AsyncIterator[Simulator]:
    """`server.running`, yielding a handle with the control calls."""
    async with server.running(host, port, **make_app_kwargs) as sim, _control() as http:
        yield _with(sim, http)


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Simulator]:
    """`server.serving` (an app made by `server.make_app`), yielding a handle with the control calls."""
    async with server.serving(app, host, port) as sim, _control() as http:
        yield _with(sim, http)


@contextlib.asynccontextmanager
async def running_pair(hosts: tuple[str, str] = ("127.0.0.1", "127.0.0.2"), **make_app_kwargs: Any
                       ) -> AsyncIterator[Pair]:
    """`server.running_pair`: an HA pair in this process, with the control calls."""
    async with server.running_pair(hosts, **make_app_kwargs) as pair, _control() as http:
        yield server.Pair(_with(pair.a, http), _with(pair.b, http))
