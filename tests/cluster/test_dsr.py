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
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
WEB_REPLICAS = 2  # on 2 of the 3 nodes (one Pod per node): the third is free for a surge and a drain


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
        groups = {b["servicegroupname"] for b in self.objects("lbvserver_servicegroup_binding")}
        members = self.objects("servicegroup_servicegroupmember_binding")
        return {by_ip[m["ip"]] for m in members if m["servicegroupname"] in groups and m.get("ip") in by_ip}

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
            "replicas": WEB_REPLICAS, "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "terminationGracePeriodSeconds": 20, "automountServiceAccountToken": False,
                "affinity": {
                    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": labels}}]},
                },
                "containers": [{
                    "name": "web", "image": cl.ECHO_IMAGE, "imagePullPolicy": "Never",
                    "ports": [{"containerPort": cl.ECHO_PORT}],
                    "readinessProbe": {"tcpSocket": {"port": cl.ECHO_PORT}, "periodSeconds": 1},
                    # What a web app behind any load balancer does: keep serving a few seconds after
                    # it is told to stop, while the endpoint change reaches the balancer.
                    "lifecycle": {"preStop": {"sleep": {"seconds": 6}}},
                }],
            }},
        },
    }
    return [deployment]


def _service(vip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": APP},
            "spec": {"selector": {"app": "web"}, "externalIPs": [vip], "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "targetPort": cl.ECHO_PORT}]}}


def _vip_pool(vip: str) -> dict[str, Any]:
    """The chart's default requireVipPool: a DsrService's VIP must lie in a pool that admits its namespace."""
    return {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrVipPool", "metadata": {"name": "web"},
            "spec": {"addresses": [vip], "autoAssign": False,
                     "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": APP}}}}


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
        cl.REPORT["dsr"] = dict(stand.figures)


@dataclasses.dataclass
class Loop:
    """A client asking the VIP on a new connection every 50 ms, in a thread: what each request got."""

    replies: list[tuple[float, bool, str]] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.replies if not r[1]]


@contextlib.contextmanager
def every_50ms(sample: Callable[[], None]) -> Iterator[None]:
    """Call `sample` in a thread every 50 ms while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            sample()
            stop.wait(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@contextlib.contextmanager
def client_loop(stand: Stand, vip: str | None = None) -> Iterator[Loop]:
    """The lab's client asks the VIP on a new connection every 50 ms: what each request got."""
    loop = Loop()

    def ask() -> None:
        reply = stand.cluster.lab.get(timeout=3, vip=vip)
        loop.replies.append((time.time(), reply.ok, reply.backend))

    with every_50ms(ask):
        yield loop


@contextlib.contextmanager
def kubectl_watch(stand: Stand, *args: str) -> Iterator[list[tuple[float, str]]]:
    """`kubectl get ... -w` in the background: each line it prints, with the wall time it arrived."""
    cp = stand.cluster.cp
    lines: list[tuple[float, str]] = []
    proc = subprocess.Popen([str(cp.bin_dir / "kubectl"), "get", *args, "-w"], env=cp.env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.time(), line.strip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield lines
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)


SLICE_STATES = ('jsonpath={range .endpoints[*]}{.targetRef.name}@{.nodeName}:ready={.conditions.ready},'
                'serving={.conditions.serving},terminating={.conditions.terminating} {end}{"\\n"}')
POD_STATES = ('jsonpath={.metadata.name}@{.spec.nodeName} deleting={.metadata.deletionTimestamp} '
              'ready={.status.conditions[?(@.type=="Ready")].status}{"\\n"}')


@contextlib.contextmanager
def vip_watch(stand: Stand, nodes: list[cl.Node]) -> Iterator[dict[str, list[tuple[float, bool]]]]:
    """Every 50 ms, whether each node holds the VIP on `lo`: node → [(wall time, held)]."""
    seen: dict[str, list[tuple[float, bool]]] = {n.name: [] for n in nodes}

    def look() -> None:
        for node in nodes:
            seen[node.name].append((time.time(), stand.node_has_vip(node)))

    with every_50ms(look):
        yield seen


def _why_failed(stand: Stand, loop: Loop, changes: list[tuple[float, str]], what: str) -> str:
    """What NetScaler was told, what the other requests got, and what Kubernetes changed around the first
    failed request (seconds from it): enough to tell which node refused and why."""
    first = loop.failed[0][0]
    near = [(round(float(e["time"]) - first, 2), e["resource"], e["action"], e["name"],
             e.get("key", {}).get("servername"), e.get("key", {}).get("port")) for e in stand.sim.journal()
            if abs(float(e["time"]) - first) < 10 and e.get("resource") != "nsconfig"]
    around = [(round(t - first, 2), ok, who) for t, ok, who in loop.replies if abs(t - first) < 1.5]
    seen = sorted((round(t - first, 2), line) for t, line in changes if abs(t - first) < 10)
    return (f"{len(loop.failed)} of {len(loop.replies)} requests failed: {loop.failed[:3]}; {what}; NetScaler "
            f"writes within 10 s of the first: {near}; replies around it: {around}; EndpointSlice and Pod "
            f"changes: {seen}")


def _journal(stand: Stand, since: int) -> list[dict[str, Any]]:
    return [e for e in stand.sim.journal(since) if e.get("resource") != "nsconfig"]


def _last_seq(stand: Stand) -> int:
    return max((int(e["seq"]) for e in stand.sim.journal()), default=0)


def _pods(stand: Stand, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = stand.cluster.kc_json("get", "pods", "-n", namespace, "-l", selector)["items"]
    return items


def _ready_pods(stand: Stand, namespace: str, selector: str) -> list[dict[str, Any]]:
    return [p for p in _pods(stand, namespace, selector)
            if p["metadata"].get("deletionTimestamp") is None
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


def _web_nodes(stand: Stand) -> set[str]:
    return {p["spec"]["nodeName"] for p in _ready_pods(stand, APP, "app=web")}


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
    stand.apply(_vip_pool(stand.vip), *_web(), _service(stand.vip), _dsrservice(stand.vip))
    stand.wait(lambda: len(_ready_pods(stand, APP, "app=web")) == WEB_REPLICAS, 120, "the web Pods Ready")
    stand.wait(stand.ready, 120, "the DsrService Ready")
    stand.figures["dsrservice_ready_s"] = round(time.monotonic() - start, 1)
    web = _web_nodes(stand)
    assert len(web) == WEB_REPLICAS
    stand.wait(lambda: stand.bound_nodes() == web, 60, f"exactly the nodes with a ready Pod bound ({sorted(web)})")
    for name in web:
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
    # Replies to the client only: the monitor probes the VIP from lb itself (transparent, destip=VIP),
    # and those answers go to lb, as they must.
    to_client = f"tcp and src host {stand.vip} and src port 80 and dst host {lab.ip('client')}"
    with lab.capture("lb", to_client) as through_lb:
        replies = [lab.get(timeout=3) for _ in range(40)]
    failed = [r for r in replies if not r.ok]
    stand.figures["requests_sent"] = len(replies)
    stand.figures["requests_failed"] = len(failed)
    assert not failed, failed[:3]
    assert {r.backend for r in replies} <= pods  # only the Pods answered, each from its own node
    # Only frames sent to the NetScaler count: the bridge floods a frame whose destination it has not
    # learnt (yet, or any more) to every port, lb's included, and that copy went straight to the client.
    to_lb = [f for f in through_lb if f["dst_mac"] == lab.mac("lb")]
    assert to_lb == [], f"{len(to_lb)} replies went back through the NetScaler's dataplane: {to_lb[:3]}"


def test_rollout_restart_and_a_node_drain_fail_no_request(stand: Stand) -> None:
    lab_nodes = {n.name: n for n in stand.cluster.nodes}
    with client_loop(stand) as loop:
        stand.kc("rollout", "restart", "deployment/web", "-n", APP)
        stand.kc("rollout", "status", "deployment/web", "-n", APP, "--timeout=180s")
        stand.wait(lambda: stand.bound_nodes() == _web_nodes(stand), 90, "the new Pods' nodes bound, the old ones not")
        stand.wait(stand.ready, 60, "the DsrService Ready after the rollout")
        rollout_sent, rollout_failed = len(loop.replies), len(loop.failed)

        drained = sorted(_web_nodes(stand))[0]
        seq = _last_seq(stand)
        with vip_watch(stand, [lab_nodes[drained]]) as held, \
                kubectl_watch(stand, "endpointslices", "-n", APP, "-o", SLICE_STATES) as slices, \
                kubectl_watch(stand, "pods", "-n", APP, "-o", POD_STATES) as pods:
            stand.kc("drain", drained, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=180s")
            stand.wait(lambda: len(_ready_pods(stand, APP, "app=web")) == WEB_REPLICAS
                       and drained not in _web_nodes(stand), 120, "the web Pod replaced on another node")
            stand.wait(lambda: drained not in stand.bound_nodes() and stand.bound_nodes() == _web_nodes(stand),
                       90, f"{drained} unbound, the replacement's node bound")
            stand.wait(lambda: not stand.node_has_vip(lab_nodes[drained]), 90, f"the VIP gone from {drained}")
            time.sleep(0.2)
        stand.kc("uncordon", drained)
    stand.figures["rollout_requests_sent"], stand.figures["rollout_requests_failed"] = rollout_sent, rollout_failed
    stand.figures["drain_requests_sent"] = len(loop.replies) - rollout_sent
    stand.figures["drain_requests_failed"] = len(loop.failed) - rollout_failed
    assert len(loop.replies) > 40
    if loop.failed:
        pytest.fail(_why_failed(stand, loop, [*slices, *pods], f"drained {drained}"))

    # The drained node: disabled gracefully, then unbound, and only then did it lose the VIP.
    server = f"dsr-{lab_nodes[drained].ip}"  # the server of the node's address (model/names.py)
    steps = [(e["resource"], e["action"], float(e["time"]), e.get("key", {})) for e in _journal(stand, seq)]
    member = [(r, a, t) for r, a, t, k in steps if k.get("servername") == server and str(k.get("port")) == "80"]
    disabled = [t for r, a, t in member if r == "servicegroup" and a == "disable"]
    unbound = [t for r, a, t in member if r == "servicegroup_servicegroupmember_binding" and a == "unbind"]
    gone = [t for t, has in held[drained] if not has]
    assert disabled and unbound and gone, (disabled, unbound, gone[:1])
    assert disabled[0] < unbound[0] < gone[0]
    assert unbound[0] - disabled[0] >= 2 - 0.05, "unbound before its 2 s drain ended"
    stand.figures["drain_disable_to_unbind_s"] = round(unbound[0] - disabled[0], 2)
    assert all(has for t, has in held[drained] if t < unbound[0])


def test_helm_upgrade_rolls_operator_and_agents_without_touching_traffic(stand: Stand) -> None:
    seq = _last_seq(stand)
    nodes = [stand.cluster.node(n) for n in sorted(_web_nodes(stand))]
    start = time.monotonic()
    with client_loop(stand) as loop, vip_watch(stand, nodes) as held:
        stand.helm("upgrade", RELEASE, str(CHART), "-n", SYSTEM, "--reuse-values",
                   "--set", "operator.podAnnotations.rolled=yes", "--set", "agent.podAnnotations.rolled=yes",
                   "--wait", "--timeout", "300s")
        stand.wait(lambda: _leader(stand) in {p["metadata"]["name"] for p in _ready_pods(
            stand, SYSTEM, "app.kubernetes.io/component=operator")}, 60, "a new operator Pod leading")
        time.sleep(3)  # the new leader has read NetScaler and the cluster: whatever it would change, it has
    stand.figures["helm_upgrade_s"] = round(time.monotonic() - start, 1)
    stand.figures["upgrade_requests_sent"] = len(loop.replies)
    stand.figures["upgrade_requests_failed"] = len(loop.failed)
    rolled = [p for component in ("operator", "agent")
              for p in _ready_pods(stand, SYSTEM, f"app.kubernetes.io/component={component}")
              if (p["metadata"].get("annotations") or {}).get("rolled") == "yes"]
    assert len(rolled) == 2 + 3, "the upgrade did not roll every operator and agent Pod"
    assert not loop.failed, f"{len(loop.failed)} of {len(loop.replies)} requests failed: {loop.failed[:3]}"
    for node, samples in held.items():
        assert samples and all(has for _, has in samples), f"the VIP left {node} during the upgrade"
    changes = [(e["resource"], e["action"], e["name"]) for e in _journal(stand, seq)
               if e["action"] in ("add", "delete")]
    assert changes == [], f"the upgrade deleted or re-added NetScaler objects: {changes[:5]}"


def test_killing_the_leader_pod_hands_over_and_a_change_lands_within_30_s(stand: Stand) -> None:
    leader = stand.wait(lambda: _leader(stand), 60, "a leader")
    killed = time.monotonic()
    stand.kc("delete", "pod", leader, "-n", SYSTEM, "--grace-period=0", "--force", check=False)
    stand.kc("patch", "dsrservice", "web", "-n", APP, "--type=merge",
             "-p", json.dumps({"spec": {"lbMethod": "LEASTCONNECTION"}}))

    def changed() -> bool:
        return any(v.get("lbmethod") == "LEASTCONNECTION" for v in stand.objects("lbvserver"))
    # The killed process may still finish that change itself (it stops only once nothing is in hand);
    # then the other replica must hold the Lease, and a change made after that is its work.
    stand.wait(changed, 60, "the change on NetScaler after the leader was killed")
    stand.wait(lambda: _leader(stand) not in (None, leader), 60, "the other replica to hold the Lease")
    stand.kc("patch", "dsrservice", "web", "-n", APP, "--type=merge",
             "-p", json.dumps({"spec": {"lbMethod": "ROUNDROBIN"}}))
    stand.wait(lambda: all(v.get("lbmethod") == "ROUNDROBIN" for v in stand.objects("lbvserver")), 60,
               "the next change on NetScaler, from the new leader")
    took = time.monotonic() - killed
    stand.figures["takeover_change_on_netscaler_s"] = round(took, 1)
    assert took <= 30, f"the new leader's change reached NetScaler {took:.1f}s after the leader was killed"
    stand.wait(stand.ready, 60, "the DsrService Ready at its new generation")


def test_an_agent_pod_restart_keeps_the_vip_on_its_node(stand: Stand) -> None:
    node = stand.cluster.node(sorted(_web_nodes(stand))[0])
    (agent,) = [p for p in _pods(stand, SYSTEM, "app.kubernetes.io/component=agent")
                if p["spec"].get("nodeName") == node.name]
    with vip_watch(stand, [node]) as held:
        stand.kc("delete", "pod", agent["metadata"]["name"], "-n", SYSTEM)

        def replaced() -> bool:
            pods = [p for p in _ready_pods(stand, SYSTEM, "app.kubernetes.io/component=agent")
                    if p["spec"].get("nodeName") == node.name]
            return bool(pods) and pods[0]["metadata"]["uid"] != agent["metadata"]["uid"]
        stand.wait(replaced, 120, f"a new agent Pod Ready on {node.name}")
        time.sleep(2)  # and a few more checks with the new agent running
    checks = len(held[node.name])
    missing = [t for t, has in held[node.name] if not has]
    stand.figures["agent_restart_vip_checks"] = checks
    assert checks > 20
    assert not missing, f"the VIP was missing from {node.name} in {len(missing)} of {checks} checks"
    assert stand.bound_nodes() == _web_nodes(stand)


LB_VIP = f"{cl.LAB_NET}.120"


def _lb_service() -> list[dict[str, Any]]:
    pool = {"apiVersion": "dsr.operators.dev/v1alpha1", "kind": "DsrVipPool", "metadata": {"name": "lab"},
            "spec": {"addresses": [f"{LB_VIP}-{cl.LAB_NET}.121"], "avoidAddresses": [f"{cl.LAB_NET}.121"]}}
    settings = {"lb-method": "ROUNDROBIN", "drain-seconds": "2", "health-check-port": "80",
                "health-check-interval-seconds": "2", "health-check-timeout-seconds": "1"}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {
        "name": "web-lb", "namespace": APP,
        "annotations": {f"dsr.operators.dev/{k}": v for k, v in settings.items()}},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "dsr.operators.dev/netscaler",
                 "externalTrafficPolicy": "Local", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": cl.ECHO_PORT}]}}
    return [pool, service]


def test_a_load_balancer_service_gets_a_pool_vip_serves_dsr_and_rolls_out_without_a_failed_request(
    stand: Stand,
) -> None:
    start = time.monotonic()
    stand.apply(*_lb_service())

    def ingress() -> list[str]:
        svc = stand.cluster.kc_json("get", "service", "web-lb", "-n", APP)
        return [i.get("ip") for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()]
    stand.wait(lambda: ingress() == [LB_VIP], 120, f"status.loadBalancer.ingress of web-lb to be {LB_VIP}")
    stand.figures["lb_service_ingress_s"] = round(time.monotonic() - start, 1)
    made = stand.cluster.kc_json("get", "dsrservice", "web-lb", "-n", APP)
    assert made["spec"]["vip"] == LB_VIP and made["metadata"]["ownerReferences"][0]["kind"] == "Service"
    lab = stand.cluster.lab
    stand.wait(lambda: lab.get(timeout=2, vip=LB_VIP).ok, 90, "the LoadBalancer VIP to answer")
    to_client = f"tcp and src host {LB_VIP} and src port 80 and dst host {lab.ip('client')}"
    with lab.capture("lb", to_client) as through_lb:
        replies = [lab.get(timeout=3, vip=LB_VIP) for _ in range(20)]
    assert [r for r in replies if not r.ok] == []
    assert not [f for f in through_lb if f["dst_mac"] == lab.mac("lb")], "replies went back through lb"
    try:
        with client_loop(stand, LB_VIP) as loop, \
                kubectl_watch(stand, "endpointslices", "-n", APP, "-o", SLICE_STATES) as slices, \
                kubectl_watch(stand, "pods", "-n", APP, "-o", POD_STATES) as pods:
            stand.kc("rollout", "restart", "deployment/web", "-n", APP)
            stand.kc("rollout", "status", "deployment/web", "-n", APP, "--timeout=180s")
            stand.wait(lambda: stand.bound_nodes() == _web_nodes(stand), 90,
                       "the new Pods' nodes bound, the old ones not")
            time.sleep(1)  # a few more requests with the new Pods alone
        stand.figures["lb_rollout_requests_sent"] = len(loop.replies)
        stand.figures["lb_rollout_requests_failed"] = len(loop.failed)
        assert len(loop.replies) > 20
        if loop.failed:
            pytest.fail(_why_failed(stand, loop, [*slices, *pods], "LoadBalancer Service web-lb"))
    finally:
        # Deleting the Service: the garbage collector deletes its DsrService, the finalizer its NetScaler
        # objects (also after a failure above, so that the uninstall test judges the uninstall alone).
        stand.kc("delete", "service", "web-lb", "-n", APP, "--wait=true", "--timeout=60s")
        stand.wait(lambda: not [v for v in stand.objects("lbvserver") if v.get("ipv46") == LB_VIP], 120,
                   "the LoadBalancer Service's vserver gone from NetScaler")
        stand.kc("delete", "dsrvippool", "lab")


def test_uninstall_after_deleting_the_dsrservices_leaves_netscaler_as_it_was(stand: Stand) -> None:
    stand.kc("delete", "dsrservice", "web", "-n", APP, "--wait=true", "--timeout=120s")
    for name in (n.name for n in stand.cluster.nodes):
        try:
            stand.wait(lambda name=name: not stand.node_has_vip(stand.cluster.node(name)), 60,
                       f"the VIP gone from {name}")
        except cl.ClusterError as exc:  # what the operator asked of the node, and what its agent said
            config = stand.kc("get", "dsrnodeconfig", name, "-o", "yaml", check=False).stdout
            agent = next((p["metadata"]["name"] for p in _pods(stand, SYSTEM, "app.kubernetes.io/component=agent")
                          if p["spec"].get("nodeName") == name), None)
            logs = stand.kc("logs", agent, "-n", SYSTEM, "--tail=40", check=False).stdout if agent else ""
            operators = [stand.kc("logs", p["metadata"]["name"], "-n", SYSTEM, "--tail=60", check=False).stdout
                         for p in _pods(stand, SYSTEM, "app.kubernetes.io/component=operator")]
            raise AssertionError(f"{exc}\n--- DsrNodeConfig {name} ---\n{config}\n--- agent {agent} ---\n{logs}"
                                 f"\n--- operators ---\n" + "\n".join(operators)) from exc
    stand.kc("delete", "dsrvippool", "web")
    stand.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "120s")
    after = stand.sim.config().get("objects", {})
    assert {k: v for k, v in after.items() if v} == {k: v for k, v in stand.before.items() if v}
