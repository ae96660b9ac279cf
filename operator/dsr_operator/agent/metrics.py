"""Prometheus metrics of the node agent and their `/metrics` endpoint (aiohttp, on the event loop).

Off unless `dsr-operator agent --metrics-port N` (chart: `agent.metrics.port`). Every series carries
the node's name, so a dashboard can show VIP counts per node without relabelling.
"""

from __future__ import annotations

import prometheus_client
from aiohttp import web

from dsr_operator.agent import core


class AgentMetrics:
    """What one node's agent reports after each pass over the host."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.registry = prometheus_client.CollectorRegistry()
        self.vips = prometheus_client.Gauge(
            "dsr_agent_vips", "VIPs the agent holds on the node (applied)", ["node"], registry=self.registry
        )
        self.refused_vips = prometheus_client.Gauge(
            "dsr_agent_refused_vips", "VIPs of the node's DsrNodeConfig that could not be applied (failedVips)",
            ["node"], registry=self.registry,
        )
        self.host_error = prometheus_client.Gauge(
            "dsr_agent_host_error", "1 when the last pass could not configure the host (lastError), else 0",
            ["node"], registry=self.registry,
        )
        self.last_pass = prometheus_client.Gauge(
            "dsr_agent_last_pass_timestamp_seconds", "Unix time of the agent's last pass over the host",
            ["node"], registry=self.registry,
        )
        self.passes = prometheus_client.Counter(
            "dsr_agent_passes_total", "Passes over the host (watch events and resyncs)", ["node"],
            registry=self.registry,
        )
        self.drift_repairs = prometheus_client.Counter(
            "dsr_agent_drift_repairs_total", "Host changes made behind the agent's back that it restored",
            ["node"], registry=self.registry,
        )

    def observe(self, outcome: core.Outcome, *, now: float, repaired: int = 0) -> None:
        """Record one pass's outcome at unix time `now`."""
        self.vips.labels(self.node).set(len(outcome.applied))
        self.refused_vips.labels(self.node).set(len(outcome.failed))
        self.host_error.labels(self.node).set(1 if outcome.error else 0)
        self.last_pass.labels(self.node).set(now)
        self.passes.labels(self.node).inc()
        if repaired:
            self.drift_repairs.labels(self.node).inc(repaired)

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)

    async def serve(self, port: int, host: str = "0.0.0.0") -> web.AppRunner:
        """Serve `/metrics` on `host:port` until the returned runner is cleaned up."""

        async def handle(_: web.Request) -> web.Response:
            return web.Response(body=self.exposition(), headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

        app = web.Application()
        app.router.add_get("/metrics", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner
