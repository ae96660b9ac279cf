"""The operator's view of one NetScaler: a cached actual state, one writer at a time, saves debounced.

Reconciles read the cached state instead of the box, and update it from the operations that
succeeded (`planner.effects`), so an endpoint change costs only the writes it needs. The cache is
re-read on resync and after any failure. Writes go only to the HA primary (`netscaler.ha`: given
an HA pair's two NSIPs, it finds the primary and asks it again before every write stage; after a
failover the rest of a change is planned against the new primary and sent there); the
configuration is saved once writes have been quiet for a while, and the save is retried with
backoff until NetScaler reports no unsaved change (`configchanged` false). Unsaved changes found at
the first connection (an operator stopped within the debounce) are saved too.

Drains: when a graceful disable is sent, the view records when it ends on the box at the latest
(the time the change was answered plus its delay: the box started it on the way). A real box ends
it earlier, as soon as the service has no clients left, so while it runs the view asks the box about
the service every `drain_poll` seconds (its `svrstate`, and `curclntconnections` from `/stat/service`
for the status), then at the deadline, then often until it is OUT OF SERVICE: the unbind follows the
end of a drain by one reconcile, not by a resync, whether the drain ran its full time or ended early.
A member of a servicegroup drains the same way (asked about through its group's member bindings and
`/stat/servicegroupmember`). A member just bound has no known state until the next resync
reads it (asking about every new member would cost a request each): a shared service of an earlier
version gives way to it only once it is read UP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from dsr_operator import settings as settings_mod
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors, executor, ha
from dsr_operator.planner import effects
from dsr_operator.planner import plan as planner

log = logging.getLogger(__name__)

#: How often a service past its drain's deadline is asked again while the box still says GOING OUT OF SERVICE.
DRAIN_POLL_SECONDS = 0.05
#: Longest wait between two attempts to save the configuration (seconds).
SAVE_RETRY_MAX_SECONDS = 60.0
#: How often a draining service is asked about before its deadline (the box may end the drain early).
DEFAULT_DRAIN_CHECK_SECONDS = 1.0


NotPrimary = ha.NotPrimary

#: Failovers followed within one change before giving up (the pair keeps flapping).
MAX_FAILOVERS = 3


class NetScalerView:
    def __init__(
        self,
        nitro_settings: settings_mod.NitroSettings,
        operator_id: str,
        *,
        save_debounce: float = 5.0,
        on_request: nitro.RequestHook | None = None,
        on_drain_lag: Callable[[float], None] | None = None,
        on_unsaved: Callable[[bool], None] | None = None,
        client_factory: Callable[[str], nitro.NitroClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
        drain_check: float = DEFAULT_DRAIN_CHECK_SECONDS,
        on_primary: Callable[[str | None], None] | None = None,
    ) -> None:
        self.operator_id = operator_id
        self.lock = asyncio.Lock()
        self._settings = nitro_settings
        self._save_debounce = save_debounce
        self._on_request = on_request
        factory = client_factory or (lambda url: executor.connect(nitro_settings, url, on_request=on_request))
        self._nodes = ha.Nodes(nitro_settings.endpoints(), factory, on_primary=on_primary)
        self._actual: ns.NetScalerState | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._on_drain_lag = on_drain_lag
        self._on_unsaved = on_unsaved or (lambda unsaved: None)
        self._connected_once = False
        self.clock = clock
        self._drain_due: dict[str, float] = {}
        """Services being drained → when to ask the box about them next (its drain's end, then polls)."""
        self._drain_end: dict[str, float] = {}
        """Services being drained → when their drain ends by our clock at the latest (deadline), or when
        we saw it ended early (for the drain-to-unbind lag)."""
        self._drain_clients: dict[str, int | None] = {}
        """Services being drained → their current client connections, as `/stat/service` last said."""
        self._drain_check = drain_check
        self.requests_total = 0

    @property
    def primary_url(self) -> str | None:
        """The NetScaler written to (an HA pair's primary), None until known."""
        return self._nodes.primary_url

    @property
    def failovers(self) -> int:
        return self._nodes.failovers

    async def _open(self) -> nitro.NitroClient:
        """The client of the NetScaler to write to (the HA primary), connecting when needed.

        At the first connection, unsaved changes on the box (an operator stopped within the save
        debounce) get a save scheduled.
        """
        client = await self._nodes.primary()
        if not self._connected_once:
            unsaved = await client.config_changed()
            self._connected_once = True
            if unsaved and (self._save_task is None or self._save_task.done()):
                log.info("NetScaler has unsaved configuration changes; saving them")
                self._schedule_save()
        return client

    async def _drop_client(self) -> None:
        self._actual = None
        await self._nodes.reset()

    def invalidate(self) -> None:
        self._actual = None

    async def actual(self) -> ns.NetScalerState:
        """The cached state; read from the box when missing (first use, invalidated, after failures).

        Services whose drain is due are read again first, so a finished drain is seen at once.
        """
        try:
            if self._actual is not None:
                await self._refresh_due_drains()
            if self._actual is None:  # first use, invalidated, or invalidated while drains were asked about
                client = await self._open()
                self._actual = await executor.read_actual(client, self.operator_id)
                self._track_unknown_drains(self._actual)
        except errors.NitroError:
            await self._drop_client()
            raise
        return self._actual

    def drain_wait(self, services: Iterable[str]) -> float | None:
        """Seconds until one of `services` should be asked about its drain again (None: none drains)."""
        due = [self._drain_due[s] for s in services if s in self._drain_due]
        return max(0.0, min(due) - self.clock()) if due else None

    def drain_recheck(self, services: Iterable[str]) -> float:
        """Seconds until a DsrService held by the drain of one of `services` should be reconciled again.

        When none of them drains any more, its drain ended while the batch read the box after its
        writes (the plan still held it): at once, not after a drain check.
        """
        wait = self.drain_wait(services)
        return DRAIN_POLL_SECONDS if wait is None else wait

    def drain_report(self, services: Iterable[str]) -> list[dict[str, object]]:
        """Each of `services` that drains: its state on the box and its current client connections."""
        state = self._actual or ns.NetScalerState()
        out: list[dict[str, object]] = []
        for name in sorted(set(services)):
            current = _state_of(state, name)
            if current != ns.GOING_OUT_OF_SERVICE:
                continue
            entry: dict[str, object] = {"service": name, "state": current}
            clients = self._drain_clients.get(name)
            if clients is not None:
                entry["clientConnections"] = clients
            out.append(entry)
        return out

    def _track_unknown_drains(self, state: ns.NetScalerState) -> None:
        now = self.clock()
        targets = [(obj.name, obj.state) for obj in state.of_kind("service")]
        targets += [(b.member_id, b.state) for b in state.bindings if b.kind == ns.MEMBER_BINDING]
        for name, current in targets:
            if current == ns.GOING_OUT_OF_SERVICE:
                self._drain_due.setdefault(name, now + self._drain_check)
            else:
                self._drain_due.pop(name, None)
                self._drain_clients.pop(name, None)

    async def _refresh_due_drains(self) -> None:
        assert self._actual is not None
        now = self.clock()
        due = sorted(name for name, when in self._drain_due.items() if when <= now)
        if not due:
            return
        client = await self._open()
        rows = await asyncio.gather(*(self._service_state(client, name) for name in due))
        state = self._actual
        if state is None:  # invalidated meanwhile (a failed write elsewhere): the caller reads it all again
            return
        objects = dict(state.objects)
        bindings = {b: b for b in state.bindings}
        for name, (svrstate, clients) in zip(due, rows, strict=True):
            member = _member(state, name)
            old = objects.get(("service", name))
            if (old is None and member is None) or svrstate is None:  # gone from the box: nothing left to drain
                self._forget_drain(name)
                continue
            if member is not None:
                bindings[member] = dataclasses.replace(member, state=svrstate)
            elif old is not None:
                objects[("service", name)] = dataclasses.replace(old, state=svrstate)
            self._drain_clients[name] = clients
            end = self._drain_end.get(name)
            if svrstate == ns.GOING_OUT_OF_SERVICE:
                if end is not None and now < end:
                    self._drain_due[name] = min(end, now + self._drain_check)
                else:
                    self._drain_due[name] = now + (DRAIN_POLL_SECONDS if end is not None else self._drain_check)
            else:
                self._drain_due.pop(name, None)
                self._drain_clients.pop(name, None)
                if end is not None and now < end:
                    self._drain_end[name] = now  # ended early: its last client left
        self._actual = ns.NetScalerState.build(objects.values(), bindings.values(), mbf=state.mbf,
                                               foreign=state.foreign)

    @staticmethod
    async def _service_state(client: nitro.NitroClient, name: str) -> tuple[str | None, int | None]:
        """(svrstate, current client connections) of one service or member; (None, None) when it is gone."""
        member: dict[str, str] | None = None
        if "/" in name:  # a member: `group/server:port` (service names never contain `/`)
            group, _, rest = name.partition("/")
            server, _, port = rest.rpartition(":")
            member = {"servicegroupname": group, "servername": server, "port": port}

        async def state() -> list[dict[str, Any]]:
            if member is None:
                return await client.get("service", name, attrs=("name", "svrstate"))
            rows = await client.get(ns.MEMBER_BINDING, member["servicegroupname"])
            return [r for r in rows if str(r.get("servername")) == member["servername"]
                    and str(r.get("port")) == member["port"]]

        async def clients() -> int | None:
            try:
                if member is not None:
                    rows = await client.stat("servicegroupmember", args=member)
                else:
                    rows = await client.stat("service", name)
                return nitro.as_int(rows[0].get("curclntconnections")) if rows else None
            except (errors.NitroApiError, ValueError):
                return None  # statistics are for the status only: never fail a drain on them

        rows, connections = await asyncio.gather(
            state(), clients(), return_exceptions=True
        )
        for result in (rows, connections):
            if isinstance(result, errors.NitroNotFound):
                return None, None
            if isinstance(result, BaseException):
                raise result
        assert isinstance(rows, list) and not isinstance(connections, BaseException)
        return (str(rows[0].get("svrstate")) if rows else None), connections

    def _forget_drain(self, name: str) -> None:
        self._drain_due.pop(name, None)
        self._drain_end.pop(name, None)
        self._drain_clients.pop(name, None)

    def _note_drains(self, sent: float, answered: float, applied: Iterable[nsops.Op]) -> None:
        """Keep the drain book true to the operations applied between `sent` and `answered`."""
        for op in applied:
            target = _target(op)
            if op.kind in ("service", "servicegroup") and op.verb == "disable" and target:
                end = answered + float(op.body.get("delay") or 0)
                self._drain_due[target] = min(end, sent + self._drain_check)
                self._drain_end[target] = end
            elif op.kind in ("service", "servicegroup") and op.verb in ("enable", "delete") and target:
                self._forget_drain(target)
            elif op.kind in (ns.VSERVER_BINDING, ns.MEMBER_BINDING) and op.verb == "unbind":
                if target in self._drain_end:
                    end = self._drain_end.pop(target)
                    self._drain_due.pop(target, None)
                    if self._on_drain_lag is not None:
                        self._on_drain_lag(max(0.0, self.clock() - end))

    async def execute(self, plan: planner.Plan) -> executor.Outcome:
        """Carry out a plan and keep the cache true; on transport trouble the cache is dropped.

        If the HA primary changes on the way, what is left is not sent (NotPrimary): see `apply`.
        """
        outcome = await self._execute(plan)
        if not outcome.complete:
            raise NotPrimary(f"NetScaler failed over during a change; {len(outcome.applied)} operations were applied")
        return outcome

    async def apply(
        self, make_plan: Callable[[ns.NetScalerState], planner.Plan], actual: ns.NetScalerState | None = None
    ) -> tuple[planner.Plan, executor.Outcome]:
        """Plan against the state (`actual`, else the cache) and carry the plan out, following failovers.

        Before each write stage the primary is asked whether it still is; if not, the rest of the
        change is planned again against what the new primary holds (the old primary synchronised
        what it applied) and sent there: nothing applied twice, nothing lost. Returns the last plan
        and everything applied or refused on the way.
        """
        state = actual if actual is not None else await self.actual()
        plan = make_plan(state)
        applied: list[nsops.Op] = []
        failures: list[executor.Failure] = []
        for _ in range(MAX_FAILOVERS + 1):
            outcome = await self._execute(plan)
            applied.extend(outcome.applied)
            failures.extend(outcome.failures)
            if outcome.complete:
                return plan, executor.Outcome(tuple(applied), tuple(failures))
            log.info("Planning the rest of the change against the new HA primary")
            plan = make_plan(await self.actual())
        raise NotPrimary(f"NetScaler failed over more than {MAX_FAILOVERS} times during one change")

    async def _execute(self, plan: planner.Plan) -> executor.Outcome:
        if plan.empty:
            return executor.Outcome((), ())
        sent = self.clock()
        try:
            client = await self._open()
            outcome = await executor.execute(client, plan.stages, before_stage=self._nodes.still_primary)
        except errors.NitroError:
            await self._drop_client()
            raise
        self._note_drains(sent, self.clock(), outcome.applied)
        if self._actual is not None:
            self._actual = effects.after(self._actual, outcome.applied, self.operator_id)
        if outcome.failures or not outcome.complete:
            self.invalidate()  # what failed may differ from what we think; a new primary: read it
        if outcome.applied:
            self._schedule_save()
        return outcome

    def _schedule_save(self) -> None:
        self._on_unsaved(True)
        if self._save_task is not None and not self._save_task.done():
            self._save_task.cancel()
        self._save_task = asyncio.create_task(self._save_later(), name="netscaler-save")

    async def _save_later(self) -> None:
        """Save once writes are quiet; retry with backoff until NetScaler says nothing is unsaved."""
        await asyncio.sleep(self._save_debounce)
        delay = max(self._save_debounce, 0.1)
        while True:
            async with self.lock:
                try:
                    client = await self._open()
                    if not await self._nodes.still_primary():
                        raise NotPrimary("the NetScaler is no longer the HA primary: not saving there")
                    await client.save_config()
                    if not await client.config_changed():
                        log.info("Saved NetScaler configuration")
                        self._on_unsaved(False)
                        return
                    log.info("NetScaler configuration changed again during the save; saving again in %.1f s", delay)
                except errors.NitroError as exc:
                    log.warning("Saving NetScaler configuration failed, retrying in %.1f s: %s", delay, exc)
                    await self._drop_client()
            await asyncio.sleep(delay)
            delay = min(delay * 2, SAVE_RETRY_MAX_SECONDS)

    async def close(self) -> None:
        if self._save_task is not None and not self._save_task.done():
            self._save_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._save_task
        await self._drop_client()


def _target(op: nsops.Op) -> str:
    """What an operation drains: a service's name, or a member's `group/server:port`."""
    if op.kind in (ns.MEMBER_BINDING, "servicegroup") and op.child:
        return ns.member_key(op.name, op.child, int(str(op.body.get("port") or 0)))
    if op.kind == ns.VSERVER_BINDING:
        return str(op.body.get("servicename"))
    return op.name if op.kind == "service" else ""


def _member(state: ns.NetScalerState, key: str) -> ns.Binding | None:
    """The member binding a `group/server:port` key names, if the state has it."""
    group = key.partition("/")[0]
    return next((b for b in state.bindings_of(group) if b.kind == ns.MEMBER_BINDING and b.member_id == key), None)


def _state_of(state: ns.NetScalerState, target: str) -> str | None:
    """The state of a service or of a member (`group/server:port`)."""
    if "/" in target:
        member = _member(state, target)
        return member.state if member is not None else None
    obj = state.get("service", target)
    return obj.state if obj is not None else None
