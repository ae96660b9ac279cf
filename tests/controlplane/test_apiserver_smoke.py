"""Smoke tests of the control-plane tier: the real apiserver, RBAC, CRDs, watches, EndpointSlices."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ControlPlane  # tests/controlplane/conftest.py

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.controlplane

GROUP = "dsr.operators.dev"
VERSION = "v1alpha1"


def _minimal_crd(kind: str, plural: str, scope: str) -> dict:
    """A schema-less stand-in for a project CRD, used only while crds/ is not generated yet."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            },
                        }
                    },
                }
            ],
        },
    }


CRDS = {  # plural -> (kind, scope)
    "dsrservices": ("DsrService", "Namespaced"),
    "dsrnodeconfigs": ("DsrNodeConfig", "Cluster"),
}


@pytest.fixture(scope="module")
def apply_crd(controlplane: ControlPlane) -> Callable[[str], str]:
    """apply_crd(plural) applies that project CRD (crds/<kind>.yaml, or a minimal stand-in while
    crds/ is not generated) once, waits until it is Established and returns its name."""
    applied: dict[str, str] = {}

    def apply(plural: str) -> str:
        if plural not in applied:
            kind, scope = CRDS[plural]
            name = f"{plural}.{GROUP}"
            path = REPO_ROOT / "crds" / f"{kind.lower()}.yaml"
            if path.exists():
                documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
                assert [d["metadata"]["name"] for d in documents] == [name], f"{path} holds only the CRD"
            else:
                documents = [_minimal_crd(kind, plural, scope)]
            controlplane.kc("apply", "--server-side", "-f", "-", input=json.dumps(documents[0]))
            controlplane.kc("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
            applied[plural] = name
        return applied[plural]

    return apply


def test_apiserver_answers(controlplane: ControlPlane) -> None:
    status, version = controlplane.request("GET", "/version")
    assert status == 200
    assert version["gitVersion"].startswith("v1.")
    assert controlplane.kc("get", "--raw", "/readyz").stdout.strip() == "ok"
    assert "kubernetes" in controlplane.kc("get", "service", "-n", "default", "-o", "name").stdout
    # Anonymous requests get no further than the health endpoints.
    req = urllib.request.Request(controlplane.url + "/api/v1/namespaces")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, context=controlplane.ssl_context(), timeout=10)
    assert err.value.code in (401, 403)


def test_helm_reaches_apiserver(controlplane: ControlPlane) -> None:
    assert controlplane.helm("version", "--short").stdout.startswith("v4.")
    assert json.loads(controlplane.helm("list", "--all-namespaces", "-o", "json").stdout) == []


def test_rbac_refuses_unprivileged_serviceaccount(controlplane: ControlPlane, cp_namespace: str) -> None:
    controlplane.kc("create", "serviceaccount", "nobody", "-n", cp_namespace)
    token = controlplane.create_token("nobody", cp_namespace)

    # The token authenticates (TokenRequest signing + --service-account-key-file line up) ...
    status, review = controlplane.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    assert status == 201, review
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{cp_namespace}:nobody"

    # ... but RBAC grants it nothing.
    status, body = controlplane.request("GET", f"/api/v1/namespaces/{cp_namespace}/secrets", token=token)
    assert status == 403, body
    assert body["reason"] == "Forbidden"
    assert controlplane.request("GET", f"/api/v1/namespaces/{cp_namespace}/secrets")[0] == 200

    kubeconfig = controlplane.kubeconfig_for_token(token, f"nobody-{cp_namespace}")
    can_i = controlplane.kc("--kubeconfig", str(kubeconfig), "auth", "can-i", "list", "secrets", check=False)
    assert can_i.stdout.strip() == "no"

    # A Role + RoleBinding is all it takes to change that.
    controlplane.kc("create", "role", "read-secrets", "--verb=list", "--resource=secrets", "-n", cp_namespace)
    controlplane.kc(
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=read-secrets",
        f"--serviceaccount={cp_namespace}:nobody",
        "-n",
        cp_namespace,
    )
    controlplane.wait_for(
        lambda: controlplane.request("GET", f"/api/v1/namespaces/{cp_namespace}/secrets", token=token)[0] == 200,
        30,
        "the RoleBinding to take effect",
    )


@pytest.mark.parametrize("plural", sorted(CRDS))
def test_crd_applies_and_becomes_established(
    controlplane: ControlPlane, apply_crd: Callable[[str], str], plural: str
) -> None:
    apply_crd(plural)
    status, discovery = controlplane.request("GET", f"/apis/{GROUP}/{VERSION}")
    assert status == 200, discovery
    resources = discovery["resources"]
    by_name = {r["name"]: r for r in resources}
    assert by_name[plural]["namespaced"] is (CRDS[plural][1] == "Namespaced")


def test_field_selector_watch_on_cluster_scoped_resource(
    controlplane: ControlPlane, apply_crd: Callable[[str], str]
) -> None:
    apply_crd("dsrnodeconfigs")
    suffix = uuid.uuid4().hex[:8]
    wanted, other = f"node-a-{suffix}", f"node-b-{suffix}"
    for name in (wanted, other):
        controlplane.kc(
            "create",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "DsrNodeConfig",
                    "metadata": {"name": name},
                    "spec": {"vips": []},
                }
            ),
        )
    path = f"/apis/{GROUP}/{VERSION}/dsrnodeconfigs"
    query = urllib.parse.urlencode({"watch": "true", "fieldSelector": f"metadata.name={wanted}", "timeoutSeconds": "3"})
    req = urllib.request.Request(f"{controlplane.url}{path}?{query}")
    req.add_header("Authorization", f"Bearer {controlplane.token}")
    events: list[tuple[str, str]] = []
    with urllib.request.urlopen(req, context=controlplane.ssl_context(), timeout=20) as resp:
        assert resp.status == 200
        first = json.loads(resp.readline())
        events.append((first["type"], first["object"]["metadata"]["name"]))
        # Changes made while the watch is open: only the selected object's may come through.
        for name in (other, wanted):
            status, body = controlplane.request(
                "PATCH",
                f"{path}/{name}",
                {"metadata": {"labels": {"touched": "yes"}}},
                content_type="application/merge-patch+json",
            )
            assert status == 200, body
        for line in resp:  # the server ends the stream after timeoutSeconds
            if line.strip():
                event = json.loads(line)
                events.append((event["type"], event["object"]["metadata"]["name"]))
    assert events == [("ADDED", wanted), ("MODIFIED", wanted)]
    controlplane.kc("delete", f"dsrnodeconfigs.{GROUP}", wanted, other, "--wait=false")


def _endpoints(controlplane: ControlPlane, namespace: str, service: str) -> list[tuple[str, bool]]:
    slices = controlplane.kc_json(
        "get", "endpointslices", "-n", namespace, "-l", f"kubernetes.io/service-name={service}"
    )
    return sorted(
        (address, bool(ep.get("conditions", {}).get("ready")))
        for item in slices["items"]
        for ep in item.get("endpoints") or []
        for address in ep["addresses"]
    )


def test_controller_manager_publishes_endpointslices(controlplane: ControlPlane, cp_namespace: str) -> None:
    node = f"fake-node-{uuid.uuid4().hex[:8]}"
    pod_ip = "10.244.7.10"
    manifests = [
        # No kubelet: the Node object only has to exist (the endpointslice controller skips pods
        # whose node it does not know).
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": cp_namespace},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": cp_namespace, "labels": {"app": "web"}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "web", "image": "registry.invalid/web:1", "ports": [{"containerPort": 8080}]}],
            },
        },
    ]
    controlplane.kc("create", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    try:

        def set_ready(ready: bool) -> None:
            status = {
                "phase": "Running",
                "hostIP": "192.0.2.10",
                "podIP": pod_ip,
                "podIPs": [{"ip": pod_ip}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "ContainersReady", "status": str(ready)},
                    {"type": "Ready", "status": str(ready)},
                ],
            }
            controlplane.kc(
                "patch",
                "pod",
                "web-0",
                "-n",
                cp_namespace,
                "--subresource=status",
                "--type=merge",
                "-p",
                json.dumps({"status": status}),
            )

        set_ready(True)
        controlplane.wait_for(
            lambda: _endpoints(controlplane, cp_namespace, "web") == [(pod_ip, True)],
            60,
            "an EndpointSlice listing the pod as ready",
        )
        set_ready(False)
        controlplane.wait_for(
            lambda: _endpoints(controlplane, cp_namespace, "web") == [(pod_ip, False)],
            60,
            "the EndpointSlice to mark the pod not ready",
        )
        ports = controlplane.kc_json(
            "get", "endpointslices", "-n", cp_namespace, "-l", "kubernetes.io/service-name=web"
        )
        assert ports["items"][0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    finally:
        controlplane.kc("delete", "node", node, "--wait=false", check=False)
