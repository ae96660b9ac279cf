"""The CRDs on a real kube-apiserver: invalid DsrServices are refused by the API server itself
(OpenAPI schema and CEL rules from api/crd.py), with messages a user can act on; the examples pass."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from dsr_operator.api import vippool

if TYPE_CHECKING:
    from conftest import ControlPlane  # tests/controlplane/conftest.py

REPO_ROOT = Path(__file__).resolve().parents[2]
ONE_BACKEND_KIND = "exactly one of backends.service, backends.static and backends.registry must be set"
GROUP, VERSION = "dsr.operators.dev", "v1alpha1"
pytestmark = pytest.mark.controlplane


def apply_crds(controlplane: ControlPlane, directory: Path = REPO_ROOT / "crds") -> list[str]:
    """Server-side apply every CRD in `directory` and wait until each is Established."""
    names = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                controlplane.kc("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(doc))
                names.append(doc["metadata"]["name"])
    controlplane.kc("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
    return names


@pytest.fixture(scope="module")
def crds(controlplane: ControlPlane) -> list[str]:
    return apply_crds(controlplane)


VALID: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "DsrService",
    "metadata": {"name": "web"},
    "spec": {"vip": "192.0.2.10", "ports": [80, 443], "backends": {"service": "web"}},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """VALID with spec.<path> (dotted) set to value, or removed when value is ...; named after the case."""
    body = copy.deepcopy(VALID)
    node = body["spec"]
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return body


def _create(controlplane: ControlPlane, namespace: str, body: dict[str, Any], name: str) -> tuple[int, Any]:
    body = copy.deepcopy(body)
    body["metadata"] = {"name": name, "namespace": namespace}
    return controlplane.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/dsrservices", body)


INVALID = [
    pytest.param(_with("vip", "not-an-ip"), ['spec.vip: Invalid value: "not-an-ip": must be an IPv4 or IPv6 address'],
                 id="vip-not-an-ip"),
    pytest.param(_with("vip", "192.0.2.300"), ["must be an IPv4 or IPv6 address"], id="vip-octet-too-big"),
    pytest.param(_with("ports", [0]), ['spec.ports[0]: Invalid value: 0: a port is 1-65534, or "*" for every port'],
                 id="port-0"),
    pytest.param(_with("ports", [80, 70000]), ['spec.ports[1]: Invalid value: 70000: a port is 1-65534, or "*"'],
                 id="port-70000"),
    pytest.param(_with("ports", ["http"]), ['spec.ports[0]: Invalid value: "http": a port is 1-65534, or "*"'],
                 id="port-name"),
    pytest.param(_with("ports", []), ["spec.ports: Invalid value: 0: spec.ports in body should have at least 1 items"],
                 id="no-ports"),
    pytest.param(_with("ports", ["*", 80]), ['"*" already covers every port; list it alone'], id="wildcard-and-port"),
    pytest.param(
        _with("backends", {"service": "web", "static": [{"name": "pi-1", "address": "198.51.100.21"}]}),
        ["spec.backends: Invalid value: " + ONE_BACKEND_KIND],
        id="both-backend-kinds",
    ),
    pytest.param(_with("backends", {}), [ONE_BACKEND_KIND], id="no-backend-kind"),
    pytest.param(_with("backends", ...), ['spec.backends: Required value'], id="backends-missing"),
    pytest.param(_with("backends", {"service": "web", "registry": {"etcd": {"prefix": "/skydns/local/web"}}}),
                 [ONE_BACKEND_KIND], id="service-and-registry"),
    pytest.param(_with("backends", {"registry": {"etcd": {"prefix": "skydns/local/web"}}}),
                 ['spec.backends.registry.etcd.prefix: Invalid value: "skydns/local/web"'],
                 id="registry-relative-prefix"),
    pytest.param(_with("backends", {"registry": {"etcd": {"prefix": "/"}}}),
                 ["spec.backends.registry.etcd.prefix"], id="registry-root-prefix"),
    pytest.param(_with("backends", {"registry": {}}), ["spec.backends.registry.etcd: Required value"],
                 id="registry-without-etcd"),
    pytest.param(
        _with("backends", {"static": [{"name": "pi-1", "address": "pi.example"}]}),
        ['spec.backends.static[0].address: Invalid value: "pi.example": must be an IPv4 or IPv6 address'],
        id="static-address-not-an-ip",
    ),
    pytest.param(_with("lbMethod", "FASTEST"), ['spec.lbMethod: Unsupported value: "FASTEST": supported values:',
                                                '"ROUNDROBIN"', '"LEASTCONNECTION"'], id="unknown-lbmethod"),
    pytest.param(_with("drainSeconds", -1),
                 ["spec.drainSeconds: Invalid value: -1: "
                  "spec.drainSeconds in body should be greater than or equal to 0"],
                 id="negative-drain"),
    pytest.param(_with("healthCheck", {"type": "HTTP"}), ['spec.healthCheck.type: Unsupported value: "HTTP"'],
                 id="script-monitor-type"),
    pytest.param(_with("healthCheck", {"intervalSeconds": 5, "timeoutSeconds": 5}),
                 ["healthCheck.timeoutSeconds must be less than healthCheck.intervalSeconds"], id="timeout-not-below"),
    pytest.param(_with("ports", ["*"]),
                 ['healthCheck.port is required when ports is ["*"] and healthCheck.type is TCP'],
                 id="wildcard-without-probe-port"),
    pytest.param(_with("vip", ...), ["spec.vip: Required value"], id="vip-missing"),
    pytest.param(_with("ports", [80, 65535]), ['spec.ports[1]: Invalid value: 65535: a port is 1-65534, or "*"'],
                 id="port-65535-is-every-port"),
    *(pytest.param(_with("vip", vip), [f'spec.vip: Invalid value: "{vip}": must be a unicast address a host can hold'],
                   id=f"vip-{what}")
      for vip, what in (("0.0.0.0", "unspecified"), ("255.255.255.255", "broadcast"), ("240.0.0.1", "reserved"),
                        ("224.0.0.1", "multicast"), ("127.0.0.1", "loopback"), ("169.254.1.1", "link-local"),
                        ("::", "v6-unspecified"), ("::1", "v6-loopback"), ("fe80::1", "v6-link-local"),
                        ("ff02::1", "v6-multicast"), ("fec0::1", "v6-site-local"))),
    pytest.param(_with("backends", {"static": [{"name": "h1", "address": "198.51.100.255"},
                                               {"name": "h2", "address": "224.0.0.9"}]}),
                 ['spec.backends.static[1].address: Invalid value: "224.0.0.9": must be a unicast address'],
                 id="static-multicast"),
    pytest.param(_with("backends", {"static": [{"name": "h1", "address": "2001:db8::21"}]}),
                 ["spec: Invalid value: backends.static addresses must be in the VIP's address family"],
                 id="static-other-family"),
    pytest.param(_with("backends", {"static": [{"name": "h1", "address": "198.51.100.21"},
                                               {"name": "h2", "address": "198.51.100.21"}]}),
                 ["spec.backends: Invalid value: backends.static lists an address more than once"],
                 id="static-address-twice"),
]


@pytest.mark.parametrize(("body", "messages"), INVALID)
def test_apiserver_refuses_invalid_dsrservice(
    controlplane: ControlPlane, crds: list[str], cp_namespace: str, body: dict[str, Any], messages: list[str]
) -> None:
    status, answer = _create(controlplane, cp_namespace, body, "bad")
    assert status == 422, answer
    assert answer["reason"] == "Invalid"
    for message in messages:
        assert message in answer["message"], answer["message"]
    # Nothing was stored.
    assert controlplane.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{cp_namespace}/dsrservices/bad")[0] == 404


def test_kubectl_shows_the_apiservers_message(controlplane: ControlPlane, crds: list[str], cp_namespace: str) -> None:
    body = _with("ports", [0])
    body["metadata"] = {"name": "bad", "namespace": cp_namespace}
    result = controlplane.kc("apply", "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0
    assert 'The DsrService "bad" is invalid' in result.stderr
    assert 'a port is 1-65534, or "*" for every port' in result.stderr


@pytest.mark.parametrize("example", ["static-web.yaml", "service-web.yaml"])
def test_examples_are_accepted_with_defaults(
    controlplane: ControlPlane, crds: list[str], cp_namespace: str, example: str
) -> None:
    docs = [d for d in yaml.safe_load_all((REPO_ROOT / "examples" / example).read_text()) if d]
    dsr = next(d for d in docs if d["kind"] == "DsrService")
    status, stored = _create(controlplane, cp_namespace, dsr, "example")
    assert status == 201, stored
    assert stored["spec"]["vip"] == dsr["spec"]["vip"]
    assert stored["spec"]["ports"] == dsr["spec"]["ports"]
    # Structural defaults filled in by the API server.
    assert stored["spec"]["drainSeconds"] == dsr["spec"].get("drainSeconds", 30)
    assert stored["spec"]["healthCheck"]["retries"] == 3
    assert stored["spec"]["healthCheck"]["throughVip"] is True
    # The example's pool (the chart's requireVipPool) is valid and holds the VIP.
    (pool,) = [d for d in docs if d["kind"] == "DsrVipPool"]
    controlplane.kc("apply", "--dry-run=server", "-f", "-", input=json.dumps(pool))
    assert vippool.DsrVipPoolSpec.model_validate(pool["spec"]).contains(dsr["spec"]["vip"])


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"vip": "2001:db8::10", "ports": ["*"], "backends": {"service": "web"},
                      "healthCheck": {"type": "PING"}}, id="ipv6-wildcard-ping"),
        pytest.param({"vip": "192.0.2.11", "ports": [1, 65534], "backends": {"service": "web"},
                      "lbMethod": "SOURCEIPHASH", "drainSeconds": 0}, id="port-bounds-no-drain"),
        pytest.param({"vip": "192.0.2.12", "ports": ["*"], "backends": {"service": "web"},
                      "healthCheck": {"port": 80}}, id="wildcard-tcp-with-port"),
        pytest.param({"vip": "192.0.2.13", "ports": [80], "backends": {"registry": {"etcd": {
            "prefix": "/skydns/local/shop/web/"}}}}, id="registry"),
    ],
)
def test_valid_edge_cases_are_accepted(
    controlplane: ControlPlane, crds: list[str], cp_namespace: str, spec: dict[str, Any]
) -> None:
    status, stored = _create(controlplane, cp_namespace, {**VALID, "spec": spec}, "edge")
    assert status == 201, stored


def test_status_is_not_writable_through_the_main_resource(
    controlplane: ControlPlane, crds: list[str], cp_namespace: str
) -> None:
    """The status subresource is on: a status in a create or spec update is dropped."""
    body = {**VALID, "status": {"observedGeneration": 99}}
    status, stored = _create(controlplane, cp_namespace, body, "sub")
    assert status == 201, stored
    assert "status" not in stored or stored["status"] != {"observedGeneration": 99}


def test_nodeconfig_refuses_a_vip_that_is_not_an_ip(controlplane: ControlPlane, crds: list[str]) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DsrNodeConfig",
            "metadata": {"name": "crd-validation-node"}, "spec": {"vips": ["192.0.2.1", "nope"]}}
    status, answer = controlplane.request("POST", f"/apis/{GROUP}/{VERSION}/dsrnodeconfigs", body)
    assert status == 422, answer
    assert 'spec.vips[1]: Invalid value: "nope": must be an IPv4 or IPv6 address' in answer["message"]
    body["spec"]["vips"] = ["192.0.2.1", "192.0.2.1"]
    status, answer = controlplane.request("POST", f"/apis/{GROUP}/{VERSION}/dsrnodeconfigs", body)
    assert status == 422, answer
    assert "spec.vips[1]: Duplicate value" in answer["message"]
