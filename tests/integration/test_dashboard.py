"""The chart's Grafana dashboard names only metrics the operator and the agent export, in PromQL that parses.

Grafana cannot run here, so the dashboard is checked where it can go wrong without one: every panel's
query is parsed with promql-parser (after substituting Grafana's built-in interval variables as Grafana
does), and every metric it selects is one that a running operator's `/metrics` (in-process against the
Kubernetes emulator and the NITRO simulator) or a node agent's exporter actually exposes.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import aiohttp
import prometheus_client.parser
import promql_parser
import pytest

from dsr_lab import simctl
from dsr_operator.agent import core
from dsr_operator.agent import metrics as agent_metrics
from tests.conftest import KubeHandle
from tests.integration.test_operator import Cluster, running_operator
from tests.support.waiting import eventually

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "charts" / "dsr-operator" / "dashboards" / "dsr-operator.json"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "6h"}
ROWS = ["Reconciles", "NITRO", "Backends", "NetScaler", "Node agents"]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exported(text: str) -> set[str]:
    """Every series name a scrape may carry, also for metric families that have no samples yet."""
    names: set[str] = set()
    for family in prometheus_client.parser.text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        if family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_count", f"{family.name}_sum"}
        elif family.type == "counter":
            names.add(f"{family.name}_total")
        else:
            names.add(family.name)
    return names


def _selected(node: Any) -> set[str]:
    """Metric names of every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        return {node.name} if node.name else set()
    if isinstance(node, promql_parser.MatrixSelector):
        return _selected(node.vector_selector)
    if isinstance(node, promql_parser.Call):
        return set().union(*(_selected(arg) for arg in node.args)) if node.args else set()
    names: set[str] = set()
    for attr in ("lhs", "rhs", "expr", "param"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            names |= _selected(child)
    return names


def _parse(expr: str) -> Any:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return promql_parser.parse(expr)


def test_dashboard_layout_rows_and_datasource() -> None:
    dashboard = _dashboard()
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ROWS
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in _panels(dashboard):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["description"], f"panel {panel['title']!r} has no description"


def test_every_query_parses() -> None:
    for panel in _panels(_dashboard()):
        for target in panel["targets"]:
            try:
                _parse(target["expr"])
            except Exception as exc:  # promql_parser raises ValueError-like errors from Rust
                pytest.fail(f"panel {panel['title']!r}: {target['expr']!r} does not parse: {exc}")


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_every_metric_is_exported_by_a_running_operator_or_agent(
    kube: KubeHandle, nitro_sim: simctl.Simulator, unused_tcp_port: int,
    unused_tcp_port_factory: Any,
) -> None:
    cluster = Cluster(kube, nitro_sim, "nsroot")
    await cluster.node("n1", "198.51.100.1")
    await cluster.service()
    await cluster.slice({"n1": "ready"})
    async with running_operator(kube, nitro_sim, metrics_port=unused_tcp_port):
        await cluster.dsrservice()
        await cluster.agent_applies("n1")

        async def reconciled() -> str:
            text = await _scrape(unused_tcp_port)
            return text if "dsr_reconcile_duration_seconds_count" in text else ""

        operator_text = await eventually(reconciled)

    exporter = agent_metrics.AgentMetrics("n1")
    exporter.observe(core.Outcome(mode="loopback", interface="lo", applied=("192.0.2.10",)), now=1.0)
    agent_port = unused_tcp_port_factory()
    runner = await exporter.serve(agent_port, host="127.0.0.1")
    try:
        agent_text = await _scrape(agent_port)
    finally:
        await runner.cleanup()

    exported = _exported(operator_text) | _exported(agent_text)
    used: dict[str, str] = {}
    for panel in _panels(_dashboard()):
        for target in panel["targets"]:
            for name in _selected(_parse(target["expr"])):
                used[name] = panel["title"]
    assert used, "no metric found in the dashboard's queries"
    unknown = {name: title for name, title in used.items() if name not in exported}
    assert not unknown, f"panels name metrics nobody exports: {unknown}"
    # Every row is fed: reconciles, NITRO, backends, NetScaler, agents.
    for needed in ("dsr_reconcile_duration_seconds_bucket", "dsr_nitro_errors_total", "dsr_desired_backends",
                   "dsr_draining_backends", "dsr_netscaler_up", "dsr_netscaler_ha_primary", "dsr_agent_vips"):
        assert needed in used, needed
