"""nftables for the forwarding model: the ruleset of a `Desired` state as one `nft -f -` transaction,
stable chain and set names, and the rule counters and flow sets read back (`nft -j list table`).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping
from typing import Any

from dsr_operator.simulator.dataplane.model import Desired

TABLE = "dsrsim"
WILDCARD_PORT = 65535
FLOW_TIMEOUT = 120.0


class Names:
    """Stable nft names: chain v<N> per vserver, flow set v<N>s<M> per (vserver, service)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._next = itertools.count(1)
        self.sets: dict[str, tuple[str, str]] = {}
        """flow set name → (vserver, service)"""

    def _id(self, key: str) -> int:
        if key not in self._ids:
            self._ids[key] = next(self._next)
        return self._ids[key]

    def chain(self, vserver: str) -> str:
        return f"v{self._id('vs:' + vserver)}"

    def flows(self, vserver: str, service: str) -> str:
        name = f"{self.chain(vserver)}s{self._id('svc:' + service)}"
        self.sets[name] = (vserver, service)
        return name


def _quote(text: str) -> str:
    return '"' + text.replace('"', "'")[:120] + '"'


def render(
    desired: Desired,
    *,
    dev: str,
    mac: str,
    names: Names,
    previous: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset()),
    flow_timeout: float = FLOW_TIMEOUT,
) -> tuple[str, tuple[frozenset[str], frozenset[str]]]:
    """One nft transaction for `desired`, and the (chains, flow sets) it leaves behind.

    `previous` is what the last transaction left: chains are flushed, flow sets of services that
    still serve are kept with their flows, the rest is deleted after the rules that used it.
    """
    fwd = f'ether saddr set {mac} counter fwd to "{dev}"'
    prev_chains, prev_sets = previous
    chains = {names.chain(v.name) for v in desired.vservers}
    sets = {names.flows(v.name, m.service) for v in desired.vservers for m in v.serving}
    set_family = {names.flows(v.name, m.service): v.family for v in desired.vservers for m in v.serving}
    lines = [
        f"add table netdev {TABLE}",
        f'add chain netdev {TABLE} ingress {{ type filter hook ingress device "{dev}" priority 0; policy accept; }}',
        f"flush chain netdev {TABLE} ingress",
    ]
    for chain in sorted(prev_chains | chains):
        lines += [f"add chain netdev {TABLE} {chain}", f"flush chain netdev {TABLE} {chain}"]
    for flow_set in sorted(sets):
        addr_type = "ipv4_addr" if set_family[flow_set] == 4 else "ipv6_addr"
        lines.append(
            f"add set netdev {TABLE} {flow_set} {{ type {addr_type} . inet_service . inet_service; "
            f"flags dynamic,timeout; timeout {int(flow_timeout)}s; size 65535; }}"
        )
    for v in desired.vservers:
        chain = names.chain(v.name)
        l3 = "ip" if v.family == 4 else "ip6"
        key = f"{l3} saddr . th sport . th dport"
        port = "" if v.port in (0, WILDCARD_PORT) else f" th dport {v.port}"
        lines.append(
            f"add rule netdev {TABLE} ingress {l3} daddr {v.vip} meta l4proto {{ tcp, udp }}{port} counter "
            f"jump {chain} comment {_quote('vserver ' + v.name)}"
        )
        rule = f"add rule netdev {TABLE} {chain}"
        if v.serving:
            deletes = " ".join(f"delete @{names.flows(v.name, m.service)} {{ {key} }}" for m in v.serving)
            lines.append(f"{rule} tcp flags & (syn | ack) == syn {deletes}")
        for m in v.serving:
            flow_set = names.flows(v.name, m.service)
            lines.append(
                f"{rule} {key} @{flow_set} update @{flow_set} {{ {key} }} ether daddr set {m.mac} {fwd} "
                f"comment {_quote('service ' + m.service)}"
            )
        if v.active:
            slots = [m.mac for m in v.active for _ in range(max(1, min(m.weight, 100)))]
            choice = ", ".join(f"{i} : {mac_}" for i, mac_ in enumerate(slots))
            pick = f"jhash {l3} saddr . th sport mod {len(slots)} seed 0xd5 map {{ {choice} }}"
            lines.append(f"{rule} ether daddr set {pick}")
            for m in v.active:
                flow_set = names.flows(v.name, m.service)
                lines.append(
                    f"{rule} ether daddr {m.mac} add @{flow_set} {{ {key} }} {fwd} "
                    f"comment {_quote('newflow ' + m.service)}"
                )
    for flow_set in sorted(prev_sets - sets):
        lines.append(f"delete set netdev {TABLE} {flow_set}")
    for chain in sorted(prev_chains - chains):
        lines.append(f"delete chain netdev {TABLE} {chain}")
    return "\n".join(lines) + "\n", (frozenset(chains), frozenset(sets))


COUNTED = ("vserver", "forwarded", "newflow")


def rule_counts(table: Mapping[str, Any]) -> dict[str, collections.Counter[str]]:
    """Packets by rule comment: per vserver at ingress, per service forwarded (known and new flows),
    per service the first packets of new flows (that is, new flows)."""
    counts: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in COUNTED}
    for item in table.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        packets = next((e["counter"]["packets"] for e in rule.get("expr", []) if "counter" in e), 0)
        kind, _, name = str(rule.get("comment", "")).partition(" ")
        if kind == "vserver":
            counts["vserver"][name] += packets
        elif kind in ("service", "newflow"):
            counts["forwarded"][name] += packets
            if kind == "newflow":
                counts["newflow"][name] += packets
    return counts


def flows(table: Mapping[str, Any], names: Names) -> dict[str, int]:
    """Live flows per service: the elements of its flow sets (each expires after `flow_timeout` idle)."""
    live: collections.Counter[str] = collections.Counter()
    for item in table.get("nftables", []):
        flow_set = item.get("set")
        if not flow_set or flow_set.get("name") not in names.sets:
            continue
        live[names.sets[flow_set["name"]][1]] += len(flow_set.get("elem", ()))
    return dict(live)
