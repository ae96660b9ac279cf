"""A fix for kopf's start with many objects, applied before kopf runs.

Kopf holds back every object's handlers until all of its indices are filled. For that, every object it
lists gets a toggle in one set (`aiotoggles.ToggleSet`), and every worker that has indexed its object
waits on that set's condition for "all indexed". Adding a toggle and dropping one each wake every
waiter (`notify_all`), and each checks the set again: with n objects listed, about n² wake-ups. At
10,000 DsrServices kopf 1.45 had not finished its first listing after 9 minutes.

A waiter waits for the set's overall state (`is_on()`) to become what it wants, and adding or dropping
one toggle changes the set's members, not the toggles' states. So waking the waiters is needed only
when that operation changes the overall state: these replacements notify only then, and behave as
kopf's own otherwise. They replace the methods only if kopf's `ToggleSet` is the one they were written
for (same methods, same condition attribute); otherwise kopf is left as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from kopf._cogs.aiokits import aiotoggles

log = logging.getLogger(__name__)
_FIXED = "_dsr_notifies_on_change"


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
    toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        if self.is_on() != before:
            self._condition.notify_all()
    return toggle


async def _drop_toggle(self: Any, toggle: aiotoggles.Toggle) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        if self.is_on() != before:
            self._condition.notify_all()


async def _drop_toggles(self: Any, toggles: Iterable[aiotoggles.Toggle]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        if self.is_on() != before:
            self._condition.notify_all()


def install() -> bool:
    """Apply the fix once; whether kopf's toggle sets now notify only on a change of state."""
    cls = aiotoggles.ToggleSet
    if getattr(cls, _FIXED, False):
        return True
    probe = cls(all)
    expected = all(hasattr(cls, m) for m in ("make_toggle", "drop_toggle", "drop_toggles", "is_on")) and \
        hasattr(probe, "_condition") and isinstance(getattr(probe, "_toggles", None), set)
    if not expected:
        log.warning("kopf's ToggleSet is not the one this fix knows: left as it is (a slow start with many objects)")
        return False
    cls.make_toggle = _make_toggle  # type: ignore[method-assign]
    cls.drop_toggle = _drop_toggle  # type: ignore[method-assign]
    cls.drop_toggles = _drop_toggles  # type: ignore[method-assign]
    setattr(cls, _FIXED, True)
    return True
