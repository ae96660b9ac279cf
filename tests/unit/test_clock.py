"""`dsr_operator.clock`: the current moment and its RFC 3339 form."""

from __future__ import annotations

import datetime

import pytest

from dsr_operator import clock


@pytest.mark.parametrize(("moment", "text"), [
    (datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC), "2026-01-02T03:04:05Z"),
    (datetime.datetime(2026, 1, 2, 3, 4, 5, 999999, tzinfo=datetime.UTC), "2026-01-02T03:04:05Z"),  # whole seconds
    (datetime.datetime(2026, 1, 2, 4, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
     "2026-01-02T03:04:05Z"),                                                                          # to UTC
    (datetime.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05Z"),                                 # naive: UTC
])
def test_rfc3339(moment: datetime.datetime, text: str) -> None:
    assert clock.rfc3339(moment) == text


def test_the_system_clock_is_aware_utc() -> None:
    before = datetime.datetime.now(datetime.UTC)
    now = clock.SYSTEM()
    assert now.tzinfo is not None and now.utcoffset() == datetime.timedelta(0)
    assert before <= now <= clock.utcnow()
