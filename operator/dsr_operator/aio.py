"""Waiting with a timeout that never loses a cancellation.

Python 3.11's `asyncio.wait_for` returns the awaited result when a cancellation arrives in the same
loop step in which that result is ready, and the cancellation is gone: a loop that waits for "work
or a timeout" then goes on forever and a shutdown that cancels it hangs. `asyncio.timeout` (3.11)
counts its own cancellations apart from others, so the waits here are built on it
(and elsewhere `async with asyncio.timeout(...)` takes the place of `wait_for`).
"""

from __future__ import annotations

import asyncio


async def wait(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until `event` is set (True) or `seconds` pass (False); None waits without end."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True

