"""`dsr-operator run`: the Kubernetes operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import threading
import time
import uuid
from typing import Any

import kopf
import pydantic
from aiohttp import web

from dsr_operator import kube
from dsr_operator.controller import config, election, handlers, kopf_fixes, metrics

log = logging.getLogger(__name__)


def kopf_settings(settings: config.OperatorSettings) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    # The DsrService finalizer is the operator's own (`controller.finalizer`); kopf's is a name no object
    # carries, so kopf, which has no deletion handler of ours, never adds or removes one. Kopf has no
    # handler whose state it keeps, so it stores nothing; should one come, its bookkeeping goes to the
    # status (which has room), never to annotations, where a user's own may take nearly all 256 KiB.
    s.persistence.progress_storage = kopf.StatusProgressStorage(name="kopf")
    s.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(name="kopf", ignored_fields=["metadata"])
    s.posting.level = 20
    s.watching.server_timeout = 300
    s.networking.request_timeout = 60
    return s


async def run(settings: config.OperatorSettings, *, stop_flag: asyncio.Event | None = None,
              ready_flag: Any = None) -> None:
    """Run the operator until `stop_flag` is set, SIGTERM/SIGINT arrive, or leadership is lost.

    With `settings.leader_election`, the replica first waits to hold the Lease (answering /healthz
    meanwhile), reconciles while it holds it, and releases it on the way out.
    """
    stop = stop_flag if stop_flag is not None else asyncio.Event()
    _stop_on_signals(stop)
    health = await _serve_health(settings.liveness_port) if settings.liveness_port else None
    memo = kopf.Memo()
    kopf_ready = asyncio.Event()
    taking_back = asyncio.create_task(_signals_back(kopf_ready, stop, ready_flag), name="signals")
    try:
        if not settings.leader_election:
            await _kopf_until(stop, None, settings, kopf_ready, memo)
            return
        connection = handlers.connection(settings)
        kube_config = await asyncio.to_thread(kube.load_config, connection)
        async with kube.make_client(kube_config, connection, field_manager="dsr-operator") as client:
            # A Pod's name: a restarted container takes its own Lease back at once (its predecessor is
            # gone). Outside a Pod, the host name is not unique enough: add a random part.
            identity = settings.pod_name or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
            elector = election.Elector(client, settings.lease_namespace(), settings.leader_election, identity)
            if not await elector.acquire(stop):
                return
            holding = asyncio.create_task(elector.hold(), name="leader-election")
            try:
                await _kopf_until(stop, holding, settings, kopf_ready, memo)
            finally:
                lost = holding.done()
                holding.cancel()
                if not lost:
                    await elector.release()
            if lost:
                raise LeadershipLost(f"Lease {elector.namespace}/{elector.name} lost")
    finally:
        taking_back.cancel()
        if health is not None:
            await health.cleanup()


class LeadershipLost(RuntimeError):
    """Another replica holds the Lease now; this process must stop (its Pod restarts as a stand-by)."""


def _stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop` (only the main thread may handle signals)."""
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)


async def _kopf_until(stop: asyncio.Event, holding: asyncio.Task[None] | None, settings: config.OperatorSettings,
                      kopf_ready: asyncio.Event, memo: kopf.Memo) -> None:
    """Run kopf until `_first` stops it: asked to stop (after the work in hand), or the Lease lost."""
    kopf_stop = asyncio.Event()
    relay = asyncio.create_task(_first(stop, holding, kopf_stop, memo, settings), name="stop")
    try:
        await _kopf(settings, kopf_stop, kopf_ready, memo)
    finally:
        relay.cancel()


async def _signals_back(kopf_ready: asyncio.Event, stop: asyncio.Event, ready_flag: Any) -> None:
    """Once kopf runs (it installs its own SIGTERM handler, which stops at once), SIGTERM sets our stop again,
    so that the work in hand is finished first (`_settle`); then tell the caller the operator is ready."""
    await kopf_ready.wait()
    _stop_on_signals(stop)
    if ready_flag is not None:
        ready_flag.set()


async def _first(stop: asyncio.Event, holding: asyncio.Task[None] | None, kopf_stop: asyncio.Event,
                 memo: kopf.Memo, settings: config.OperatorSettings) -> None:
    """Stop kopf when the operator is asked to stop or when the Lease is lost, whichever comes first.

    Asked to stop, it first finishes the work in hand (`_settle`); a lost Lease stops it at once (another
    replica may be writing already)."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, *([holding] if holding else [])}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set() and not (holding is not None and holding.done()):
            await _settle(memo, settings, holding)
    finally:
        waiter.cancel()
        kopf_stop.set()


async def _settle(memo: kopf.Memo, settings: config.OperatorSettings, holding: asyncio.Task[None] | None) -> None:
    """Keep reconciling after SIGTERM until nothing has been in hand for `shutdown_quiet_seconds` (at most
    `shutdown_max_seconds`). `kubectl drain` evicts the leader together with the app's Pods; without this,
    their endpoints' changes would wait for the next leader to start."""
    quiet, deadline = settings.shutdown_quiet_seconds, time.monotonic() + settings.shutdown_max_seconds
    if quiet <= 0 or settings.shutdown_max_seconds <= 0:
        return
    log.info("Stopping: finishing the work in hand first (up to %.0f s)", settings.shutdown_max_seconds)
    calm_since: float | None = None
    while time.monotonic() < deadline and not (holding is not None and holding.done()):
        rt = memo.get("runtime")
        now = time.monotonic()
        if rt is None or rt.batcher.settled(quiet):
            calm_since = calm_since if calm_since is not None else now
            if now - calm_since >= quiet:
                return
        else:
            calm_since = None
        await asyncio.sleep(0.05)
    log.warning("Stopping with work in hand after %.0f s; the next leader takes it over", settings.shutdown_max_seconds)


async def _kopf(settings: config.OperatorSettings, stop: asyncio.Event, ready_flag: Any, memo: kopf.Memo) -> None:
    kopf_fixes.install()
    await kopf.operator(
        registry=handlers.make_registry(settings),
        settings=kopf_settings(settings),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,
        stop_flag=stop,
        ready_flag=ready_flag,
        memo=memo,
    )


async def _serve_health(port: int) -> web.AppRunner:
    """`/healthz`: 200 while the process's event loop runs, on the leader and on a stand-by alike."""
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    return await metrics.serve_get(port, "/healthz", healthz)


def _cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for field in ("operator_id", "resync_seconds", "metrics_port", "liveness_port", "kube_server",
                  "kubeconfig", "leader_election"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    if args.namespace:
        overrides["namespaces"] = args.namespace
    try:
        settings = config.OperatorSettings(**overrides)
    except pydantic.ValidationError as exc:  # inputs hidden: a URL may carry a password
        prefix = {"NitroSettings": "DSR_NETSCALER_", "EtcdSettings": "DSR_ETCD_"}.get(exc.title, "DSR_")
        for error in exc.errors():
            where = prefix + "_".join(str(part) for part in error["loc"]).upper()
            print(f"dsr-operator run: invalid setting {where}: {error['msg']}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(settings))
    except LeadershipLost as e:
        log.error("Stopping: %s.", e)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("run", help="run the Kubernetes operator",
                              description="Run the DsrService operator. Every flag also reads DSR_<NAME> "
                                          "from the environment; NetScaler settings read DSR_NETSCALER_*.")
    p.add_argument("--operator-id", help="ownership marker in NetScaler comments (DSR_OPERATOR_ID)")
    p.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    p.add_argument("--resync-seconds", type=float, help="NetScaler drift repair interval")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument("--liveness-port", type=int, help="/healthz port (0: off)")
    p.add_argument("--kube-server", help="Kubernetes API URL (default: in-cluster or KUBECONFIG)")
    p.add_argument("--kubeconfig", help="kubeconfig file")
    p.add_argument("--leader-election", metavar="LEASE",
                   help="elect one leader among replicas on this Lease (DSR_LEADER_ELECTION)")
    p.set_defaults(func=_cmd_run)
