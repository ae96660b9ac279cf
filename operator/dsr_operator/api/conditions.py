"""Status conditions, kstatus style: the one place that builds them, for the operator and the agent.

The rules (https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md):

- `Ready` says whether the object does its job; `Reconciling` and `Stalled` are "abnormal-true":
  present and False when all is well, True while the controller works on it (Reconciling) or
  cannot make progress without a change from someone (Stalled);
- Stalled True never goes with Ready True. Ready True with Reconciling True is allowed: a DsrService
  that serves through some of its backends while the others come in is Ready and still InProgress;
- `lastTransitionTime` moves only when a condition's status flips: kept while the status stays the
  same, whatever happens to its reason and message;
- `observedGeneration` (when given) is the metadata.generation the condition was computed for.

Pure: no I/O, no clock (the caller passes `now`, an RFC 3339 string).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

IDLE = "Idle"
"""The reason of a Reconciling condition that is False."""
PROGRESSING = "Progressing"
"""The reason of a Stalled condition that is False."""


def by_type(conditions: object) -> dict[str, Mapping[str, Any]]:
    """Earlier conditions by type (anything that is not a list of mappings counts as none)."""
    if not isinstance(conditions, list | tuple):
        return {}
    return {str(c.get("type")): c for c in conditions if isinstance(c, Mapping)}


def transition_time(previous: Mapping[str, Any] | None, status: str, now: str) -> str:
    """A condition's lastTransitionTime: the earlier one while its status stays `status`, else `now`."""
    before = previous or {}
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    return str(since) if since else now


def condition(
    type_: str,
    status: str,
    reason: str,
    message: str = "",
    *,
    generation: int | None = None,
    with_generation: bool = True,
    now: str | None = None,
    previous: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One condition as the API takes it. `observedGeneration` unless `with_generation` is False;
    `lastTransitionTime` when `now` is given (kept from `previous` while the status stays the same)."""
    out: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message}
    if with_generation:
        out["observedGeneration"] = generation
    if now is not None:
        out["lastTransitionTime"] = transition_time(previous, status, now)
    return out


def kstatus(
    *,
    ready: bool,
    reason: str,
    message: str,
    reconciling: bool = False,
    stalled: bool = False,
    generation: int | None,
    now: str,
    previous: Iterable[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled for one outcome: `reason` and `message` go on Ready and on
    whichever of Reconciling or Stalled is True (the others say Idle / Progressing)."""
    ready = ready and not stalled  # Stalled wins: a Stalled object is not Ready
    before = by_type(list(previous))
    values = (
        (READY, "True" if ready else "False", reason, message),
        (RECONCILING, "True", reason, message) if reconciling else (RECONCILING, "False", IDLE, ""),
        (STALLED, "True", reason, message) if stalled else (STALLED, "False", PROGRESSING, ""),
    )
    return [condition(ctype, status, why, text, generation=generation, now=now, previous=before.get(ctype))
            for ctype, status, why, text in values]
