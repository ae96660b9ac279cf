"""The operator's view of one NetScaler: a cached actual state, one writer at a time, saves debounced.

Reconciles read the cached state instead of the box, and update it from the operations that
succeeded (`planner.effects`), so an endpoint change costs only the writes it needs. The cache is
re-read on resync, after any failure, and when drains may have finished. Writes go only to the HA
primary; the configuration is saved once writes have been quiet for a while, and the save is
retried with backoff until NetScaler reports no unsaved change (`configchanged` false). Unsaved
changes found at the first connection (an operator stopped within the debounce) are saved too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from dsr_operator import settings as settings_mod
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors, executor
from dsr_operator.netscaler import models as ns
from dsr_operator.planner import effects
from dsr_operator.planner import plan as planner

log = logging.getLogger(__name__)

#: Longest wait between two attempts to save the configuration (seconds).
SAVE_RETRY_MAX_SECONDS = 60.0


class NotPrimary(errors.NitroError):
    """The NetScaler we talk to is not the HA primary: writes there would be lost."""


class NetScalerView:
    def __init__(
        self,
        nitro_settings: settings_mod.NitroSettings,
        operator_id: str,
        *,
        save_debounce: float = 5.0,
        on_request: nitro.RequestHook | None = None,
        client_factory: Callable[[], nitro.NitroClient] | None = None,
    ) -> None:
        self.operator_id = operator_id
        self.lock = asyncio.Lock()
        self._settings = nitro_settings
        self._save_debounce = save_debounce
        self._on_request = on_request
        self._factory = client_factory or (lambda: executor.connect(nitro_settings, on_request=on_request))
        self._client: nitro.NitroClient | None = None
        self._actual: ns.NetScalerState | None = None
        self._save_task: asyncio.Task[None] | None = None
        self._connected_once = False
        self.requests_total = 0

    async def _open(self) -> nitro.NitroClient:
        if self._client is None:
            client = self._factory()
            await client.open()
            try:
                state = await client.ha_state()
                if state not in ("Primary", "UNKNOWN"):
                    raise NotPrimary(f"NetScaler at {self._settings.url} is {state}, not the HA primary")
                unsaved = not self._connected_once and await client.config_changed()
            except BaseException:
                await client.close()
                raise
            self._client = client
            self._connected_once = True
            if unsaved and (self._save_task is None or self._save_task.done()):
                log.info("NetScaler has unsaved configuration changes; saving them")
                self._schedule_save()
        return self._client

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._actual = None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def invalidate(self) -> None:
        self._actual = None

    async def actual(self) -> ns.NetScalerState:
        """The cached state; read from the box when missing (first use, invalidated, after failures)."""
        if self._actual is None:
            try:
                client = await self._open()
                self._actual = await executor.read_actual(client, self.operator_id)
            except errors.NitroError:
                await self._drop_client()
                raise
        return self._actual

    async def execute(self, plan: planner.Plan) -> executor.Outcome:
        """Carry out a plan and keep the cache true; on transport trouble the cache is dropped."""
        if plan.empty:
            return executor.Outcome((), ())
        try:
            client = await self._open()
            outcome = await executor.execute(client, plan)
        except errors.NitroError:
            await self._drop_client()
            raise
        if self._actual is not None:
            self._actual = effects.after(self._actual, outcome.applied, self.operator_id)
        if outcome.failures:
            self.invalidate()  # what failed may differ from what we think: read again next time
        if outcome.applied:
            self._schedule_save()
        return outcome

    def _schedule_save(self) -> None:
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
                    await client.save_config()
                    if not await client.config_changed():
                        log.info("Saved NetScaler configuration")
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
