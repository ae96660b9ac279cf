"""Host inspection for the netns tier, with iproute2 as an independent judge of what the agent did."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=20)


def addresses(ns: str) -> list[dict[str, Any]]:
    """Every address in the namespace, flattened from `ip -j addr`: ifname, local, prefixlen, label."""
    out = run("ip", "-n", ns, "-j", "addr").stdout
    flat = []
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            flat.append({"ifname": link["ifname"], **info})
    return flat


def cidrs(ns: str, ifname: str | None = None) -> set[str]:
    return {f"{a['local']}/{a['prefixlen']}" for a in addresses(ns) if ifname is None or a["ifname"] == ifname}


def sysctl(ns: str, key: str) -> int:
    path = "/proc/sys/" + key.replace(".", "/")
    return int(run("ip", "netns", "exec", ns, "cat", path).stdout.split()[0])


def set_sysctl(ns: str, key: str, value: int) -> None:
    run("ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}")
