"""An HA pair of simulators: two nodes, the primary's configuration synchronised to the secondary, failover.

What a real pair does and the simulator reproduces:
* each node answers `hanode/0` with its own state (Primary or Secondary) and lists its peer as
  `hanode/1`; `nsconfig` shows `systemtype: HA` and `primaryip`; `/stat/hanode` says
  `hacurstatus: YES` and `hacurmasterstate`;
* every change on the primary is propagated to the secondary before the primary answers (the
  secondary takes the primary's whole configuration: objects and modes, as an HA sync does);
* the secondary accepts writes (NITRO does not refuse them; with `?warning=yes` it answers 209 with
  warning 1028), applies them locally and journals them, propagates nothing, and loses them at the
  next synchronisation from the primary;
* a failover swaps the roles: the old primary pushes its configuration, becomes secondary, and its
  NSIP keeps answering (as Secondary) — a client must check `hanode/0` before it writes.

Peers are either in the same process (`LocalPeer`, for tests: `server.running_pair()`) or another
`nitro-sim` reached over HTTP (`RemotePeer`, `nitro-sim --peer URL`). Every role change is recorded
with the journal's sequence number at that moment (`transitions`), so a test can tell which writes a
node took while it was primary.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from dsr_operator.simulator import nitro

logger = logging.getLogger(__name__)

PRIMARY = "Primary"
SECONDARY = "Secondary"
ROLES = (PRIMARY, SECONDARY)
NOT_PRIMARY_WARNING = (
    "1028 - You are connected to a secondary node; configuration changes made in this session will not be "
    "propagated to, or saved on, other nodes"
)
#: Changes that are no configuration of their own: never propagated.
_NOT_CONFIG = frozenset({"sync", "ha", "clients", "probes", "hosts", "save"})


class Peer(Protocol):
    """The other node of the pair, as this node talks to it."""

    async def sync(self, doc: Mapping[str, Any]) -> None: ...

    async def set_role(self, state: str) -> None: ...

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Transition:
    """A role this node took, when, and the last journal entry written before it."""

    state: str
    time: float
    seq: int

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "time": self.time, "seq": self.seq}


class Node:
    """One node of an HA pair: its role, its peer, propagation and failover."""

    def __init__(self, model: nitro.Store, peer: Peer, peer_ip: str, *, state: str = PRIMARY) -> None:
        if state not in ROLES:
            raise ValueError(f"HA state must be one of {ROLES}, not {state!r}")
        self.store = model
        self.peer = peer
        model.ha_peer = {"id": "1", "ipaddress": peer_ip}
        self.transitions: list[Transition] = []
        self.sync_failures = 0
        self._dirty = False
        self._failover_after: int | None = None
        model.listeners.append(self._changed)
        self._take(state)

    @property
    def state(self) -> str:
        return self.store.ha_state

    @property
    def since(self) -> float | None:
        return self.transitions[-1].time if self.transitions else None

    def _changed(self, change: nitro.Change) -> None:
        if change.action not in _NOT_CONFIG:
            self._dirty = True

    def _take(self, state: str) -> None:
        seq = self.store.journal[-1].seq if self.store.journal else 0
        self.transitions.append(Transition(state, time.time(), seq))
        self.store.set_ha_state(state)

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "peer": self.store.ha_peer,
            "transitions": [t.as_json() for t in self.transitions],
            "syncFailures": self.sync_failures,
        }

    # -- propagation

    async def push(self) -> None:
        """Send this node's configuration to the peer (the primary's half of an HA sync)."""
        self._dirty = False
        try:
            await self.peer.sync(self.store.config_document())
        except (aiohttp.ClientError, TimeoutError, RuntimeError) as exc:
            self.sync_failures += 1
            self._dirty = True
            logger.warning("HA sync to the peer failed: %s", exc)

    def receive(self, doc: Mapping[str, Any]) -> None:
        """Take the primary's configuration (lost: whatever was written here meanwhile)."""
        self.store.load_config_document(doc)
        self._dirty = False

    async def after_write(self) -> None:
        """After a NITRO write request: propagate it if this is the primary; a due failover happens now."""
        if not self._dirty:
            return
        if self.state == PRIMARY:
            await self.push()
        else:
            self._dirty = False  # written on the secondary: stays here, unpropagated
        if self._failover_after is not None:
            self._failover_after -= 1
            if self._failover_after <= 0:
                self._failover_after = None
                await self.failover()

    def failover_after(self, writes: int) -> None:
        """Fail over right after this node has applied `writes` more write requests (before it answers)."""
        self._failover_after = writes

    async def failover(self) -> None:
        """Swap the roles: the primary pushes its configuration first, then the secondary takes over."""
        if self.state == PRIMARY:
            await self.push()
            self._take(SECONDARY)
            await self.peer.set_role(PRIMARY)
        else:
            self._take(PRIMARY)
            await self.peer.set_role(SECONDARY)
            await self.push()
        logger.info("HA failover: this node is now %s", self.state)

    async def become(self, state: str) -> None:
        """The peer told this node its new role."""
        if state not in ROLES:
            raise ValueError(f"HA state must be one of {ROLES}, not {state!r}")
        if state != self.state:
            self._take(state)

    async def close(self) -> None:
        await self.peer.close()


class LocalPeer:
    """A peer in the same process: calls its node directly."""

    def __init__(self) -> None:
        self.node: Node | None = None

    def _other(self) -> Node:
        if self.node is None:
            raise RuntimeError("the HA peer is not linked")
        return self.node

    async def sync(self, doc: Mapping[str, Any]) -> None:
        self._other().receive(doc)

    async def set_role(self, state: str) -> None:
        await self._other().become(state)

    async def close(self) -> None:
        return None


class RemotePeer:
    """A peer that is another `nitro-sim` process, reached over its `/_sim/peer/*` endpoints."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    async def _post(self, path: str, doc: Mapping[str, Any]) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=self._timeout)
        async with self._http.post(self.url + path, json=dict(doc)) as response:
            if response.status != 200:
                raise RuntimeError(f"peer answered {response.status} to {path}: {(await response.text())[:200]}")

    async def sync(self, doc: Mapping[str, Any]) -> None:
        await self._post("/_sim/peer/sync", doc)

    async def set_role(self, state: str) -> None:
        await self._post("/_sim/peer/role", {"state": state})

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def pair(first: nitro.Store, second: nitro.Store, first_ip: str, second_ip: str) -> tuple[Node, Node]:
    """Two in-process nodes: `first` primary, `second` secondary, the secondary synced from the primary."""
    to_second, to_first = LocalPeer(), LocalPeer()
    a = Node(first, to_second, second_ip, state=PRIMARY)
    b = Node(second, to_first, first_ip, state=SECONDARY)
    to_second.node, to_first.node = b, a
    b.receive(first.config_document())
    return a, b
