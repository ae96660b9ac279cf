# kopf's callback protocols do not model index keyword arguments (e.g. `dsr_by_backend`) nor a
# non-optional `namespace` for namespaced resources; the handlers' signatures are what kopf passes.
# mypy: disable-error-code="arg-type"
"""Kopf handlers: thin. Indices gather the cluster, events wake the DsrServices they concern,
one daemon per DsrService reconciles level-triggered, a finalizer cleans up, a timer resyncs.

Handlers hold no logic: they route to `reconcile` and keep `Runtime` (in kopf's memo) current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from dsr_operator import kube
from dsr_operator.api import models
from dsr_operator.controller import config, reconcile, view, world
from dsr_operator.controller.metrics import Metrics

log = logging.getLogger(__name__)
DSR = (models.GROUP, models.VERSION, models.SERVICE_PLURAL)
NODECONFIGS = (models.GROUP, models.VERSION, models.NODECONFIG_PLURAL)
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
NODES = ("", "v1", "nodes")
SERVICES = ("", "v1", "services")


def make_registry(settings: config.OperatorSettings) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator (tests get their own)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # The same resolution as the lightkube client: explicit server, kubeconfig, in-cluster, KUBECONFIG.
        connection = _connection(settings)
        creds = await asyncio.to_thread(lambda: kube.credentials(kube.load_config(connection), connection))
        return kopf.ConnectionInfo(
            server=creds.server, token=creds.token, insecure=creds.insecure,
            ca_path=creds.ca_path, ca_data=creds.ca_data,
            certificate_path=creds.certificate_path, certificate_data=creds.certificate_data,
            private_key_path=creds.private_key_path, private_key_data=creds.private_key_data,
        )

    @kopf.on.startup(registry=registry)
    async def startup(memo: kopf.Memo, **kwargs: Any) -> None:
        rt = await _make_runtime(settings)
        rt.indices.update({k: v for k, v in kwargs.items() if k.startswith("dsr_")})
        memo["runtime"] = rt
        rt.tasks.append(asyncio.create_task(_resync_loop(rt), name="dsr-resync"))
        if settings.metrics_port:
            runner = await rt.metrics.serve(settings.metrics_port)
            memo["metrics_runner"] = runner

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        rt: reconcile.Runtime | None = memo.get("runtime")
        if rt is None:
            return
        for task in rt.tasks:
            task.cancel()
        for task in rt.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await rt.view.close()
        await rt.kube.close()
        runner = memo.get("metrics_runner")
        if runner is not None:
            await runner.cleanup()

    # --- indices: what the reconciler reads -------------------------------------------------------

    @kopf.index(*SLICES, registry=registry, id="dsr_slices")
    def dsr_slices(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        service = labels.get(world.SERVICE_NAME_LABEL)
        return {(namespace, service): world.slice_endpoints(body)} if service else None

    @kopf.index(*NODES, registry=registry, id="dsr_nodes")
    def dsr_nodes(name: str, body: kopf.Body, **_: Any) -> Any:
        return {name: world.node_info(body)}

    @kopf.index(*NODECONFIGS, registry=registry, id="dsr_nodeconfigs")
    def dsr_nodeconfigs(name: str, body: kopf.Body, **_: Any) -> Any:
        return {name: world.nodeconfig_info(body)}

    @kopf.index(*SERVICES, registry=registry, id="dsr_k8s_services")
    def dsr_k8s_services(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> Any:
        return {(namespace, name): tuple(spec.get("externalIPs") or ())}

    @kopf.index(*DSR, registry=registry, id="dsr_services")
    def dsr_services(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta, **_: Any) -> Any:
        entry = reconcile.ServiceEntry(
            uid=meta.get("uid") or f"{namespace}/{name}", created=meta.get("creationTimestamp") or "",
            spec=dict(body.get("spec") or {}), deleting=bool(meta.get("deletionTimestamp")),
        )
        return {(namespace, name): entry}

    @kopf.index(*DSR, registry=registry, id="dsr_by_backend")
    def dsr_by_backend(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        backend = (body.get("spec") or {}).get("backends", {}).get("service")
        return {(namespace, backend): (namespace, name)} if isinstance(backend, str) else None

    # --- wake-ups: only the DsrServices an event concerns -----------------------------------------

    def runtime(memo: kopf.Memo) -> reconcile.Runtime:
        rt: reconcile.Runtime = memo["runtime"]
        rt.indexed.set()
        return rt

    @kopf.on.event(*SLICES, registry=registry)
    def slice_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, dsr_by_backend: kopf.Index,
                      **_: Any) -> None:
        service = labels.get(world.SERVICE_NAME_LABEL)
        if service:
            runtime(memo).wake(*dsr_by_backend.get((namespace, service), ()))

    @kopf.on.event(*SERVICES, registry=registry)
    def service_changed(namespace: str, name: str, memo: kopf.Memo, dsr_by_backend: kopf.Index, **_: Any) -> None:
        runtime(memo).wake(*dsr_by_backend.get((namespace, name), ()))

    @kopf.on.event(*NODES, registry=registry)
    def node_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
        rt = runtime(memo)
        rt.wake(*rt.book.users_of(name))

    @kopf.on.event(*NODECONFIGS, registry=registry)
    def nodeconfig_changed(name: str, memo: kopf.Memo, **_: Any) -> None:
        rt = runtime(memo)
        rt.wake(*rt.book.users_of(name))

    @kopf.on.event(*DSR, registry=registry)
    def dsrservice_changed(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo,
                           type: str | None, dsr_services: kopf.Index, **_: Any) -> None:
        rt = runtime(memo)
        key = (namespace, name)
        generation = meta.get("generation")
        if type not in ("ADDED", "DELETED") and rt.generations.get(key) == generation:
            return  # our own status write, or metadata only: nothing to reconcile
        rt.generations[key] = generation
        rt.wake(key)
        vip = (body.get("spec") or {}).get("vip")
        # A VIP freed or claimed may settle another DsrService's conflict.
        for other, entries in dsr_services.items():
            if other != key and any(e.spec.get("vip") == vip for e in entries):
                rt.wake(other)

    # --- the per-DsrService daemon and the finalizer ------------------------------------------------

    @kopf.daemon(*DSR, registry=registry, cancellation_timeout=10.0,
                 when=lambda meta, **_: not meta.get("deletionTimestamp"))
    async def dsrservice_daemon(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo,
                                stopped: kopf.DaemonStopped, logger: logging.Logger, **_: Any) -> None:
        rt = runtime(memo)
        key = (namespace, name)
        wake = rt.wakeup(key)
        wake.set()
        delay: float | None = None
        while not stopped:
            timeout = settings.resync_seconds if delay is None else min(delay, settings.resync_seconds)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=timeout)
            if stopped:
                break
            if settings.debounce_seconds:
                await asyncio.sleep(settings.debounce_seconds)
            wake.clear()
            async with rt.lock(key):
                if stopped:
                    break
                try:
                    delay = await reconcile.reconcile(rt, key, body)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logger.exception("Reconcile of %s/%s failed", namespace, name)
                    kopf.exception(body, reason="ReconcileFailed", message=str(exc))
                    delay = 10.0

    @kopf.on.delete(*DSR, registry=registry)
    async def dsrservice_deleted(namespace: str, name: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        rt = runtime(memo)
        key = (namespace, name)
        async with rt.lock(key):
            await reconcile.finalize(rt, key, body)
        rt.wakeups.pop(key, None)
        rt.locks.pop(key, None)

    return registry


def _connection(settings: config.OperatorSettings) -> kube.Connection:
    return kube.Connection(
        server=settings.kube_server, token_file=settings.kube_token_file,
        certificate_authority=settings.kube_ca_file, kubeconfig=settings.kubeconfig,
    )


async def _make_runtime(settings: config.OperatorSettings) -> reconcile.Runtime:
    metrics = Metrics()
    connection = _connection(settings)
    kube_config = await asyncio.to_thread(kube.load_config, connection)
    client = kube.make_client(kube_config, connection, field_manager="dsr-operator")
    nitro_settings = settings.nitro()
    metrics.netscalers(nitro_settings.endpoints())
    nitro_view = view.NetScalerView(
        nitro_settings, settings.operator_id, save_debounce=settings.save_debounce_seconds,
        on_request=metrics.on_request, on_drain_lag=metrics.drain_unbind_lag.observe,
        drain_check=settings.drain_check_seconds, on_primary=metrics.on_primary,
    )
    return reconcile.Runtime(settings=settings, view=nitro_view, kube=client, metrics=metrics)


async def _resync_loop(rt: reconcile.Runtime) -> None:
    """Re-read NetScaler now and then to repair drift, and remove objects of deleted DsrServices."""
    await rt.indexed.wait()
    while True:
        try:
            await reconcile.remove_orphans(rt)
        except Exception as exc:  # NetScaler down: the next round retries
            log.warning("Orphan cleanup failed: %s", exc)
        await asyncio.sleep(rt.settings.resync_seconds)
        rt.view.invalidate()
        rt.wake_all()
