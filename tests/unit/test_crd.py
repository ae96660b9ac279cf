"""The committed CRDs are the ones generated from the models, and carry the rules users rely on."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from dsr_operator.api import crd

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    for name, text in crd.render().items():
        committed = (ROOT / "crds" / name).read_text()
        assert committed == text, f"crds/{name} is stale: run `dsr-operator crd --output-dir crds`"


def test_dsrservice_schema_states_the_rules() -> None:
    doc = yaml.safe_load(crd.render()["dsrservice.yaml"])
    version = doc["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["vip", "ports", "backends"]
    assert spec["properties"]["vip"]["x-kubernetes-validations"][0]["rule"] == "isIP(self)"
    assert spec["properties"]["ports"]["items"]["x-kubernetes-int-or-string"] is True
    assert "LEASTCONNECTION" in spec["properties"]["lbMethod"]["enum"]
    assert spec["properties"]["drainSeconds"]["minimum"] == 0
    backends = spec["properties"]["backends"]
    assert backends["x-kubernetes-validations"][0]["rule"] == (
        "(has(self.service) ? 1 : 0) + (has(self.static) ? 1 : 0) + (has(self.registry) ? 1 : 0) == 1")
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "VIP",
        "Ports",
        "Bound",
        "Desired",
        "Ready",
        "Reason",
        "Age",
    ]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ports"] == ".status.portsText"
    assert columns["Reason"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert doc["spec"]["names"]["shortNames"] == ["dsrsvc"]


def test_dsrnodeconfig_is_cluster_scoped_with_status() -> None:
    doc = yaml.safe_load(crd.render()["dsrnodeconfig.yaml"])
    assert doc["spec"]["scope"] == "Cluster"
    assert doc["spec"]["versions"][0]["subresources"] == {"status": {}}


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    """Paths of the properties (recursively) that have no description for `kubectl explain`."""
    missing = [] if schema.get("description") else [path]
    for name, child in (schema.get("properties") or {}).items():
        missing += _undescribed(child, f"{path}.{name}")
    items = schema.get("items")
    if isinstance(items, dict) and items.get("properties"):
        for name, child in items["properties"].items():
            missing += _undescribed(child, f"{path}[].{name}")
    return missing


def test_every_spec_and_status_field_is_described() -> None:
    for name, root in (("dsrservice.yaml", "dsrservice"), ("dsrnodeconfig.yaml", "dsrnodeconfig"),
                       ("dsrvippool.yaml", "dsrvippool")):
        schema = yaml.safe_load(crd.render()[name])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for part in ("spec", "status"):
            assert _undescribed(schema["properties"][part], f"{root}.{part}") == []


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node))
    return set()


def test_status_schemas_keep_unknown_fields_default_nothing_and_run_no_cel() -> None:
    """Inside the status nothing is defaulted or validated; only a DsrService or DsrVipPool without any status
    reads `observedGeneration: 0`, so that kstatus calls it InProgress until the operator has acted."""
    for name in ("dsrservice.yaml", "dsrnodeconfig.yaml", "dsrvippool.yaml"):
        text = crd.render()[name]
        status = yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
        top = status.pop("default", None)
        assert top == (None if name == "dsrnodeconfig.yaml" else {"observedGeneration": 0})
        assert not _keys(status) & {"default", "x-kubernetes-validations"}


def test_dsrnodeconfig_columns_show_the_agents_summary() -> None:
    doc = yaml.safe_load(crd.render()["dsrnodeconfig.yaml"])
    columns = {c["name"]: c["jsonPath"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns == {
        "VIPs": ".spec.vips", "Applied": ".status.appliedCount", "Failed": ".status.failedCount",
        "Mode": ".status.mode", "RP-Filter": ".status.rpFilterMax",
        "Ready": '.status.conditions[?(@.type=="Ready")].status', "Age": ".metadata.creationTimestamp",
    }


def test_render_yields_every_crd() -> None:
    assert sorted(crd.render()) == ["dsrnodeconfig.yaml", "dsrservice.yaml", "dsrvippool.yaml"]


def test_dsrvippool_is_cluster_scoped_and_states_the_rules() -> None:
    doc = yaml.safe_load(crd.render()["dsrvippool.yaml"])
    assert doc["metadata"]["name"] == "dsrvippools.dsr.operators.dev"
    assert doc["spec"]["scope"] == "Cluster"
    assert doc["spec"]["names"]["kind"] == "DsrVipPool"
    assert doc["spec"]["names"]["shortNames"] == ["dsrpool"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["addresses"]
    addresses = spec["properties"]["addresses"]
    assert (addresses["minItems"], addresses["maxItems"], addresses["x-kubernetes-list-type"]) == (1, 64, "set")
    assert addresses["items"]["minLength"] == 1 and addresses["items"]["maxLength"] == 100
    assert addresses["items"]["x-kubernetes-validations"][0]["rule"].startswith("isIP(self) || isCIDR(self)")
    assert spec["properties"]["avoidAddresses"]["items"] == addresses["items"]
    assert spec["properties"]["autoAssign"]["default"] is True
    requirement = spec["properties"]["namespaceSelector"]["properties"]["matchExpressions"]["items"]
    assert requirement["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]
    assert "self.operator in ['In', 'NotIn']" in requirement["x-kubernetes-validations"][0]["rule"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["addressesTotal"]["type"] == "string"
    assert status["addressesUsed"]["type"] == "integer"
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Addresses": ".spec.addresses", "Total": ".status.addressesTotal", "Used": ".status.addressesUsed",
        "Auto-Assign": ".spec.autoAssign", "Ready": '.status.conditions[?(@.type=="Ready")].status',
        "Age": ".metadata.creationTimestamp",
    }
