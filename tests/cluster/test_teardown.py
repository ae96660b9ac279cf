"""Teardown after an interrupted test: a one-node cluster of its own, a pod running, Ctrl-C."""

from __future__ import annotations

import json

import pytest

from tests.cluster import cluster as cl
from tests.cluster.test_nodes import _pod

pytestmark = pytest.mark.cluster


def test_interrupted_cluster_leaves_host_clean(cluster_prerequisites: None) -> None:
    """KeyboardInterrupt (what Ctrl-C raises) in the middle of a test: the teardown still stops the pod,
    the daemons and containerd, and leaves no process, mount, cgroup, netns, link, route or sysctl behind.
    Its own lab /24 and pod /16, so it may run while the session's cluster is up."""
    booted: list[cl.Cluster] = []
    with pytest.raises(KeyboardInterrupt), cl.boot(("m1",), net="10.79.1", pod_net="10.245") as c:
        booted.append(c)
        c.kc("create", "namespace", "interrupted")
        c.kc("apply", "-n", "interrupted", "-f", "-", input=json.dumps(_pod("p", "m1")))

        def running() -> bool:
            pod = c.kc_json("get", "pod", "p", "-n", "interrupted")
            return pod["status"].get("phase") == "Running"

        c.wait_for(running, 60, "the pod Running on m1")
        raise KeyboardInterrupt
    (c,) = booted
    print(f"\none-node cluster: boot {c.figures['boot']:.1f}s, teardown {c.figures['teardown']:.1f}s")
    assert c.leftovers == [], c.leftovers
