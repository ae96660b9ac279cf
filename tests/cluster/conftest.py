"""The cluster tier: a real Kubernetes cluster with three nodes on this machine (tests/cluster/cluster.py).

The session-scoped `cluster` fixture yields a `cluster.Cluster`:

* `cluster.kubeconfig`, `cluster.kc(...)`, `cluster.kc_json(...)`: the admin (system:masters)
* `cluster.api_url`: https://<host>.1:<port>, reachable from the host, the nodes and the pods (whose
  `kubernetes` Service, https://10.96.0.1, leads there too); CA in `cluster.cp.ca_file`
* `cluster.nodes`: n1 n2 n3 (`name`, `ip`, `netns`, `pod_cidr`, `exec(...)` in the node's netns,
  `ctr(...)` against its containerd, `import_image(tar)`)
* `cluster.lab`: the DSR lab whose bridge the nodes share: `lab.ns("client")`, `lab.ns("lb")`,
  `lab.ip(role)`, `lab.get()`...
* `cluster.import_image(tar)`: into every node; at boot every `*.tar` of $DSR_CLUSTER_IMAGES
  (else $DSR_IMAGE_DIR, else <repo>/.cache/image, where `make image` writes; not its `base-*.tar`)
  is imported; pods use `imagePullPolicy: Never`
* `cluster.figures`: boot phases in seconds

Teardown stops everything and then checks the host (processes, mounts, cgroups, netns, links,
routes, iptables, shim sockets, sysctls): leftovers fail the session's last test loudly.

`cluster_prerequisites` alone skips or fails the same way, for tests that boot a cluster of their own
with `cl.boot(...)` (another `net` and `pod_net` when it overlaps the session's; see test_teardown.py).

Skips, naming the reason, when not root or binaries/packages are missing; with
CI=true or DSR_REQUIRE_CLUSTER=1 it fails instead. DSR_CLUSTER_KEEP=1 keeps the work dir (logs per node in
/tmp/dsr-cluster-*/nodes/<node>/logs, the control plane's in cp/1/logs).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import pytest

from tests.cluster import cluster as cl

HERE = pathlib.Path(__file__).parent


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("DSR_REQUIRE_CLUSTER") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster_prerequisites() -> None:
    """Skips (or, with DSR_REQUIRE_CLUSTER=1, fails) naming what is missing for a cluster here."""
    reason = cl.missing()
    if reason:
        if _required():
            pytest.fail(f"{reason} (required: CI=true or DSR_REQUIRE_CLUSTER=1)", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="package")  # down (about 1 GB freed) before the later tiers run
def cluster(cluster_prerequisites: None) -> Iterator[cl.Cluster]:
    with cl.boot() as c:
        yield c
    cl.REPORT["cluster"] = {k: round(v, 1) for k, v in c.figures.items() if not k.startswith("_")}
    print(f"\ncluster teardown: {c.figures.get('teardown', 0):.1f}s, host clean")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The tier's figures (boot and teardown seconds, requests sent and failed, ...) in every run's output."""
    for part, figures in sorted(cl.REPORT.items()):
        terminalreporter.write_line(f"cluster tier figures ({part}): {json.dumps(figures, sort_keys=True)}")
