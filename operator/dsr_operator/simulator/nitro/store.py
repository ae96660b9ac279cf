"""The simulated NetScaler: configuration objects, their validation, derived runtime state, the write journal.

Pure Python, no I/O: the HTTP layer (`simulator/server.py`) translates requests into `Store.execute` /
`Store.execute_bulk` / `Store.records` calls and `NitroError`s into NITRO error bodies. `Store` is
assembled from the package's rooms: `rules.py` (what each write does), `runtime.py` (states derived
from host marks, probes and clients), `reads.py` (GET, and the dataplane's `queries.ConfigView`),
`persistence.py` (state and HA sync documents), on `state.py` (what is held, how changes are announced).

Every successful write is appended to `journal` and passed to each callback in `listeners` (for
persistence, HA propagation and the dataplane, which re-renders on change).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from dsr_operator.simulator.nitro.errors import NitroError, invalid_argument
from dsr_operator.simulator.nitro.persistence import Persistence
from dsr_operator.simulator.nitro.reads import Reads
from dsr_operator.simulator.nitro.rules import KEEPS_ADDRESSES, ConfigRules
from dsr_operator.simulator.nitro.state import BulkOutcome, Change

ONERROR_MODES = ("exit", "continue", "rollback")
ROLLBACK_ACTIONS = frozenset({"add", "upsert", "bind"})


class Store(ConfigRules, Reads, Persistence):
    """The simulated appliance's configuration and runtime state."""

    # ------------------------------------------------------------------ control (outside NITRO)

    def reset(self) -> None:
        """Empty configuration, journal and host marks (as after `clear ns config full`)."""
        self._clear_config()
        self.hosts_down.clear()
        self.journal.clear()
        self._notify(self._change("POST", "", "reset", {}), journal=False)

    # ------------------------------------------------------------------ writes

    def execute(self, method: str, resource: str, action: str, payload: Any) -> Change:
        """Run one write; raise NitroError on failure, record and announce it on success.

        `action` "upsert" (an add with `idempotent=yes`) becomes "update" when the object exists.
        """
        if not self._in_bulk:
            self.requests += 1
        if action == "upsert":
            action = "update" if self._exists(resource, payload) else "add"
        if action not in KEEPS_ADDRESSES:
            self._addr = None  # the next address check rebuilds the index (adds and updates keep it true)
        key = self._dispatch(resource, action)(payload)
        change = self._change(method, resource, action, key)
        if action != "save":
            self.config_changed = True
            self.last_changed = change.time
        self._notify(change)
        return change

    def execute_bulk(self, method: str, resource: str, action: str, items: Iterable[Any], onerror: str) -> BulkOutcome:
        """Run a bulk write with NITRO's `X-NITRO-ONERROR` semantics (exit, continue, rollback)."""
        if onerror not in ONERROR_MODES:
            raise invalid_argument("X-NITRO-ONERROR")
        if onerror == "rollback" and action not in ROLLBACK_ACTIONS:
            raise NitroError(599, 1242, "Rollback not supported for this operation")
        self._dispatch(resource, action)  # an unknown type or action fails the whole request
        self.requests += 1
        self._in_bulk = True
        try:
            return self._execute_items(method, resource, action, items, onerror)
        finally:
            self._in_bulk = False

    def _execute_items(self, method: str, resource: str, action: str, items: Iterable[Any], onerror: str
                       ) -> BulkOutcome:
        snapshot = self._snapshot() if onerror == "rollback" else None
        results: list[NitroError | None] = []
        for item in items:
            try:
                self.execute(method, resource, action, item)
            except NitroError as exc:
                results.append(exc)
                if onerror == "exit":
                    break
                if snapshot is not None:
                    self._restore(snapshot)
                    self._notify(self._change(method, resource, "rollback", {}), journal=False)
                    return BulkOutcome(results, rolled_back=True)
            else:
                results.append(None)
        return BulkOutcome(results)

    def _snapshot(self) -> tuple[Any, ...]:
        return (
            copy.deepcopy(self.objects),
            set(self.modes),
            self.config_changed,
            self.last_changed,
            self.last_saved,
            len(self.journal),
        )

    def _restore(self, snap: tuple[Any, ...]) -> None:
        self.objects, self.modes, self.config_changed, self.last_changed, self.last_saved, n = snap
        self._addr = None
        del self.journal[n:]
