"""`dsr-operator run`: the Kubernetes operator."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import kopf

from dsr_operator.controller import config, handlers


def kopf_settings(settings: config.OperatorSettings) -> kopf.OperatorSettings:
    s = kopf.OperatorSettings()
    s.persistence.finalizer = "dsr.operators.dev/finalizer"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dsr.operators.dev")
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="dsr.operators.dev")
    s.posting.level = 20
    s.watching.server_timeout = 300
    s.networking.request_timeout = 60
    return s


async def run(settings: config.OperatorSettings, *, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the operator until `stop_flag` is set (or forever)."""
    liveness = f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
    await kopf.operator(
        registry=handlers.make_registry(settings),
        settings=kopf_settings(settings),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        liveness_endpoint=liveness,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
        memo=kopf.Memo(),
    )


def _cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for field in ("operator_id", "resync_seconds", "metrics_port", "liveness_port", "kube_server",
                  "kubeconfig", "peering"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    if args.namespace:
        overrides["namespaces"] = args.namespace
    settings = config.OperatorSettings(**overrides)
    asyncio.run(run(settings))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("run", help="run the Kubernetes operator",
                              description="Run the DsrService operator. Every flag also reads DSR_<NAME> "
                                          "from the environment; NetScaler settings read DSR_NETSCALER_*.")
    p.add_argument("--operator-id", help="ownership marker in NetScaler comments (DSR_OPERATOR_ID)")
    p.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    p.add_argument("--resync-seconds", type=float, help="NetScaler drift repair interval")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument("--liveness-port", type=int, help="kopf /healthz port (0: off)")
    p.add_argument("--kube-server", help="Kubernetes API URL (default: in-cluster or KUBECONFIG)")
    p.add_argument("--kubeconfig", help="kubeconfig file")
    p.add_argument("--peering", help="kopf peering name when running several replicas")
    p.set_defaults(func=_cmd_run)
