"""Waiting for a state, the one way of every tier: `eventually` (async) and `eventually_sync`.

A check returns the state once it holds: anything truthy, which the wait returns. Until then it
returns something falsy, or raises AssertionError saying what is missing. Any other exception ends
the wait at once (a process that died, a bug in the check). The wait gives up only after a try that
began at or past the deadline, so a machine that stalled during a try does not fail a state that
holds by then.

On timeout the wait raises AssertionError (or the sync twin's `error`) naming what it waited for
(`what`, else the check's name or source line), for how long, and the last falsy value or
AssertionError (chained, so pytest shows that assertion's explanation as well).

Timeouts are limits for a loaded two-core machine, not expectations: a state that comes in one
second on a quiet machine may take twenty under load. Assert on the state, not on how fast it came.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

TIMEOUT = 30.0
"""The default limit, in seconds, for a state to come about."""

_SHOWN = 600  # characters of the last value or failure in a timeout's message


@overload
async def eventually(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    what: str | None = ...,
    interval: float = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    what: str | None = ...,
    interval: float = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float = TIMEOUT,  # noqa: ASYNC109  (a limit for polling, not for one awaited call)
    what: str | None = None,
    interval: float = 0.05,
) -> Any:
    """Await `check()` (a coroutine function, or a plain function) until it returns something truthy;
    return that. See the module's docstring for failures and timeouts."""
    deadline = time.monotonic() + timeout
    tries = _Tries()
    while True:
        final = time.monotonic() >= deadline  # a try begun past the deadline is the last one
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
        except AssertionError as failure:
            tries.failed(failure)
        else:
            if result:
                return result
            tries.missed(result)
        if final:
            raise tries.timed_out(check, what, timeout, AssertionError) from tries.failure
        await asyncio.sleep(interval)


def eventually_sync(
    check: Callable[[], T],
    *,
    timeout: float = TIMEOUT,
    what: str | None = None,
    interval: float = 0.25,
    tick: Callable[[], None] | None = None,
    error: type[Exception] = AssertionError,
) -> T:
    """`eventually` for blocking code: call `check()` until it returns something truthy; return that.

    `tick` runs between tries (it may raise, e.g. for a process that died, which ends the wait);
    `error` is what a timeout raises (the rigs' own error types, which their callers handle)."""
    deadline = time.monotonic() + timeout
    tries = _Tries()
    while True:
        final = time.monotonic() >= deadline  # a try begun past the deadline is the last one
        try:
            result = check()
        except AssertionError as failure:
            tries.failed(failure)
        else:
            if result:
                return result
            tries.missed(result)
        if final:
            raise tries.timed_out(check, what, timeout, error) from tries.failure
        if tick is not None:
            tick()
        time.sleep(interval)


class _Tries:
    """What the tries of one wait saw last: a falsy value or an AssertionError."""

    def __init__(self) -> None:
        self.count = 0
        self.value: Any = None
        self.failure: AssertionError | None = None

    def missed(self, value: Any) -> None:
        self.count += 1
        self.value, self.failure = value, None

    def failed(self, failure: AssertionError) -> None:
        self.count += 1
        self.value, self.failure = None, failure

    def timed_out(
        self, check: Callable[[], Any], what: str | None, timeout: float, error: type[Exception]
    ) -> Exception:
        if self.failure is not None:
            last = f"last failure: {_short(str(self.failure) or type(self.failure).__name__)}"
        else:
            last = f"last value: {_short(repr(self.value))}"
        tries = "1 try" if self.count == 1 else f"{self.count} tries"
        return error(f"timed out after {timeout:g}s ({tries}) waiting for {what or _describe(check)}; {last}")


def _describe(check: Callable[[], Any]) -> str:
    """A check without `what`: its name, or for a lambda the line that holds it."""
    name = getattr(check, "__name__", "")
    if name and name != "<lambda>":
        return f"{name}()"
    try:
        source = " ".join(line.strip() for line in inspect.getsource(check).splitlines())
    except (OSError, TypeError):
        return repr(check)
    return _short(source)


def _short(text: str) -> str:
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."
