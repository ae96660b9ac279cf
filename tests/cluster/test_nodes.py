"""The cluster tier's first check: nodes Ready, a pod on each, Services through kube-proxy."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import cluster as cl

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(cluster: cl.Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kc("create", "namespace", name)
    yield name
    cluster.kc("delete", "namespace", name, "--wait=false", check=False)


def test_nodes_ready(cluster: cl.Cluster) -> None:
    f = cluster.figures
    print(
        f"\ncontrol plane {f['control_plane']:.1f}s, containerd x{len(cluster.nodes)} {f['containerd']:.1f}s, "
        f"images {f['image_import']:.1f}s, kubelets Ready {f['kubelets_ready']:.1f}s after their start "
        f"(nodes {f['nodes_ready']:.1f}s after node start), boot {f['boot']:.1f}s, RSS {cluster.rss_mib():.0f} MiB"
    )
    nodes = {n["metadata"]["name"]: n for n in cluster.kc_json("get", "nodes")["items"]}
    assert set(nodes) == {"n1", "n2", "n3"}
    for node in cluster.nodes:
        obj = nodes[node.name]
        addresses = {a["type"]: a["address"] for a in obj["status"]["addresses"]}
        assert addresses["InternalIP"] == node.ip
        assert obj["spec"]["podCIDR"] == node.pod_cidr
        assert not [t for t in obj["spec"].get("taints", []) if t["effect"] == "NoSchedule"], obj["spec"]


def _pod(name: str, node: str, *, host_network: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "pause", "node": node}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "hostNetwork": host_network,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [{"name": "pause", "image": cl.PAUSE_IMAGE, "imagePullPolicy": "Never"}],
        },
    }


def test_a_pod_runs_on_each_node(cluster: cl.Cluster, namespace: str) -> None:
    for node in cluster.nodes:
        cluster.kc("apply", "-n", namespace, "-f", "-", input=json.dumps(_pod(f"p-{node.name}", node.name)))
        cluster.kc(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(_pod(f"h-{node.name}", node.name, host_network=True))
        )

    def running() -> list[dict[str, Any]] | None:
        pods = cluster.kc_json("get", "pods", "-n", namespace)["items"]
        ok = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        return pods if len(ok) == 2 * len(cluster.nodes) else None

    pods = cluster.wait_for(running, 90, "a pod network pod and a hostNetwork pod Running on every node")
    by_name = {p["metadata"]["name"]: p for p in pods}
    for node in cluster.nodes:
        pod, host = by_name[f"p-{node.name}"], by_name[f"h-{node.name}"]
        assert pod["spec"]["nodeName"] == host["spec"]["nodeName"] == node.name
        assert host["status"]["podIP"] == node.ip
        pod_ip = pod["status"]["podIP"]
        assert pod_ip.startswith(node.pod_cidr.rsplit(".", 2)[0] + "."), (pod_ip, node.pod_cidr)
        # The pod network is routed: from the host (return routes) and from another node.
        cl.run("ping", "-c", "1", "-W", "2", pod_ip)
        other = next(n for n in cluster.nodes if n is not node)
        other.exec("ping", "-c", "1", "-W", "2", pod_ip)


def test_cluster_ip_through_kube_proxy(cluster: cl.Cluster) -> None:
    """The `kubernetes` Service's ClusterIP, DNATed by each node's kube-proxy to the apiserver."""
    service = cluster.kc_json("get", "service", "kubernetes", "-n", "default")
    cluster_ip = service["spec"]["clusterIP"]
    for node in cluster.nodes:

        def answers(node: cl.Node = node) -> bool:
            out = node.exec(
                "curl",
                "-sS",
                "--max-time",
                "2",
                "--cacert",
                str(cluster.cp.ca_file),
                "-H",
                f"Authorization: Bearer {cluster.cp.token}",
                f"https://{cluster_ip}/readyz",
                check=False,
            )
            return out.stdout.strip() == "ok"

        cluster.wait_for(answers, 30, f"https://{cluster_ip}/readyz from {node.name} through kube-proxy", interval=0.5)


@pytest.fixture(scope="module")
def echo_image(cluster: cl.Cluster) -> str:
    """The tier's one-file HTTP server image (answers with the pod's name), imported into every node."""
    cluster.import_image(cl.build_echo_image(cl.REPO_ROOT / ".cache" / "cluster" / "echo-server.tar"))
    return cl.ECHO_IMAGE


def _echo_pod(name: str, node: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "echo"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "echo",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "ports": [{"containerPort": cl.ECHO_PORT}],
                    "readinessProbe": {"tcpSocket": {"port": cl.ECHO_PORT}, "periodSeconds": 1},
                }
            ],
        },
    }


def test_service_routes_to_pods_on_every_node(cluster: cl.Cluster, namespace: str, echo_image: str) -> None:
    """A selector Service: its ClusterIP from every node reaches the pods on all three nodes (kube-proxy,
    the routes between pod CIDRs), and its NodePort answers the lab's client namespace on the bridge."""
    for node in cluster.nodes:
        cluster.kc(
            "apply", "-n", namespace, "-f", "-", input=json.dumps(_echo_pod(f"e-{node.name}", node.name, echo_image))
        )
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"type": "NodePort", "selector": {"app": "echo"}, "ports": [{"port": 80, "targetPort": cl.ECHO_PORT}]},
    }
    cluster.kc("apply", "-n", namespace, "-f", "-", input=json.dumps(service))

    def ready() -> bool:
        pods = cluster.kc_json("get", "pods", "-n", namespace, "-l", "app=echo")["items"]
        return len(pods) == 3 and all(
            any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])) for p in pods
        )

    cluster.wait_for(ready, 90, "the echo pods Ready")
    svc = cluster.kc_json("get", "service", "echo", "-n", namespace)
    cluster_ip, node_port = svc["spec"]["clusterIP"], svc["spec"]["ports"][0]["nodePort"]
    expected = {f"e-{n.name}" for n in cluster.nodes}
    for node in cluster.nodes:
        seen: set[str] = set()

        def all_seen(node: cl.Node = node, seen: set[str] = seen) -> bool:
            out = node.exec("curl", "-s", "--max-time", "2", f"http://{cluster_ip}/", check=False)
            if out.returncode == 0:
                seen.add(out.stdout.strip())
            return seen >= expected

        # EndpointSlice + kube-proxy sync lag pod readiness by up to about a second: retry.
        cluster.wait_for(all_seen, 30, f"{sorted(expected)} through {cluster_ip} from {node.name}", interval=0.05)
        assert seen == expected
    client = cluster.lab.ns("client")
    for node in cluster.nodes:
        url = f"http://{node.ip}:{node_port}/"

        def answers(url: str = url) -> bool:
            out = cl.run(
                "nsenter", f"--net=/run/netns/{client}", "--", "curl", "-s", "--max-time", "2", url, check=False
            )
            return out.stdout.strip() in expected

        cluster.wait_for(answers, 30, f"{url} from the lab's client namespace", interval=0.2)
