"""The reconcile loop: one per NetScaler, batched and level-triggered.

1. Take every DsrService that is dirty or due (`loop.Batcher`), after a short debounce.
2. Snapshot the inputs: the indices (DsrServices parsed once, EndpointSlices, Nodes, DsrNodeConfigs,
   Services) and the cached NetScaler state.
3. `decide.decide(snapshot)`: per DsrService a judgement, the node VIPs to announce, one plan.
4. Announce VIPs (additions first), apply the plan in bulk stages across the batch, release the VIPs
   NetScaler no longer routes to.
5. `decide.report(...)`: status (written only when it changed), events, and when to come back.

Deletion goes through the finalizer (`finalize`), and a resync timer re-reads NetScaler, sweeps
objects of deleted DsrServices and marks everything dirty once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import datetime
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf
import lightkube
from lightkube.types import PatchType

from dsr_operator import clock as clock_
from dsr_operator import kube
from dsr_operator.api import models, vippool
from dsr_operator.controller import config, decide, finalizer, frontdoor, loop, nodes, view, world
from dsr_operator.controller.metrics import Metrics
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import errors, executor, render
from dsr_operator.planner import plan as planner
from dsr_operator.registry import etcd, source

log = logging.getLogger(__name__)
Key = tuple[str, str]
MAX_EVENTS_PER_RECONCILE = 5
COMPONENT = "dsr-operator"
STATUS_WRITERS = 16
#: Batches whose statuses may still be being written while the next one runs.
MAX_REPORTING = 4
#: A batch at least this large leaves enough garbage to be worth handing memory back to the system.
LARGE_BATCH = 100


class HostBook:
    """Which DsrServices list each static backend address (one namespace may use an address at a time).

    Kept here rather than in a kopf index: at 1,000 DsrServices x 20 hosts kopf's index took 10 MiB
    for what these two maps hold in 1.5 (the addresses are the parsed specs' strings).
    """

    def __init__(self) -> None:
        self._of: dict[Key, tuple[str, ...]] = {}
        self._users: dict[str, tuple[Key, ...]] = {}

    def record(self, key: Key, hosts: Iterable[str]) -> set[Key]:
        """Record the addresses `key` lists now; returns every DsrService that lists one of its old or new
        addresses, `key` included (a change may settle who holds them)."""
        new = tuple(sorted(set(hosts)))
        old = self._of.pop(key, ())
        if new:
            self._of[key] = new
        for host in set(old) - set(new):
            left = tuple(k for k in self._users.get(host, ()) if k != key)
            if left:
                self._users[host] = left
            else:
                self._users.pop(host, None)
        for host in set(new) - set(old):
            self._users[host] = (*self._users.get(host, ()), key)
        keys = {key}
        for host in {*old, *new}:
            keys.update(self._users.get(host, ()))
        return keys


@dataclasses.dataclass
class Runtime:
    """Everything the handlers share, kept in kopf's memo (no module globals)."""

    settings: config.OperatorSettings
    view: view.NetScalerView
    kube: lightkube.AsyncClient
    metrics: Metrics
    batcher: loop.Batcher
    frontdoor: frontdoor.FrontDoor
    finalizers: finalizer.Finalizers = dataclasses.field(init=False)
    book: nodes.NodeVipBook = dataclasses.field(default_factory=nodes.NodeVipBook)
    written: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """node → VIPs we wrote that the DsrNodeConfig index has not shown yet."""
    swept: bool = False
    """Every node's DsrNodeConfig compared with the book once it was complete (see `sync_nodes`)."""
    generations: dict[Key, tuple[int | None, bool]] = dataclasses.field(default_factory=dict)
    """The generation each DsrService had when last seen, and whether it held the finalizer."""
    vips: dict[Key, str] = dataclasses.field(default_factory=dict)
    """The VIP each DsrService had when last seen (a change frees the old one)."""
    hosts: HostBook = dataclasses.field(default_factory=lambda: HostBook())
    """The static backend addresses each DsrService had when last seen (a change frees the old ones)."""
    stalled: set[Key] = dataclasses.field(default_factory=set)
    indexed: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    indices: dict[str, Any] = dataclasses.field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = dataclasses.field(default_factory=list)
    reporting: dict[Key, asyncio.Task[None]] = dataclasses.field(default_factory=dict)
    """DsrService → the task writing its latest batch's status (a later batch writes after it)."""
    events: asyncio.Task[None] | None = None
    """The latest batch's Events being posted (each batch's after the previous one's)."""
    unreachable_since: float | None = None
    registry: source.Registry | None = None
    """The etcd registry's followed prefixes (None: no etcd configured)."""

    def defaults(self) -> decide.Defaults:
        s = self.settings
        return decide.Defaults(s.operator_id, s.default_drain_seconds, s.max_unbind_percent, s.step_changes)


def _index_items(index: Any) -> list[tuple[Any, Any]]:
    """(key, first value) of a kopf index."""
    out = []
    for key in list(index.keys() if index is not None else ()):
        for value in index.get(key, ()):
            out.append((key, value))
            break
    return out


def entries(rt: Runtime) -> dict[Key, decide.Entry]:
    return dict(_index_items(rt.indices.get("dsr_services")))


def snapshot(rt: Runtime, keys: Iterable[Key], actual: ns.NetScalerState) -> decide.Snapshot:
    slices_index = rt.indices.get("dsr_slices")
    slices: dict[Key, list[tuple[world.Endpoint, ...]]] = {}
    all_entries = entries(rt)
    batch = frozenset(keys)
    for key in batch:
        entry = all_entries.get(key)
        service = entry.spec.backends.service if entry is not None and entry.spec is not None else None
        if service and slices_index is not None:
            slices[(key[0], service)] = list(slices_index.get((key[0], service), ()))
    services_index = rt.indices.get("dsr_k8s_services")
    if rt.registry is not None:
        rt.registry.add(prefixes(all_entries[key] for key in batch if key in all_entries))
    return decide.Snapshot(
        keys=batch,
        entries=all_entries,
        slices=slices,
        nodes=dict(_index_items(rt.indices.get("dsr_nodes"))),
        nodeconfigs=dict(_index_items(rt.indices.get("dsr_nodeconfigs"))),
        services=dict(_index_items(services_index)) if services_index is not None else None,
        actual=actual,
        needs={key: rt.book.needs_of(key) for key in batch},
        defaults=rt.defaults(),
        orphans=orphans_of(actual, all_entries.values()),
        registry=rt.registry.views() if rt.registry is not None else {},
        registry_waits=rt.registry.waits() if rt.registry is not None else {},
        registry_configured=rt.registry is not None,
        vip_pools=vip_pools(rt) if rt.settings.require_vip_pool else None,
        namespace_labels=dict(_index_items(rt.indices.get("dsr_namespaces"))),
    )


def vip_pools(rt: Runtime) -> list[vippool.Pool]:
    """The valid DsrVipPools, as the index has them."""
    return [entry.pool for _, entry in _index_items(rt.indices.get("dsr_vippools")) if entry.pool is not None]


def prefixes(known: Iterable[decide.Entry]) -> set[str]:
    """The registry key prefixes these DsrServices read."""
    return {e.spec.backends.registry.etcd.key_prefix for e in known
            if e.spec is not None and e.spec.backends.registry is not None}


def registry_changed(rt: Runtime, prefix: str) -> None:
    """A followed prefix changed (or etcd went away or came back): its readers are reconciled."""
    readers = rt.indices.get("dsr_by_prefix")
    rt.batcher.mark(*(readers.get(prefix, ()) if readers is not None else ()))


def orphans_of(actual: ns.NetScalerState, known: Iterable[decide.Entry]) -> frozenset[str]:
    """Owners of our objects on NetScaler that no DsrService has (deleted while the operator was away)."""
    uids = {e.ref.uid for e in known}
    owners = {o.owner for o in actual.objects.values()} | {b.owner for b in actual.bindings}
    return frozenset(owners - uids - {ns.SHARED_OWNER})


async def sync_nodes(rt: Runtime, changed: set[str]) -> None:
    """Write the VIP union of every changed node to its DsrNodeConfig (the index is the truth).

    The first time the book is complete (every DsrService has reported what it needs), every node with a
    DsrNodeConfig is compared, not only the changed ones: a VIP a previous leader announced and no
    DsrService needs any more (say, a node drained while leadership moved) is in no one's book.
    """
    known = {key for key, entry in entries(rt).items() if not entry.deleting}
    complete = known <= rt.book.reported()
    configs = dict(_index_items(rt.indices.get("dsr_nodeconfigs")))
    if complete and not rt.swept:
        rt.swept = True
        changed = changed | set(configs)
    if not changed:
        return
    node_infos = dict(_index_items(rt.indices.get("dsr_nodes")))
    for node in sorted(changed):
        info = configs.get(node)
        current = sorted(info.vips) if info is not None else None
        base = rt.written.get(node, current)
        vips = nodes.target_vips(base or (), rt.book.vips(node), complete)
        if base is not None and vips == sorted(base):
            continue
        if node not in node_infos and current is None:
            continue  # no such node: nothing to configure
        uid = node_infos[node].uid if node in node_infos else None
        await nodes.write(rt.kube, node, vips, base, uid)
        rt.written[node] = vips


def index_caught_up(rt: Runtime, node: str, vips: Iterable[str] | None) -> None:
    """The DsrNodeConfig index changed: our record of a write is no longer needed (or it was deleted)."""
    if vips is None or sorted(vips) == rt.written.get(node):
        rt.written.pop(node, None)


async def write_status(rt: Runtime, entry: decide.Entry, status: Mapping[str, Any]) -> bool:
    """Write the status if it changed; whether it was written."""
    key = (entry.ref.namespace, entry.ref.name)
    stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in status.get("conditions", ()))
    (rt.stalled.add if stalled else rt.stalled.discard)(key)
    rt.metrics.stalled.set(len(rt.stalled))
    if all(entry.status.get(k) == v for k, v in status.items()) and not entry.kopf_leftover:
        return False
    patch = {**status, decide.KOPF_STATUS: None} if entry.kopf_leftover else dict(status)
    try:
        await rt.kube.patch(kube.DsrService.Status, entry.ref.name, {"status": patch},
                            namespace=entry.ref.namespace, patch_type=PatchType.MERGE)
    except Exception as exc:  # the object went away meanwhile, or the API is down: the next pass retries
        log.warning("Status of %s/%s not written: %s", entry.ref.namespace, entry.ref.name, exc)
        return False
    return True


async def _post_events(rt: Runtime, entry: decide.Entry, applied: Iterable[nsops.Op],
                       failures: Iterable[str]) -> None:
    """Events on the DsrService: each applied change (one summary past a handful), each failure."""
    involved = kube.Involved(models.SERVICE_KIND, entry.ref.name, entry.ref.namespace, entry.ref.uid)
    lines = [render.command(op.verb, op.kind, op.body) for op in applied]
    if len(lines) > MAX_EVENTS_PER_RECONCILE:
        lines = [f"{len(lines)} NetScaler changes: " + "; ".join(lines[:10])]
    for line in lines:
        await kube.post_event(rt.kube, involved, "Applied", line, component=COMPONENT)
    for failure in failures:
        await kube.post_event(rt.kube, involved, "NetScalerRejected", failure, component=COMPONENT, warning=True)


def release_memory() -> None:
    """Collect garbage and return free heap pages to the system (glibc `malloc_trim`), after a big batch.

    A batch over thousands of NetScaler objects builds its plan, request bodies and replies at once;
    without this the process keeps that peak as its resident size for good.
    """
    gc.unfreeze()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    # What is left lives long (the NetScaler cache, the indices): the collector's automatic runs no longer
    # walk it, so they cost what the next batches allocate, not what the process holds.
    gc.freeze()


async def run(rt: Runtime) -> None:
    """The loop: batches until cancelled.

    A batch holds the loop only while it reads, decides and writes NetScaler and the nodes; its statuses
    and events are written while the next batch runs (`reconcile_batch` hands them back as a task), so a
    drain that ends meanwhile is unbound without waiting for them. A DsrService's statuses are written in
    the order of its batches.
    """
    await rt.indexed.wait()
    reporting: set[asyncio.Task[None]] = set()
    in_batch = [False]
    worked = 0  # DsrServices reconciled since memory was last handed back

    def reported(task: asyncio.Task[None]) -> None:
        reporting.discard(task)
        rt.batcher.busy = in_batch[0] or bool(reporting)

    try:
        while True:
            batch = await rt.batcher.next_batch()
            started = time.monotonic()
            result = "ok"
            in_batch[0] = rt.batcher.busy = True
            try:
                task = await reconcile_batch(rt, batch)
                if task is not None:
                    reporting.add(task)
                    task.add_done_callback(reported)
                if len(reporting) >= MAX_REPORTING:  # the API server is slower than NetScaler: wait for it
                    await asyncio.wait(set(reporting), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                raise
            except Exception:
                result = "error"
                log.exception("Reconcile of %d DsrServices failed", len(batch))
                for key in batch:
                    rt.batcher.failed(key)
            finally:
                in_batch[0] = False
                rt.batcher.busy = bool(reporting)
                took = time.monotonic() - started
                rt.metrics.reconcile_seconds.labels(result).observe(took)
                rt.metrics.batch_size.observe(len(batch))
                log.info("Reconciled %d DsrService(s) in %.3f s (%s)", len(batch), took, result)
                worked += len(batch)
                if worked >= LARGE_BATCH and not rt.batcher.ready():
                    release_memory()  # once the backlog is done: a full collection costs as much as a batch
                    worked = 0
    finally:
        pending = [*reporting, *([rt.events] if rt.events is not None else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def reconcile_batch(rt: Runtime, keys: set[Key]) -> asyncio.Task[None] | None:
    """One batch up to NetScaler and the nodes; returns the task that writes its statuses and events."""
    # Nothing goes to NetScaler or a node for a DsrService whose deletion the operator might not see:
    # first the finalizer, for all that lack it together; one it could not be added to waits.
    known = entries(rt)
    lacking = {k: known[k] for k in keys if k in known and not known[k].finalized and not known[k].deleting}
    if lacking:
        added = await rt.finalizers.add({k: {"finalizers": list(e.finalizers), "resourceVersion": e.resource_version}
                                         for k, e in lacking.items()})
        for key in set(lacking) - added:
            rt.batcher.failed(key)
        keys = keys - (set(lacking) - added)
        if not keys:
            return None
    now = clock_.utcnow()
    clock = [time.monotonic()]
    took: dict[str, float] = {}

    def lap(step: str) -> None:
        took[step] = time.monotonic() - clock[0]
        clock[0] = time.monotonic()

    async with rt.view.lock:
        try:
            actual = await rt.view.actual()
            lap("read")
            snap = snapshot(rt, keys, actual)
            decision = decide.decide(snap)
            lap("decide")
            changed: set[str] = set()
            for key, needs in decision.needs.items():
                changed |= rt.book.record(key, needs)
            await sync_nodes(rt, changed)
            latest = [decision]

            def plan_against(state: ns.NetScalerState) -> planner.Plan:
                """The batch's plan; after an HA failover, the rest planned against the new primary."""
                if state is not actual:
                    latest[0] = decide.decide(dataclasses.replace(snap, actual=state))
                return latest[0].plan

            _, outcome = await rt.view.apply(plan_against, actual)
            decision = latest[0]
            after = await rt.view.actual()
            lap("netscaler")
            rt.unreachable_since = None
        except (errors.NitroTransportError, errors.NitroServerError, errors.NitroSessionExpired,
                errors.NitroAuthenticationFailed, view.NotPrimary) as exc:
            await _unreachable(rt, keys, exc, now)
            return None
    reports = decide.report(decision, after, outcome, snap, now, primary=rt.view.primary_url,
                            drain_report=rt.view.drain_report)
    changed = set()
    for r in reports:
        if r.needs is not None:
            changed |= rt.book.record(r.key, r.needs)
    await sync_nodes(rt, changed)
    for r in reports:  # when each comes back: now, not after its status (a drain's end must not wait for it)
        if r.failures:
            rt.batcher.failed(r.key)
            continue
        rt.batcher.succeeded(r.key)
        if r.draining_services:
            rt.batcher.later(r.key, rt.view.drain_recheck(r.draining_services))
        if r.retry_after is not None:
            rt.batcher.later(r.key, r.retry_after)
    earlier = {r.key: rt.reporting[r.key] for r in reports if r.key in rt.reporting}
    task = asyncio.create_task(_report(rt, keys, reports, earlier, outcome, took, lap),
                               name="dsr-report")
    for r in reports:
        rt.reporting[r.key] = task

    def forget(done: asyncio.Task[None]) -> None:
        for r in reports:
            if rt.reporting.get(r.key) is done:
                del rt.reporting[r.key]

    task.add_done_callback(forget)
    return task


async def _report(rt: Runtime, keys: set[Key], reports: list[decide.Report],
                  earlier: Mapping[Key, asyncio.Task[None]], outcome: executor.Outcome, took: dict[str, float],
                  lap: Callable[[str], None]) -> None:
    """A batch's statuses and metrics, each after the DsrService's previous batch wrote its own (when each
    comes back was scheduled before, in `reconcile_batch`); then its events (`_tell`), once every status
    is written: Ready is what users and GitOps tools wait for, the events are its history."""
    semaphore = asyncio.Semaphore(STATUS_WRITERS)
    written = [0]

    async def finish(r: decide.Report) -> None:
        before = earlier.get(r.key)
        if before is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.shield(before)
        async with semaphore:
            done = await write_status(rt, r.entry, r.status)
            written[0] += done
        rt.metrics.reconciled.inc()
        if r.verdict.reason not in ("InvalidSpec", "VipConflict", "ServiceNotFound"):
            rt.metrics.bound_backends.labels(r.key[0], r.key[1]).set(r.bound)
            desired = (r.status.get("backends") or {}).get("desired")
            if desired is not None:
                rt.metrics.desired_backends.labels(r.key[0], r.key[1]).set(desired)
            rt.metrics.draining_backends.labels(r.key[0], r.key[1]).set(len(r.draining_services))

    try:
        await asyncio.gather(*(finish(r) for r in reports))
        if rt.events is not None:  # one batch's events at most are posted outside the work in hand
            await asyncio.wait({rt.events})
        rt.events = asyncio.create_task(_tell(rt, reports), name="dsr-events")
    except Exception:
        log.exception("Writing the statuses of %d DsrServices failed", len(reports))
        for r in reports:
            rt.batcher.failed(r.key)
        return
    lap("status")
    log.info("Batch of %d DsrService(s): %d NetScaler changes, %d refused, %d statuses written; seconds: %s",
             len(keys), len(outcome.applied), len(outcome.failures), written[0],
             ", ".join(f"{k} {v:.3f}" for k, v in took.items()))


async def _tell(rt: Runtime, reports: list[decide.Report]) -> None:
    """A batch's events, after the previous batch's (the next batch's report waits for them). Not work in
    hand: a stopping operator does not wait for them (at 10,000 new DsrServices they take a minute), and
    the next leader does not post them again."""
    semaphore = asyncio.Semaphore(STATUS_WRITERS)

    async def tell(r: decide.Report) -> None:
        async with semaphore:
            await _post_events(rt, r.entry, r.applied, r.failures)

    results = await asyncio.gather(*(tell(r) for r in reports), return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    if failed:
        log.warning("%d of %d Events not posted: %s", len(failed), len(reports), failed[0])


async def _unreachable(rt: Runtime, keys: set[Key], exc: errors.NitroError, now: datetime.datetime) -> None:
    pending = [asyncio.shield(rt.reporting[k]) for k in keys if k in rt.reporting]
    await asyncio.gather(*pending, return_exceptions=True)  # their earlier statuses first
    rt.unreachable_since = rt.unreachable_since or time.monotonic()
    if isinstance(exc, errors.NitroTransportError):
        rt.metrics.netscaler_up.set(0)
    reason = "NetScalerAuthFailed" if isinstance(exc, errors.NitroAuthenticationFailed) else "NetScalerUnreachable"
    decision = decide.decide(snapshot(rt, keys, ns.NetScalerState()))
    delay = min(30.0, 2.0 + (time.monotonic() - rt.unreachable_since) / 2)
    for r in decide.unreachable(decision, reason, str(exc), now):
        await write_status(rt, r.entry, r.status)
        if r.verdict.reason == reason:
            involved = kube.Involved(models.SERVICE_KIND, r.key[1], r.key[0], r.entry.ref.uid)
            await kube.post_event(rt.kube, involved, reason, str(exc), component=COMPONENT, warning=True)
            rt.batcher.later(r.key, delay)


async def finalize(rt: Runtime, key: Key, body: Mapping[str, Any]) -> None:
    """Deletion: drain and remove the NetScaler objects, then the node VIPs; then the finalizer goes.

    Raises `kopf.TemporaryError` with the delay to try again after (a drain running, NetScaler refusing).
    """
    entry = decide.Entry.of(body)
    uid = entry.ref.uid
    drain = entry.spec.drain_seconds if entry.spec is not None else None
    policy = planner.Policy(rt.settings.operator_id, drain_seconds={uid: drain} if drain is not None else {},
                            default_drain_seconds=rt.settings.default_drain_seconds, default_guard_percent=100)
    nothing = ns.NetScalerState()

    def removal(now: ns.NetScalerState) -> planner.Plan:
        """Everything of `uid` goes, at most `step_changes` changes at a time (the lock is let go in
        between, so other DsrServices' batches are not behind all of a huge one)."""
        plan = planner.diff(nothing, planner.relevant(now, nothing, {uid}), policy, frozenset({uid}))
        return decide.bounded(plan, decide.users(now, now.owned_by(uid)[1]), rt.settings.step_changes)

    async with rt.view.lock:
        try:
            actual = await rt.view.actual()
            plan, outcome = await rt.view.apply(removal, actual)
        except errors.NitroError as exc:
            raise kopf.TemporaryError(f"NetScaler: {exc}", delay=5) from exc
    if outcome.failures:
        raise kopf.TemporaryError("; ".join(str(f) for f in outcome.failures), delay=10)
    if any(h.reason == "Applying" for h in plan.holds):
        raise kopf.TemporaryError(plan.holds[0].message, delay=0.0)  # the next step, once others had a turn
    if plan.holds:
        _, owned = actual.owned_by(uid)
        again = rt.view.drain_wait({t for b in owned if (t := ns.drain_target(b)) is not None})
        delay = plan.retry_after or 5.0 if again is None else again
        raise kopf.TemporaryError(plan.holds[0].message, delay=max(0.05, min(delay, 5.0)))
    await sync_nodes(rt, rt.book.forget(key))
    rt.batcher.forget(key)
    rt.stalled.discard(key)
    rt.metrics.stalled.set(len(rt.stalled))
    for gauge in (rt.metrics.bound_backends, rt.metrics.desired_backends, rt.metrics.draining_backends):
        with contextlib.suppress(KeyError):
            gauge.remove(*key)


async def remove_orphans(rt: Runtime) -> int:
    """With no DsrService left at all, remove what deleted ones left on NetScaler (else batches do it).

    Each batch removes the objects of owners no DsrService has, planned together with what the live
    ones want, so a shared server or service a live DsrService still wants is never taken away.
    """
    if entries(rt):
        return 0
    async with rt.view.lock:
        actual = await rt.view.actual()
        orphans = orphans_of(actual, ())
        if not orphans:
            return 0
        policy = planner.Policy(rt.settings.operator_id, default_drain_seconds=rt.settings.default_drain_seconds,
                                default_guard_percent=100)
        nothing = ns.NetScalerState()
        _, outcome = await rt.view.apply(
            lambda now: planner.diff(nothing, planner.relevant(now, nothing, orphans), policy, orphans), actual
        )
    log.info("Removed %d NetScaler objects of deleted DsrServices %s", len(outcome.applied), sorted(orphans))
    rt.metrics.orphans_removed.inc(len(outcome.applied))
    return len(outcome.applied)


def make_runtime(settings: config.OperatorSettings, view_: view.NetScalerView, client: lightkube.AsyncClient,
                 metrics: Metrics) -> Runtime:
    indices: dict[str, Any] = {}
    door = frontdoor.FrontDoor(client, indices, load_balancer_class=settings.load_balancer_class,
                               default_class=settings.default_load_balancer)
    rt = Runtime(settings=settings, view=view_, kube=client, metrics=metrics,
                 batcher=loop.Batcher(settings.debounce_seconds, limit=settings.batch_limit),
                 frontdoor=door, indices=indices)
    rt.finalizers = finalizer.Finalizers(client, lambda key, body: finalize(rt, key, body))
    etcd_settings = settings.etcd
    if etcd_settings.configured:
        rt.registry = source.Registry(etcd.EtcdClient.of(etcd_settings), lambda prefix: registry_changed(rt, prefix))
    return rt


__all__ = ["Runtime", "executor", "finalize", "make_runtime", "reconcile_batch", "remove_orphans", "run"]
