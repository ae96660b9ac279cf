"""Benchmark: put N VIPs on the loopback of a throwaway namespace and take them away again.

Compares, in the same run and the same kind of namespace:
- baseline: the manual way, one `ip -n NS addr add` / `ip -n NS addr del` process per VIP;
- dsr-operator: the agent's own path, `Host.apply(vips)` then `Host.apply([])` (dump, plan, netlink
  batch, sysctls, state file), i.e. exactly what one agent pass does.

And the agent's private address codec (`agent/rtaddr.py`) against pyroute2's own batching: the same
requests (replace with our label and protocol mark; delete), the same socket, chunking and ack
matching (`Netlink._batch`), the messages compiled by `rtaddr` or by pyroute2's `IPBatch`.

Needs root and iproute2. Usage: python bench/agent_vips.py [--vips 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable

from pyroute2 import IPBatch

from dsr_operator.agent import core, host, netlink, rtaddr


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


def _compile_ipbatch(command: str, addresses: list[str], **fields: object) -> list[bytes]:
    """One message per address, compiled by pyroute2's IPBatch (no event loop may run here)."""
    out = []
    batch = IPBatch()
    for address in addresses:
        batch.reset()
        batch.addr(command, address=address, **fields)
        out.append(bytes(batch.batch))
    batch.close()
    return out


def _compile_rtaddr(msg_type: int, addresses: list[str], **fields: object) -> list[bytes]:
    return [rtaddr.address_request(0, msg_type=msg_type, family=socket.AF_INET, prefixlen=32, address=a, **fields)
            for a in addresses]  # type: ignore[arg-type]


def _with_seq(message: bytes) -> Callable[[int], bytes]:
    def build(seq: int) -> bytes:
        data = bytearray(message)
        struct.pack_into("=I", data, 8, seq)  # nlmsghdr: length, type, flags, then the sequence number
        return bytes(data)
    return build


def lo_index(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "dev", "lo"], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    return int(out.split(":", 1)[0])


def codecs(ns: str, vips: list[str]) -> dict[str, tuple[float, float]]:
    """(add, remove) seconds of N VIPs: messages compiled by each codec, then sent and acked through the
    agent's `Netlink._batch` (the same socket, chunking and ack matching)."""
    label, index = f"lo{core.LABEL_SUFFIX}", lo_index(ns)
    compilers: dict[str, tuple[Callable[[], list[bytes]], Callable[[], list[bytes]]]] = {
        "rtaddr": (lambda: _compile_rtaddr(rtaddr.RTM_NEWADDR, vips, index=index, label=label,
                                           proto=core.OWNER_PROTO, nodad=False, replace=True),
                   lambda: _compile_rtaddr(rtaddr.RTM_DELADDR, vips, index=index)),
        "IPBatch": (lambda: _compile_ipbatch("replace", vips, index=index, prefixlen=32, label=label,
                                             proto=core.OWNER_PROTO),
                    lambda: _compile_ipbatch("del", vips, index=index, prefixlen=32)),
    }

    async def send(messages: list[bytes]) -> float:
        async with netlink.Netlink(ns) as nl:
            started = time.perf_counter()
            results = await nl._batch([(a, _with_seq(m)) for a, m in zip(vips, messages, strict=True)], ignore=())
            took = time.perf_counter() - started
        assert not any(results.values()), results
        return took

    times: dict[str, tuple[float, float]] = {}
    for name, (add, delete) in compilers.items():
        started = time.perf_counter()
        adds = add()
        add_seconds = time.perf_counter() - started + asyncio.run(send(adds))
        assert count_on_lo(ns) == len(vips), name
        started = time.perf_counter()
        deletes = delete()
        delete_seconds = time.perf_counter() - started + asyncio.run(send(deletes))
        assert count_on_lo(ns) == 0, name
        times[name] = (add_seconds, delete_seconds)
    return times


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
    with Namespace(f"dsrbench-c-{os.getpid()}") as ns:
        by_codec = codecs(ns, vips)
    manual_total, agent_total = manual_add + manual_del, agent_add + agent_del
    print(f"{args.vips} VIPs on lo in a network namespace")
    print(f"  manual, one ip process per VIP : add {manual_add:7.3f}s  remove {manual_del:7.3f}s  "
          f"total {manual_total:7.3f}s")  # fmt: skip
    print(f"  agent netlink path (Host.apply): add {agent_add:7.3f}s  remove {agent_del:7.3f}s  "
          f"total {agent_total:7.3f}s")  # fmt: skip
    print(f"  speed-up: {manual_total / agent_total:.1f}x")
    for name, (add, remove) in by_codec.items():
        print(f"  netlink batch, {name:>7} codec  : add {add:7.3f}s  remove {remove:7.3f}s  "
              f"total {add + remove:7.3f}s")  # fmt: skip
    ours, theirs = (sum(by_codec[n]) for n in ("rtaddr", "IPBatch"))
    print(f"  private codec vs pyroute2 IPBatch, same socket and batching: {theirs / ours:.1f}x faster")


if __name__ == "__main__":
    main()
