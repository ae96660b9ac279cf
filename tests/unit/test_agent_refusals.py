"""The node agent's own rule: which VIPs a node refuses to hold, whatever its DsrNodeConfig asks."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from dsr_operator.agent import core, facts

LO, ETH = 1, 2


def vip(address: str) -> core.Vip:
    [parsed], failures = core.parse_vips([address])
    assert not failures
    return parsed


def on(index: int, ifname: str, cidr: str, proto: int | None = None) -> core.HostAddress:
    address, _, length = cidr.partition("/")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return core.HostAddress(index=index, ifname=ifname, address=address, prefixlen=int(length), family=family,
                            proto=proto)


OWNERSHIP = core.Ownership(proto_supported=True)
HOST = [on(LO, "lo", "127.0.0.1/8"), on(ETH, "eth0", "10.0.0.21/24"), on(ETH, "eth0", "2001:db8::21/64"),
        on(LO, "lo", "192.0.2.7/32"),                             # a VIP the host owner put there by hand
        on(LO, "lo", "192.0.2.8/32", proto=core.OWNER_PROTO)]    # one of ours
CLUSTER = core.Protected(
    addresses={"10.0.0.22": "node n2's InternalIP", "10.0.0.1": "the API server's address"},
    networks=((ipaddress.ip_network("10.244.0.0/16"), "node n1's pod CIDR"),),
)


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.21", "refused: 10.0.0.21 is assigned to eth0 on this node; holding it would cut this node off"),
    ("2001:db8::21", "refused: 2001:db8::21 is assigned to eth0 on this node; holding it would cut this node off"),
    ("10.0.0.254", "refused: 10.0.0.254 is this node's gateway; holding it would cut this node off"),
    ("10.0.0.22", "refused: 10.0.0.22 is node n2's InternalIP; holding it would cut this node off"),
    ("10.0.0.1", "refused: 10.0.0.1 is the API server's address; holding it would cut this node off"),
    ("10.244.3.1", "refused: 10.244.3.1 is in 10.244.0.0/16 (node n1's pod CIDR)"),
    ("10.0.0.100", None),    # a VIP on the node's own subnet is what DSR is
    ("192.0.2.7", None),     # held by the host owner on lo: plan() treats it as held
    ("192.0.2.8", None),     # ours
])
def test_refusals_name_what_the_address_is(address: str, expected: str | None) -> None:
    guard = CLUSTER | core.host_protected(HOST, LO, OWNERSHIP, ["10.0.0.254", "fe80::1"])
    assert core.refusal(vip(address), guard) == expected


@pytest.mark.parametrize("address", ["0.0.0.0", "255.255.255.255", "240.0.0.1", "224.0.0.5", "127.0.0.2",
                                     "169.254.0.1", "::", "::1", "fe80::1", "ff02::1"])
def test_special_ranges_are_never_vips(address: str) -> None:
    valid, [failure] = core.parse_vips([address])
    assert valid == [] and failure.error.startswith("refused: ") and failure.error.endswith("never a VIP")


def test_without_the_cluster_s_addresses_nothing_new_is_added() -> None:
    unknown = core.Protected(unknown="listing Nodes failed: 403 Forbidden")
    assert core.refusal(vip("10.0.0.100"), unknown) == (
        "not added: cannot check it against the cluster's addresses (listing Nodes failed: 403 Forbidden)")


def test_settings_add_api_hosts_and_ranges_in_canonical_form() -> None:
    static = facts.static_protected(["2001:DB8::0A", "api.example.com", ""], ["10.96.0.0/12", "nonsense"])
    assert static.addresses == {"2001:db8::a": "the API server's address"}
    assert core.refusal(vip("10.96.0.10"), static) == (
        "refused: 10.96.0.10 is in 10.96.0.0/12 (a protected range (--protected-cidr))")
