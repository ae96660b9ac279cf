"""Registry prefixes followed live: one read, then a watch from the next revision (no polling).

`Registry.want(prefixes)` keeps one follower per prefix some DsrService uses. A follower reads every
key under its prefix at one revision, then watches from the revision after it. When the watch breaks
(etcd restarted, the network went away) it watches again from the last revision it saw; when that
revision was compacted, it reads everything again. While it cannot reach etcd the last good records
stay and `view(prefix).error` says since when: a broken watch never empties a DsrService.

Each change calls `on_change(prefix)`; the operator marks the DsrServices that read that prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from dsr_operator.registry import etcd, records

log = logging.getLogger(__name__)

#: Longest wait between two attempts to reach etcd again (seconds).
RETRY_MAX_SECONDS = 30.0


@dataclasses.dataclass
class _Follower:
    prefix: str
    task: asyncio.Task[None] | None = None
    records: dict[str, records.Record] = dataclasses.field(default_factory=dict)
    revision: int = 0
    synced: bool = False
    error: str | None = None
    since: float | None = None
    reads: int = 0
    """Full reads so far (the first, then one after each compaction)."""


class Registry:
    def __init__(self, client: etcd.EtcdClient, on_change: Callable[[str], None], *,
                 clock: Callable[[], float] = time.monotonic, retry_max: float = RETRY_MAX_SECONDS) -> None:
        self.client = client
        self._on_change = on_change
        self._clock = clock
        self._retry_max = retry_max
        self._followers: dict[str, _Follower] = {}

    def want(self, prefixes: Iterable[str]) -> None:
        """Follow exactly these prefixes: start the new ones, stop those no one reads any more."""
        wanted = set(prefixes)
        for prefix in sorted(wanted - self._followers.keys()):
            follower = _Follower(prefix)
            follower.task = asyncio.create_task(self._follow(follower), name=f"registry {prefix}")
            self._followers[prefix] = follower
        for prefix in sorted(self._followers.keys() - wanted):
            task = self._followers.pop(prefix).task
            if task is not None:
                task.cancel()

    def add(self, prefixes: Iterable[str]) -> None:
        """Follow these prefixes too (the ones followed already stay)."""
        self.want(set(self._followers) | set(prefixes))

    def view(self, prefix: str) -> records.PrefixView | None:
        """The prefix's records; None until the first read succeeded."""
        follower = self._followers.get(prefix)
        if follower is None or not follower.synced:
            return None
        return records.PrefixView(prefix, follower.records, follower.revision, follower.error, follower.since)

    def views(self) -> dict[str, records.PrefixView]:
        """Every prefix read so far (a snapshot: later changes make new views)."""
        return {prefix: view for prefix in self._followers if (view := self.view(prefix)) is not None}

    def waits(self) -> dict[str, str]:
        """Prefixes not read yet → why (etcd's error, or that the first read is under way)."""
        return {prefix: f.error or "the first read is under way"
                for prefix, f in self._followers.items() if not f.synced}

    def error(self, prefix: str) -> str | None:
        """Why the prefix is not read yet (or since when it is stale), if etcd failed."""
        follower = self._followers.get(prefix)
        return follower.error if follower is not None else None

    def reads(self, prefix: str) -> int:
        follower = self._followers.get(prefix)
        return follower.reads if follower is not None else 0

    async def close(self) -> None:
        tasks = [f.task for f in self._followers.values() if f.task is not None]
        self._followers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.close()

    async def _read(self, follower: _Follower) -> None:
        revision, kvs = await self.client.range_prefix(follower.prefix)
        follower.records = {kv.key: records.parse(kv.key, kv.value) for kv in kvs}
        follower.revision = revision
        follower.synced = True
        follower.reads += 1
        log.info("Registry %s: %d key(s) at revision %d", follower.prefix, len(kvs), revision)

    async def _follow(self, follower: _Follower) -> None:
        delay = 0.5
        need_read = True
        while True:
            try:
                if need_read:
                    await self._read(follower)
                    need_read = False
                    self._healthy(follower)
                async for events in self.client.watch(follower.prefix, follower.revision + 1):
                    if events:  # a new dict each time: views handed out before stay as they were
                        changed = dict(follower.records)
                        for event in events:
                            if event.value is None:
                                changed.pop(event.key, None)
                            else:
                                changed[event.key] = records.parse(event.key, event.value)
                            follower.revision = max(follower.revision, event.revision)
                        follower.records = changed
                    if events or follower.error is not None:
                        self._healthy(follower)
                    delay = 0.5
                # The stream ended (etcd restarted, a proxy timed out): watch again from the last revision;
                # an error only if that fails.
                await asyncio.sleep(0.1)
                continue
            except asyncio.CancelledError:
                raise
            except etcd.Compacted as exc:
                log.info("Registry %s: %s; reading it again", follower.prefix, exc)
                need_read = True
                continue
            except (etcd.EtcdError, OSError, ValueError) as exc:
                first = follower.error is None
                follower.error = str(exc)
                follower.since = follower.since or self._clock()
                if first:
                    log.warning("Registry %s: %s; keeping the last good records, retrying", follower.prefix, exc)
                    self._on_change(follower.prefix)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    def _healthy(self, follower: _Follower) -> None:
        if follower.error is not None:
            log.info("Registry %s: reachable again", follower.prefix)
        follower.error = None
        follower.since = None
        self._on_change(follower.prefix)
