# kopf's callback protocols do not model index keyword arguments (e.g. `dsr_by_backend`) nor a
# non-optional `namespace` for namespaced resources: each registration below ignores arg-type for that
# reason only; the handlers' signatures are what kopf passes.
"""Kopf handlers: thin. Indices gather the cluster, events mark dirty exactly the DsrServices that read
the changed input, one reconcile loop per NetScaler takes them in batches, the operator's own finalizer
(`finalizer`) cleans up, a timer resyncs.

Routing goes from inputs to the DsrServices that read them (kopf indices): EndpointSlices by Service
and by node, DsrServices by backend Service and by VIP (old and new), never through the operator's
own last output. Handlers hold no logic: they route to `reconcile` and keep `Runtime` current. They
are coroutines: kopf runs plain functions in threads, and these touch the loop's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import kopf
import pydantic

from dsr_operator import kube
from dsr_operator.api import models
from dsr_operator.controller import config, decide, finalizer, lbservices, reconcile, view, world
from dsr_operator.controller.metrics import Metrics

log = logging.getLogger(__name__)
AnyIndex = kopf.Index[Any, Any]
DSR = (models.GROUP, models.VERSION, models.SERVICE_PLURAL)
NODECONFIGS = (models.GROUP, models.VERSION, models.NODECONFIG_PLURAL)
SLICES = ("discovery.k8s.io", "v1", "endpointslices")
NODES = ("", "v1", "nodes")
SERVICES = ("", "v1", "services")
NAMESPACES = ("", "v1", "namespaces")
POOLS = (models.GROUP, models.VERSION, "dsrvippools")
Key = tuple[str, str]


def make_registry(settings: config.OperatorSettings) -> kopf.OperatorRegistry:
    """A fresh registry with every handler of the operator (tests get their own)."""
    registry = kopf.OperatorRegistry()
    specs = decide.Specs()  # the DsrService index parses a spec once per generation

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.AiohttpSession:
        # The same resolution as the lightkube client: explicit server, kubeconfig, in-cluster, KUBECONFIG.
        conn = connection(settings)
        creds = await asyncio.to_thread(lambda: kube.credentials(kube.load_config(conn), conn))
        info = kopf.ConnectionInfo(
            server=creds.server, token=creds.token, insecure=creds.insecure,
            ca_path=creds.ca_path, ca_data=creds.ca_data,
            certificate_path=creds.certificate_path, certificate_data=creds.certificate_data,
            private_key_path=creds.private_key_path, private_key_data=creds.private_key_data,
        )
        # kopf's own session opens a connection per concurrent request (no limit): at 1,000 new
        # DsrServices, when kopf kept the finalizer, its patches opened ~1,800 TLS connections at once
        # (a 256 KiB buffer each). Ours has room for every watch stream plus a bounded pool for
        # requests; kopf owns and closes it like its own.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connection_limit(settings), ssl=info.as_ssl_context()),
            headers=info.as_http_headers(),
        )
        return kopf.AiohttpSession(server=creds.server, aiohttp_session=session)

    @kopf.on.startup(registry=registry)
    async def startup(memo: kopf.Memo, **kwargs: Any) -> None:
        rt = await _make_runtime(settings)
        rt.indices.update({k: v for k, v in kwargs.items() if k.startswith("dsr_")})
        memo["runtime"] = rt
        rt.tasks.append(asyncio.create_task(reconcile.run(rt), name="dsr-reconcile"))
        rt.tasks.append(asyncio.create_task(_resync_loop(rt), name="dsr-resync"))
        if settings.front_door:
            rt.tasks.append(asyncio.create_task(_front_door(rt), name="dsr-front-door"))
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
        await rt.finalizers.close()
        await rt.view.close()
        if rt.registry is not None:
            await rt.registry.close()
        await rt.kube.close()
        runner = memo.get("metrics_runner")
        if runner is not None:
            await runner.cleanup()

    # --- indices: what the reconciler reads, and how inputs reach the DsrServices that read them ----

    @kopf.index(*SLICES, registry=registry, id="dsr_slices")  # type: ignore[arg-type]
    async def dsr_slices(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        service = labels.get(world.SERVICE_NAME_LABEL)
        return {(namespace, service): world.slice_endpoints(body)} if service else None

    @kopf.index(*SLICES, registry=registry, id="dsr_slices_by_node")  # type: ignore[arg-type]
    async def dsr_slices_by_node(namespace: str, labels: kopf.Labels, body: kopf.Body, **_: Any) -> Any:
        service = labels.get(world.SERVICE_NAME_LABEL)
        if not service:
            return None
        return {ep.node: (namespace, service) for ep in world.slice_endpoints(body) if ep.node}

    @kopf.index(*NODES, registry=registry, id="dsr_nodes")
    async def dsr_nodes(name: str, body: kopf.Body, **_: Any) -> Any:
        return {name: world.node_info(body)}

    @kopf.index(*NODECONFIGS, registry=registry, id="dsr_nodeconfigs")
    async def dsr_nodeconfigs(name: str, body: kopf.Body, **_: Any) -> Any:
        return {name: world.nodeconfig_info(body)}

    @kopf.index(*SERVICES, registry=registry, id="dsr_k8s_services")  # type: ignore[arg-type]
    async def dsr_k8s_services(namespace: str, name: str, spec: kopf.Spec, body: kopf.Body, **_: Any) -> Any:
        delivered = tuple(spec.get("externalIPs") or ())
        lb = lbservices.LbService.of(body)
        if lb is not None and lbservices.serves(lb, settings.load_balancer_class, settings.default_load_balancer):
            delivered += (decide.LOAD_BALANCER_STATUS,)
        return {(namespace, name): delivered}

    @kopf.index(*SERVICES, registry=registry, id="dsr_lb_services")
    async def dsr_lb_services(body: kopf.Body, **_: Any) -> Any:
        lb = lbservices.LbService.of(body)
        return {lb.key: lb} if lb is not None else None

    @kopf.index(*NAMESPACES, registry=registry, id="dsr_namespaces")
    async def dsr_namespaces(name: str, labels: kopf.Labels, **_: Any) -> Any:
        return {name: dict(labels)}

    if settings.reads_pools:  # else the operator has no right to read pools

        @kopf.index(*POOLS, registry=registry, id="dsr_vippools")
        async def dsr_vippools(name: str, body: kopf.Body, **_: Any) -> Any:
            return {name: lbservices.PoolEntry.of(body)}

        @kopf.on.event(*POOLS, registry=registry)
        async def pool_changed(memo: kopf.Memo, **_: Any) -> None:
            authority_changed(runtime(memo))

    @kopf.index(*DSR, registry=registry, id="dsr_owned")
    async def dsr_owned(body: kopf.Body, **_: Any) -> Any:
        owned = lbservices.Owned.of(body)
        return dict([owned]) if owned is not None else None

    @kopf.index(*DSR, registry=registry, id="dsr_services")  # type: ignore[arg-type]
    async def dsr_services(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        return {(namespace, name): decide.Entry.of(body, specs)}

    @kopf.index(*DSR, registry=registry, id="dsr_by_backend")  # type: ignore[arg-type]
    async def dsr_by_backend(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        backend = (body.get("spec") or {}).get("backends", {}).get("service")
        return {(namespace, backend): (namespace, name)} if isinstance(backend, str) else None

    @kopf.index(*DSR, registry=registry, id="dsr_by_prefix")  # type: ignore[arg-type]
    async def dsr_by_prefix(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        registry = ((body.get("spec") or {}).get("backends") or {}).get("registry") or {}
        try:
            prefix = models.EtcdRegistry.model_validate(registry.get("etcd")).key_prefix
        except pydantic.ValidationError:
            return None
        return {prefix: (namespace, name)}

    @kopf.index(*DSR, registry=registry, id="dsr_by_vip")  # type: ignore[arg-type]
    async def dsr_by_vip(namespace: str, name: str, body: kopf.Body, **_: Any) -> Any:
        vip = (body.get("spec") or {}).get("vip")
        return {str(vip): (namespace, name)} if vip else None

    # --- routing: only the DsrServices an event concerns -----------------------------------------

    def runtime(memo: kopf.Memo) -> reconcile.Runtime:
        rt: reconcile.Runtime = memo["runtime"]
        rt.indexed.set()
        return rt

    def readers_of_node(node: str, slices_by_node: AnyIndex, by_backend: AnyIndex) -> set[Key]:
        keys: set[Key] = set()
        for service in slices_by_node.get(node, ()):
            keys.update(by_backend.get(service, ()))
        return keys

    @kopf.on.event(*SLICES, registry=registry)  # type: ignore[arg-type]
    async def slice_changed(namespace: str, labels: kopf.Labels, memo: kopf.Memo, dsr_by_backend: AnyIndex,
                      **_: Any) -> None:
        service = labels.get(world.SERVICE_NAME_LABEL)
        if service:
            runtime(memo).batcher.mark(*dsr_by_backend.get((namespace, service), ()))

    @kopf.on.event(*SERVICES, registry=registry)  # type: ignore[arg-type]
    async def service_changed(namespace: str, name: str, memo: kopf.Memo, dsr_by_backend: AnyIndex, **_: Any) -> None:
        rt = runtime(memo)
        rt.batcher.mark(*dsr_by_backend.get((namespace, name), ()))
        rt.frontdoor.mark((namespace, name))

    def authority_changed(rt: reconcile.Runtime) -> None:
        """A pool or a namespace's labels changed: who may have which VIP may have too."""
        rt.frontdoor.mark_everything()
        if settings.require_vip_pool:
            rt.batcher.mark_all(reconcile.entries(rt))

    @kopf.on.event(*NAMESPACES, registry=registry)
    async def namespace_changed(memo: kopf.Memo, **_: Any) -> None:
        authority_changed(runtime(memo))

    @kopf.on.event(*NODES, registry=registry)  # type: ignore[arg-type]
    async def node_changed(name: str, memo: kopf.Memo, dsr_slices_by_node: AnyIndex, dsr_by_backend: AnyIndex,
                     **_: Any) -> None:
        runtime(memo).batcher.mark(*readers_of_node(name, dsr_slices_by_node, dsr_by_backend))

    @kopf.on.event(*NODECONFIGS, registry=registry)  # type: ignore[arg-type]
    async def nodeconfig_changed(name: str, body: kopf.Body, type: str | None, memo: kopf.Memo,
                           dsr_slices_by_node: AnyIndex, dsr_by_backend: AnyIndex, **_: Any) -> None:
        rt = runtime(memo)
        gone = type == "DELETED"
        reconcile.index_caught_up(rt, name, None if gone else (body.get("spec") or {}).get("vips") or [])
        readers = readers_of_node(name, dsr_slices_by_node, dsr_by_backend) | rt.book.users_of(name)
        rt.batcher.mark(*readers)
        if gone and rt.book.vips(name):
            # Recreated by the next batch of its readers (the index no longer has it).
            log.info("DsrNodeConfig %s was deleted; it will be written again", name)

    @kopf.on.event(*DSR, registry=registry)  # type: ignore[arg-type]
    async def dsrservice_changed(namespace: str, name: str, body: kopf.Body, meta: kopf.Meta, memo: kopf.Memo,
                           type: str | None, dsr_by_vip: AnyIndex, **_: Any) -> None:
        rt = runtime(memo)
        key = (namespace, name)
        if type == "DELETED":
            rt.finalizers.gone(key)
        else:
            rt.finalizers.seen(key, body)
        owned = lbservices.Owned.of(body)
        if owned is not None:
            rt.frontdoor.mark(owned[0])  # its Ready state is its Service's status.loadBalancer
        generation, holds = meta.get("generation"), finalizer.holds(body)
        before = rt.generations.get(key)
        rt.generations[key] = (generation, holds)
        if type not in ("ADDED", "DELETED") and before is not None and before[0] == generation \
                and (holds or not before[1]):
            return  # our own status or finalizer write, or metadata only; a finalizer taken away is given back
        vip = str((body.get("spec") or {}).get("vip") or "")
        old = rt.vips.get(key)
        rt.vips[key] = vip
        # The same for a static backend address (one namespace at a time): wake all that list an old or new one.
        uid = str(meta.get("uid") or f"{namespace}/{name}")
        spec = specs.parse(uid, generation, body.get("spec"))[0] if type != "DELETED" else None  # the index's
        static = (spec.backends.static if spec is not None else None) or ()
        keys = rt.hosts.record(key, [b.address for b in static])
        if type == "DELETED":
            specs.forget(uid)
            rt.generations.pop(key, None)
            rt.vips.pop(key, None)
        if type == "DELETED" or (old is not None and old != vip):
            rt.frontdoor.mark(*rt.frontdoor.refusals)  # a VIP was freed: a Service waiting for one may get it
        # A VIP freed or claimed may settle another DsrService's conflict: wake those of the old and new VIP.
        for address in {vip, old or vip}:
            keys.update(dsr_by_vip.get(address, ()))
        rt.batcher.mark(*keys)

    return registry


#: Kinds of object the operator watches (kopf holds one stream per kind, per namespace when namespaced).
WATCHED = (DSR, NODECONFIGS, SLICES, NODES, SERVICES, NAMESPACES, POOLS)
#: Connections for requests besides the watch streams (kopf writes nothing to our objects; a margin).
REQUEST_CONNECTIONS = 16
#: Namespaces assumed when a pattern selects them (kopf then opens streams per namespace it finds).
PATTERN_NAMESPACES = 64


def connection_limit(settings: config.OperatorSettings) -> int:
    """Connections kopf's session may hold: one per watch stream, plus `REQUEST_CONNECTIONS`."""
    names = settings.namespaces
    patterns = any(any(c in n for c in "*?[!") for n in names)
    per_kind = PATTERN_NAMESPACES if patterns else max(1, len(names))
    return len(WATCHED) * per_kind + REQUEST_CONNECTIONS


def connection(settings: config.OperatorSettings) -> kube.Connection:
    return kube.Connection(
        server=settings.kube_server, token_file=settings.kube_token_file,
        certificate_authority=settings.kube_ca_file, kubeconfig=settings.kubeconfig,
    )


async def _make_runtime(settings: config.OperatorSettings) -> reconcile.Runtime:
    metrics = Metrics()
    conn = connection(settings)
    kube_config = await asyncio.to_thread(kube.load_config, conn)
    client = kube.make_client(kube_config, conn, field_manager="dsr-operator")
    nitro_settings = settings.netscaler
    metrics.netscalers(nitro_settings.endpoints())
    nitro_view = view.NetScalerView(
        nitro_settings, settings.operator_id, save_debounce=settings.save_debounce_seconds,
        on_request=metrics.on_request, on_drain_lag=metrics.drain_unbind_lag.observe,
        on_unsaved=lambda unsaved: metrics.netscaler_config_unsaved.set(1 if unsaved else 0),
        drain_check=settings.drain_check_seconds, on_primary=metrics.on_primary,
    )
    return reconcile.make_runtime(settings, nitro_view, client, metrics)


async def _front_door(rt: reconcile.Runtime) -> None:
    """Services of type LoadBalancer into owned DsrServices, once the indices are complete."""
    await rt.indexed.wait()
    await rt.frontdoor.run()


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
        known = reconcile.entries(rt)
        if rt.registry is not None:  # stop following prefixes no DsrService reads any more
            rt.registry.want(reconcile.prefixes(known.values()))
        rt.batcher.mark_all(known)
