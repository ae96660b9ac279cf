"""The tests' one way of waiting for a state (tests/support/waiting.py)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.support.waiting import eventually, eventually_sync


async def test_returns_the_first_truthy_result_of_a_coroutine_or_a_plain_check() -> None:
    counter = itertools.count()

    async def third() -> int | None:
        n = next(counter)
        return n if n >= 2 else None

    assert await eventually(third, interval=0) == 2
    values = iter([0, "", [], {"ready": True}])
    assert await eventually(lambda: next(values), interval=0) == {"ready": True}


async def test_an_assertion_error_means_not_yet() -> None:
    tries = itertools.count()

    def check() -> str:
        assert next(tries) >= 3, "not yet"
        return "done"

    assert await eventually(check, interval=0) == "done"


async def test_a_timeout_names_what_and_the_last_failure_chained() -> None:
    def check() -> bool:
        assert 1 + 1 == 3, "the VIP is not on lo"
        return True

    with pytest.raises(AssertionError) as caught:
        await eventually(check, timeout=0.05, interval=0.01, what="VIPs on lo")
    message = str(caught.value)
    assert "timed out after 0.05s" in message and "waiting for VIPs on lo" in message
    assert "last failure: the VIP is not on lo" in message
    assert isinstance(caught.value.__cause__, AssertionError)


async def test_a_timeout_without_what_shows_the_check_and_its_last_value() -> None:
    with pytest.raises(AssertionError, match=r"waiting for .*lambda: \{\}.*; last value: \{\}"):
        await eventually(lambda: {}, timeout=0, interval=0)

    async def nodeconfig_of_n1() -> None:
        return None

    with pytest.raises(AssertionError, match=r"\(1 try\) waiting for nodeconfig_of_n1\(\); last value: None"):
        await eventually(nodeconfig_of_n1, timeout=0)


async def test_any_other_exception_ends_the_wait_at_once() -> None:
    calls = 0

    async def broken() -> bool:
        nonlocal calls
        calls += 1
        raise KeyError("status")

    with pytest.raises(KeyError):
        await eventually(broken, timeout=30)
    assert calls == 1


async def test_checks_once_more_after_the_deadline() -> None:
    """A check slower than the whole timeout still gets its try: a stalled machine fails nothing that holds."""
    state = {"ready": False}

    async def slow() -> bool:
        ready = state["ready"]
        await asyncio.sleep(0.05)
        state["ready"] = True
        return ready

    assert await eventually(slow, timeout=0.01, interval=0) is True


def test_the_sync_twin_ticks_between_tries_and_raises_the_given_error() -> None:
    class RigError(RuntimeError):
        pass

    ticks = []
    with pytest.raises(RigError, match="waiting for the simulator to answer; last value: False"):
        eventually_sync(lambda: False, timeout=0.05, interval=0.01, what="the simulator to answer",
                        tick=lambda: ticks.append(1), error=RigError)
    assert ticks
    values = iter([None, None, 7])
    assert eventually_sync(lambda: next(values), interval=0) == 7


def test_the_sync_twin_stops_when_tick_raises() -> None:
    def died() -> None:
        raise ProcessLookupError("nitro-sim exited with code 1")

    with pytest.raises(ProcessLookupError):
        eventually_sync(lambda: False, timeout=30, tick=died)
