"""Prometheus metrics of the operator and their `/metrics` endpoint (aiohttp, on the event loop)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import prometheus_client
from aiohttp import web


class Metrics:
    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.reconcile_seconds = prometheus_client.Histogram(
            "dsr_reconcile_duration_seconds", "Time of one reconcile batch", ["result"],
            registry=self.registry, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch_size = prometheus_client.Histogram(
            "dsr_reconcile_batch_size", "DsrServices reconciled together in one batch", registry=self.registry,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
        )
        self.reconciled = prometheus_client.Counter(
            "dsr_reconciled_total", "DsrServices reconciled (each DsrService of each batch)", registry=self.registry,
        )
        self.nitro_requests = prometheus_client.Counter(
            "dsr_nitro_requests_total", "NITRO requests sent", ["method", "resource", "status"],
            registry=self.registry,
        )
        self.nitro_errors = prometheus_client.Counter(
            "dsr_nitro_errors_total", "NITRO error responses by errorcode", ["errorcode"], registry=self.registry
        )
        self.bound_backends = prometheus_client.Gauge(
            "dsr_bound_backends", "Backends bound on NetScaler per DsrService", ["namespace", "name"],
            registry=self.registry,
        )
        self.desired_backends = prometheus_client.Gauge(
            "dsr_desired_backends", "Backends a DsrService wants bound (its status.backends.desired)",
            ["namespace", "name"], registry=self.registry,
        )
        self.draining_backends = prometheus_client.Gauge(
            "dsr_draining_backends", "Backends of a DsrService being drained (graceful disable) on NetScaler",
            ["namespace", "name"], registry=self.registry,
        )
        self.netscaler_up = prometheus_client.Gauge(
            "dsr_netscaler_up", "1 when the last NITRO request reached the NetScaler, else 0", registry=self.registry
        )
        self.netscaler_config_unsaved = prometheus_client.Gauge(
            "dsr_netscaler_config_unsaved",
            "1 while changes applied to NetScaler are not yet saved (nsconfig save), else 0", registry=self.registry,
        )
        self.stalled = prometheus_client.Gauge(
            "dsr_stalled_dsrservices", "DsrServices whose Stalled condition is True", registry=self.registry
        )
        self.drain_unbind_lag = prometheus_client.Histogram(
            "dsr_drain_unbind_lag_seconds",
            "Time from the end of a backend's graceful drain on NetScaler to its unbind",
            registry=self.registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60),
        )
        self.primary = prometheus_client.Gauge(
            "dsr_netscaler_ha_primary", "1 for the NetScaler the operator writes to (the HA primary), else 0", ["url"],
            registry=self.registry,
        )
        self.failovers = prometheus_client.Counter(
            "dsr_netscaler_failovers_total", "Times the HA primary written to changed to the other node",
            registry=self.registry,
        )
        self._urls: list[str] = []
        self._last_primary: str | None = None
        self.orphans_removed = prometheus_client.Counter(
            "dsr_orphan_objects_removed_total", "Owned NetScaler objects removed because their DsrService is gone",
            registry=self.registry,
        )

    def netscalers(self, urls: list[str]) -> None:
        """The NetScalers the operator may write to (an HA pair's NSIPs): none is primary yet."""
        self._urls = list(urls)
        for url in self._urls:
            self.primary.labels(url).set(0)

    def on_primary(self, url: str | None) -> None:
        """The HA primary written to changed (None: not known at the moment)."""
        for other in self._urls:
            self.primary.labels(other).set(1 if other == url else 0)
        if url is not None and self._last_primary is not None and url != self._last_primary:
            self.failovers.inc()
        if url is not None:
            self._last_primary = url

    def on_request(self, method: str, rtype: str, status: int, errorcode: int, seconds: float) -> None:
        self.nitro_requests.labels(method, rtype, str(status)).inc()
        self.netscaler_up.set(1)
        if errorcode:
            self.nitro_errors.labels(str(errorcode)).inc()

    async def serve(self, port: int) -> web.AppRunner:
        async def handle(_: web.Request) -> web.Response:
            return web.Response(body=prometheus_client.generate_latest(self.registry),
                                headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

        return await serve_get(port, "/metrics", handle)


async def serve_get(port: int, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.AppRunner:
    """A small HTTP server on every address: GET `path` answered by `handler`; clean up the runner to stop."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
