"""The product as users run it, on real nodes: the chart's defaults, real Pods, kube-proxy, DSR traffic.

The chart is installed with `helm install` and only the image pull policy (the image is imported, not
pulled), the NetScaler URL and its password set. The NITRO simulator plays the NetScaler: its API on
the host's address on the lab bridge (reachable from Pods), its dataplane in the lab's `lb`
namespace, which answers ARP for the VIP and forwards by MAC to the node NetScaler chose. A web
Deployment (the tier's one-file echo server) behind a Service with the VIP in `externalIPs` and
`externalTrafficPolicy: Local` and a Service-backed DsrService: kube-proxy on the chosen node hands
the VIP's packets to a local Pod, and the reply leaves that node straight for the client.

Every test prints its figures (seconds, requests sent and failed). Waits poll for state with generous
limits; the assertions are on state and order (what answered, what the simulator holds, the Lease).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import cluster as cl
from tests.controlplane import operator_rig as rig

CHART = cl.REPO_ROOT / "charts" / "dsr-operator"
SYSTEM = "dsr-system"
APP = "shop"
RELEASE = "dsr"
PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
WEB_NODES = ("n1", "n2")  # n3 runs no web Pod: it must never be bound


@dataclasses.dataclass
class Stand:
    cluster: cl.Cluster
    sim: rig.SimProcess
    before: dict[str, Any]
    """The simulator's objects before the chart was installed."""
    figures: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def vip(self) -> str:
        return self.cluster.lab.vip

    def kc(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kc(*args, input=input, check=check, timeout=120)

    def apply(self, *docs: dict[str, Any]) -> None:
        self.kc("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    def helm(self, *args: str) -> Any:
        return self.cluster.cp.helm(*args, timeout=600)

    def dsr(self) -> dict[str, Any]:
        got: dict[str, Any] = self.cluster.kc_json("get", "dsrservice", "web", "-n", APP)
        return got

    def ready(self) -> bool:
        body = self.dsr()
        status = body.get("status") or {}
        ready = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
        return (bool(ready) and ready[0].get("status") == "True"
                and status.get("observedGeneration") == body["metadata"]["generation"])

    def objects(self, rtype: str) -> list[dict[str, Any]]:
        return list(self.sim.config().get("objects", {}).get(rtype, []))

    def bound_nodes(self) -> set[str]:
        """Node names whose address is bound to the VIP's vserver on the simulator."""
        by_ip = {n.ip: n.name for n in self.cluster.nodes}
        services = {s["name"]: s.get("ipaddress") for s in self.objects("service")}
        bound = {b["servicename"] for b in self.objects("lbvserver_service_binding")}
        return {by_ip[ip] for name, ip in services.items() if name in bound and ip in by_ip}

    def node_has_vip(self, node: cl.Node) -> bool:
        out = node.exec("ip", "-j", "addr", "show", "dev", "lo", check=False, timeout=10)
        return out.returncode == 0 and any(
            a.get("local") == self.vip for link in json.loads(out.stdout or "[]") for a in link.get("addr_info", []))

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        def check() -> Any:
            if self.sim.proc is not None:
                self.sim.proc.check_alive()
            return predicate()
        return self.cluster.wait_for(check, timeout, what, interval=0.25)


def _web() -> list[dict[str, Any]]:
    labels = {"app": "web"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": APP},
        "spec": {
            "replicas": len(WEB_NODES), "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                "affinity": {
                    "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In",
                                               "values": list(WEB_NODES)}]}]}},
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": labels}}]},
                },
                "containers": [{
                    "name": "web", "image": cl.ECHO_IMAGE, "imagePullPolicy": "Never",
                    "ports": [{"containerPort": cl.ECHO_PORT}],
                    "readinessProbe": {"tcpSocket": {"port": cl.ECHO_PORT}, "periodSeconds": 1},
                }],
            }},
        },
    }
    return [deployment]


def _service(vip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": APP},
            "spec": {"selector": {"app": "web"}, "externalIPs": [vip], "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "targetPort": cl.ECHO_PORT}]}}


def _dsrservice(vip: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrService",
            "metadata": {"name": "web", "namespace": APP},
            "spec": {"vip": vip, "ports": [80], "backends": {"service": "web"}, "lbMethod": "ROUNDROBIN",
                     "drainSeconds": 2,
                     # Probed through the VIP (a transparent monitor): kube-proxy answers it like a client.
                     "healthCheck": {"type": "TCP", "intervalSeconds": 2, "timeoutSeconds": 1, "port": 80,
                                     "throughVip": True},
                     **spec}}


@pytest.fixture(scope="module")
def stand(cluster: cl.Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    work: Path = tmp_path_factory.mktemp("dsr-cluster")
    lab = cluster.lab
    cluster.import_image(cl.build_echo_image(cl.REPO_ROOT / ".cache" / "cluster" / "echo-server.tar"))
    sim = rig.SimProcess(work, "nsroot", PASSWORD, host=lab.ip("host"),
                         extra_args=("--dataplane-netns", lab.ns("lb"), "--dataplane-dev", "eth0"))
    sim.start()
    before = sim.config().get("objects", {})
    stand = Stand(cluster, sim, before)
    try:
        yield stand
    finally:
        with contextlib.suppress(Exception):
            stand.kc("delete", "namespace", APP, "--wait=true", "--timeout=60s", check=False)
        with contextlib.suppress(Exception):
            stand.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "120s")
        with contextlib.suppress(Exception):
            stand.kc("delete", "namespace", SYSTEM, "--wait=false", check=False)
        sim.stop()
        print(f"\nDSR on real nodes, figures: {json.dumps(stand.figures, sort_keys=True)}")


def _pods(stand: Stand, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = stand.cluster.kc_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def _ready_pods(stand: Stand, namespace: str, selector: str) -> list[dict[str, Any]]:
    return [p for p in _pods(stand, namespace, selector)
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


def _leader(stand: Stand) -> str | None:
    try:
        lease = stand.cluster.kc_json("get", "lease", f"{RELEASE}-dsr-operator", "-n", SYSTEM)
    except Exception:  # not created yet
        return None
    holder: str | None = lease["spec"].get("holderIdentity")
    return holder


def test_helm_install_with_the_charts_defaults_runs_two_operators_and_an_agent_per_node(stand: Stand) -> None:
    stand.kc("create", "namespace", SYSTEM)
    start = time.monotonic()
    stand.helm("install", RELEASE, str(CHART), "-n", SYSTEM, "--set", "image.pullPolicy=Never",
               "--set", f"netscaler.url={stand.sim.url}", "--set", f"netscaler.password={PASSWORD}",
               "--wait", "--timeout", "300s")
    stand.figures["helm_install_wait_s"] = round(time.monotonic() - start, 1)
    deploy = stand.cluster.kc_json("get", "deployment", f"{RELEASE}-dsr-operator", "-n", SYSTEM)
    assert deploy["spec"]["replicas"] == 2 and deploy["status"].get("readyReplicas") == 2
    agents = stand.cluster.kc_json("get", "daemonset", f"{RELEASE}-dsr-operator-agent", "-n", SYSTEM)
    assert agents["status"]["numberReady"] == 3 == agents["status"]["desiredNumberScheduled"]
    operators = {p["metadata"]["name"] for p in _ready_pods(stand, SYSTEM, "app.kubernetes.io/component=operator")}
    holder = stand.wait(lambda: _leader(stand), 60, "one operator replica to hold the Lease")
    assert holder in operators, (holder, operators)


def test_dsr_traffic_reaches_pods_and_replies_bypass_netscaler(stand: Stand) -> None:
    stand.kc("create", "namespace", APP)
    start = time.monotonic()
    stand.apply(*_web(), _service(stand.vip), _dsrservice(stand.vip))
    stand.wait(lambda: len(_ready_pods(stand, APP, "app=web")) == len(WEB_NODES), 120, "the web Pods Ready")
    stand.wait(stand.ready, 120, "the DsrService Ready")
    stand.figures["dsrservice_ready_s"] = round(time.monotonic() - start, 1)
    assert stand.bound_nodes() == set(WEB_NODES)  # only nodes with a ready Pod
    for name in WEB_NODES:
        stand.wait(lambda name=name: stand.node_has_vip(stand.cluster.node(name)), 60, f"the VIP on {name}")
    pods = {p["metadata"]["name"] for p in _ready_pods(stand, APP, "app=web")}

    # The first answers may still wait for kube-proxy and the monitor: poll until one answers, then count.
    lab = stand.cluster.lab
    seen: set[str] = set()

    def both_answered() -> bool:
        reply = lab.get(timeout=2)
        if reply.ok:
            seen.add(reply.backend)
        return seen >= pods
    stand.wait(both_answered, 90, "both Pods to answer through the VIP (kube-proxy and the monitor settle)")
    with lab.capture("lb", f"tcp and src host {stand.vip} and src port 80") as through_lb:
        replies = [lab.get(timeout=3) for _ in range(40)]
    failed = [r for r in replies if not r.ok]
    stand.figures["requests_sent"] = len(replies)
    stand.figures["requests_failed"] = len(failed)
    assert not failed, failed[:3]
    assert {r.backend for r in replies} <= pods  # only the Pods answered, each from its own node
    assert through_lb == [], f"{len(through_lb)} replies went back through the NetScaler's dataplane"


def test_killing_the_leader_pod_hands_over_and_a_change_lands_within_30_s(stand: Stand) -> None:
    leader = stand.wait(lambda: _leader(stand), 60, "a leader")
    killed = time.monotonic()
    stand.kc("delete", "pod", leader, "-n", SYSTEM, "--grace-period=0", "--force", check=False)
    stand.kc("patch", "dsrservice", "web", "-n", APP, "--type=merge",
             "-p", json.dumps({"spec": {"lbMethod": "LEASTCONNECTION"}}))

    def changed() -> bool:
        return any(v.get("lbmethod") == "LEASTCONNECTION" for v in stand.objects("lbvserver"))
    stand.wait(changed, 60, "the change on NetScaler after the leader was killed")
    took = time.monotonic() - killed
    stand.figures["takeover_change_on_netscaler_s"] = round(took, 1)
    new = _leader(stand)
    assert new is not None and new != leader
    assert took <= 30, f"the change reached NetScaler {took:.1f}s after the leader was killed"
    stand.wait(stand.ready, 60, "the DsrService Ready at its new generation")


def test_an_agent_pod_restart_keeps_the_vip_on_its_node(stand: Stand) -> None:
    node = stand.cluster.node(WEB_NODES[0])
    (agent,) = [p for p in _pods(stand, SYSTEM, "app.kubernetes.io/component=agent")
                if p["spec"].get("nodeName") == node.name]
    missing: list[float] = []
    checks = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if not stand.node_has_vip(node):
                missing.append(time.monotonic())
            checks[0] += 1
            stop.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stand.kc("delete", "pod", agent["metadata"]["name"], "-n", SYSTEM)

        def replaced() -> bool:
            pods = [p for p in _ready_pods(stand, SYSTEM, "app.kubernetes.io/component=agent")
                    if p["spec"].get("nodeName") == node.name]
            return bool(pods) and pods[0]["metadata"]["uid"] != agent["metadata"]["uid"]
        stand.wait(replaced, 120, f"a new agent Pod Ready on {node.name}")
        time.sleep(2)  # and a few more checks with the new agent running
    finally:
        stop.set()
        watcher.join(10)
    stand.figures["agent_restart_vip_checks"] = checks[0]
    assert checks[0] > 20
    assert not missing, f"the VIP was missing from {node.name} in {len(missing)} of {checks[0]} checks"
    assert stand.bound_nodes() == set(WEB_NODES)


def test_uninstall_after_deleting_the_dsrservices_leaves_netscaler_as_it_was(stand: Stand) -> None:
    stand.kc("delete", "dsrservice", "web", "-n", APP, "--wait=true", "--timeout=120s")
    for name in WEB_NODES:
        stand.wait(lambda name=name: not stand.node_has_vip(stand.cluster.node(name)), 60,
                   f"the VIP gone from {name}")
    stand.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "120s")
    after = stand.sim.config().get("objects", {})
    assert {k: v for k, v in after.items() if v} == {k: v for k, v in stand.before.items() if v}
