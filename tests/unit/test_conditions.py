"""The kstatus rules of `dsr_operator.api.conditions`, one table each."""

from __future__ import annotations

from typing import Any

import pytest

from dsr_operator.api import conditions

T0 = "2026-01-01T00:00:00Z"
NOW = "2026-01-02T00:00:00Z"


@pytest.mark.parametrize(("previous", "status", "expected"), [
    (None, "True", NOW),                                                      # never set
    ({}, "False", NOW),
    ({"status": "True", "lastTransitionTime": T0}, "True", T0),               # unchanged: kept
    ({"status": "False", "lastTransitionTime": T0}, "False", T0),
    ({"status": "True", "lastTransitionTime": T0}, "False", NOW),             # flipped: moves
    ({"status": "Unknown", "lastTransitionTime": T0}, "True", NOW),
    ({"status": "True"}, "True", NOW),                                        # unchanged, never stamped
    ({"status": "True", "lastTransitionTime": ""}, "True", NOW),
    ({"status": "True", "lastTransitionTime": None}, "True", NOW),
])
def test_transition_time(previous: dict[str, Any] | None, status: str, expected: str) -> None:
    assert conditions.transition_time(previous, status, NOW) == expected


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "observedGeneration": None}),
    ({"generation": 3}, {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "observedGeneration": 3}),
    ({"with_generation": False}, {"type": "Ready", "status": "True", "reason": "Ok", "message": ""}),
    ({"generation": 2, "now": NOW},
     {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "observedGeneration": 2,
      "lastTransitionTime": NOW}),
    ({"with_generation": False, "now": NOW, "previous": {"status": "True", "lastTransitionTime": T0}},
     {"type": "Ready", "status": "True", "reason": "Ok", "message": "", "lastTransitionTime": T0}),
])
def test_condition(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert conditions.condition("Ready", "True", "Ok", **kwargs) == expected


def _table(result: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(c["type"], c["status"], c["reason"], c["message"]) for c in result]


@pytest.mark.parametrize(("ready", "reconciling", "stalled", "expected"), [
    (True, False, False, [("Ready", "True", "Why", "text"), ("Reconciling", "False", "Idle", ""),
                          ("Stalled", "False", "Progressing", "")]),
    (False, True, False, [("Ready", "False", "Why", "text"), ("Reconciling", "True", "Why", "text"),
                          ("Stalled", "False", "Progressing", "")]),
    # serving through some backends while the rest come in: Ready and still InProgress
    (True, True, False, [("Ready", "True", "Why", "text"), ("Reconciling", "True", "Why", "text"),
                         ("Stalled", "False", "Progressing", "")]),
    (False, False, True, [("Ready", "False", "Why", "text"), ("Reconciling", "False", "Idle", ""),
                          ("Stalled", "True", "Why", "text")]),
    # Stalled wins: never Ready True with Stalled True
    (True, False, True, [("Ready", "False", "Why", "text"), ("Reconciling", "False", "Idle", ""),
                         ("Stalled", "True", "Why", "text")]),
    (False, False, False, [("Ready", "False", "Why", "text"), ("Reconciling", "False", "Idle", ""),
                           ("Stalled", "False", "Progressing", "")]),
])
def test_kstatus_table(ready: bool, reconciling: bool, stalled: bool,
                       expected: list[tuple[str, str, str, str]]) -> None:
    result = conditions.kstatus(ready=ready, reason="Why", message="text", reconciling=reconciling,
                                stalled=stalled, generation=7, now=NOW)
    assert _table(result) == expected
    assert all(c["observedGeneration"] == 7 and c["lastTransitionTime"] == NOW for c in result)
    by_type = {c["type"]: c["status"] for c in result}
    assert not (by_type["Ready"] == "True" and by_type["Stalled"] == "True")


@pytest.mark.parametrize(("before", "ready", "stalled", "expected"), [
    # nothing flipped: every time kept, even though reasons and messages change
    ({"Ready": "True", "Reconciling": "False", "Stalled": "False"}, True, False,
     {"Ready": T0, "Reconciling": T0, "Stalled": T0}),
    # Ready flips to False and Stalled to True; Reconciling stays False
    ({"Ready": "True", "Reconciling": "False", "Stalled": "False"}, False, True,
     {"Ready": NOW, "Reconciling": T0, "Stalled": NOW}),
    # a condition that was not there before
    ({"Ready": "False"}, False, False, {"Ready": T0, "Reconciling": NOW, "Stalled": NOW}),
])
def test_kstatus_keeps_transition_times(before: dict[str, str], ready: bool, stalled: bool,
                                        expected: dict[str, str]) -> None:
    previous = [{"type": t, "status": s, "reason": "Old", "message": "old", "lastTransitionTime": T0}
                for t, s in before.items()]
    result = conditions.kstatus(ready=ready, reason="New", message="new", stalled=stalled, generation=1,
                                now=NOW, previous=previous)
    assert {c["type"]: c["lastTransitionTime"] for c in result} == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (None, {}),
    ("junk", {}),
    ({"type": "Ready"}, {}),
    ([{"type": "Ready", "status": "True"}, "junk", {"type": "Degraded", "status": "False"}],
     {"Ready": {"type": "Ready", "status": "True"}, "Degraded": {"type": "Degraded", "status": "False"}}),
])
def test_by_type(raw: object, expected: dict[str, Any]) -> None:
    assert conditions.by_type(raw) == expected
