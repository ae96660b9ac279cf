"""Integration fixtures: a NITRO simulator on a real socket, and its credentials.

`nitro_sim` yields a `dsr_lab.simctl.Simulator`: `.url` (e.g. "http://127.0.0.1:40123"),
`.app`, `.store`, and async helpers for the control endpoints: `faults(**settings)`,
`clear_faults()`, `stats()`, `reset_stats()`, `journal(since=0)`, `set_hosts({ip: "UP"|"DOWN"})`,
`set_ha_state(state)`, `reset()`.

`cluster` yields a `tests.integration.test_operator.Cluster` over the `kube` emulator and `nitro_sim`,
with Nodes n1..n3 (InternalIPs 198.51.100.1..3) and the Service shop/web.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from dsr_lab import simctl
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster


@pytest.fixture
def nitro_credentials() -> tuple[str, str]:
    """User name and password the `nitro_sim` fixture accepts."""
    return ("nsroot", "nsroot")


@pytest.fixture
async def nitro_sim(nitro_credentials: tuple[str, str]) -> AsyncIterator[simctl.Simulator]:
    """A fresh simulator per test on 127.0.0.1 and a free port."""
    user, password = nitro_credentials
    async with simctl.running("127.0.0.1", 0, users={user: password}) as sim:
        yield sim


@pytest.fixture
async def cluster(kube: KubeHandle, nitro_sim: simctl.Simulator) -> Cluster:
    """Three Nodes and the Service shop/web, for the operator tests."""
    c = Cluster(kube, nitro_sim, "nsroot")
    for i in (1, 2, 3):
        await c.node(f"n{i}", f"198.51.100.{i}")
    await c.service()
    return c
