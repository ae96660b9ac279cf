"""Fault injection settings and NITRO request statistics of the simulator (`/_sim/faults`, `/_sim/stats`).

Pure data and parsing; the HTTP layer applies the faults to NITRO requests.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Mapping
from typing import Any

FAULT_KEYS = ("latencyMs", "errorRate", "errorStatus", "errorResources", "dropConnections", "expireSessions", "seed")


@dataclasses.dataclass
class Faults:
    """Current fault settings. `drop_connections` counts down as requests are dropped.

    `error_resources`, when not empty, limits the error rate to those NITRO resource types.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    error_resources: tuple[str, ...] = ()
    drop_connections: int = 0
    rng: random.Random = dataclasses.field(default_factory=random.Random, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "latencyMs": self.latency_ms,
            "errorRate": self.error_rate,
            "errorStatus": self.error_status,
            "errorResources": list(self.error_resources),
            "dropConnections": self.drop_connections,
        }

    def update(self, doc: Mapping[str, Any]) -> bool:
        """Apply a `/_sim/faults` document; returns whether sessions should be expired now.

        Raises ValueError on an unknown key or a bad value; nothing is changed then.
        """
        unknown = set(doc) - set(FAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        latency = _number(doc, "latencyMs", self.latency_ms, 0, None)
        rate = _number(doc, "errorRate", self.error_rate, 0, 1)
        status = int(_number(doc, "errorStatus", self.error_status, 100, 599, integer=True))
        resources = _names(doc, "errorResources", self.error_resources)
        drops = int(_number(doc, "dropConnections", self.drop_connections, 0, None, integer=True))
        expire = doc.get("expireSessions", False)
        if not isinstance(expire, bool):
            raise ValueError("expireSessions must be a boolean")
        if "seed" in doc:
            self.rng.seed(doc["seed"])
        self.latency_ms, self.error_rate, self.error_status, self.error_resources, self.drop_connections = (
            latency,
            rate,
            status,
            resources,
            drops,
        )
        return expire

    def clear(self) -> None:
        self.latency_ms, self.error_rate, self.error_status, self.error_resources, self.drop_connections = (
            0.0,
            0.0,
            503,
            (),
            0,
        )

    def should_fail(self, resource: str) -> bool:
        if self.error_resources and resource not in self.error_resources:
            return False
        return self.error_rate > 0 and self.rng.random() < self.error_rate

    def take_drop(self) -> bool:
        if self.drop_connections > 0:
            self.drop_connections -= 1
            return True
        return False


def _number(
    doc: Mapping[str, Any], key: str, current: float, lo: float, hi: float | None, *, integer: bool = False
) -> float:
    if key not in doc:
        return current
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise ValueError(f"{key} must be a {'integer' if integer else 'number'}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{key} out of range")
    return value


def _names(doc: Mapping[str, Any], key: str, current: tuple[str, ...]) -> tuple[str, ...]:
    if key not in doc:
        return current
    value = doc[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{key} must be a list of resource type names")
    return tuple(value)


@dataclasses.dataclass
class Stats:
    """Counts of NITRO requests (not `/_sim` ones) since start or the last reset."""

    requests: int = 0
    writes: int = 0
    by_method: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    by_resource: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def count(self, method: str, resource: str, *, write: bool) -> None:
        self.requests += 1
        self.writes += int(write)
        self.by_method[method] += 1
        self.by_resource[resource] += 1

    def reset(self) -> None:
        self.requests = self.writes = 0
        self.by_method.clear()
        self.by_resource.clear()

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "writes": self.writes,
            "byMethod": dict(self.by_method),
            "byResource": dict(self.by_resource),
        }
