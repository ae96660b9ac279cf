"""kopf's wait for its indices, with many objects listed (see `controller.kopf_fixes`)."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from dsr_operator.controller import kopf_fixes


async def _start_like_kopf(objects: int) -> tuple[int, bool]:
    """As kopf lists `objects` objects: a toggle each, a worker each that drops its toggle once indexed
    and waits for all; returns how often the waiters looked at the set, and whether all got through."""
    indexed = aiotoggles.ToggleSet(all)
    looks = [0]
    plain_is_on = indexed.is_on

    def counted() -> bool:
        looks[0] += 1
        return plain_is_on()

    indexed.is_on = counted  # type: ignore[method-assign]

    async def worker(toggle: aiotoggles.Toggle) -> None:
        await asyncio.sleep(0)
        await indexed.drop_toggle(toggle)
        await indexed.wait_for(True)

    workers = []
    for i in range(objects):  # the watcher: an object listed, its toggle, its worker, the next object
        workers.append(asyncio.create_task(worker(await indexed.make_toggle(name=str(i)))))
        await asyncio.sleep(0)
    done, _ = await asyncio.wait(workers, timeout=120)
    return looks[0], len(done) == objects


async def test_with_the_fix_the_waiters_look_at_the_set_a_few_times_per_object_not_once_per_pair() -> None:
    assert kopf_fixes.install()
    assert kopf_fixes.install()  # once is enough; again changes nothing
    looks, through = await _start_like_kopf(2000)
    assert through, "a worker never got past the wait for the indices"
    assert looks < 10 * 2000, looks  # kopf's own notifies every waiter at every toggle: about 2 million


async def test_a_set_that_turns_on_wakes_its_waiters_and_one_that_turns_off_too() -> None:
    kopf_fixes.install()
    paused = aiotoggles.ToggleSet(any)
    waiting_on = asyncio.create_task(paused.wait_for(True))
    await asyncio.sleep(0)
    toggle = await paused.make_toggle(True)  # off -> on: the waiter goes
    await asyncio.wait_for(waiting_on, timeout=10)
    waiting_off = asyncio.create_task(paused.wait_for(False))
    await asyncio.sleep(0)
    await paused.drop_toggle(toggle)  # on -> off
    await asyncio.wait_for(waiting_off, timeout=10)
