"""A stop is never lost: a wait that is cancelled in the same loop step as its work arrives still stops.

Python 3.11's `asyncio.wait_for` returned the work instead and dropped the cancellation, so the
operator's work loop (or the simulator's render loop) went on after being told to stop, and a
shutdown that waited for it hung (seen as a 300 s teardown in the registry DSR test under load).
"""

from __future__ import annotations

import asyncio

import pytest

from dsr_operator import aio
from dsr_operator.controller import loop


async def test_a_stop_that_arrives_with_the_event_still_stops() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(aio.wait(event, 3600))
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_event_or_the_time_says_which_came_first() -> None:
    event = asyncio.Event()
    assert await aio.wait(event, 0.01) is False
    event.set()
    assert await aio.wait(event, 0.01) is True
    assert await aio.wait(event, None) is True


async def test_the_operator_work_loop_stops_when_work_and_the_stop_arrive_together() -> None:
    batcher = loop.Batcher(debounce=0)
    batcher.later(("shop", "retry-later"), 3600)  # something due: the wait has a timeout
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    batcher.mark(("shop", "web"))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
