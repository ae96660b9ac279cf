"""The front door: Services of `type: LoadBalancer` made into owned DsrServices, and their status.

Events mark Service keys (a Service changed, its DsrService's status changed, a pool or a namespace
changed, a VIP was freed); after a short debounce the loop decides each marked key with
`lbservices.plan` and makes it so: the owned DsrService created, its spec patched or deleted, the
Service's `status.loadBalancer` and its condition `dsr.operators.dev/Ready` written (a JSON patch
that leaves other conditions alone), events posted when something is refused or allocated. Then
every DsrVipPool's status (addresses total and used, Ready or Stalled) is brought up to date.

Allocations are recorded on the DsrServices (`spec.vip`); until the index shows one it is kept here,
so two Services decided in a row never get the same address.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import lightkube
import lightkube.resources.core_v1
from lightkube.types import PatchType

from dsr_operator import clock, kube
from dsr_operator.controller import lbservices, loop

log = logging.getLogger(__name__)
Key = tuple[str, str]
COMPONENT = "dsr-operator"
DEBOUNCE_SECONDS = 0.05
POOLS: Key = ("", "")
"""The key that asks for a pass over the pools' status alone."""


def _first(index: Any, key: Any) -> Any:
    if index is None:
        return None
    for value in index.get(key, ()):
        return value
    return None


def _items(index: Any) -> list[tuple[Any, Any]]:
    out = []
    for key in list(index.keys() if index is not None else ()):
        value = _first(index, key)
        if value is not None:
            out.append((key, value))
    return out


class FrontDoor:
    """One per operator: decides and writes, one Service key at a time, from the kopf indices."""

    def __init__(self, client: lightkube.AsyncClient, indices: Mapping[str, Any], *, load_balancer_class: str,
                 default_class: bool) -> None:
        self.client = client
        self.indices = indices
        self.load_balancer_class = load_balancer_class
        self.default_class = default_class
        self.batcher = loop.Batcher(DEBOUNCE_SECONDS)
        self.refusals: dict[Key, lbservices.Refusal] = {}
        self.pending: dict[str, Key] = {}
        """VIP -> Service key: allocated and written, not yet in the DsrService index."""
        self.deleted: set[Key] = set()
        """Owned DsrServices deleted whose deletion the index does not show yet (deleted once, not again)."""

    def mark(self, *keys: Key) -> None:
        self.batcher.mark(*keys)

    def mark_everything(self) -> None:
        """A pool, a namespace or the set of free VIPs changed: every LoadBalancer Service again."""
        keys = {key for key, _ in _items(self.indices.get("dsr_lb_services"))}
        keys |= {key for key, _ in _items(self.indices.get("dsr_owned"))}
        self.batcher.mark(*keys, *self.refusals)
        self.batcher.mark(POOLS)

    def context(self) -> lbservices.Context:
        vips: dict[str, Key] = {vip: key for vip, key in _items(self.indices.get("dsr_by_vip"))}
        for vip, service in list(self.pending.items()):
            if vip in vips:
                del self.pending[vip]  # the index has it now
            else:
                vips[vip] = service
        return lbservices.Context(
            load_balancer_class=self.load_balancer_class,
            default_class=self.default_class,
            pools=[entry for _, entry in sorted(_items(self.indices.get("dsr_vippools")))],
            namespace_labels=dict(_items(self.indices.get("dsr_namespaces"))),
            vips=vips,
            dsrservices=frozenset(key for key, _ in _items(self.indices.get("dsr_services"))),
        )

    async def run(self) -> None:
        self.mark_everything()
        while True:
            keys = await self.batcher.next_batch()
            context = self.context()
            for key in sorted(keys):
                if key == POOLS:
                    continue
                try:
                    context = await self.sync(key, context)
                except Exception as exc:  # the API refused or is away: this key again, with backoff
                    log.warning("Service %s/%s: %s", key[0], key[1], exc)
                    self.batcher.failed(key)
                else:
                    self.batcher.succeeded(key)
            try:
                await self.sync_pools(self.context())
            except Exception as exc:
                log.warning("DsrVipPool status not written: %s", exc)

    async def sync(self, key: Key, context: lbservices.Context) -> lbservices.Context:
        service: lbservices.LbService | None = _first(self.indices.get("dsr_lb_services"), key)
        owned: lbservices.Owned | None = _first(self.indices.get("dsr_owned"), key)
        plan = lbservices.plan(service, owned, context)
        namespace = key[0]
        if owned is None or owned.deleting:
            self.deleted.discard(key)
        if plan.delete and owned is not None and key not in self.deleted:
            self.deleted.add(key)
            log.info("Deleting DsrService %s/%s: its Service is gone or no longer ours", namespace, owned.name)
            try:
                await self.client.delete(kube.DsrService, owned.name, namespace=namespace)
            except lightkube.ApiError as exc:
                if exc.status.code != 404:
                    raise
        if plan.manifest is not None and service is not None:
            await self._write(service, owned, plan.manifest)
        if plan.allocated is not None and service is not None:
            self.pending[plan.allocated.vip] = key
            context = _with_vip(context, plan.allocated.vip, key)
            await self._event(service, "VipAllocated", f"{plan.allocated.vip} from DsrVipPool {plan.allocated.pool}")
        if service is not None:
            await self._refusal(service, plan.refusal)
            if plan.ingress is not None and plan.ingress != service.ingress:
                await self._ingress(service, plan.ingress)
            await self._condition(service, plan.condition)
        else:
            self.refusals.pop(key, None)
        return context

    async def _write(self, service: lbservices.LbService, owned: lbservices.Owned | None,
                     manifest: Mapping[str, Any]) -> None:
        if owned is None:
            log.info("Creating DsrService %s/%s for the LoadBalancer Service (VIP %s)", service.namespace,
                     service.name, manifest["spec"]["vip"])
            try:
                await self.client.create(kube.DsrService.from_dict(dict(manifest)))
            except lightkube.ApiError as exc:
                if exc.status.code != 409:  # exists: the index will show it, and the next pass decides
                    raise
            return
        patch = lbservices.spec_patch(owned.spec, manifest["spec"])
        if patch is not None:
            log.info("Updating DsrService %s/%s from its Service: %s", service.namespace, owned.name, patch)
            await self.client.patch(kube.DsrService, owned.name, {"spec": patch}, namespace=service.namespace,
                                    patch_type=PatchType.MERGE)

    async def _ingress(self, service: lbservices.LbService, ingress: tuple[str, ...]) -> None:
        body = {"status": {"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"} for ip in ingress] or None}}}
        log.info("Service %s/%s: status.loadBalancer.ingress %s", service.namespace, service.name,
                 list(ingress) or "cleared")
        await self.client.patch(lightkube.resources.core_v1.Service.Status, service.name, body,
                                namespace=service.namespace, patch_type=PatchType.MERGE)

    async def _condition(self, service: lbservices.LbService, condition: lbservices.Condition | None) -> None:
        now = clock.rfc3339(clock.utcnow())
        patch = lbservices.condition_patch(service, condition, now)
        if patch is None:
            return
        await self.client.patch(lightkube.resources.core_v1.Service.Status, service.name, patch,
                                namespace=service.namespace,
                                patch_type=PatchType.JSON if isinstance(patch, list) else PatchType.MERGE)

    async def _refusal(self, service: lbservices.LbService, refusal: lbservices.Refusal | None) -> None:
        if refusal is None:
            self.refusals.pop(service.key, None)
            return
        if self.refusals.get(service.key) == refusal:
            return  # said once: no event storm while it lasts
        self.refusals[service.key] = refusal
        log.warning("Service %s/%s not served: %s: %s", service.namespace, service.name, refusal.reason,
                    refusal.message)
        await self._event(service, refusal.reason, refusal.message, warning=True)

    async def _event(self, service: lbservices.LbService, reason: str, message: str, *, warning: bool = False) -> None:
        involved = kube.Involved("Service", service.name, service.namespace, service.uid, api_version="v1")
        await kube.post_event(self.client, involved, reason, message, component=COMPONENT, warning=warning)

    async def sync_pools(self, context: lbservices.Context) -> None:
        for entry in context.pools:
            status = lbservices.pool_status(entry, context, entry.generation)
            if all(_same(entry.status.get(k), v) for k, v in status.items()):
                continue
            await self.client.patch(kube.DsrVipPool.Status, entry.name, {"status": status},
                                    patch_type=PatchType.MERGE)


def _same(current: Any, wanted: Any) -> bool:
    if isinstance(wanted, list) and isinstance(current, list):
        return len(current) == len(wanted) and all(_same(c, w) for c, w in zip(current, wanted, strict=True))
    if isinstance(wanted, Mapping) and isinstance(current, Mapping):
        return all(_same(current.get(k), v) for k, v in wanted.items() if v is not None)
    return bool(current == wanted)


def _with_vip(context: lbservices.Context, vip: str, key: Key) -> lbservices.Context:
    return dataclasses.replace(context, vips={**context.vips, vip: key})
