"""The operator and a node agent against a real kube-apiserver, as the Helm chart's ServiceAccounts.

* the chart is installed with `helm install` (CRDs, RBAC, the leader-election Role); the Deployment and
  DaemonSet never start (no kubelet), so the test runs the same programs on the host instead:
* the operator: `dsr-operator run` (subprocess) with a TokenRequest token of the chart's operator
  ServiceAccount (DSR_KUBE_SERVER / DSR_KUBE_TOKEN_FILE / DSR_KUBE_CA_FILE), leader election on, talking
  to the NITRO simulator (`dsr-operator nitro-sim`, subprocess) with credentials from files;
* the agent: `dsr-operator agent --netns` (subprocess) in a throwaway network namespace, with the
  agent ServiceAccount's token; it lists and watches its DsrNodeConfig with a field selector;
* the backends: a Service with a selector and a Pod on a fake Node (InternalIP in its status), made
  Ready through the pod status subresource; the real controller-manager publishes the EndpointSlice.

Then a full reconcile (node VIP first, binding after, Ready) and a deletion through the finalizer.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.controlplane.conftest import Proc

if TYPE_CHECKING:
    from conftest import ControlPlane  # tests/controlplane/conftest.py

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "dsr-operator"
GROUP, VERSION = "dsr.operators.dev", "v1alpha1"
VIP = "192.0.2.77"
NODE_IP = "198.51.100.77"
SIM_USER, SIM_PASSWORD = "dsradmin", "s3cret-for-tests"
pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(240)]


def _entrypoint() -> str:
    path = Path(sys.executable).with_name("dsr-operator")
    return str(path) if path.exists() else shutil.which("dsr-operator") or "dsr-operator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _needs_root_and_netns() -> str | None:
    if os.geteuid() != 0:
        return "the node agent needs root to create a network namespace (run the tier as root)"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is missing: apt-get install iproute2"
    return None


def _spawn(name: str, args: list[str], env: dict[str, str], workdir: Path) -> Proc:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([_entrypoint(), *args], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, popen, log)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("DSR_", "KUBE", "NODE_NAME")) and k != "KUBERNETES_SERVICE_HOST"}


@dataclass
class Rig:
    cp: ControlPlane
    namespace: str
    node: str
    netns: str
    sim_url: str
    procs: list[Proc]
    system_namespace: str = ""
    lease: str = ""
    operator_start: Any = None
    """Starts the operator process again with the same settings (returns its Proc)."""

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        def check() -> Any:
            for proc in self.procs:
                proc.check_alive()
            return predicate()

        try:
            return self.cp.wait_for(check, timeout, what, interval=0.3)
        except Exception as exc:
            logs = "\n".join(f"--- {p.name} ---\n{p.tail(30)}" for p in self.procs)
            raise AssertionError(f"{exc}\n{logs}") from exc

    def nitro(self, rtype: str, name: str = "") -> list[dict[str, Any]]:
        req = urllib.request.Request(f"{self.sim_url}/nitro/v1/config/{rtype}{'/' + name if name else ''}")
        req.add_header("X-NITRO-USER", SIM_USER)
        req.add_header("X-NITRO-PASS", SIM_PASSWORD)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read()).get(rtype, [])
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return []
            raise

    def journal(self, since: int = 0) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.sim_url}/_sim/journal?since={since}", timeout=10) as resp:
            entries: list[dict[str, Any]] = json.loads(resp.read())
            return entries

    def restart_operator(self) -> None:
        """SIGTERM the running operator, start another with the same settings, wait for its /healthz."""
        old = next(p for p in reversed(self.procs) if p.name.startswith("operator"))
        old.stop(grace=20)
        self.procs.remove(old)
        self.procs.append(self.operator_start())

    def vservers(self) -> list[dict[str, Any]]:
        return [v for v in self.nitro("lbvserver") if v.get("ipv46") == VIP]

    def bound_ips(self, vserver: str) -> list[str]:
        """Backend IPs of the vserver: the members of its servicegroups, as NetScaler records them."""
        return sorted(m.get("ip") or "?" for g in self.nitro("lbvserver_servicegroup_binding", vserver)
                      for m in self.nitro("servicegroup_servicegroupmember_binding", g["servicegroupname"]))

    def nodeconfig(self) -> dict[str, Any] | None:
        status, body = self.cp.request("GET", f"/apis/{GROUP}/{VERSION}/dsrnodeconfigs/{self.node}")
        return body if status == 200 else None

    def netns_addresses(self) -> str:
        return subprocess.run(["ip", "-n", self.netns, "-o", "addr", "show"], capture_output=True, text=True,
                              check=True).stdout


@pytest.fixture(scope="module")
def rig(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    reason = _needs_root_and_netns()
    if reason:
        pytest.skip(reason)
    cp = controlplane
    suffix = uuid.uuid4().hex[:6]
    release, system_ns, app_ns = f"rt-{suffix}", f"dsr-rt-{suffix}", f"shop-{suffix}"
    operator_sa, agent_sa = f"{release}-dsr-operator", f"{release}-dsr-operator-agent"
    node, netns = f"rt-node-{suffix}", f"dsr-rt-{suffix}"
    work = tmp_path_factory.mktemp("realapi")
    procs: list[Proc] = []
    cleanup: list[Any] = []
    try:
        # The chart: CRDs, RBAC (the leader-election Role included), ServiceAccounts.
        cp.kc("create", "namespace", system_ns)
        cleanup.append(lambda: cp.kc("delete", "namespace", system_ns, "--wait=false", check=False))
        cp.kc("create", "secret", "generic", "netscaler-login", "-n", system_ns,
              f"--from-literal=username={SIM_USER}", f"--from-literal=password={SIM_PASSWORD}")
        cp.kc("create", "namespace", app_ns)
        cleanup.append(lambda: cp.kc("delete", "namespace", app_ns, "--wait=false", check=False))
        # Limited to the app namespace: the operator leaves other tests' DsrServices alone.
        cp.helm("install", release, str(CHART), "-n", system_ns, "--set", "netscaler.url=http://127.0.0.1:9",
                "--set", "netscaler.existingSecret=netscaler-login", "--set", f"namespaces={{{app_ns}}}",
                "--wait=false")
        cleanup.append(lambda: cp.helm("uninstall", release, "-n", system_ns, check=False))
        cp.kc("wait", "--for=condition=Established", "--timeout=60s", f"crd/dsrservices.{GROUP}",
              f"crd/dsrnodeconfigs.{GROUP}")

        # The "mounted Secret" and the projected token, as files.
        (work / "username").write_text(SIM_USER + "\n")
        (work / "password").write_text(SIM_PASSWORD + "\n")
        (work / "operator-token").write_text(cp.create_token(operator_sa, system_ns, expiration_seconds=3600))

        # NetScaler stand-in.
        sim_port = _free_port()
        sim_env = {**_base_env(), "DSR_SIM_PASSWORD": SIM_PASSWORD}
        procs.append(_spawn("nitro-sim", ["nitro-sim", "--listen", f"127.0.0.1:{sim_port}", "--user", SIM_USER],
                            sim_env, work))
        sim_url = f"http://127.0.0.1:{sim_port}"

        # A fake node with its address, the app's Service and a ready Pod on that node.
        cp.kc("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
        cleanup.append(lambda: cp.kc("delete", "node", node, "--wait=false", check=False))
        cp.kc("patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"addresses": [{"type": "InternalIP", "address": NODE_IP},
                                      {"type": "Hostname", "address": node}]}}))
        manifests = [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": app_ns},
             "spec": {"selector": {"app": "web"}, "externalIPs": [VIP],
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": app_ns,
                                                             "labels": {"app": "web"}},
             "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.invalid/web:1"}]}},
        ]
        cp.kc("create", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
        # The agent's token is bound to an agent Pod on the node, as the DaemonSet's would be: the chart's
        # admission policy lets it write only that node's DsrNodeConfig.
        agent_pod = json.loads(cp.kc("create", "-f", "-", "-o", "json", input=json.dumps({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"agent-{suffix}", "namespace": system_ns},
            "spec": {"nodeName": node, "serviceAccountName": agent_sa,
                     "containers": [{"name": "agent", "image": "registry.invalid/agent:1"}]}})).stdout)
        agent_kubeconfig = cp.kubeconfig_for_token(
            cp.create_token(agent_sa, system_ns, expiration_seconds=3600, pod=agent_pod), f"agent-{suffix}")
        cp.kc("patch", "pod", "web-0", "-n", app_ns, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"phase": "Running", "hostIP": NODE_IP, "podIP": "10.244.77.5",
                        "podIPs": [{"ip": "10.244.77.5"}],
                        "conditions": [{"type": "PodScheduled", "status": "True"},
                                       {"type": "ContainersReady", "status": "True"},
                                       {"type": "Ready", "status": "True"}]}}))

        # The operator as the chart's operator ServiceAccount, with leader election as the chart sets it.
        op_env = {
            **_base_env(),
            "DSR_KUBE_SERVER": cp.url, "DSR_KUBE_TOKEN_FILE": str(work / "operator-token"),
            "DSR_KUBE_CA_FILE": str(cp.ca_file), "DSR_LEADER_ELECTION": operator_sa,
            "DSR_LEADER_ELECTION_NAMESPACE": system_ns, "DSR_OPERATOR_ID": f"rt{suffix}",
            "DSR_METRICS_PORT": str(_free_port()), "DSR_LIVENESS_PORT": str(_free_port()),
            "DSR_RESYNC_SECONDS": "5", "DSR_DEFAULT_DRAIN_SECONDS": "0",
            "DSR_NETSCALER_URL": sim_url, "DSR_NETSCALER_USERNAME_FILE": str(work / "username"),
            "DSR_NETSCALER_PASSWORD_FILE": str(work / "password"),
        }
        procs.append(_spawn("operator", ["run", "--namespace", app_ns], op_env, work))
        restarts = iter(range(1, 100))

        def operator_start() -> Proc:
            return _spawn(f"operator-{next(restarts)}", ["run", "--namespace", app_ns], op_env, work)

        # The agent in its own network namespace, as the chart's agent ServiceAccount.
        subprocess.run(["ip", "netns", "add", netns], check=True)
        cleanup.append(lambda: subprocess.run(["ip", "netns", "del", netns], check=False))
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        procs.append(_spawn("agent", ["agent", "--node-name", node, "--netns", netns, "--kubeconfig",
                                      str(agent_kubeconfig), "--state-dir", str(work / "agent-state"),
                                      "--interface-mode", "auto", "--resync-seconds", "5"], _base_env(), work))
        rig = Rig(cp, app_ns, node, netns, sim_url, procs, system_namespace=system_ns, lease=operator_sa,
                  operator_start=operator_start)
        rig.wait(lambda: _answers(rig), 30, "the NITRO simulator")
        liveness = op_env["DSR_LIVENESS_PORT"]
        rig.wait(lambda: _http_ok(f"http://127.0.0.1:{liveness}/healthz"), 60, "the operator's kopf /healthz")
        yield rig
    finally:
        for proc in reversed(procs):
            proc.stop(grace=20)
        for step in reversed(cleanup):
            with contextlib.suppress(Exception):
                step()


def _answers(rig: Rig) -> bool:
    try:
        rig.nitro("nsmode")
    except OSError:
        return False
    return True


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_full_reconcile_then_deletion_through_the_finalizer(rig: Rig) -> None:
    cp, ns = rig.cp, rig.namespace
    # The real controller-manager publishes the ready endpoint on the node.
    rig.wait(lambda: any(ep.get("nodeName") == rig.node and ep.get("conditions", {}).get("ready")
                         for s in cp.kc_json("get", "endpointslices", "-n", ns,
                                             "-l", "kubernetes.io/service-name=web")["items"]
                         for ep in s.get("endpoints") or []), 60, "the EndpointSlice of web")

    dsr = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DsrService", "metadata": {"name": "web", "namespace": ns},
           "spec": {"vip": VIP, "ports": [80], "backends": {"service": "web"}, "drainSeconds": 0,
                    "healthCheck": {"type": "TCP", "intervalSeconds": 5, "port": 80}}}
    cp.kc("apply", "-f", "-", input=json.dumps(dsr))

    # 1. The operator writes the node's VIP; 2. the agent applies it in its namespace and says so.
    rig.wait(lambda: VIP in ((rig.nodeconfig() or {}).get("spec", {}).get("vips") or []), 60,
             "the DsrNodeConfig to list the VIP")
    config = rig.wait(lambda: (c := rig.nodeconfig()) and VIP in (c.get("status", {}).get("appliedVips") or [])
                      and c, 60, "the agent to report the VIP applied")
    assert config["status"]["observedGeneration"] == config["metadata"]["generation"]
    assert config["metadata"]["ownerReferences"][0]["kind"] == "Node"
    assert f"{VIP}/32" in rig.netns_addresses()

    # 3. NetScaler has the vserver on the VIP with the node's service bound.
    (vserver,) = rig.wait(rig.vservers, 60, "the lbvserver on the VIP")
    assert vserver["servicetype"] == "ANY" and vserver["m"] == "MAC"
    rig.wait(lambda: rig.bound_ips(vserver["name"]) == [NODE_IP], 60, "the node's service bound to the vserver")

    # 4. kstatus Ready, as `kubectl wait` sees it.
    waited = cp.kc("wait", "--for=condition=Ready", "dsrsvc/web", "-n", ns, "--timeout=60s", check=False,
                   timeout=90)
    assert waited.returncode == 0, waited.stderr
    obj = cp.kc_json("get", "dsrsvc", "web", "-n", ns, "--show-managed-fields")
    assert "dsr.operators.dev/finalizer" in obj["metadata"]["finalizers"]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    # The finalizer is the operator's own: kopf writes nothing to a DsrService (no finalizer of its own,
    # no status.kopf), so a new DsrService costs one finalizer write and its status.
    writers = {(f["manager"], f.get("subresource", "")) for f in obj["metadata"]["managedFields"]}
    assert writers == {("kubectl-client-side-apply", ""), ("dsr-operator", ""), ("dsr-operator", "status")}, writers
    assert "kopf" not in obj["status"]
    # A batch's events follow all of its statuses: Ready may show before them.
    rig.wait(lambda: any(e["reason"] == "Applied" for e in cp.kc_json(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=web")["items"]), 30, "the Applied events")

    # Deletion: NetScaler objects go, the node's VIP goes, then the finalizer and the object.
    cp.kc("delete", "dsrsvc", "web", "-n", ns, "--wait=false")
    rig.wait(lambda: cp.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/dsrservices/web")[0] == 404,
             60, "the DsrService to disappear")
    assert rig.vservers() == []
    assert rig.nitro("servicegroup") == []
    assert not [s for s in rig.nitro("server") if s.get("ipaddress") == NODE_IP]
    config = rig.nodeconfig()
    assert config is not None and VIP not in (config["spec"].get("vips") or [])
    rig.wait(lambda: f"{VIP}/32" not in rig.netns_addresses(), 30, "the agent to drop the VIP")


def test_operator_holds_the_charts_lease(rig: Rig) -> None:
    """The chart's RBAC is enough for leader election: the operator created its Lease and renews it."""
    def lease() -> dict[str, Any]:
        got: dict[str, Any] = rig.cp.kc_json("get", "lease", rig.lease, "-n", rig.system_namespace)
        return got
    first = lease()["spec"]
    assert first["holderIdentity"] and first["leaseDurationSeconds"] == 15
    rig.wait(lambda: lease()["spec"]["renewTime"] != first["renewTime"], 30, "the Lease to be renewed")
    assert lease()["spec"]["holderIdentity"] == first["holderIdentity"]


# --- what users and tools read: Argo CD health, kubectl columns and explain, the status command -------

ARGOCD_STATES = ("fresh", "progressing", "waiting", "healthy", "degraded", "invalid")


def _far_backend(rig: Rig, name: str, node_ip: str, vip: str) -> None:
    """A Service whose only ready Pod is on a Node that runs no agent: its VIP is never applied there."""
    cp, ns = rig.cp, rig.namespace
    node = f"{rig.node}-{name}"
    cp.kc("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}))
    cp.kc("patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"addresses": [{"type": "InternalIP", "address": node_ip}]}}))
    manifests = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"selector": {"app": name}, "externalIPs": [vip], "ports": [{"port": 80, "targetPort": 8080}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-0", "namespace": ns, "labels": {"app": name}},
         "spec": {"nodeName": node, "containers": [{"name": "web", "image": "registry.invalid/web:1"}]}},
    ]
    cp.kc("create", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    cp.kc("patch", "pod", f"{name}-0", "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"phase": "Running", "hostIP": node_ip, "podIP": "10.244.78.5", "podIPs": [{"ip": "10.244.78.5"}],
                    "conditions": [{"type": "Ready", "status": "True"},
                                   {"type": "ContainersReady", "status": "True"}]}}))


def _dsrservice(name: str, namespace: str, vip: str, service: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DsrService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"vip": vip, "ports": [80, 443], "backends": {"service": service}, "drainSeconds": 0,
                     "healthCheck": {"type": "TCP", "intervalSeconds": 5, "port": 80}}}


def test_argocd_health_kubectl_columns_and_status_on_live_objects(rig: Rig, tmp_path: Path) -> None:
    from tests.support.argocd import evaluate  # lupa: imported here so the module loads without it

    cp, ns = rig.cp, rig.namespace
    unwatched = f"{ns}-unwatched"
    cp.kc("create", "namespace", unwatched)
    try:
        _far_backend(rig, "far", "198.51.100.78", "192.0.2.78")
        objects = {
            "fresh": _dsrservice("fresh", unwatched, "192.0.2.76", "web"),  # no operator watches it: CRD default
            "progressing": _dsrservice("progressing", ns, "192.0.2.78", "far"),  # its node has no agent
            "waiting": _dsrservice("waiting", ns, "192.0.2.79", "absent"),  # its Service is missing (yet)
            "healthy": _dsrservice("healthy", ns, VIP, "web"),
            "degraded": _dsrservice("degraded", ns, VIP, "web"),  # healthy's VIP:port, applied later: Stalled
            "invalid": {**_dsrservice("invalid", ns, "192.0.2.75", "web"),  # passes the schema, not the model
                        "spec": {"vip": "192.0.2.75", "ports": [80], "backends": {"static": [
                            {"name": "pi", "address": "198.51.100.75"}, {"name": "pi", "address": "198.51.100.76"}]}}},
        }
        first = [o for state, o in objects.items() if state != "degraded"]
        cp.kc("apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in first))

        def live(state: str) -> dict[str, Any]:
            meta = objects[state]["metadata"]
            obj: dict[str, Any] = cp.kc_json("get", "dsrsvc", meta["name"], "-n", meta["namespace"])
            return obj

        def reason(state: str) -> str | None:
            ready = [c for c in (live(state).get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
            return ready[0]["reason"] if ready else None

        rig.wait(lambda: reason("healthy") == "Converged", 90, "healthy to converge")
        cp.kc("apply", "-f", "-", input=json.dumps(objects["degraded"]))
        rig.wait(lambda: reason("progressing") == "WaitingForLoopback", 60, "progressing to wait for the loopback")
        rig.wait(lambda: reason("waiting") == "ServiceNotFound", 60, "waiting to wait for its Service")
        rig.wait(lambda: reason("degraded") == "VipConflict", 60, "degraded to stall")
        rig.wait(lambda: reason("invalid") == "InvalidSpec", 60, "invalid to stall")
        captured = {state: live(state) for state in ARGOCD_STATES}
        assert captured["fresh"]["status"] == {"observedGeneration": 0}  # kstatus: InProgress, not Current
        health = {state: evaluate(obj)["status"] for state, obj in captured.items()}
        assert health == {"fresh": "Progressing", "progressing": "Progressing", "waiting": "Progressing",
                          "healthy": "Healthy", "degraded": "Degraded", "invalid": "Degraded"}, {
            s: evaluate(o) for s, o in captured.items()}
        assert "ServiceNotFound" in evaluate(captured["waiting"])["message"]
        assert "VipConflict" in evaluate(captured["degraded"])["message"]
        # kstatus itself (sigs.k8s.io/cli-utils, as Flux and cli-utils based appliers compute it).
        kstatus = {state: cp.kstatus(obj)["status"] for state, obj in captured.items()}
        assert kstatus == {"fresh": "InProgress", "progressing": "InProgress", "waiting": "InProgress",
                           "healthy": "Current", "degraded": "Failed", "invalid": "Failed"}, kstatus
        behind = copy.deepcopy(captured["healthy"])
        behind["metadata"]["generation"] += 1  # a spec change the operator has not observed yet
        deleting = copy.deepcopy(captured["healthy"])
        deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
        assert (cp.kstatus(behind)["status"], cp.kstatus(deleting)["status"]) == ("InProgress", "Terminating")
        keep = os.environ.get("DSR_ARGOCD_CAPTURE_DIR")  # refresh tests/unit/argocd_statuses/ from a real run
        if keep:
            for state, obj in captured.items():
                (Path(keep) / f"{state}.json").write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

        # kubectl get: the Reason column; the strict gate of the README (every backend bound).
        table = cp.kc("get", "dsrsvc", "-n", ns).stdout
        header, *rows = table.splitlines()
        assert header.split() == ["NAME", "VIP", "PORTS", "BOUND", "DESIRED", "READY", "REASON", "AGE"], table
        by_name = {row.split()[0]: row for row in rows}
        assert "Converged" in by_name["healthy"] and "WaitingForLoopback" in by_name["progressing"]
        assert "ServiceNotFound" in by_name["waiting"] and "VipConflict" in by_name["degraded"]
        waited = cp.kc("wait", "--for=jsonpath={.status.backends.bound}=1", "dsrsvc/healthy", "-n", ns,
                       "--timeout=30s", check=False, timeout=60)  # fmt: skip
        assert waited.returncode == 0, waited.stderr
        # kubectl get dsrnodeconfigs: the agent's summary of the node it runs on.
        nodes = cp.kc("get", "dsrnodeconfigs", rig.node).stdout.splitlines()
        assert nodes[0].split() == ["NAME", "VIPS", "APPLIED", "FAILED", "MODE", "RP-FILTER", "READY", "AGE"], nodes
        assert nodes[1].split()[2:5] == ["1", "0", "loopback"], nodes
        # kubectl explain: descriptions generated from the models.
        explained = cp.kc("explain", "dsrservice.spec").stdout
        for field in ("vip", "ports", "backends", "lbMethod", "healthCheck", "drainSeconds", "maxUnbindPercent"):
            assert f"  {field}\t<" in explained, (field, explained)
        assert "Graceful disable before a removed backend is unbound" in explained
        assert "strict gate" in cp.kc("explain", "dsrservice.status.backends").stdout

        # dsr-operator status, read-only, from the real API and the simulator.
        password = tmp_path / "password"
        password.write_text(SIM_PASSWORD + "\n")
        shown = subprocess.run(
            [_entrypoint(), "status", "-n", ns, "--kubeconfig", str(cp.kubeconfig), "--netscaler", rig.sim_url,
             "--user", SIM_USER, "--password-file", str(password)],
            env=_base_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        lines = {(line.split()[0], line.split()[1], line.split()[2]): line for line in shown.stdout.splitlines()[1:]}
        assert "  bound, " in lines[(f"{ns}/healthy", "80", NODE_IP)], shown.stdout
        assert "applied" in lines[(f"{ns}/healthy", "443", NODE_IP)], shown.stdout
        assert "requested, not applied yet" in lines[(f"{ns}/progressing", "80", "198.51.100.78")], shown.stdout
    finally:
        cp.kc("delete", "dsrsvc", "--all", "-n", ns, "--wait=false", check=False)
        cp.kc("delete", "namespace", unwatched, "--wait=false", check=False)


def test_a_dsrservice_with_a_250_kib_annotation_is_served_changed_and_deleted(rig: Rig) -> None:
    """The API allows 256 KiB of annotations; the operator's own bookkeeping must not add to them."""
    cp, ns = rig.cp, rig.namespace
    vip, path = "192.0.2.74", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/dsrservices"
    big = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DsrService",
           "metadata": {"name": "big", "namespace": ns, "annotations": {"example.com/blob": "x" * (250 * 1024)}},
           "spec": {"vip": vip, "ports": [80], "drainSeconds": 0,
                    "backends": {"static": [{"name": "h1", "address": "198.51.100.74"}]}}}
    status, answer = cp.request("POST", path, big)
    assert status == 201, answer

    def ready_at(generation: int) -> bool:
        obj = cp.request("GET", f"{path}/big")[1]
        ready = [c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == "Ready"]
        return obj["metadata"]["generation"] == generation == obj["status"].get("observedGeneration") and \
            bool(ready) and ready[0]["status"] == "True"

    def ports() -> list[int]:
        return sorted(int(v["port"]) for v in rig.nitro("lbvserver") if v.get("ipv46") == vip)

    rig.wait(lambda: ready_at(1) and ports() == [80], 60, "the DsrService served")
    status, answer = cp.request("PATCH", f"{path}/big", {"spec": {"ports": [80, 443]}},
                                content_type="application/merge-patch+json")
    assert status == 200, answer
    rig.wait(lambda: ready_at(2) and ports() == [80, 443], 60, "the change applied")
    annotations = cp.request("GET", f"{path}/big")[1]["metadata"]["annotations"]
    assert set(annotations) == {"example.com/blob"}, sorted(annotations)  # nothing of ours beside it
    status, answer = cp.request("DELETE", f"{path}/big")
    assert status == 200, answer
    rig.wait(lambda: cp.request("GET", f"{path}/big")[0] == 404, 60, "the DsrService deleted")
    assert ports() == []
    for proc in rig.procs:
        assert "Traceback" not in proc.tail(10_000), proc.name


LB_VIP = "192.0.2.81"
LB_CLASS = "dsr.operators.dev/netscaler"
LB_CONDITION = f"{GROUP}/Ready"


def _lb_service(name: str, ns: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": LB_CLASS, "externalTrafficPolicy": "Local",
                     "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}], **spec}}


def _our_condition(svc: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (svc.get("status") or {}).get("conditions") or () if c["type"] == LB_CONDITION), {})


def test_a_load_balancer_service_on_the_real_api_server_allocation_restart_conflict_exhaustion_deletion(
        rig: Rig) -> None:
    """The front door as the chart installs it: a pool, a Service of our class, the real garbage collector."""
    cp, ns = rig.cp, rig.namespace
    pool = f"rt-{ns}"
    dsr_path = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/dsrservices"
    cp.kc("apply", "-f", "-", input=json.dumps({
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "DsrVipPool", "metadata": {"name": pool},
        "spec": {"addresses": [LB_VIP], "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}}))
    try:
        cp.kc("apply", "-f", "-", input=json.dumps(_lb_service("lb1", ns)))
        lb1 = cp.kc_json("get", "service", "lb1", "-n", ns)

        # An owned DsrService with the pool's address; the node gets the VIP, NetScaler binds the node.
        dsr = rig.wait(lambda: (r := cp.request("GET", f"{dsr_path}/lb1"))[0] == 200 and r[1], 60,
                       "the DsrService made from lb1")
        assert dsr["spec"]["vip"] == LB_VIP
        assert dsr["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "lb1",
                                                       "uid": lb1["metadata"]["uid"], "controller": True}]
        rig.wait(lambda: f"{LB_VIP}/32" in rig.netns_addresses(), 60, "the agent to hold the LoadBalancer VIP")
        vserver = rig.wait(lambda: next((v for v in rig.nitro("lbvserver") if v.get("ipv46") == LB_VIP), None), 60,
                           "the vserver on the LoadBalancer VIP")
        rig.wait(lambda: rig.bound_ips(vserver["name"]) == [NODE_IP], 60, "the node bound on the LoadBalancer VIP")

        # What `kubectl get svc` shows: the address, once bound; and our condition on the Service.
        served = rig.wait(lambda: (s := cp.kc_json("get", "service", "lb1", "-n", ns))["status"].get(
            "loadBalancer", {}).get("ingress") and s, 60, "lb1's status.loadBalancer.ingress")
        assert served["status"]["loadBalancer"]["ingress"] == [{"ip": LB_VIP, "ipMode": "VIP"}]
        condition = rig.wait(lambda: _our_condition(cp.kc_json("get", "service", "lb1", "-n", ns)).get(
            "status") == "True" and _our_condition(cp.kc_json("get", "service", "lb1", "-n", ns)), 30,
            "lb1's condition to say Serving")
        assert condition["reason"] == "Serving" and condition["lastTransitionTime"]

        # A restart finds the allocation on the DsrService: the same VIP, nothing written to NetScaler.
        seq = max((e["seq"] for e in rig.journal()), default=0)
        rig.restart_operator()
        rig.wait(lambda: "Reconciled" in rig.procs[-1].log.read_text(errors="replace"), 60,
                 "the restarted operator's first batch")
        assert cp.request("GET", f"{dsr_path}/lb1")[1]["spec"]["vip"] == LB_VIP
        assert rig.journal(since=seq) == []

        # The pool has one address: a second Service waits, says why in an event and in its condition.
        cp.kc("apply", "-f", "-", input=json.dumps(_lb_service("lb2", ns)))
        waiting = rig.wait(lambda: _our_condition(cp.kc_json("get", "service", "lb2", "-n", ns)).get(
            "reason") == "PoolExhausted" and _our_condition(cp.kc_json("get", "service", "lb2", "-n", ns)), 60,
            "lb2's condition to say PoolExhausted")
        assert waiting["status"] == "False" and pool in waiting["message"]
        events = cp.kc_json("get", "events", "-n", ns, "--field-selector", "involvedObject.name=lb2")["items"]
        assert any(e["reason"] == "PoolExhausted" and e["type"] == "Warning" for e in events), events
        assert cp.request("GET", f"{dsr_path}/lb2")[0] == 404
        pool_status = cp.kc_json("get", "dsrvippool", pool)["status"]
        assert (pool_status["addressesTotal"], pool_status["addressesUsed"]) == ("1", 1)
        # A Service that asks for lb1's address by name is refused, and lb1 keeps it.
        cp.kc("apply", "-f", "-", input=json.dumps(_lb_service("lb3", ns, loadBalancerIP=LB_VIP)))
        taken = rig.wait(lambda: _our_condition(cp.kc_json("get", "service", "lb3", "-n", ns)).get(
            "reason") == "AddressInUse" and _our_condition(cp.kc_json("get", "service", "lb3", "-n", ns)), 60,
            "lb3's condition to say AddressInUse")
        assert taken["message"] == f"{LB_VIP} is the VIP of DsrService {ns}/lb1"
        cp.kc("delete", "service", "lb3", "-n", ns)

        # Deleting lb1: the garbage collector deletes its DsrService, whose finalizer removes the NetScaler
        # objects before it goes; then the freed address goes to the waiting Service.
        cp.kc("delete", "service", "lb1", "-n", ns, "--wait=false")
        rig.wait(lambda: cp.request("GET", f"{dsr_path}/lb1")[0] == 404, 60, "lb1's DsrService to go")
        assert vserver["name"] not in {v["name"] for v in rig.nitro("lbvserver")}
        dsr2 = rig.wait(lambda: (r := cp.request("GET", f"{dsr_path}/lb2"))[0] == 200 and r[1], 60,
                        "lb2 to get the freed address")
        assert dsr2["spec"]["vip"] == LB_VIP
        rig.wait(lambda: cp.kc_json("get", "service", "lb2", "-n", ns)["status"].get("loadBalancer", {}).get(
            "ingress") == [{"ip": LB_VIP, "ipMode": "VIP"}], 60, "lb2 to be served")
    finally:
        cp.kc("delete", "service", "lb1", "lb2", "lb3", "-n", ns, "--ignore-not-found", "--wait=false", check=False)
        rig.wait(lambda: all(cp.request("GET", f"{dsr_path}/{n}")[0] == 404 for n in ("lb1", "lb2", "lb3")), 60,
                 "the LoadBalancer Services' DsrServices to go")
        cp.kc("delete", "dsrvippool", pool, "--ignore-not-found", check=False)
    assert not [v for v in rig.nitro("lbvserver") if v.get("ipv46") == LB_VIP]
    rig.wait(lambda: f"{LB_VIP}/32" not in rig.netns_addresses(), 30, "the agent to drop the LoadBalancer VIP")
