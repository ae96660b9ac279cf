"""Wall-clock time, one way: timezone-aware UTC moments and the RFC 3339 form the Kubernetes API takes.

A `Clock` is anything called with no arguments that returns the current moment (aware, UTC); code
that stamps statuses takes one, so tests can pass their own. `SYSTEM` is the real one.

Durations, deadlines and timeouts use the monotonic clock (`time.monotonic`), never this one.
"""

from __future__ import annotations

import datetime
from typing import Protocol

RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
"""Whole seconds, UTC, as Kubernetes writes metav1.Time (conditions' lastTransitionTime, for one)."""


class Clock(Protocol):
    def __call__(self) -> datetime.datetime:
        """The current moment, timezone-aware, in UTC."""
        ...


def utcnow() -> datetime.datetime:
    """The current moment, timezone-aware, in UTC."""
    return datetime.datetime.now(datetime.UTC)


SYSTEM: Clock = utcnow


def rfc3339(moment: datetime.datetime) -> str:
    """`moment` as RFC 3339 in UTC, whole seconds (`2026-01-02T03:04:05Z`); a naive moment is taken as UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.strftime(RFC3339)
