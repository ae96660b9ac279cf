"""Benchmark: put N VIPs on the loopback of a throwaway namespace and take them away again.

Compares, in the same run and the same kind of namespace:
- baseline: the manual way, one `ip -n NS addr add` / `ip -n NS addr del` process per VIP;
- dsr-operator: the agent's own path, `Host.apply(vips)` then `Host.apply([])` (dump, plan, netlink
  batch, sysctls, state file), i.e. exactly what one agent pass does.

Needs root and iproute2. Usage: python bench/agent_vips.py [--vips 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import subprocess
import tempfile
import time

from dsr_operator.agent import core, host


def vip_list(count: int) -> list[str]:
    return [f"10.{100 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}" for i in range(count)]


class Namespace:
    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> str:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


def count_on_lo(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", "lo"], check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return sum(1 for line in out.splitlines() if "/32" in line)


def manual(ns: str, vips: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    for vip in vips:
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{vip}/32", "dev", "lo"], check=True)
    added = time.perf_counter()
    assert count_on_lo(ns) == len(vips)
    removing = time.perf_counter()
    for vip in vips:
        subprocess.run(["ip", "-n", ns, "addr", "del", f"{vip}/32", "dev", "lo"], check=True)
    removed = time.perf_counter()
    assert count_on_lo(ns) == 0
    return added - started, removed - removing


async def agent(ns: str, vips: list[str], state_dir: pathlib.Path) -> tuple[float, float]:
    parsed, invalid = core.parse_vips(vips)
    assert not invalid
    async with host.Host(netns=ns, mode="loopback", state_dir=state_dir) as the_host:
        started = time.perf_counter()
        outcome = await the_host.apply(parsed)
        added = time.perf_counter()
        assert len(outcome.applied) == len(vips) and not outcome.error, outcome.error
        assert count_on_lo(ns) == len(vips)
        removing = time.perf_counter()
        outcome = await the_host.apply([])
        removed = time.perf_counter()
        assert len(outcome.removed) == len(vips) and not outcome.error, outcome.error
    assert count_on_lo(ns) == 0
    return added - started, removed - removing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vips", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/agent_vips.py needs root (network namespaces)")
    vips = vip_list(args.vips)
    with Namespace(f"dsrbench-m-{os.getpid()}") as ns:
        manual_add, manual_del = manual(ns, vips)
    with Namespace(f"dsrbench-a-{os.getpid()}") as ns, tempfile.TemporaryDirectory() as state_dir:
        agent_add, agent_del = asyncio.run(agent(ns, vips, pathlib.Path(state_dir)))
    manual_total, agent_total = manual_add + manual_del, agent_add + agent_del
    print(f"{args.vips} VIPs on lo in a network namespace")
    print(f"  manual, one ip process per VIP : add {manual_add:7.3f}s  remove {manual_del:7.3f}s  "
          f"total {manual_total:7.3f}s")  # fmt: skip
    print(f"  agent netlink path (Host.apply): add {agent_add:7.3f}s  remove {agent_del:7.3f}s  "
          f"total {agent_total:7.3f}s")  # fmt: skip
    print(f"  speed-up: {manual_total / agent_total:.1f}x")


if __name__ == "__main__":
    main()
