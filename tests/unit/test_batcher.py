"""The batcher's debounce: events wait for a burst to settle, a key that comes back at its time does not."""

from __future__ import annotations

import asyncio
import contextlib

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


async def test_a_batch_takes_at_most_its_limit_and_the_rest_follow_at_once_oldest_first() -> None:
    batcher = loop.Batcher(debounce=0.01, limit=2)
    batcher.mark(("shop", "a"), ("shop", "b"), ("shop", "c"), ("shop", "d"))
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "a"), ("shop", "b")}
    batcher.debounce = HOUR  # were the backlog debounced, the next batch would take an hour
    batcher.mark(("shop", "a"), ("shop", "d"))  # marked again: d keeps its place, a goes after the others
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "c"), ("shop", "d")}
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "a")}


async def test_keys_due_go_before_dirty_ones_when_a_batch_is_full() -> None:
    batcher = loop.Batcher(debounce=0, limit=1)
    batcher.mark(("shop", "web"))
    batcher.later(("shop", "db"), 0)  # a drain's end: it waited already
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "db")}
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "web")}


async def test_a_long_backlog_goes_in_at_most_four_batches_whatever_the_limit() -> None:
    batcher = loop.Batcher(debounce=0, limit=1)
    batcher.mark(*((("shop", f"s{i}")) for i in range(10)))
    sizes = [len(await asyncio.wait_for(batcher.next_batch(), 30)) for _ in range(4)]
    assert sizes == [3, 3, 3, 1]  # a quarter of the backlog (rounded up), never fewer than the limit
    assert not batcher.ready()
    batcher.mark(("shop", "s0"))  # a new backlog of one: the limit again
    batcher.mark(("shop", "s1"))
    assert len(await asyncio.wait_for(batcher.next_batch(), 30)) == 1


async def test_a_backlog_whose_keys_were_forgotten_leaves_the_next_burst_its_debounce() -> None:
    batcher = loop.Batcher(debounce=0, limit=1)
    batcher.mark(("shop", "a"), ("shop", "b"))
    assert await asyncio.wait_for(batcher.next_batch(), 30) == {("shop", "a")}
    batcher.forget(("shop", "b"))  # deleted meanwhile: the backlog is gone
    batcher.debounce = HOUR
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    batcher.mark(("shop", "c"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()  # settling, as any new burst does
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
