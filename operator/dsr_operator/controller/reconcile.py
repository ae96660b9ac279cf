"""Reconcile one DsrService, level-triggered: read, decide, act, report.

1. Parse the spec; an invalid one stalls and keeps the last good NetScaler config.
2. Resolve a VIP:port conflict: the younger DsrService stalls and NetScaler is not touched for it.
3. Gather backends (static hosts, or the nodes that host the Service's endpoints) and their
   loopback readiness from the DsrNodeConfig statuses.
4. Ask nodes for the VIP (additions first), plan against NetScaler, apply, then release VIPs that
   NetScaler no longer routes to the node.
5. Write status (only when it changed) and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import lightkube
import pydantic
from lightkube.types import PatchType

from dsr_operator import kube
from dsr_operator.api import models
from dsr_operator.controller import config, nodes, view, world
from dsr_operator.controller.metrics import Metrics
from dsr_operator.netscaler import errors, render
from dsr_operator.netscaler import models as ns
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner

log = logging.getLogger(__name__)
Key = tuple[str, str]
MAX_EVENTS_PER_RECONCILE = 5


@dataclasses.dataclass
class Runtime:
    """Everything the handlers share, kept in kopf's memo (no module globals)."""

    settings: config.OperatorSettings
    view: view.NetScalerView
    kube: lightkube.AsyncClient
    metrics: Metrics
    book: nodes.NodeVipBook = dataclasses.field(default_factory=nodes.NodeVipBook)
    wakeups: dict[Key, asyncio.Event] = dataclasses.field(default_factory=dict)
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)
    written: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    generations: dict[Key, int | None] = dataclasses.field(default_factory=dict)
    stalled: set[Key] = dataclasses.field(default_factory=set)
    indexed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    indices: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    unreachable_since: float | None = None

    def wakeup(self, key: Key) -> asyncio.Event:
        return self.wakeups.setdefault(key, asyncio.Event())

    def wake(self, *keys: Key) -> None:
        for key in keys:
            self.wakeup(key).set()

    def wake_all(self) -> None:
        for event in self.wakeups.values():
            event.set()

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())


@dataclasses.dataclass(frozen=True)
class ServiceEntry:
    """A DsrService as the index keeps it: enough to resolve conflicts and route wake-ups."""

    uid: str
    created: str
    spec: Mapping[str, Any]
    deleting: bool


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(body: Mapping[str, Any]) -> models.DsrService:
    return models.DsrService.model_validate({
        "apiVersion": body.get("apiVersion", models.API_VERSION), "kind": models.SERVICE_KIND,
        "metadata": dict(body.get("metadata") or {}), "spec": dict(body.get("spec") or {}),
    })


def _entries(index: Any) -> list[tuple[Key, ServiceEntry]]:
    out = []
    for key in list(index.keys() if index is not None else ()):
        for entry in index.get(key, ()):
            out.append((key, entry))
    return out


def vip_conflict(key: Key, services_index: Any) -> desired_mod.VipConflict | None:
    claims = []
    for other_key, entry in _entries(services_index):
        if entry.deleting:
            continue
        try:
            spec = models.DsrServiceSpec.model_validate(dict(entry.spec))
        except pydantic.ValidationError:
            continue
        claims.append((models.ObjectRef(namespace=other_key[0], name=other_key[1], uid=entry.uid), spec, entry.created))
    for conflict in desired_mod.vip_conflicts(claims):
        if (conflict.loser.namespace, conflict.loser.name) == key:
            return conflict
    return None


def _policy(rt: Runtime, intent: desired_mod.Intent | None, uid: str) -> planner.Policy:
    s = rt.settings
    drain = {uid: intent.spec.drain_seconds} if intent else {}
    guard = {uid: intent.spec.max_unbind_percent} if intent and intent.spec.max_unbind_percent else {}
    return planner.Policy(
        operator_id=s.operator_id, drain_seconds=drain, default_drain_seconds=s.default_drain_seconds,
        guard_percent=guard, default_guard_percent=s.max_unbind_percent,
    )


async def sync_nodes(rt: Runtime, changed: set[str]) -> None:
    """Write the VIP union of every changed node to its DsrNodeConfig."""
    known = {key for key, entry in _entries(rt.indices.get("dsr_services")) if not entry.deleting}
    complete = known <= rt.book.reported()
    nodeconfigs = rt.indices.get("dsr_nodeconfigs")
    node_index = rt.indices.get("dsr_nodes")
    for node in sorted(changed):
        infos = list(nodeconfigs.get(node, ())) if nodeconfigs is not None else []
        current = sorted(infos[0].vips) if infos else None
        last = rt.written.get(node)
        base = last if last is not None else current
        vips = nodes.target_vips(base or (), rt.book.vips(node), complete)
        if base is not None and vips == sorted(base):
            continue
        node_infos = list(node_index.get(node, ())) if node_index is not None else []
        if not node_infos and current is None:
            continue  # no such node: nothing to configure
        uid = node_infos[0].uid if node_infos else None
        await nodes.write(rt.kube, node, vips, current if last is None else last, uid)
        rt.written[node] = vips


async def write_status(rt: Runtime, body: Mapping[str, Any], status: dict[str, Any]) -> None:
    meta = body.get("metadata") or {}
    key = (meta.get("namespace", ""), meta.get("name", ""))
    stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in status.get("conditions", ()))
    (rt.stalled.add if stalled else rt.stalled.discard)(key)
    rt.metrics.stalled.set(len(rt.stalled))
    old = dict(body.get("status") or {})
    if all(old.get(k) == v for k, v in status.items()):
        return
    await rt.kube.patch(kube.DsrService.Status, meta["name"], {"status": status}, namespace=meta.get("namespace"),
                        patch_type=PatchType.MERGE)


def _post_events(body: kopf.Body, applied: list[planner.Op], failures: list[str]) -> None:
    lines = [render.command(op.verb, op.kind, op.body) for op in applied]
    if len(lines) <= MAX_EVENTS_PER_RECONCILE:
        for line in lines:
            kopf.info(body, reason="Applied", message=line)
    else:
        kopf.info(body, reason="Applied", message=f"{len(lines)} NetScaler changes: " + "; ".join(lines[:10]))
    for failure in failures:
        kopf.warn(body, reason="NetScalerRejected", message=failure)


async def reconcile(rt: Runtime, key: Key, body: kopf.Body) -> float | None:
    """One level-triggered pass over one DsrService; returns when to come back (seconds), if ever."""
    started = time.monotonic()
    result = "ok"
    try:
        return await _reconcile(rt, key, body)
    except Exception:
        result = "error"
        raise
    finally:
        rt.metrics.reconcile_seconds.labels(result).observe(time.monotonic() - started)


async def _reconcile(rt: Runtime, key: Key, body: kopf.Body) -> float | None:
    meta = body.get("metadata") or {}
    generation = meta.get("generation")
    previous = (body.get("status") or {}).get("conditions") or []
    base_status: dict[str, Any] = {"observedGeneration": generation}

    def status_of(v: world.Verdict, extra: Mapping[str, Any]) -> dict[str, Any]:
        return {**base_status, **extra, "conditions": world.conditions(v, generation, _now(), previous)}

    try:
        svc = _parse(body)
    except pydantic.ValidationError as exc:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        v = world.Verdict(False, "InvalidSpec", message, stalled=True)
        rt.book.record(key, rt.book.needs_of(key))  # keep the last good node VIPs, and count as reported
        await write_status(rt, body, status_of(v, {}))
        kopf.warn(body, reason="InvalidSpec", message=message)
        return None
    ref = svc.ref
    spec = svc.spec

    conflict = vip_conflict(key, rt.indices.get("dsr_services"))
    if conflict is not None:
        message = (f"{conflict.endpoint} is already served by DsrService "
                   f"{conflict.winner.namespace}/{conflict.winner.name}")
        v = world.Verdict(False, "VipConflict", message, stalled=True)
        rt.book.record(key, rt.book.needs_of(key))  # reported: other DsrServices' VIP removals may proceed
        await write_status(rt, body, status_of(v, {}))
        return None

    slices_index = rt.indices.get("dsr_slices")
    services_index = rt.indices.get("dsr_k8s_services")
    warnings: list[str] = []
    if spec.backends.service is not None and services_index is not None:
        found = list(services_index.get((ref.namespace, spec.backends.service), ()))
        if not found:
            v = world.Verdict(False, "ServiceNotFound",
                              f"Service {ref.namespace}/{spec.backends.service} does not exist", stalled=True)
            rt.book.record(key, rt.book.needs_of(key))
            await write_status(rt, body, status_of(v, {}))
            return None
        if spec.vip not in found[0]:
            warnings.append(
                f"Service {ref.namespace}/{spec.backends.service} does not list {spec.vip} in externalIPs: "
                "kube-proxy will not deliver VIP traffic to its pods unless they listen on the VIP with host networking"
            )

    def gather(actual: ns.NetScalerState) -> world.Backends:
        if spec.backends.static is not None:
            return world.static_backends(spec)
        bound, present = world.owned_service_addresses(actual, ref.uid)
        slices = list(slices_index.get((ref.namespace, spec.backends.service), ())) if slices_index else []
        node_map = {k: next(iter(v)) for k, v in rt.indices["dsr_nodes"].items() if list(v)}
        configs = {k: next(iter(v)) for k, v in rt.indices["dsr_nodeconfigs"].items() if list(v)}
        return world.service_backends(spec, slices, node_map, configs, bound, present)

    try:
        async with rt.view.lock:
            actual = await rt.view.actual()
            backends = gather(actual)
            # Additions first: a node gets the VIP before NetScaler may send it traffic.
            await sync_nodes(rt, rt.book.record(key, {**rt.book.needs_of(key), **backends.node_vips}))
            intent = desired_mod.Intent(ref, spec, backends.backends)
            want, policy = desired_mod.desired([intent]), _policy(rt, intent, ref.uid)
            plan, outcome = await rt.view.apply(lambda now: planner.diff(want, now, policy, frozenset({ref.uid})),
                                                actual)
            actual = await rt.view.actual()
            after = gather(actual)
            await sync_nodes(rt, rt.book.record(key, after.node_vips))
            rt.unreachable_since = None
    except (errors.NitroTransportError, errors.NitroServerError, errors.NitroSessionExpired,
            errors.NitroAuthenticationFailed, view.NotPrimary) as exc:
        rt.unreachable_since = rt.unreachable_since or time.monotonic()
        v = world.Verdict(False, "NetScalerUnreachable", str(exc), stalled=True)
        await write_status(rt, body, status_of(v, {"netscaler": {"primary": rt.view.primary_url}}))
        kopf.warn(body, reason="NetScalerUnreachable", message=str(exc))
        return min(30.0, 2.0 + (time.monotonic() - rt.unreachable_since) / 2)

    failures = [str(f) for f in outcome.failures]
    _post_events(body, list(outcome.applied), failures)
    bound = world.bound_count(actual, ref, spec)
    rt.metrics.bound_backends.labels(ref.namespace, ref.name).set(bound)
    v = world.verdict(backends=after, bound=bound, plan=plan, failures=failures)
    states = world.vserver_states(actual, ref, spec)
    ours = {b.child for b in actual.bindings if b.kind == ns.VSERVER_BINDING and b.owner == ref.uid}
    extra = {
        "draining": rt.view.drain_report(ours),
        "backends": {"desired": after.desired, "loopbackReady": after.loopback_ready, "bound": bound},
        "vservers": states,
        "vserverState": "UP" if states and all(s["state"] == "UP" for s in states) else
                        ("DOWN" if states else "ABSENT"),
        "warnings": warnings,
        "netscaler": {"primary": rt.view.primary_url},
    }
    await write_status(rt, body, status_of(v, extra))
    if failures:
        return 10.0
    return _come_back(rt, plan, actual, ref.uid)


def _come_back(rt: Runtime, plan: planner.Plan, actual: ns.NetScalerState, uid: str) -> float | None:
    """When to reconcile again: as soon as one of our drains ends on the box, or when a hold says."""
    delays = [h.retry_after for h in plan.holds if h.retry_after is not None and h.reason != "Draining"]
    if any(h.reason == "Draining" for h in plan.holds):
        ours = {b.child for b in actual.bindings if b.kind == ns.VSERVER_BINDING and b.owner == uid}
        wait = rt.view.drain_wait(ours)
        delays.append(wait if wait is not None else plan.retry_after or 1.0)
    return min(delays) if delays else None


async def finalize(rt: Runtime, key: Key, body: kopf.Body) -> None:
    """Deletion: drain and remove the NetScaler objects, then the node VIPs; then kopf releases."""
    meta = body.get("metadata") or {}
    try:
        svc = _parse(body)
        uid, drain = svc.ref.uid, svc.spec.drain_seconds
    except pydantic.ValidationError:
        uid, drain = meta.get("uid", ""), rt.settings.default_drain_seconds
    policy = planner.Policy(rt.settings.operator_id, drain_seconds={uid: drain},
                            default_guard_percent=100)
    async with rt.view.lock:
        try:
            plan, outcome = await rt.view.apply(lambda now: planner.diff(ns.NetScalerState(), now, policy,
                                                                         frozenset({uid})))
            actual = await rt.view.actual()
        except errors.NitroError as exc:
            raise kopf.TemporaryError(f"NetScaler: {exc}", delay=5) from exc
    if outcome.failures:
        raise kopf.TemporaryError("; ".join(str(f) for f in outcome.failures), delay=10)
    if plan.holds:
        again = _come_back(rt, plan, actual, uid)
        raise kopf.TemporaryError(plan.holds[0].message, delay=5.0 if again is None else max(0.05, min(again, 5.0)))
    await sync_nodes(rt, rt.book.forget(key))
    rt.stalled.discard(key)
    rt.metrics.stalled.set(len(rt.stalled))
    with contextlib.suppress(KeyError):
        rt.metrics.bound_backends.remove(*key)


async def remove_orphans(rt: Runtime) -> int:
    """Remove owned NetScaler objects whose DsrService no longer exists (after a restart)."""
    known = {entry.uid for _, entry in _entries(rt.indices.get("dsr_services"))}
    async with rt.view.lock:
        actual = await rt.view.actual()
        owners = {o.owner for o in actual.objects.values()} | {b.owner for b in actual.bindings}
        orphans = frozenset(owners - known - {ns.SHARED_OWNER})
        if not orphans:
            return 0
        policy = planner.Policy(rt.settings.operator_id, default_drain_seconds=rt.settings.default_drain_seconds,
                                default_guard_percent=100)
        _, outcome = await rt.view.apply(lambda now: planner.diff(ns.NetScalerState(), now, policy, orphans), actual)
    log.info("Removed %d NetScaler objects of deleted DsrServices %s", len(outcome.applied), sorted(orphans))
    rt.metrics.orphans_removed.inc(len(outcome.applied))
    return len(outcome.applied)
