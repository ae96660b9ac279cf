"""`dsr-operator sync`: the operator's reconcile loop without Kubernetes.

DsrService manifests on disk are the intent (static or registry backends), etcd watches bring the
registered hosts, and the same `decide` → bulk apply → `report` path as the operator keeps NetScaler
true: a host that registers is bound, one that asks to drain is drained then unbound, one whose
lease expires is unbound, and an unreachable etcd keeps the last good backends. What the operator
writes into a DsrService's status is printed instead, one line when it changes; the NetScaler
changes are printed as CLI commands, as `apply` prints them; Prometheus metrics as the operator's.

`sync` owns every object of its operator id (`--operator-id`): a DsrService removed from the
manifests (then SIGHUP, which reads them again) is removed from NetScaler. SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import pathlib
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from dsr_operator import clock, oneshot
from dsr_operator import settings as settings_mod
from dsr_operator.controller import decide, loop, view
from dsr_operator.controller.metrics import Metrics
from dsr_operator.model import state as ns
from dsr_operator.netscaler import errors, render
from dsr_operator.registry import etcd, source

log = logging.getLogger(__name__)
Key = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class SyncSettings:
    operator_id: str = "default"
    resync_seconds: float = 60.0
    debounce_seconds: float = 0.05
    save_debounce_seconds: float = 5.0
    default_drain_seconds: int = 30
    max_unbind_percent: int = 50
    drain_check_seconds: float = 1.0


def entries_of(loaded: Sequence[oneshot.Loaded]) -> dict[Key, decide.Entry]:
    """The manifests as the operator's index keeps DsrServices (uid: namespace/name, as `apply` marks them)."""
    out: dict[Key, decide.Entry] = {}
    for order, item in enumerate(loaded):
        body = item.service.model_dump(mode="json", by_alias=True, exclude_none=True)
        ref = item.service.ref
        meta = {**body["metadata"], "namespace": ref.namespace, "uid": ref.uid,
                "creationTimestamp": f"{order:08d}", "generation": 1}
        out[(ref.namespace, ref.name)] = decide.Entry.of({**body, "metadata": meta})
    return out


def status_line(key: Key, status: Mapping[str, Any]) -> str:
    conditions = {c["type"]: c for c in status.get("conditions", ())}
    ready = conditions.get("Ready", {})
    backends = status.get("backends") or {}
    counts = (f" ({backends.get('bound', 0)}/{backends.get('desired', 0)} bound)"
              if "desired" in backends else "")
    state = "Ready" if ready.get("status") == "True" else f"not ready: {ready.get('reason')}"
    message = f": {ready['message']}" if ready.get("message") and ready.get("status") != "True" else ""
    warnings = "".join(f"\n  warning: {w}" for w in status.get("warnings") or ())
    return f"DsrService {key[0]}/{key[1]}: {state}{counts}{message}{warnings}"


class Sync:
    def __init__(self, paths: Sequence[pathlib.Path], nitro: view.NetScalerView, registry: source.Registry | None,
                 settings: SyncSettings, out: TextIO, metrics: Metrics | None = None) -> None:
        self.paths = list(paths)
        self.view = nitro
        self.registry = registry
        self.settings = settings
        self.out = out
        self.metrics = metrics or Metrics()
        self.batcher = loop.Batcher(settings.debounce_seconds)
        self.entries: dict[Key, decide.Entry] = {}
        self.shown: dict[Key, str] = {}
        self.converged = asyncio.Event()
        """Set whenever nothing is in hand (for tests and `--once`)."""

    def load(self) -> list[str]:
        """(Re-)read the manifests; problems, if any (then the previous manifests stay in force)."""
        loaded, problems, notices = oneshot.load_manifests(self.paths, registry=True)
        for notice in notices:
            print(f"# {notice}", file=self.out, flush=True)
        if problems:
            return problems
        before = self.entries
        self.entries = entries_of(loaded)
        changed = {k for k, e in self.entries.items() if before.get(k) != e} | (before.keys() - self.entries.keys())
        self.batcher.mark(*changed)
        if self.registry is not None:
            self.registry.want(self._prefixes())
        return []

    def _prefixes(self) -> set[str]:
        return {e.spec.backends.registry.etcd.key_prefix for e in self.entries.values()
                if e.spec is not None and e.spec.backends.registry is not None}

    def registry_changed(self, prefix: str) -> None:
        self.batcher.mark(*(k for k, e in self.entries.items() if e.spec is not None
                            and e.spec.backends.registry is not None
                            and e.spec.backends.registry.etcd.key_prefix == prefix))

    def snapshot(self, keys: frozenset[Key], actual: ns.NetScalerState) -> decide.Snapshot:
        s = self.settings
        uids = {e.ref.uid for e in self.entries.values()}
        owners = {o.owner for o in actual.objects.values()} | {b.owner for b in actual.bindings}
        return decide.Snapshot(
            keys=keys, entries=self.entries, slices={}, nodes={}, nodeconfigs={}, services=None, actual=actual,
            needs={}, defaults=decide.Defaults(s.operator_id, s.default_drain_seconds, s.max_unbind_percent),
            orphans=frozenset(owners - uids - {ns.SHARED_OWNER}),
            registry=self.registry.views() if self.registry is not None else {},
            registry_waits=self.registry.waits() if self.registry is not None else {},
            registry_configured=self.registry is not None,
        )

    async def batch(self, keys: set[Key]) -> None:
        now = clock.utcnow()
        async with self.view.lock:
            try:
                actual = await self.view.actual()
                snap = self.snapshot(frozenset(keys), actual)
                latest = [decide.decide(snap)]

                def plan_against(state: ns.NetScalerState) -> Any:
                    if state is not actual:
                        latest[0] = decide.decide(dataclasses.replace(snap, actual=state))
                    return latest[0].plan

                _, outcome = await self.view.apply(plan_against, actual)
                after = await self.view.actual()
            except (errors.NitroError, view.NotPrimary) as exc:
                self.metrics.netscaler_up.set(0)
                print(f"# NetScaler unreachable: {exc}; trying again", file=self.out, flush=True)
                for key in keys:
                    self.batcher.failed(key)
                return
        self.metrics.netscaler_up.set(1)
        for op in outcome.applied:
            print(f"applied: {render.command(op.verb, op.kind, op.body)}", file=self.out)
        for failure in outcome.failures:
            print(f"failed: {failure}", file=self.out)
        decision = latest[0]
        for r in decide.report(decision, after, outcome, snap, now, primary=self.view.primary_url,
                               drain_report=self.view.drain_report):
            if r.failures:
                self.batcher.failed(r.key)
            else:
                self.batcher.succeeded(r.key)
            if r.draining_services:
                self.batcher.later(r.key, self.view.drain_recheck(r.draining_services))
            if r.retry_after is not None:
                self.batcher.later(r.key, r.retry_after)
            line = status_line(r.key, r.status)
            if self.shown.get(r.key) != line:
                print(line, file=self.out)
                self.shown[r.key] = line
            self.metrics.bound_backends.labels(*r.key).set(r.bound)
            self.metrics.reconciled.inc()
        for key in keys - set(self.entries):  # gone from the manifests: removed once NetScaler has nothing of it
            objects, bindings = after.owned_by(f"{key[0]}/{key[1]}")
            if objects or bindings:
                services = {t for b in bindings if (t := ns.drain_target(b)) is not None}
                wait = self.view.drain_wait(services)
                self.batcher.later(key, wait if wait is not None else 1.0)
            elif self.shown.pop(key, None) is not None:
                print(f"DsrService {key[0]}/{key[1]}: removed", file=self.out)
        self.out.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile until `stop` is set: batches as changes come, a full pass every resync."""
        resync = asyncio.create_task(self._resync(), name="sync-resync")
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                if self.batcher.settled(0.0):
                    self.converged.set()
                waiting = asyncio.create_task(self.batcher.next_batch())
                done, _ = await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if waiting not in done:
                    waiting.cancel()
                    break
                self.converged.clear()
                self.batcher.busy = True
                started = time.monotonic()
                try:
                    await self.batch(waiting.result())
                finally:
                    self.batcher.busy = False
                    self.metrics.reconcile_seconds.labels("ok").observe(time.monotonic() - started)
        finally:
            for task in (resync, stopping):
                task.cancel()
            await asyncio.gather(resync, stopping, return_exceptions=True)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            self.view.invalidate()
            self.batcher.mark(*self.entries)


async def serve(args: argparse.Namespace, out: TextIO) -> int:
    nitro_settings = oneshot.nitro_settings_of(args)
    nitro_settings.credentials()  # no password: say so now, not at the first batch
    etcd_settings = settings_mod.EtcdSettings(**({"endpoints": args.etcd} if args.etcd else {}))
    settings = SyncSettings(operator_id=args.operator_id, resync_seconds=args.resync_seconds,
                            default_drain_seconds=args.default_drain_seconds)
    metrics = Metrics()
    metrics.netscalers(nitro_settings.endpoints())
    nitro = view.NetScalerView(nitro_settings, settings.operator_id, save_debounce=settings.save_debounce_seconds,
                               on_request=metrics.on_request, on_drain_lag=metrics.drain_unbind_lag.observe,
                               drain_check=settings.drain_check_seconds, on_primary=metrics.on_primary)
    holder: list[Sync] = []
    registry = (source.Registry(etcd.EtcdClient.of(etcd_settings), lambda prefix: holder[0].registry_changed(prefix))
                if etcd_settings.configured else None)
    sync = Sync([pathlib.Path(f) for f in args.filename], nitro, registry, settings, out, metrics)
    holder.append(sync)
    problems = sync.load()
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        await nitro.close()
        if registry is not None:
            await registry.close()
        return oneshot.EXIT_INVALID
    stop = asyncio.Event()
    loop_ = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop_.add_signal_handler(sig, stop.set)

    def reload() -> None:
        for problem in sync.load():
            print(f"# not reloaded: {problem}", file=out, flush=True)

    loop_.add_signal_handler(signal.SIGHUP, reload)
    runner = await metrics.serve(args.metrics_port) if args.metrics_port else None
    try:
        await sync.run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop_.remove_signal_handler(sig)
        if runner is not None:
            await runner.cleanup()
        if registry is not None:
            await registry.close()
        await nitro.close()
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(serve(args, sys.stdout))
    except ValueError as exc:  # missing credentials and the like
        print(str(exc), file=sys.stderr)
        return oneshot.EXIT_INVALID


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    text = ("keep NetScaler true to DsrService manifests and registry watches, without Kubernetes "
            "(static and etcd-registered backends)")
    p = subparsers.add_parser("sync", help=text, description=text)
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE",
                   help="manifest file or folder (repeatable; SIGHUP reads them again)")
    p.add_argument("--etcd", metavar="URL", action="append",
                   help="etcd client URL for registry backends (repeatable; env DSR_ETCD_ENDPOINTS, with "
                   "DSR_ETCD_USERNAME, DSR_ETCD_PASSWORD_FILE, DSR_ETCD_CA_FILE, DSR_ETCD_CERT_FILE, "
                   "DSR_ETCD_KEY_FILE)")
    p.add_argument("--resync-seconds", type=float, default=60.0, help="re-read NetScaler this often (default 60)")
    p.add_argument("--default-drain-seconds", type=int, default=30,
                   help="drain time of DsrServices without drainSeconds (default 30)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (default: off)")
    oneshot.connection_flags(p)
    p.set_defaults(func=_cmd_sync)

