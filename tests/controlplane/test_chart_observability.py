"""The chart's optional observability parts: they render with schema-checked values, and the alerts fire
(and stay quiet) as intended, checked with `promtool test rules` on synthetic series.

Needs helm (`make controlplane`) and promtool (`make promtool`, built from the Prometheus Go module
pinned in tools/promtool/go.mod). Without them these tests skip naming the command; with CI=true or
DSR_REQUIRE_CONTROLPLANE=1 they fail instead. No API server is started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "dsr-operator"
HELM = Path(os.environ.get("DSR_CONTROLPLANE_BIN") or REPO_ROOT / ".cache" / "controlplane" / "bin") / "helm"
PROMTOOL = Path(os.environ.get("DSR_PROMTOOL_BIN") or REPO_ROOT / ".cache" / "promtool" / "bin") / "promtool"
BASE = ("--set", "netscaler.url=https://10.0.0.5", "--set", "netscaler.existingSecret=netscaler-login")
ALL_ON = ("--set", "metrics.dashboard.enabled=true", "--set", "metrics.prometheusRule.enabled=true",
          "--set", "metrics.agentPodMonitor.enabled=true")  # fmt: skip
AGENT_JOB = "dsr/r-dsr-operator-agent"

pytestmark = pytest.mark.controlplane


def _require(tool: Path, command: str) -> Path:
    if os.access(tool, os.X_OK):
        return tool
    message = f"{tool.name} is missing from {tool.parent}: run `{command}`"
    if os.environ.get("CI", "").lower() == "true" or os.environ.get("DSR_REQUIRE_CONTROLPLANE") == "1":
        pytest.fail(message + " (required: CI=true or DSR_REQUIRE_CONTROLPLANE=1)", pytrace=False)
    pytest.skip(message)


def _helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    helm = _require(HELM, "make controlplane")
    proc = subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def _render(*args: str) -> list[dict[str, Any]]:
    out = _helm("template", "r", str(CHART), "--namespace", "dsr", *BASE, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _kinds(docs: list[dict[str, Any]]) -> set[str]:
    return {d["kind"] for d in docs}


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} found"
    return found[0]


# --- rendering ---------------------------------------------------------------------------------------


def test_optional_parts_are_off_by_default_and_render_when_enabled() -> None:
    defaults = _render()
    assert not _kinds(defaults) & {"PrometheusRule", "PodMonitor"}
    assert not [d for d in defaults if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    docs = _render(*ALL_ON)
    dashboard = _one(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "dsr-operator.json").read_text())
    assert json.loads(dashboard["data"]["dsr-operator.json"]) == shipped
    rule = _one(docs, "PrometheusRule")
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == [
        "DsrNetScalerUnreachable", "DsrServiceStalled", "DsrBackendsBelowDesired", "DsrNetScalerConfigUnsaved",
        "DsrAgentNotReporting", "DsrVipRefused",
    ]  # fmt: skip
    monitor = _one(docs, "PodMonitor")
    assert monitor["metadata"]["name"] == AGENT_JOB.split("/")[1]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    agent = _one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert "--metrics-port=9474" in agent["args"]
    assert agent["ports"] == [{"name": "metrics", "containerPort": 9474, "protocol": "TCP"}]


def test_dashboard_namespace_labels_and_rule_settings_are_values() -> None:
    docs = _render(*ALL_ON, "--set", "metrics.dashboard.namespace=monitoring",
                   "--set", "metrics.dashboard.labels.grafana_dashboard=dsr",
                   "--set", "metrics.prometheusRule.belowDesiredFor=30m",
                   "--set", "metrics.prometheusRule.additionalLabels.team=network")  # fmt: skip
    dashboard = _one(docs, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "dsr"
    rules = {r["alert"]: r for r in _one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert rules["DsrBackendsBelowDesired"]["for"] == "30m"
    assert all(r["labels"]["team"] == "network" for r in rules.values())


def test_agent_metrics_off_removes_the_port_and_refuses_the_pod_monitor() -> None:
    agent = _one(_render("--set", "agent.metrics.port=0"), "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert not any(a.startswith("--metrics-port") for a in agent["args"]) and "ports" not in agent
    proc = _helm("template", "r", str(CHART), *BASE, "--set", "agent.metrics.port=0",
                 "--set", "metrics.agentPodMonitor.enabled=true", check=False)  # fmt: skip
    assert proc.returncode != 0 and "metrics.agentPodMonitor.enabled needs agent.metrics.port" in proc.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("metrics.prometheusRule.stalledFor=5 minutes", "stalledFor"),
        ("metrics.prometheusRule.agentStaleSeconds=0", "agentStaleSeconds"),
        ("metrics.dashboard.enabled=yes", "enabled"),
        ("metrics.dashboard.namespace=Not_A_Namespace", "namespace"),
        ("metrics.prometheusRule.unknown=1", "unknown"),
        ("agent.metrics.port=70000", "port"),
    ],
)
def test_values_schema_refuses_bad_observability_values(setting: str, message: str) -> None:
    flag = "--set-string" if setting.endswith("=yes") else "--set"
    proc = _helm("template", "r", str(CHART), *BASE, flag, setting, check=False)
    assert proc.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr and message in proc.stderr, proc.stderr


# --- alerts, with promtool ---------------------------------------------------------------------------


def _expand(text: str, labels: dict[str, str], value: str) -> str:
    """The alert template expansions these rules use, as Prometheus performs them."""
    text = re.sub(r"\{\{ with \$labels\.(\w+) \}\}(.*?)\{\{ \. \}\}\{\{ else \}\}(.*?)\{\{ end \}\}",
                  lambda m: f"{m[2]}{labels[m[1]]}" if m[1] in labels else m[3], text)  # fmt: skip
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m[1], ""), text)
    return text.replace("{{ $value }}", value)


def _firing(rules: dict[str, dict[str, Any]], alert: str, labels: dict[str, str], value: str = "1") -> dict[str, Any]:
    rule = rules[alert]
    all_labels = {**rule["labels"], **labels}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: _expand(v, all_labels, value) for k, v in rule["annotations"].items()},
    }


def test_promtool_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    promtool = _require(PROMTOOL, "make promtool")
    rule = _one(_render(*ALL_ON), "PrometheusRule")
    rules = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    tests = [
        {   # NetScaler: the active replica loses it, the standby never sent anything (0 all along).
            "interval": "1m",
            "input_series": [
                {"series": 'dsr_netscaler_up{pod="active"}', "values": "1 1 0x10"},
                {"series": 'dsr_netscaler_up{pod="standby"}', "values": "0x12"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "DsrNetScalerUnreachable", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "DsrNetScalerUnreachable", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "DsrNetScalerUnreachable",
                 "exp_alerts": [_firing(rules, "DsrNetScalerUnreachable", {})]},
            ],
        },
        {   # A healthy operator with a standby: quiet.
            "interval": "1m",
            "input_series": [
                {"series": 'dsr_netscaler_up{pod="active"}', "values": "1x12"},
                {"series": 'dsr_netscaler_up{pod="standby"}', "values": "0x12"},
            ],
            "alert_rule_test": [{"eval_time": "12m", "alertname": "DsrNetScalerUnreachable", "exp_alerts": []}],
        },
        {
            "interval": "1m",
            "input_series": [{"series": "dsr_stalled_dsrservices", "values": "0 0 2x10"}],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "DsrServiceStalled", "exp_alerts": []},
                {"eval_time": "8m", "alertname": "DsrServiceStalled",
                 "exp_alerts": [_firing(rules, "DsrServiceStalled", {}, value="2")]},
            ],
        },
        {   # shop/web stays one short of desired; shop/api catches up within the window.
            "interval": "1m",
            "input_series": [
                {"series": 'dsr_bound_backends{namespace="shop",name="web"}', "values": "1x20"},
                {"series": 'dsr_desired_backends{namespace="shop",name="web"}', "values": "1 1 2x18"},
                {"series": 'dsr_bound_backends{namespace="shop",name="api"}', "values": "1 1 1 1 1 3x15"},
                {"series": 'dsr_desired_backends{namespace="shop",name="api"}', "values": "3x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": "DsrBackendsBelowDesired", "exp_alerts": []},
                {"eval_time": "13m", "alertname": "DsrBackendsBelowDesired",
                 "exp_alerts": [_firing(rules, "DsrBackendsBelowDesired", {"namespace": "shop", "name": "web"})]},
            ],
        },
        {   # Unsaved for good fires; unsaved then saved every other minute (the save debounce) never does.
            "interval": "1m",
            "input_series": [{"series": 'dsr_netscaler_config_unsaved{pod="a"}', "values": "0 1x20"}],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": "DsrNetScalerConfigUnsaved", "exp_alerts": []},
                {"eval_time": "17m", "alertname": "DsrNetScalerConfigUnsaved",
                 "exp_alerts": [_firing(rules, "DsrNetScalerConfigUnsaved", {})]},
            ],
        },
        {
            "interval": "1m",
            "input_series": [{"series": 'dsr_netscaler_config_unsaved{pod="a"}',
                              "values": "1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1 0 1"}],
            "alert_rule_test": [{"eval_time": "20m", "alertname": "DsrNetScalerConfigUnsaved", "exp_alerts": []}],
        },
        {   # n1's agent keeps passing; n2's stops at 5m; the agent at 10.0.0.3 cannot be scraped from 6m.
            "interval": "1m",
            "input_series": [
                {"series": 'dsr_agent_last_pass_timestamp_seconds{node="n1"}', "values": "0+60x20"},
                {"series": 'dsr_agent_last_pass_timestamp_seconds{node="n2"}', "values": "0+60x5 300x15"},
                {"series": f'up{{job="{AGENT_JOB}",instance="10.0.0.2:9474"}}', "values": "1x20"},
                {"series": f'up{{job="{AGENT_JOB}",instance="10.0.0.3:9474"}}', "values": "1x5 0x15"},
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "DsrAgentNotReporting", "exp_alerts": []},
                {"eval_time": "14m", "alertname": "DsrAgentNotReporting", "exp_alerts": [
                    _firing(rules, "DsrAgentNotReporting", {"node": "n2"}),
                    _firing(rules, "DsrAgentNotReporting", {"job": AGENT_JOB, "instance": "10.0.0.3:9474"}),
                ]},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {"series": 'dsr_agent_refused_vips{node="n1"}', "values": "0 0 1x10"},
                {"series": 'dsr_agent_refused_vips{node="n2"}', "values": "0x12"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "DsrVipRefused", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "DsrVipRefused",
                 "exp_alerts": [_firing(rules, "DsrVipRefused", {"node": "n1"})]},
            ],
        },
    ]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}, sort_keys=False))  # fmt: skip
    proc = subprocess.run([str(promtool), "test", "rules", "tests.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_checks_the_rules_file(tmp_path: Path) -> None:
    promtool = _require(PROMTOOL, "make promtool")
    rule = _one(_render(*ALL_ON), "PrometheusRule")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    proc = subprocess.run([str(promtool), "check", "rules", "rules.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 rules found" in proc.stdout, proc.stdout
