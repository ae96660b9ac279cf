"""Host inspection for netns tests, with iproute2 as an independent judge of what the agent did."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


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


async def poll(
    check: Callable[[], T | Awaitable[T]], *, within: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Call `check` until it returns something truthy; fail with its last value after `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        result = check()
        last = await result if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future) else result
        if last:
            return last  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)
