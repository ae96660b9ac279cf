"""Which NetScaler to write to: a stand-alone box, or the primary of an HA pair reached by its NSIPs.

`Nodes` holds one NITRO client per NSIP (opened when first needed), finds the primary by asking
each node for `hanode/0`, and answers `still_primary()` before every write stage: the old
primary's NSIP keeps answering after a failover, and writes made on a secondary are neither
propagated to the primary nor kept after the next synchronisation. Whether a box is one node of a pair is
known from the URLs given (two) or from the box itself (`hanode` lists a peer).

A node of a pair is asked before every write stage. A stand-alone box cannot fail over: it turns
Secondary only when an admin joins it to a pair, so it is asked (the whole `hanode` list: its
state and whether it has a peer now) at most every `STANDALONE_RECHECK_SECONDS`, and once it
lists a peer it is asked before every stage too. That keeps a single change to one NITRO request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors

log = logging.getLogger(__name__)

PRIMARY = "Primary"
UNKNOWN = "UNKNOWN"
"""What `hanode/0` says on a box that reports no HA state."""
#: How long a primary's answer holds for `primary()`; writes ask again anyway (`still_primary`).
RECHECK_SECONDS = 1.0
#: How long a stand-alone box's answer holds, for writes too (it has no peer to fail over to).
STANDALONE_RECHECK_SECONDS = 5.0


class NotPrimary(errors.NitroError):
    """No NetScaler we may write to: the node is an HA secondary (writes there would be lost)."""


def is_primary(state: str, *, paired: bool) -> bool:
    """Whether a node whose `hanode/0` says `state` may be written to: it is the Primary, or it reports no
    HA state (UNKNOWN) and is not one node of a pair."""
    return state == PRIMARY or (state == UNKNOWN and not paired)


class Nodes:
    """The NetScaler(s) behind one set of URLs; `primary()` is the client to write through."""

    def __init__(
        self,
        urls: Sequence[str],
        factory: Callable[[str], nitro.NitroClient],
        *,
        on_primary: Callable[[str | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one NetScaler URL is needed")
        self.urls = list(dict.fromkeys(urls))
        self._factory = factory
        self._on_primary = on_primary
        self._clients: dict[str, nitro.NitroClient] = {}
        self.primary_url: str | None = None
        self.paired = len(self.urls) > 1
        self.standalone = False
        """The box listed no peer the last time its `hanode` list was read (not merely: it could not be read)."""
        self._clock = clock
        self._confirmed = 0.0
        self.failovers = 0
        self.states: dict[str, str] = {}
        """What each node answered the last time the primary was looked for."""
        self.retired_requests = 0
        """Requests sent by clients closed since (for request counts that span reconnects)."""

    @property
    def requests(self) -> int:
        """NITRO requests sent through every client so far."""
        return self.retired_requests + sum(c.stats.requests for c in self._clients.values())

    async def _client(self, url: str) -> nitro.NitroClient:
        client = self._clients.get(url)
        if client is None:
            client = self._factory(url)
            self._clients[url] = client
            try:
                await client.open()
            except BaseException:
                await self._drop(url)
                raise
        return client

    async def _drop(self, url: str) -> None:
        client = self._clients.pop(url, None)
        if client is not None:
            self.retired_requests += client.stats.requests
            with contextlib.suppress(Exception):
                await client.close()

    def _set_primary(self, url: str | None) -> None:
        if url != self.primary_url:
            self.primary_url = url
            if self._on_primary is not None:
                self._on_primary(url)

    async def primary(self) -> nitro.NitroClient:
        """The client of the node to write to; found by asking each node for its HA state.

        In a pair, a primary last confirmed more than `RECHECK_SECONDS` ago is asked again (a save or
        a read may come long after the last write stage).
        """
        url = self.primary_url
        if url is not None and url in self._clients:
            fresh = self._clock() - self._confirmed < RECHECK_SECONDS
            if fresh or await self.still_primary():
                return self._clients[url]
        states = self.states = {}
        failure: errors.NitroError | None = None
        for url in self.urls:
            try:
                client = await self._client(url)
                state = await client.ha_state()
            except (errors.NitroTransportError, errors.NitroServerError) as exc:
                failure = exc  # this node is down: perhaps the other one serves
                await self._drop(url)
                continue
            states[url] = state
            if is_primary(state, paired=len(self.urls) > 1):  # the URLs given, not what a box listed since
                if not self.paired:
                    with contextlib.suppress(errors.NitroError):  # unread: asked before every stage
                        await self._list_nodes(client)
                self._confirmed = self._clock()
                self._set_primary(url)
                return client
        self._set_primary(None)
        if not states and failure is not None:
            raise failure
        described = "; ".join(f"NetScaler at {url} is {state}, not the HA primary" for url, state in states.items())
        raise NotPrimary(described)

    async def still_primary(self) -> bool:
        """Before a write stage: is the node we write to still the primary?

        A node of a pair is asked every time. A stand-alone box is asked when its last answer is
        `STANDALONE_RECHECK_SECONDS` old, for its state and its peers in one request: a box joined to a
        pair since (it lists a peer now) is asked every time from then on.
        """
        url = self.primary_url
        if url is None or url not in self._clients:
            return False
        client = self._clients[url]
        try:
            if self.standalone and self._clock() - self._confirmed < STANDALONE_RECHECK_SECONDS:
                return True
            state = await client.ha_state() if self.paired else await self._list_nodes(client)
        except (errors.NitroTransportError, errors.NitroServerError) as exc:
            state = f"unreachable ({exc})"
            await self._drop(url)
        if is_primary(state, paired=self.paired):
            self._confirmed = self._clock()
            return True
        log.warning("NetScaler %s is %s, no longer the HA primary: the rest of this change goes to the new primary",
                    url, state)
        self.failovers += 1
        self._set_primary(None)
        return False

    async def _list_nodes(self, client: nitro.NitroClient) -> str:
        """This node's state from the whole `hanode` list, noting whether it lists a peer.

        Only a list that was read and shows no peer makes the box stand-alone; a list that cannot be read
        (a box that refuses `hanode`, a failed request) leaves it asked before every stage.
        """
        self.standalone = False
        try:
            listed = await client.get("hanode")
        except errors.NitroServerError:
            raise
        except errors.NitroApiError:
            return await client.ha_state()
        self.paired = len(listed) > 1
        self.standalone = not self.paired
        return next((str(n.get("state", UNKNOWN)) for n in listed if str(n.get("id")) == "0"), UNKNOWN)

    async def reset(self) -> None:
        """Forget every session (after a failure): the next `primary()` starts afresh."""
        for url in list(self._clients):
            await self._drop(url)
        self._set_primary(None)

    async def close(self) -> None:
        await self.reset()


