"""What the simulated appliance holds: configuration objects, runtime inputs, the journal and its listeners.

`StoreState` is the base the rooms of the store build on (`rules.py`, `runtime.py`, `reads.py`,
`persistence.py`): its attributes, the record of a write (`Change`) and how it is announced, and the
lookups every room needs. No validation and no rules here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from dsr_operator.simulator import schema
from dsr_operator.simulator.nitro.errors import NitroError, not_found

logger = logging.getLogger(__name__)

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Change:
    """One successful write, as recorded in the journal and passed to listeners."""

    seq: int
    time: float
    method: str
    resource: str
    action: str
    name: str
    key: Mapping[str, str]
    ha_state: str = "Primary"
    """What `hanode/0` reported when the write ran: a write while Secondary is one a real pair would lose."""
    request: int = 0
    """The write request it came with (the items of one bulk request share it)."""

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "resource": self.resource,
            "action": self.action,
            "name": self.name,
            "key": dict(self.key),
            "haState": self.ha_state,
            "request": self.request,
        }


Listener = Callable[[Change], None]


@dataclasses.dataclass
class BulkOutcome:
    """Per-item results of a bulk request (None = success) and whether earlier items were undone."""

    results: list[NitroError | None]
    rolled_back: bool = False

    @property
    def ok(self) -> bool:
        return all(r is None for r in self.results)


@dataclasses.dataclass
class Addresses:
    """Index of the addresses NetScaler keeps unique, so that a bulk add costs O(items), not O(items x box)."""

    servers: dict[str, str]
    services: dict[tuple[str, Any, str], str]
    vservers: dict[tuple[str, Any, str], str]


class StoreState:
    """The simulated appliance's configuration and runtime inputs, and how changes are announced."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.listeners: list[Listener] = []
        self.journal: list[Change] = []
        self._seq = 0
        self.hosts_down: set[str] = set()
        #: (service, monitor) → verdict of the last real probe, when a dataplane probes for real;
        #: None (the default) means monitors are simulated and only `hosts_down` decides health.
        self.probe_results: dict[tuple[str, str], bool] | None = None
        self.ha_state = "Primary"
        #: Write requests so far (a bulk request is one); each journal entry names the one it came with.
        self.requests = 0
        self._in_bulk = False
        #: The HA peer as `hanode` lists it ({"id": "1", "ipaddress": ...}), None when stand-alone.
        self.ha_peer: dict[str, str] | None = None
        #: This node's NSIP, as `hanode/0` and `nsconfig` show it.
        self.nsip = "127.0.0.1"
        #: Current client connections per service: set through `/_sim/clients`, or the dataplane's
        #: live flows. A graceful disable ends as soon as its service has none left.
        self.clients: dict[str, int] = {}
        #: Whether `clients` are live counts (a dataplane's flows), and when they were last counted:
        #: a graceful disable then waits for a count taken after it before it calls 0 clients "none left".
        self.clients_live = False
        self.clients_counted: float | None = None
        self.objects: dict[str, dict[tuple[str, ...], Record]] = {}
        self.modes: set[str] = set()
        self.config_changed = False
        self.last_changed: float | None = None
        self.last_saved: float | None = None
        #: While a read runs (`reading`): records of a type by the first part of their key, built once.
        self._read_index: dict[str, dict[str, list[Record]]] | None = None
        self._clear_config()

    def _clear_config(self) -> None:
        self.objects = {name: {} for name in schema.RESOURCES}
        self._addr: Addresses | None = None
        self.modes = set(schema.NSMODE_DEFAULTS)
        self.config_changed = False
        self.last_changed = None
        self.last_saved = None

    # -- announcing

    def _change(self, method: str, resource: str, action: str, key: Mapping[str, str]) -> Change:
        self._seq += 1
        name = next(iter(key.values()), "")
        return Change(self._seq, self.clock(), method, resource, action, name, dict(key), self.ha_state, self.requests)

    def _notify(self, change: Change, *, journal: bool = True) -> None:
        if journal:
            self.journal.append(change)
        for listener in list(self.listeners):
            try:
                listener(change)
            except Exception:
                logger.exception("Change listener failed for %s %s", change.action, change.resource)

    # -- lookups

    def _exists(self, resource: str, payload: Any) -> bool:
        res = schema.RESOURCES.get(resource)
        if res is None or not isinstance(payload, dict) or not all(k in payload for k in res.keys):
            return False
        return res.key_of(payload) in self.objects[res.name]

    def _find(self, res: schema.Resource, key: tuple[str, ...]) -> Record:
        obj = self.objects[res.name].get(key)
        if obj is None:
            raise not_found(res.keys[0], key[0])
        return obj

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """A read, during which nothing is added or removed: lookups by parent are indexed once, so a GET
        of every group (each with its members' states) takes time in proportion to the box, not its square."""
        outer = self._read_index is not None
        if not outer:
            self._read_index = {}
        try:
            yield
        finally:
            if not outer:
                self._read_index = None

    def _by_first(self, resource: str, first: str) -> list[Record]:
        """The records of `resource` whose key starts with `first` (a binding's parent, a monitor's name)."""
        index = self._read_index
        if index is None:
            return [r for k, r in self.objects[resource].items() if k[0] == first]
        grouped = index.get(resource)
        if grouped is None:
            grouped = index[resource] = {}
            for k, r in self.objects[resource].items():
                grouped.setdefault(k[0], []).append(r)
        return grouped.get(first, [])

    def _monitors_named(self, name: str) -> list[Record]:
        return self._by_first("lbmonitor", name)

    def _bindings_of(self, binding: str, parent: str) -> list[Record]:
        return self._by_first(binding, parent)
