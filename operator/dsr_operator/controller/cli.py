"""`dsr-operator run`: the Kubernetes operator."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
import threading
import uuid
from typing import Any

import kopf
import pydantic
from aiohttp import web

from dsr_operator import kube
from dsr_operator.controller import config, election, handlers, metrics

log = logging.getLogger(__name__)


def kopf_settings(settings: config.OperatorSettings) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.persistence.finalizer = "dsr.operators.dev/finalizer"
    # kopf's bookkeeping lives in the status (which has room), never in annotations: the API allows 256 KiB
    # of annotations in all, and a user's own may take nearly all of it. The essence kopf compares is the
    # spec only (no copy of the user's labels and annotations).
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
    if threading.current_thread() is threading.main_thread():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)  # kopf installs its own while it runs
    health = await _serve_health(settings.liveness_port) if settings.liveness_port else None
    try:
        if not settings.leader_election:
            await _kopf(settings, stop, ready_flag)
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
            kopf_stop = asyncio.Event()
            relay = asyncio.create_task(_first(stop, holding, kopf_stop), name="leader-stop")
            try:
                await _kopf(settings, kopf_stop, ready_flag)
            finally:
                relay.cancel()
                lost = holding.done()
                holding.cancel()
                if not lost:
                    await elector.release()
            if lost:
                raise LeadershipLost(f"Lease {elector.namespace}/{elector.name} lost")
    finally:
        if health is not None:
            await health.cleanup()


class LeadershipLost(RuntimeError):
    """Another replica holds the Lease now; this process must stop (its Pod restarts as a stand-by)."""


async def _first(stop: asyncio.Event, holding: asyncio.Task[None], kopf_stop: asyncio.Event) -> None:
    """Stop kopf when the operator is asked to stop or when the Lease is lost, whichever comes first."""
    waiter = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({waiter, holding}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        kopf_stop.set()


async def _kopf(settings: config.OperatorSettings, stop: asyncio.Event, ready_flag: Any) -> None:
    await kopf.operator(
        registry=handlers.make_registry(settings),
        settings=kopf_settings(settings),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=True,
        stop_flag=stop,
        ready_flag=ready_flag,
        memo=kopf.Memo(),
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
        settings.nitro()
    except pydantic.ValidationError as exc:  # inputs hidden: a URL may carry a password
        prefix = "DSR_NETSCALER_" if exc.title == "NitroSettings" else "DSR_"
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
