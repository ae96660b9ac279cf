"""Which DsrServices to reconcile next: a dirty set, per-key retry times, a short debounce (no I/O but sleep).

Events mark keys dirty; outcomes schedule a key again (a drain's end, a hold, a backoff after a
failure). `next_batch()` waits until something is due, lets a burst of events settle for the debounce
(only events: a key that comes back at its time, say at a drain's end, goes at once), then hands
out the due and dirty keys at once, at most `limit` of them (or a quarter of a longer backlog): one
batch, one plan. The rest go in the next batch, without a debounce: the keys due first, then the dirty
ones in the order they became dirty, so that a key marked again and again never pushes out one that
waits.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable

from dsr_operator import aio

Key = tuple[str, str]

#: A backlog goes in at most this many batches, whatever the limit: each batch reads every DsrService
#: once (who claims which VIP and address), so more, smaller batches would cost the square of the backlog.
MAX_PASSES = 4

#: Longest back-off after repeated failures of one DsrService (seconds).
MAX_BACKOFF_SECONDS = 60.0


class Batcher:
    def __init__(self, debounce: float, clock: Callable[[], float] = time.monotonic, *,
                 limit: int | None = None) -> None:
        self.debounce = debounce
        self.clock = clock
        self.limit = limit
        """Most keys per batch (None: all) unless a quarter of the waiting keys is more: a batch's plan,
        bodies and replies are in memory at once."""
        self._dirty: dict[Key, None] = {}  # insertion-ordered: the oldest first
        self._backlog = False
        self._size: int | None = None
        self._due: dict[Key, float] = {}
        self._failures: dict[Key, int] = {}
        self._event = asyncio.Event()
        self.busy = False
        """A batch is being reconciled (set by the loop around each batch)."""

    def mark(self, *keys: Key) -> None:
        if keys:
            self._dirty.update(dict.fromkeys(keys))
            self._event.set()

    def mark_all(self, keys: Iterable[Key]) -> None:
        self.mark(*keys)

    def later(self, key: Key, seconds: float) -> None:
        """Reconcile `key` again in `seconds` (the earliest of several requests wins)."""
        when = self.clock() + max(0.0, seconds)
        if when < self._due.get(key, float("inf")):
            self._due[key] = when
            self._event.set()

    def failed(self, key: Key) -> float:
        """Back off exponentially after a failure of `key`: 1, 2, 4 … 60 s. Returns the delay."""
        count = self._failures.get(key, 0)
        self._failures[key] = count + 1
        delay = min(MAX_BACKOFF_SECONDS, 2.0**count)
        self.later(key, delay)
        return delay

    def succeeded(self, key: Key) -> None:
        self._failures.pop(key, None)

    def forget(self, key: Key) -> None:
        self._dirty.pop(key, None)
        self._due.pop(key, None)
        self._failures.pop(key, None)

    def settled(self, horizon: float) -> bool:
        """Nothing in hand: no batch running, nothing dirty, nothing due within `horizon` seconds."""
        now = self.clock()
        return not self.busy and not self._dirty and not any(when <= now + horizon for when in self._due.values())

    def ready(self) -> bool:
        """Something is dirty or due now (the next batch would not wait)."""
        now = self.clock()
        return bool(self._dirty) or any(when <= now for when in self._due.values())

    async def next_batch(self) -> set[Key]:
        while not self.ready():
            self._backlog = False  # whatever was left was forgotten: what comes next is a new backlog
            self._event.clear()
            timeout = max(0.0, min(self._due.values()) - self.clock()) if self._due else None
            await aio.wait(self._event, timeout)
        if self.debounce and self._dirty and not self._backlog:
            await asyncio.sleep(self.debounce)
        now = self.clock()
        due = sorted((when, key) for key, when in self._due.items() if when <= now)
        order = dict.fromkeys(key for _, key in due)
        order.update(self._dirty)
        if not self._backlog:  # a new backlog: its batches' size, kept until it is done
            self._size = None if self.limit is None else max(self.limit, -(-len(order) // MAX_PASSES))
        batch = set(itertools.islice(order, self._size))
        self._backlog = len(order) > len(batch)
        for key in batch:
            self._dirty.pop(key, None)
            self._due.pop(key, None)
        return batch
