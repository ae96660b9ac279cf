"""Which VIPs each node must hold, across all DsrServices, and writing that to DsrNodeConfig specs.

Each DsrService reports the VIP it needs on which nodes; a node's DsrNodeConfig lists the union.
A VIP is kept on a node while any DsrService still needs it there. VIPs are only ever removed once
every known DsrService has reported its needs since the operator started, so a restart never
strips a VIP that a not-yet-reconciled DsrService still routes traffic to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import httpx2
import lightkube
from lightkube.types import PatchType

from dsr_operator import kube
from dsr_operator.api import models

log = logging.getLogger(__name__)
Key = tuple[str, str]


class NodeVipBook:
    """node → VIPs, as the union of what each DsrService needs (pure bookkeeping)."""

    def __init__(self) -> None:
        self._needs: dict[Key, dict[str, str]] = {}

    def record(self, key: Key, needs: Mapping[str, str]) -> set[str]:
        """Record a DsrService's needs; return the nodes whose VIP set may have changed."""
        before = self._needs.get(key, {})
        self._needs[key] = dict(needs)
        return set(before) | set(needs)

    def needs_of(self, key: Key) -> dict[str, str]:
        return dict(self._needs.get(key, {}))

    def forget(self, key: Key) -> set[str]:
        return set(self._needs.pop(key, {}))

    def reported(self) -> set[Key]:
        return set(self._needs)

    def users_of(self, node: str) -> set[Key]:
        return {key for key, needs in self._needs.items() if node in needs}

    def vips(self, node: str) -> set[str]:
        return {needs[node] for needs in self._needs.values() if node in needs}


def target_vips(current: Iterable[str], wanted: set[str], complete: bool) -> list[str]:
    """The VIP list to write: additions always, removals only when every DsrService has reported."""
    return sorted(wanted if complete else wanted | set(current))


async def write(
    client: lightkube.AsyncClient,
    node: str,
    vips: list[str],
    current: list[str] | None,
    node_uid: str | None,
) -> bool:
    """Make the node's DsrNodeConfig spec list `vips`; create it (owned by its Node) if missing."""
    if current is not None and sorted(current) == vips:
        return False
    if current is None:
        body: dict[str, Any] = {
            "apiVersion": models.API_VERSION, "kind": models.NODECONFIG_KIND,
            "metadata": {"name": node, "labels": {"app.kubernetes.io/managed-by": "dsr-operator"}},
            "spec": {"vips": vips},
        }
        if node_uid:
            body["metadata"]["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ]
        try:
            await client.create(kube.DsrNodeConfig.from_dict(body))
            log.info("Created DsrNodeConfig %s with VIPs %s", node, vips)
            return True
        except httpx2.HTTPStatusError as exc:  # lightkube.ApiError is one too
            if exc.response.status_code != 409:
                raise
    await client.patch(kube.DsrNodeConfig, node, {"spec": {"vips": vips}}, patch_type=PatchType.MERGE)
    log.info("Set DsrNodeConfig %s VIPs to %s", node, vips)
    return True
