"""`dsr-operator status`: per backend, NetScaler's view, the node's VIP and the last change; read-only.

The operator runs in-process against the Kubernetes emulator and the NITRO simulator; the test plays
the node agents. n1 reports the VIP (bound), n2 never does (not bound, VIP requested), n3 refuses it.
"""

from __future__ import annotations

import io
import pathlib

from lightkube.types import PatchType

from dsr_lab import simctl
from dsr_operator import cli, status
from dsr_operator import kube as kubeapi
from tests.conftest import KubeHandle
from tests.integration.test_operator import VIP, Cluster, running_operator
from tests.support.waiting import eventually


async def _status(kube: KubeHandle, sim: simctl.Simulator, tmp_path: pathlib.Path, *argv: str) -> str:
    password = tmp_path / "password"
    password.write_text("nsroot\n")
    args = cli.build_parser().parse_args(
        ["status", *argv, "--server", kube.url, "--netscaler", sim.url, "--password-file", str(password)]
    )
    out = io.StringIO()
    assert await status.run(args, out) == 0
    return out.getvalue()


async def test_status_shows_each_backend_on_netscaler_and_its_nodes_vip(
    cluster: Cluster, kube: KubeHandle, nitro_sim: simctl.Simulator,
    tmp_path: pathlib.Path,
) -> None:
    await cluster.slice({"n1": "ready", "n2": "ready", "n3": "ready"})
    async with running_operator(kube, nitro_sim):
        await cluster.dsrservice()
        await cluster.agent_applies("n1")
        cfg = await eventually(lambda: cluster.nodeconfig("n3"))
        await cluster.client.patch(kubeapi.DsrNodeConfig.Status, "n3", {"status": {
            "observedGeneration": cfg["metadata"]["generation"], "appliedVips": [],
            "failedVips": [{"address": VIP, "error": "address in use by another interface"}],
        }}, patch_type=PatchType.MERGE)
        await eventually(lambda: cluster.bound())
        await eventually(lambda: cluster.condition("Reconciling"))
    # The operator has stopped: whatever NetScaler sees from here on comes from the status command.
    writes_before = (await nitro_sim.stats())["writes"]
    out = await _status(kube, nitro_sim, tmp_path, "shop/web")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["DSRSERVICE", "PORT", "BACKEND", "NODE"]
    rows = {line.split()[2]: line for line in lines[1:]}
    assert set(rows) == {"198.51.100.1", "198.51.100.2", "198.51.100.3"}, out
    assert "n1" in rows["198.51.100.1"] and "bound, UP" in rows["198.51.100.1"]
    assert "applied" in rows["198.51.100.1"]
    # The last change of a bound backend is the operator's event that bound it.
    assert "Applied: bind servicegroup dsr-shop_web_80_sg dsr-198.51.100.1 80" in rows["198.51.100.1"], out
    assert "requested, not applied yet" in rows["198.51.100.2"]
    assert "bound, " not in rows["198.51.100.2"] or "not bound" in rows["198.51.100.2"]
    assert "refused: address in use by another interface" in rows["198.51.100.3"]

    # Every DsrService of the namespace, and -A, show the same rows; nothing was written to NetScaler.
    assert await _status(kube, nitro_sim, tmp_path, "-n", "shop") == out
    assert await _status(kube, nitro_sim, tmp_path, "-A") == out
    assert (await nitro_sim.stats())["writes"] == writes_before
