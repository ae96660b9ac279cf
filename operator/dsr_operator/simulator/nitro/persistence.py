"""The store's state as documents: the persistent state (`dump` / `load`, the simulator's state file)
and the configuration an HA primary synchronises to its secondary (`config_document` /
`load_config_document`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from dsr_operator.simulator import schema
from dsr_operator.simulator.nitro.state import Record, StoreState

STATE_VERSION = 1


class Persistence(StoreState):
    """Documents in and out of the store."""

    def config_document(self) -> dict[str, Any]:
        """The configuration an HA primary synchronises to its secondary (JSON-able): objects and modes."""
        return {
            "objects": {name: copy.deepcopy(list(objs.values())) for name, objs in self.objects.items()},
            "nsmode": sorted(self.modes),
        }

    def load_config_document(self, doc: Mapping[str, Any]) -> None:
        """Take a primary's configuration (HA sync): what was configured here is replaced, unjournaled."""
        objects: dict[str, dict[tuple[str, ...], Record]] = {name: {} for name in schema.RESOURCES}
        for name, records in dict(doc.get("objects", {})).items():
            res = schema.RESOURCES.get(name)
            if res is None or not isinstance(records, list):
                raise ValueError(f"unknown resource type {name!r} in an HA sync")
            objects[name] = {res.key_of(r): copy.deepcopy(dict(r)) for r in records}
        self.objects = objects
        self._addr = None  # the address index was of the configuration just replaced
        self.modes = set(doc.get("nsmode", schema.NSMODE_DEFAULTS))
        self._notify(self._change("POST", "", "sync", {}), journal=False)

    def dump(self) -> dict[str, Any]:
        """The persistent state as a JSON-able document."""
        return {
            "version": STATE_VERSION,
            "objects": {name: list(objs.values()) for name, objs in self.objects.items()},
            "nsmode": sorted(self.modes),
            "nsconfig": {
                "configchanged": self.config_changed,
                "lastchanged": self.last_changed,
                "lastsaved": self.last_saved,
            },
            "hostsDown": sorted(self.hosts_down),
            "haState": self.ha_state,
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        """Replace the state with a document produced by `dump`."""
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported state version {doc.get('version')!r}")
        self._clear_config()
        for name, records in doc.get("objects", {}).items():
            res = schema.RESOURCES.get(name)
            if res is None:
                raise ValueError(f"unknown resource type {name!r} in state")
            self.objects[name] = {res.key_of(r): dict(r) for r in records}
        self._addr = None
        self.modes = set(doc.get("nsmode", schema.NSMODE_DEFAULTS))
        meta = doc.get("nsconfig", {})
        self.config_changed = bool(meta.get("configchanged", False))
        self.last_changed = meta.get("lastchanged")
        self.last_saved = meta.get("lastsaved")
        self.hosts_down = set(doc.get("hostsDown", ()))
        self.ha_state = str(doc.get("haState", "Primary"))
