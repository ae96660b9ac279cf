"""The DsrService finalizer, kept by the operator itself.

Kopf has no deletion handler of ours, so it writes nothing to a DsrService: its own finalizer and its
`status.kopf` bookkeeping were two writes for every new DsrService and one for every spec change, each
coming back as a watch event. Here:

- a DsrService gets the finalizer before NetScaler or a node holds anything for it: a batch first adds
  it to those of its DsrServices that lack it, all together, and leaves out any it could not add it to;
- once it is being deleted, `cleanup` (the reconciler's `finalize`: drain, remove its NetScaler objects,
  release its node VIPs) runs until it succeeds, at the delays it asks for, and then the finalizer goes.

Every write is a merge patch conditional on the resourceVersion it was computed from, so another
controller's finalizer is never lost; a conflict reads the object again and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import kopf
import lightkube
from lightkube.types import PatchType

from dsr_operator import kube
from dsr_operator.api import models

log = logging.getLogger(__name__)
Key = tuple[str, str]
FINALIZER = models.FINALIZER
#: Finalizer writes in flight at once (a burst of new DsrServices queues behind them).
WRITERS = 16
#: Attempts of one finalizer write that meets a conflict before waiting for the next event.
ATTEMPTS = 5
#: Longest wait between two attempts of a cleanup that fails with an unexpected error (seconds).
MAX_RETRY_SECONDS = 30.0

Cleanup = Callable[[Key, Mapping[str, Any]], Awaitable[None]]
Written = Literal["done", "gone", "failed"]


def holds(body: Mapping[str, Any]) -> bool:
    """Whether the DsrService carries our finalizer."""
    return FINALIZER in ((body.get("metadata") or {}).get("finalizers") or ())


class Finalizers:
    def __init__(self, client: lightkube.AsyncClient, cleanup: Cleanup) -> None:
        self.client = client
        self.cleanup = cleanup
        self._writers = asyncio.Semaphore(WRITERS)
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._later: dict[Key, Mapping[str, Any]] = {}
        """The latest event of a DsrService whose task was still running: looked at when it ends."""

    def seen(self, key: Key, body: Mapping[str, Any]) -> None:
        """A DsrService event: once it is being deleted and holds the finalizer, clean up and release it.
        (The finalizer is added by the batch that first takes a DsrService: `add`.)"""
        meta = body.get("metadata") or {}
        deleting = bool(meta.get("deletionTimestamp"))
        running = self._tasks.get(key)
        if running is not None and not running.done():
            self._later[key] = body
            return
        if deleting and holds(body):
            self._start(key, self._finish(key, body))

    def gone(self, key: Key) -> None:
        """The DsrService no longer exists (its last event)."""
        self._later.pop(key, None)

    def _start(self, key: Key, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            finally:
                if self._tasks.get(key) is task:
                    del self._tasks[key]
                    later = self._later.pop(key, None)
                    if later is not None:
                        self.seen(key, later)

        task = asyncio.create_task(run(), name=f"finalizer {key[0]}/{key[1]}")
        self._tasks[key] = task

    async def add(self, entries: Mapping[Key, Mapping[str, Any]]) -> set[Key]:
        """Give each of these DsrServices (key -> its metadata) the finalizer; the keys that now hold it."""

        async def one(key: Key, meta: Mapping[str, Any]) -> Key | None:
            done = await self._write(key, {"metadata": meta}, lambda finalizers: [*finalizers, FINALIZER]
                                     if FINALIZER not in finalizers else None)
            return key if done == "done" else None

        added = await asyncio.gather(*(one(key, meta) for key, meta in entries.items()))
        return {key for key in added if key is not None}

    async def _finish(self, key: Key, body: Mapping[str, Any]) -> None:
        delay = 1.0
        while True:
            try:
                await self.cleanup(key, body)
                break
            except kopf.TemporaryError as exc:  # a drain still running, NetScaler refusing: as it asks
                await asyncio.sleep(exc.delay if exc.delay is not None else delay)
            except Exception:
                log.exception("Cleaning up DsrService %s/%s failed; retrying in %.0f s", *key, delay)
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_SECONDS, delay * 2)
        delay = 1.0
        while await self._write(key, body, lambda finalizers: [f for f in finalizers if f != FINALIZER]
                                if FINALIZER in finalizers else None) == "failed":
            await asyncio.sleep(delay)
            delay = min(MAX_RETRY_SECONDS, delay * 2)
            body = {}  # read it again

    async def _write(self, key: Key, body: Mapping[str, Any],
                     change: Callable[[list[str]], list[str] | None]) -> Written:
        """Set the finalizers to `change(current)` (None: already as wanted), conditional on the
        resourceVersion. `body` without metadata: read the object first."""
        namespace, name = key
        meta: Mapping[str, Any] | None = body.get("metadata")
        for _ in range(ATTEMPTS):
            if meta is None:
                try:
                    fresh = await self.client.get(kube.DsrService, name, namespace=namespace)
                except lightkube.ApiError as exc:
                    if exc.status.code == 404:
                        return "gone"
                    log.warning("DsrService %s/%s not read again: %s", namespace, name, exc)
                    return "failed"
                except Exception as exc:
                    log.warning("DsrService %s/%s not read again: %s", namespace, name, exc)
                    return "failed"
                current = fresh.metadata
                meta = {"finalizers": current.finalizers if current else None,
                        "resourceVersion": current.resourceVersion if current else None}
            wanted = change(list(meta.get("finalizers") or ()))
            if wanted is None:
                return "done"
            patch = {"metadata": {"finalizers": wanted, "resourceVersion": meta.get("resourceVersion")}}
            try:
                async with self._writers:
                    await self.client.patch(kube.DsrService, name, patch, namespace=namespace,
                                            patch_type=PatchType.MERGE)
                return "done"
            except lightkube.ApiError as exc:
                if exc.status.code == 404:
                    return "gone"
                if exc.status.code != 409:  # e.g. no new finalizer on an object being deleted
                    log.warning("Finalizer of DsrService %s/%s not written: %s", namespace, name, exc)
                    return "failed"
            except Exception as exc:  # the API server unreachable
                log.warning("Finalizer of DsrService %s/%s not written: %s", namespace, name, exc)
                return "failed"
            meta = None  # a conflict: read it again
        log.warning("Finalizer of DsrService %s/%s: %d conflicting writes; trying again later", namespace,
                    name, ATTEMPTS)
        return "failed"

    async def close(self) -> None:
        self._later.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
