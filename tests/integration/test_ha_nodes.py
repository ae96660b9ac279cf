"""Finding the HA primary among NSIPs, and noticing when it no longer is (`netscaler.ha.Nodes`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dsr_lab import simctl
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import ha


def factory(url: str) -> nitro.NitroClient:
    return nitro.NitroClient(url, username="nsroot", password="nsroot", retries=0)


@pytest.fixture
async def pair() -> AsyncIterator[simctl.Pair]:
    async with simctl.running_pair(users={"nsroot": "nsroot"}) as p:
        yield p


async def test_the_primary_is_found_whichever_nsip_comes_first(pair: simctl.Pair) -> None:
    seen: list[str | None] = []
    nodes = ha.Nodes([pair.b.url, pair.a.url], factory, on_primary=seen.append)
    try:
        client = await nodes.primary()
        assert str(client.base_url).rstrip("/") == pair.a.url and nodes.primary_url == pair.a.url
        assert await nodes.still_primary()
        await pair.a.failover()
        assert not await nodes.still_primary()
        assert str((await nodes.primary()).base_url).rstrip("/") == pair.b.url
        assert seen == [pair.a.url, None, pair.b.url] and nodes.failovers == 1
    finally:
        await nodes.close()


async def test_an_unreachable_nsip_is_passed_over(pair: simctl.Pair) -> None:
    nodes = ha.Nodes(["http://127.0.0.1:9", pair.a.url], factory)
    try:
        await nodes.primary()
        assert nodes.primary_url == pair.a.url
    finally:
        await nodes.close()


async def test_one_url_of_a_pair_is_asked_before_every_write_stage(pair: simctl.Pair) -> None:
    nodes = ha.Nodes([pair.a.url], factory)
    try:
        await nodes.primary()
        assert nodes.paired  # the box lists a peer
        before = nodes.requests
        assert await nodes.still_primary() and await nodes.still_primary()
        assert nodes.requests == before + 2  # asked each time
        await pair.a.failover()
        assert not await nodes.still_primary()
        with pytest.raises(ha.NotPrimary, match="is Secondary, not the HA primary"):
            await nodes.primary()
    finally:
        await nodes.close()


async def test_a_standalone_box_is_asked_at_most_every_few_seconds_until_it_lists_a_peer(
    nitro_sim: simctl.Simulator,
) -> None:
    now = [1000.0]
    alone = ha.Nodes([nitro_sim.url], factory, clock=lambda: now[0])
    try:
        await alone.primary()
        assert not alone.paired
        before = alone.requests
        for _ in range(10):  # ten write stages within the window: no question asked
            assert await alone.still_primary()
            now[0] += ha.STANDALONE_RECHECK_SECONDS / 20
        assert alone.requests == before
        now[0] += ha.STANDALONE_RECHECK_SECONDS
        assert await alone.still_primary() and alone.requests == before + 1  # asked again, one request
        # An admin joins the box to a pair and it turns Secondary: refused at the next question, and from
        # then on it is asked before every stage.
        await nitro_sim.set_ha_state("Secondary")
        nitro_sim.store.ha_peer = {"id": "1", "ipaddress": "192.0.2.254"}
        now[0] += ha.STANDALONE_RECHECK_SECONDS
        assert not await alone.still_primary()
        assert alone.paired
        await nitro_sim.set_ha_state("Primary")
        await alone.primary()
        before = alone.requests
        assert await alone.still_primary() and alone.requests == before + 1
    finally:
        await alone.close()


async def test_a_box_whose_node_list_cannot_be_read_is_asked_before_every_stage(nitro_sim: simctl.Simulator) -> None:
    """Only a `hanode` list that was read and shows no peer makes a box stand-alone; a failed read does not."""
    now = [1000.0]
    alone = ha.Nodes([nitro_sim.url], factory, clock=lambda: now[0])
    try:
        await alone.primary()
        assert alone.standalone
        now[0] += ha.STANDALONE_RECHECK_SECONDS
        await nitro_sim.faults(errorRate=1.0, errorResources=["hanode"])
        assert not await alone.still_primary()  # unread: not written to
        assert not alone.standalone
        await nitro_sim.clear_faults()
        await alone.primary()  # found again, and its list read: stand-alone
        before = alone.requests
        assert alone.standalone and await alone.still_primary() and alone.requests == before
    finally:
        await alone.close()


@pytest.mark.parametrize(("state", "paired", "expected"), [
    ("Primary", False, True),
    ("Primary", True, True),
    ("UNKNOWN", False, True),   # a stand-alone box that reports no HA state
    ("UNKNOWN", True, False),   # one node of a pair must say Primary
    ("Secondary", False, False),
    ("Secondary", True, False),
    ("unreachable (timeout)", False, False),
])
def test_is_primary(state: str, paired: bool, expected: bool) -> None:
    assert ha.is_primary(state, paired=paired) is expected
