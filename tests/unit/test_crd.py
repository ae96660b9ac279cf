"""The committed CRDs are the ones generated from the models, and carry the rules users rely on."""

from __future__ import annotations

import pathlib

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
    assert backends["x-kubernetes-validations"][0]["rule"] == "has(self.service) != has(self.static)"
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "VIP",
        "Ports",
        "Bound",
        "Desired",
        "Ready",
        "Age",
    ]
    assert doc["spec"]["names"]["shortNames"] == ["dsrsvc"]


def test_dsrnodeconfig_is_cluster_scoped_with_status() -> None:
    doc = yaml.safe_load(crd.render()["dsrnodeconfig.yaml"])
    assert doc["spec"]["scope"] == "Cluster"
    assert doc["spec"]["versions"][0]["subresources"] == {"status": {}}
