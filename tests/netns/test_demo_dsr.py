"""`dsr-operator demo-dsr` end to end: the whole chain runs, every backend answers, everything is removed.

Runs the command as a subprocess (root, iproute2, nftables, tcpdump; skipped otherwise, with the reason)
and checks its output: the operator asks every node for the VIP, the agents report it applied,
NetScaler binds the backends (members of the DsrService's servicegroup), each backend answers some of
the requests, the packet counters show the replies bypassing lb, the second act drains, unbinds and
releases one backend while requests keep succeeding; exit code 0 and no namespace of the lab left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("nft") is None or shutil.which("tcpdump") is None,
    reason="demo-dsr needs nftables and tcpdump: apt-get install nftables tcpdump",
)


def test_demo_dsr_runs_the_whole_chain_and_cleans_up() -> None:
    prefix = f"dsrd{os.getpid() % 100000}"
    proc = subprocess.run(
        [sys.executable, "-m", "dsr_operator.cli", "demo-dsr", "--requests", "12", "--prefix", prefix],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = proc.stdout
    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(prefix)] if os.path.isdir("/run/netns") else []
    assert left == [], f"namespaces left behind: {left}"
    assert proc.returncode == 0, out + proc.stderr
    for node, backend in (("n1", "b1"), ("n2", "b2"), ("n3", "b3")):
        assert f"operator asks node {node} for the VIP" in out
        assert f"agent on {node} reports the VIP applied on lo in {prefix}-{backend}" in out
        assert f"NetScaler: bind servicegroup dsr-demo_web_80_sg dsr-10.77.0.{10 + int(node[1])} 80" in out
    answers = re.findall(r"^request +\d+: client port +\d+  answered by (b\d)$", out, re.MULTILINE)
    # 12 requests, more only until every backend answered (the dataplane hashes source ports).
    assert 12 <= len(answers) <= 36 and set(answers) == {"b1", "b2", "b3"}, out
    assert "FAILED" not in out
    replies = re.search(r"^# (\d+) reply packets went from the backends to the client without crossing lb", out, re.M)
    assert replies and int(replies.group(1)) >= 12 * 3, out
    # The drain act: b3 disabled, unbound only after drainSeconds, its VIP released; nothing failed.
    assert "NetScaler: disable servicegroup dsr-demo_web_80_sg dsr-10.77.0.13 80" in out
    assert "NetScaler: unbind servicegroup dsr-demo_web_80_sg dsr-10.77.0.13 80" in out
    assert "operator takes the VIP back from node n3" in out
    assert f"agent on n3 reports the VIP released from lo in {prefix}-b3" in out
    assert re.search(r"^# requests during the change: [1-9]\d*, failed 0;", out, re.M), out
    after = re.search(r"^# \d+ more requests: ([^;]*); b3 received 0 client packets for the VIP and holds it: False",
                      out, re.M)
    assert after and "b3" not in after.group(1) and "FAILED" not in after.group(1), out
    assert "# OK: the whole chain ran" in out
    assert "# Lab removed" in out
