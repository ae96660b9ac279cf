"""The batcher's debounce: events wait for a burst to settle, a key that comes back at its time does not."""

from __future__ import annotations

import asyncio

from dsr_operator.controller import loop

HOUR = 3600.0


async def test_a_key_due_at_its_time_is_handed_out_without_the_debounce() -> None:
    batcher = loop.Batcher(debounce=HOUR)  # were the debounce applied, this batch would take an hour
    batcher.later(("shop", "web"), 0)  # say, the end of a drain
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "web")}


async def test_events_wait_for_the_debounce_and_join_the_batch() -> None:
    batcher = loop.Batcher(debounce=0.2)
    batcher.mark(("shop", "web"))
    task = asyncio.create_task(batcher.next_batch())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # still settling
    batcher.mark(("shop", "api"))  # arrives during the debounce: same batch
    batcher.later(("shop", "db"), 0)
    assert await task == {("shop", "web"), ("shop", "api"), ("shop", "db")}


async def test_an_event_during_a_due_keys_wait_is_debounced_with_it() -> None:
    batcher = loop.Batcher(debounce=0.2)
    batcher.later(("shop", "web"), HOUR)
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    batcher.mark(("shop", "api"))
    assert await task == {("shop", "api")}  # the one due in an hour is not due yet
