"""The agent's small on-disk memory: what it changed on the host, so that it can be undone.

One JSON file per network namespace under the state directory (default /var/lib/dsr-operator/agent;
mount it as a hostPath in the DaemonSet so it survives agent restarts):

- `mode` and `interface` chosen on first start (an `auto` agent keeps them, so a restart never
  moves VIPs between interfaces);
- `createdLink`: the agent created the dummy interface (so `--uninstall` deletes it);
- `sysctls`: the value each sysctl had before the agent first changed it (restored by `--uninstall`);
- `addresses`: "ifname address" of each VIP the agent added — the ownership record used on kernels
  that do not keep IFA_PROTO (see `agent.core`).

Writes are atomic (temporary file + rename) and happen in a worker thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import pathlib
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_DIR = pathlib.Path("/var/lib/dsr-operator/agent")
FORMAT_VERSION = 1


@dataclasses.dataclass
class AgentState:
    mode: str | None = None
    interface: str | None = None
    created_link: bool = False
    sysctls: dict[str, int] = dataclasses.field(default_factory=dict)
    addresses: set[tuple[str, str]] = dataclasses.field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "mode": self.mode,
            "interface": self.interface,
            "createdLink": self.created_link,
            "sysctls": dict(sorted(self.sysctls.items())),
            "addresses": sorted(f"{ifname} {address}" for ifname, address in self.addresses),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        addresses = set()
        for item in data.get("addresses", []):
            ifname, _, address = str(item).partition(" ")
            if address:
                addresses.add((ifname, address))
        return cls(
            mode=data.get("mode"),
            interface=data.get("interface"),
            created_link=bool(data.get("createdLink", False)),
            sysctls={str(k): int(v) for k, v in (data.get("sysctls") or {}).items()},
            addresses=addresses,
        )


def state_path(directory: pathlib.Path, netns: str | None) -> pathlib.Path:
    return directory / (f"netns-{netns}.json" if netns else "host.json")


def _load(path: pathlib.Path) -> tuple[AgentState, bool]:
    try:
        return AgentState.from_json(json.loads(path.read_text())), True
    except FileNotFoundError:
        return AgentState(), False
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("Ignoring unreadable agent state %s: %s", path, exc)
        return AgentState(), False


def _save(path: pathlib.Path, state: AgentState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(tmp, path)


class StateFile:
    """Load once, save when changed; all file I/O in a worker thread."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        self.state = AgentState()
        self._saved: dict[str, Any] | None = None

    async def load(self) -> AgentState:
        self.state, exists = await asyncio.to_thread(_load, self.path)
        self._saved = self.state.to_json() if exists else None
        return self.state

    async def save(self) -> None:
        current = self.state.to_json()
        if current == self._saved:
            return
        await asyncio.to_thread(_save, self.path, self.state)
        self._saved = current

    async def remove(self) -> None:
        await asyncio.to_thread(self.path.unlink, True)
        self._saved = None
