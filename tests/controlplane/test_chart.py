"""The Helm chart on a real kube-apiserver (lint, template, values schema, install, least-privilege
RBAC checked with `kubectl auth can-i`), and the Dockerfile's build commands run on the host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from conftest import ControlPlane  # tests/controlplane/conftest.py

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "dsr-operator"
GROUP = "dsr.operators.dev"
GOOD_VALUES = ("--set", "netscaler.url=https://10.0.0.5", "--set", "netscaler.existingSecret=netscaler-login")


def test_chart_crds_are_the_generated_crds() -> None:
    """charts/dsr-operator/crds/ carries byte-identical copies of crds/ and nothing else."""
    for path in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        copy = CHART / "crds" / path.name
        assert copy.exists(), f"{copy} is missing: cp crds/*.yaml charts/dsr-operator/crds/"
        assert copy.read_bytes() == path.read_bytes(), f"{copy} differs from {path}: cp crds/*.yaml {copy.parent}/"
    assert sorted(p.name for p in (CHART / "crds").glob("*.yaml")) == sorted(
        p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))


# --- Helm, offline ------------------------------------------------------------------------------------

pytestmark = pytest.mark.controlplane


def _render(controlplane: ControlPlane, *args: str) -> list[dict[str, Any]]:
    out = controlplane.helm("template", "r", str(CHART), "--namespace", "dsr", *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def test_helm_lint(controlplane: ControlPlane) -> None:
    result = controlplane.helm("lint", "--strict", str(CHART), *GOOD_VALUES)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_template_defaults(controlplane: ControlPlane) -> None:
    docs = _render(controlplane, *GOOD_VALUES)
    deploy = _one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DSR_LEADER_ELECTION"] == "r-dsr-operator"  # 2 replicas: one leader, on this Lease
    fields = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert fields["DSR_LEADER_ELECTION_NAMESPACE"] == "metadata.namespace"
    assert fields["DSR_POD_NAME"] == "metadata.name"
    (role,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")]
    assert {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["r-dsr-operator"],
            "verbs": ["get", "update"]} in role["rules"]
    assert env["DSR_NETSCALER_URL"] == "https://10.0.0.5"
    assert env["DSR_NETSCALER_PASSWORD_FILE"].startswith("/etc/dsr-operator/netscaler/")
    assert not any("PASSWORD" in e["name"] and "value" in e and "FILE" not in e["name"] for e in container["env"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "healthz": 8081}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    secret_volume = next(v for v in pod["volumes"] if v["name"] == "netscaler-credentials")
    assert secret_volume["secret"]["secretName"] == "netscaler-login"
    assert not [d for d in docs if d["kind"] == "Secret"]  # existingSecret: the chart makes none

    ds = _one(docs, "DaemonSet")
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (agent,) = pod["containers"]
    assert agent["args"][:2] == ["agent", "--interface-mode=auto"]
    node_name = next(e for e in agent["env"] if e["name"] == "NODE_NAME")
    assert node_name["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert agent["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert agent["securityContext"]["allowPrivilegeEscalation"] is False
    assert "privileged" not in agent["securityContext"]
    host_paths = {v["hostPath"]["path"]: v["name"] for v in pod["volumes"] if "hostPath" in v}
    assert set(host_paths) == {"/var/lib/dsr-operator/agent", "/proc/sys/net"}
    mounts = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert mounts[host_paths["/var/lib/dsr-operator/agent"]] == "/var/lib/dsr-operator/agent"
    assert mounts[host_paths["/proc/sys/net"]] == "/host/proc/sys/net"
    assert {"name": "DSR_AGENT_PROC_SYS", "value": "/host/proc/sys"} in agent["env"]
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert _one(docs, "Service")["spec"]["ports"][0]["port"] == 8080


def test_template_options(controlplane: ControlPlane) -> None:
    docs = _render(
        controlplane, "--set", "netscaler.url=https://ns.example:8443", "--set", "netscaler.password=secret",
        "--set", "operator.replicas=1", "--set", "namespaces={shop,web}", "--set", "netscaler.caSecret=ns-ca",
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "agent.interfaceMode=loopback",
    )
    deploy = _one(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DSR_LEADER_ELECTION"] == "r-dsr-operator"  # one replica too: a rolling update overlaps two
    assert env["DSR_NETSCALER_CA_FILE"] == "/etc/dsr-operator/netscaler-ca/ca.crt"
    assert container["args"] == ["run", "--namespace=shop", "--namespace=web"]
    assert _one(docs, "Secret")["stringData"] == {"username": "nsroot", "password": "secret"}
    assert _one(docs, "ServiceMonitor")["apiVersion"] == "monitoring.coreos.com/v1"
    assert "--interface-mode=loopback" in _one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"]
    # A namespaced install is namespaced: what lives in a namespace comes from a Role in each listed one.
    operator_rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "r-dsr-operator")
    cluster_wide = {r for rule in operator_rules["rules"] for r in rule["resources"]}
    assert cluster_wide == {"dsrnodeconfigs", "nodes", "customresourcedefinitions", "namespaces", "dsrvippools",
                            "dsrvippools/status"}, cluster_wide
    roles = {d["metadata"]["namespace"]: d for d in docs
             if d["kind"] == "Role" and d["metadata"]["name"] == "r-dsr-operator"}
    assert sorted(roles) == ["shop", "web"]
    for role in roles.values():
        assert {r for rule in role["rules"] for r in rule["resources"]} == {
            "dsrservices", "dsrservices/status", "services", "services/status", "endpointslices", "events"}
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "r-dsr-operator"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["shop", "web"]


def test_without_a_load_balancer_class_the_operator_may_not_create_dsrservices(controlplane: ControlPlane) -> None:
    docs = _render(controlplane, "--set", "netscaler.url=https://ns.example:8443", "--set", "netscaler.password=s",
                   "--set", "loadBalancerClass=")
    rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "r-dsr-operator")["rules"]
    assert not [r for r in rules if "dsrvippools/status" in r["resources"] or "services/status" in r["resources"]]
    dsr = next(r for r in rules if r["resources"] == ["dsrservices"])
    assert sorted(dsr["verbs"]) == ["get", "list", "patch", "watch"]
    # requireVipPool (the default) still reads the pools: they say which VIPs a namespace may claim.
    assert [r["verbs"] for r in rules if r["resources"] == ["dsrvippools"]] == [["get", "list", "watch"]]
    (container,) = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "DSR_LOAD_BALANCER_CLASS", "value": ""} in container["env"]
    assert {"name": "DSR_REQUIRE_VIP_POOL", "value": "true"} in container["env"]
    docs = _render(controlplane, "--set", "netscaler.url=https://ns.example:8443", "--set", "netscaler.password=s",
                   "--set", "loadBalancerClass=", "--set", "requireVipPool=false")
    rules = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "r-dsr-operator")["rules"]
    assert not [r for r in rules if any(res.startswith("dsrvippools") for res in r["resources"])]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "netscaler.url=not a url"), "at '/netscaler/url'"),
        (("--set", "netscaler.url=ftp://10.0.0.5"), "at '/netscaler/url'"),
        (("--set", "operator.replicas=0"), "at '/operator/replicas': minimum: got 0, want 1"),
        (("--set", "agent.interfaceMode=bridge"), "at '/agent/interfaceMode': value must be one of 'auto', 'dummy'"),
        (("--set", "maxUnbindPercent=0"), "at '/maxUnbindPercent': minimum: got 0, want 1"),
        (("--set", "drainSeconds=-5"), "at '/drainSeconds': minimum: got -5, want 0"),
        (("--set", "operatorId=has space"), "at '/operatorId'"),
        (("--set", "image.pullPolicy=Sometimes"), "at '/image/pullPolicy'"),
    ],
    ids=["url-not-a-url", "url-not-http", "replicas-0", "interface-mode", "unbind-0", "drain-negative",
         "operator-id", "pull-policy"],
)
def test_bad_values_fail_template_with_the_schema_message(
    controlplane: ControlPlane, values: tuple[str, ...], message: str
) -> None:
    result = controlplane.helm("template", "r", str(CHART), *GOOD_VALUES, *values, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def test_an_ha_pair_is_given_by_its_two_nsips(controlplane: ControlPlane) -> None:
    pair = ("--set", "netscaler.existingSecret=netscaler-login",
            "--set", "netscaler.urls={https://10.0.0.5,https://10.0.0.6}")
    (container,) = _one(_render(controlplane, *pair), "Deployment")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert json.loads(env["DSR_NETSCALER_URLS"]) == ["https://10.0.0.5", "https://10.0.0.6"]
    assert "DSR_NETSCALER_URL" not in env
    for values, message in (
        (("--set", "netscaler.url=https://10.0.0.7"), "at '/netscaler/url': maxLength"),  # not both
        (("--set", "netscaler.urls={https://a,https://b,https://c}"), "at '/netscaler/urls': maxItems"),
        (("--set", "netscaler.urls={ftp://10.0.0.5}"), "at '/netscaler/urls/0'"),
    ):
        result = controlplane.helm("template", "r", str(CHART), *pair, *values, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_an_etcd_registry_is_passed_to_the_operator_with_its_secret(controlplane: ControlPlane) -> None:
    registry = ("--set", "registry.etcd.endpoints={https://10.0.0.7:2379,https://10.0.0.8:2379}",
                "--set", "registry.etcd.existingSecret=etcd-client")
    spec = _one(_render(controlplane, *GOOD_VALUES, *registry), "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DSR_ETCD_ENDPOINTS"] == "https://10.0.0.7:2379,https://10.0.0.8:2379"
    assert env["DSR_ETCD_PASSWORD_FILE"] == "/etc/dsr-operator/etcd/password"
    assert env["DSR_ETCD_CA_FILE"] == "/etc/dsr-operator/etcd/ca.crt"
    volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "etcd-client")
    mount = {"name": volume["name"], "mountPath": "/etc/dsr-operator/etcd", "readOnly": True}
    assert mount in container["volumeMounts"]
    # Without endpoints there is no registry at all; an endpoint that is not a URL is refused.
    (plain,) = _one(_render(controlplane, *GOOD_VALUES), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert not [e for e in plain["env"] if e["name"].startswith("DSR_ETCD_")]
    result = controlplane.helm("template", "r", str(CHART), *GOOD_VALUES, "--set", "registry.etcd.endpoints={etcd}",
                               check=False)
    assert result.returncode != 0 and "at '/registry/etcd/endpoints/0'" in result.stderr, result.stderr


def test_missing_url_and_credentials_are_named(controlplane: ControlPlane) -> None:
    result = controlplane.helm("template", "r", str(CHART), check=False)
    assert result.returncode != 0 and "at '/netscaler/url'" in result.stderr, result.stderr
    result = controlplane.helm("template", "r", str(CHART), "--set", "netscaler.url=https://10.0.0.5", check=False)
    assert result.returncode != 0
    assert "set netscaler.existingSecret (a Secret with keys username and password) or netscaler.password" in (
        result.stderr
    )


# --- Helm install into the test cluster --------------------------------------------------------------


@dataclass
class Release:
    name: str
    namespace: str
    operator_sa: str
    agent_sa: str


@pytest.fixture(scope="module")
def release(controlplane: ControlPlane) -> Iterator[Release]:
    suffix = uuid.uuid4().hex[:6]
    rel = Release(f"dsr-{suffix}", f"dsr-system-{suffix}", f"dsr-{suffix}-dsr-operator",
                  f"dsr-{suffix}-dsr-operator-agent")
    controlplane.kc("create", "namespace", rel.namespace)
    controlplane.kc("create", "secret", "generic", "netscaler-login", "-n", rel.namespace,
                    "--from-literal=username=nsroot", "--from-literal=password=nsroot")
    controlplane.kc("create", "secret", "generic", "unrelated", "-n", rel.namespace, "--from-literal=k=v")
    controlplane.helm("install", rel.name, str(CHART), "--namespace", rel.namespace, *GOOD_VALUES, "--wait=false")
    yield rel
    controlplane.helm("uninstall", rel.name, "--namespace", rel.namespace, check=False)
    controlplane.kc("delete", "namespace", rel.namespace, "--wait=false", check=False)


def test_install_creates_everything(controlplane: ControlPlane, release: Release) -> None:
    listing = json.loads(controlplane.helm("list", "-n", release.namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in listing] == [(release.name, "deployed")]
    ns = release.namespace
    deploy = controlplane.kc_json("get", "deployment", release.operator_sa, "-n", ns)
    assert deploy["spec"]["replicas"] == 2
    assert controlplane.kc_json("get", "daemonset", release.agent_sa, "-n", ns)["spec"]["template"]["spec"][
        "hostNetwork"
    ] is True
    for sa in (release.operator_sa, release.agent_sa):
        controlplane.kc("get", "serviceaccount", sa, "-n", ns)
    controlplane.kc("get", "role", f"{release.operator_sa}-leader-election", "-n", ns)
    crds = controlplane.kc("get", "crd", "-o", "name").stdout.split()
    for name in ("dsrservices.dsr.operators.dev", "dsrnodeconfigs.dsr.operators.dev"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{name}" in crds
    controlplane.kc("get", "service", f"{release.operator_sa}-metrics", "-n", ns)


def test_install_with_bad_values_fails_with_the_schema_message(controlplane: ControlPlane, release: Release) -> None:
    result = controlplane.helm("install", "bad", str(CHART), "--namespace", release.namespace,
                               "--set", "netscaler.url=not a url", "--set", "operator.replicas=0",
                               "--set", "netscaler.existingSecret=netscaler-login", check=False)
    assert result.returncode != 0
    assert "at '/netscaler/url'" in result.stderr and "at '/operator/replicas'" in result.stderr, result.stderr
    assert json.loads(controlplane.helm("list", "-n", release.namespace, "-o", "json").stdout)[0]["name"] == (
        release.name
    )


def _can_i(controlplane: ControlPlane, release: Release, sa: str, *args: str) -> bool:
    """`kubectl auth can-i` as `sa`; RELEASE_NS and LEASE in `args` stand for the release's namespace and Lease."""
    args = tuple(a.replace("RELEASE_NS", release.namespace).replace("LEASE", release.operator_sa) for a in args)
    result = controlplane.kc("auth", "can-i", f"--as=system:serviceaccount:{release.namespace}:{sa}", *args,
                             check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


AGENT_ALLOWED = [
    ("get", "dsrnodeconfigs.dsr.operators.dev"),
    ("list", "dsrnodeconfigs.dsr.operators.dev"),
    ("watch", "dsrnodeconfigs.dsr.operators.dev"),
    ("patch", "dsrnodeconfigs.dsr.operators.dev", "--subresource=status"),
    ("update", "dsrnodeconfigs.dsr.operators.dev", "--subresource=status"),
    ("create", "events", "-n", "default"),
    # Only to refuse VIPs that would cut a node off: the cluster's node, service and API server addresses.
    ("list", "nodes"),
    ("list", "servicecidrs.networking.k8s.io"),
    ("get", "endpointslices.discovery.k8s.io/kubernetes", "-n", "default"),
]
AGENT_DENIED = [
    ("get", "secrets", "-n", "default"),
    ("list", "secrets", "--all-namespaces"),
    ("patch", "dsrnodeconfigs.dsr.operators.dev"),
    ("update", "dsrnodeconfigs.dsr.operators.dev"),
    ("create", "dsrnodeconfigs.dsr.operators.dev"),
    ("delete", "dsrnodeconfigs.dsr.operators.dev"),
    ("get", "dsrservices.dsr.operators.dev", "--all-namespaces"),
    ("patch", "dsrservices.dsr.operators.dev", "-n", "default"),
    ("create", "dsrservices.dsr.operators.dev", "-n", "default"),
    ("patch", "dsrservices.dsr.operators.dev", "--subresource=status", "-n", "default"),
    ("create", "events", "-n", "kube-system"),
    ("list", "pods", "--all-namespaces"),
    ("get", "nodes"),
    ("patch", "nodes"),
    ("get", "endpointslices.discovery.k8s.io/web", "-n", "default"),
    ("list", "endpointslices.discovery.k8s.io", "-n", "default"),
]
OPERATOR_ALLOWED = [
    ("watch", "dsrservices.dsr.operators.dev", "--all-namespaces"),
    ("patch", "dsrservices.dsr.operators.dev", "-n", "shop"),
    ("patch", "dsrservices.dsr.operators.dev", "--subresource=status", "-n", "shop"),
    ("create", "dsrnodeconfigs.dsr.operators.dev"),
    ("patch", "dsrnodeconfigs.dsr.operators.dev"),
    ("watch", "dsrnodeconfigs.dsr.operators.dev"),
    ("list", "endpointslices.discovery.k8s.io", "--all-namespaces"),
    ("watch", "nodes"),
    ("watch", "services", "--all-namespaces"),
    # The LoadBalancer front door: the DsrServices it makes, the Services' status, the pools.
    ("create", "dsrservices.dsr.operators.dev", "-n", "shop"),
    ("delete", "dsrservices.dsr.operators.dev", "-n", "shop"),
    ("patch", "services", "--subresource=status", "-n", "shop"),
    ("watch", "dsrvippools.dsr.operators.dev"),
    ("patch", "dsrvippools.dsr.operators.dev", "--subresource=status"),
    ("create", "events", "-n", "shop"),
    ("create", "events.events.k8s.io", "-n", "shop"),
    ("create", "leases.coordination.k8s.io", "-n", "RELEASE_NS"),
    ("get", "leases.coordination.k8s.io/LEASE", "-n", "RELEASE_NS"),
    ("update", "leases.coordination.k8s.io/LEASE", "-n", "RELEASE_NS"),
]
OPERATOR_DENIED = [
    ("create", "pods", "--subresource=exec", "-n", "shop"),
    ("create", "pods/exec", "-n", "kube-system"),
    ("get", "secrets", "-n", "shop"),
    ("get", "secrets/unrelated"),
    ("get", "secrets/netscaler-login"),  # mounted as files: no API access needed
    ("list", "secrets", "--all-namespaces"),
    ("update", "dsrservices.dsr.operators.dev", "-n", "shop"),
    ("patch", "dsrvippools.dsr.operators.dev"),
    ("delete", "dsrvippools.dsr.operators.dev"),
    ("patch", "dsrnodeconfigs.dsr.operators.dev", "--subresource=status"),
    ("delete", "dsrnodeconfigs.dsr.operators.dev"),
    ("patch", "nodes"),
    ("patch", "services", "-n", "shop"),
    ("create", "endpointslices.discovery.k8s.io", "-n", "shop"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("update", "leases.coordination.k8s.io/another-lease", "-n", "RELEASE_NS"),
    ("update", "leases.coordination.k8s.io/LEASE", "-n", "kube-system"),
    ("delete", "leases.coordination.k8s.io/LEASE", "-n", "RELEASE_NS"),
]


def _ids(cases: list[tuple[str, ...]]) -> list[str]:
    return [" ".join(c).replace("--subresource=", "/").replace(".dsr.operators.dev", "") for c in cases]


@pytest.mark.parametrize("args", AGENT_ALLOWED, ids=_ids(AGENT_ALLOWED))
def test_agent_may(controlplane: ControlPlane, release: Release, args: tuple[str, ...]) -> None:
    assert _can_i(controlplane, release, release.agent_sa, *args)


@pytest.mark.parametrize("args", AGENT_DENIED, ids=_ids(AGENT_DENIED))
def test_agent_may_not(controlplane: ControlPlane, release: Release, args: tuple[str, ...]) -> None:
    assert not _can_i(controlplane, release, release.agent_sa, *args)


@pytest.mark.parametrize("args", OPERATOR_ALLOWED, ids=_ids(OPERATOR_ALLOWED))
def test_operator_may(controlplane: ControlPlane, release: Release, args: tuple[str, ...]) -> None:
    assert _can_i(controlplane, release, release.operator_sa, *args)


@pytest.mark.parametrize("args", OPERATOR_DENIED, ids=_ids(OPERATOR_DENIED))
def test_operator_may_not(controlplane: ControlPlane, release: Release, args: tuple[str, ...]) -> None:
    # Secrets in the release namespace are the interesting case: ask there.
    if args[1].startswith("secrets/") and "-n" not in args and "--all-namespaces" not in args:
        args = (*args, "-n", release.namespace)
    assert not _can_i(controlplane, release, release.operator_sa, *args)


def test_an_agent_writes_only_the_dsrnodeconfig_of_its_own_node(controlplane: ControlPlane, release: Release) -> None:
    """RBAC lets every agent write every DsrNodeConfig's status; the chart's admission policy narrows it to
    the node its Pod's token names (a forged "VIP applied" on another node would get that node bound)."""
    cp, suffix = controlplane, uuid.uuid4().hex[:6]
    mine, other = f"vap-a-{suffix}", f"vap-b-{suffix}"
    nodeconfigs = f"/apis/{GROUP}/v1alpha1/dsrnodeconfigs"
    try:
        for node in (mine, other):
            cp.kc("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                         "metadata": {"name": node}}))
            cp.kc("create", "-f", "-", input=json.dumps({"apiVersion": f"{GROUP}/v1alpha1", "kind": "DsrNodeConfig",
                                                         "metadata": {"name": node}, "spec": {"vips": []}}))
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": f"agent-{suffix}", "namespace": release.namespace},
               "spec": {"nodeName": mine, "serviceAccountName": release.agent_sa,
                        "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}}
        created = json.loads(cp.kc("create", "-f", "-", "-o", "json", input=json.dumps(pod)).stdout)
        bound = cp.create_token(release.agent_sa, release.namespace, pod=created)
        unbound = cp.create_token(release.agent_sa, release.namespace)

        def write(name: str, token: str) -> tuple[int, Any]:
            return cp.request("PATCH", f"{nodeconfigs}/{name}/status", {"status": {"appliedVips": ["192.0.2.99"]}},
                              token=token, content_type="application/merge-patch+json")

        # The policy's informer takes a moment after install: wait until the forged write is refused.
        forged = cp.wait_for(lambda: (r := write(other, bound))[0] != 200 and r, 60, "the policy to apply")
        assert forged[0] == 403, forged
        assert f"may write only its own node's DsrNodeConfig: this token is bound to node {mine}, not {other}" in (
            forged[1]["message"]), forged
        stolen = write(mine, unbound)
        assert stolen[0] == 403 and "this token is bound to no node" in stolen[1]["message"], stolen
        own = write(mine, bound)
        assert own[0] == 200, own
        assert cp.kc_json("get", "dsrnodeconfig", other).get("status", {}).get("appliedVips") is None
        assert cp.kc_json("get", "dsrnodeconfig", mine)["status"]["appliedVips"] == ["192.0.2.99"]
    finally:
        cp.kc("delete", "pod", f"agent-{suffix}", "-n", release.namespace, "--wait=false", check=False)
        for node in (mine, other):
            cp.kc("delete", "dsrnodeconfig", node, "--wait=false", check=False)
            cp.kc("delete", "node", node, "--wait=false", check=False)


def test_upgrade_to_one_replica_keeps_leader_election(controlplane: ControlPlane, release: Release) -> None:
    """One replica still elects itself: a rolling update runs the old and the new Pod side by side."""
    controlplane.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, *GOOD_VALUES,
                      "--set", "operator.replicas=1", "--wait=false")
    deploy = controlplane.kc_json("get", "deployment", release.operator_sa, "-n", release.namespace)
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert deploy["spec"]["replicas"] == 1 and env["DSR_LEADER_ELECTION"] == release.operator_sa
    controlplane.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, *GOOD_VALUES,
                      "--wait=false")


# --- The Dockerfile's commands, on the host -----------------------------------------------------------

VENV_CMD = "python3 -m venv /opt/dsr-operator"  # both stages: a Debian base has no pip outside a venv (PEP 668)
WHEEL_CMD = "pip wheel --no-deps --wheel-dir /wheels ."
INSTALL_CMD = "pip install --no-index --find-links /wheels dsr-operator"


@pytest.mark.timeout(180)
def test_dockerfile_wheel_builds_installs_and_runs(tmp_path: Path) -> None:
    """Build the project wheel and install it the way the Dockerfile does, into a fresh venv.

    The runtime dependencies come from this test's own environment (a .pth file) instead of /wheels;
    the project itself comes from the wheel only. The wheel build, like the Dockerfile's, uses pip's
    build isolation (it fetches setuptools from the package index)."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert WHEEL_CMD in dockerfile and INSTALL_CMD in dockerfile
    assert dockerfile.count(VENV_CMD) == 2 and dockerfile.count("PATH=/opt/dsr-operator/bin:$PATH") == 2
    assert 'ENTRYPOINT ["dsr-operator"]' in dockerfile and "USER 65532:65532" in dockerfile
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1"}
    src = tmp_path / "src"  # a copy with only what .dockerignore lets through
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "operator", src / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheel_cmd = WHEEL_CMD.replace("/wheels", str(wheels)).split()
    build = subprocess.run([*pip, *wheel_cmd[1:]], cwd=src, env=env, capture_output=True, text=True, timeout=150)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("dsr_operator-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python3*/site-packages"))
    install = subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-index", "--find-links", str(wheels),
         "--no-deps", "dsr-operator"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert install.returncode == 0, install.stderr
    assert "Successfully installed dsr-operator-0.1.0" in install.stdout, install.stdout
    # Only now (pip would otherwise find the editable install there): the dependencies, after the wheel.
    deps = [p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir()]
    (site / "zz-test-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    entry = venv / "bin" / "dsr-operator"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import dsr_operator; print(dsr_operator.__file__)"],
                           capture_output=True, text=True, env=clean_env, cwd=tmp_path, timeout=30, check=True)
    assert where.stdout.strip().startswith(str(site)), f"imported from {where.stdout}, not from the wheel"
    helped = subprocess.run([str(entry), "--help"], capture_output=True, text=True, env=clean_env, cwd=tmp_path,
                            timeout=60)
    assert helped.returncode == 0, helped.stderr
    for command in ("run", "agent", "nitro-sim", "crd"):
        assert command in helped.stdout
    # The demo reads its manifests from the package, so it works outside a source checkout too.
    demo = subprocess.run([str(entry), "demo"], capture_output=True, text=True, env=clean_env, cwd=tmp_path,
                          timeout=60)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert demo.stdout.startswith("# examples/service-web.yaml: DsrService shop/web"), demo.stdout
    assert "lb vserver dsr-default_static-web_80  ANY 192.0.2.10:80  -m MAC" in demo.stdout
    assert demo.stdout.rstrip().endswith("No changes: NetScaler matches the manifests.")
    out = tmp_path / "crds"
    subprocess.run([str(entry), "crd", "--output-dir", str(out)], check=True, env=clean_env, cwd=tmp_path, timeout=60)
    for path in (REPO_ROOT / "crds").glob("*.yaml"):
        assert (out / path.name).read_bytes() == path.read_bytes()
    assert wheel.name.startswith("dsr_operator-0.1.0-")
