"""DsrVipPool: parsing of its address entries, namespace selection, overlaps, and the pure allocator."""

from __future__ import annotations

import ipaddress
import itertools
import time
from typing import Any

import pydantic
import pytest

from dsr_operator.api import models
from dsr_operator.api.vippool import (
    Allocation,
    DsrVipPool,
    DsrVipPoolSpec,
    LabelSelector,
    Pool,
    Refusal,
    allocate,
    overlapping,
    usage,
)


def spec(*addresses: str, **fields: Any) -> DsrVipPoolSpec:
    return DsrVipPoolSpec.model_validate({"addresses": list(addresses), **fields})


def pool(name: str, *addresses: str, **fields: Any) -> Pool:
    return Pool(name, spec(*addresses, **fields))


@pytest.mark.parametrize(
    ("entry", "canonical", "first", "size"),
    [
        ("192.0.2.0/28", "192.0.2.0/28", "192.0.2.1", 14),
        ("192.0.2.0/24", "192.0.2.0/24", "192.0.2.1", 254),
        ("192.0.2.0/31", "192.0.2.0/31", "192.0.2.0", 2),
        ("192.0.2.7/32", "192.0.2.7/32", "192.0.2.7", 1),
        ("192.0.2.0/255.255.255.252", "192.0.2.0/30", "192.0.2.1", 2),
        ("192.0.2.10-192.0.2.20", "192.0.2.10-192.0.2.20", "192.0.2.10", 11),
        ("192.0.2.0-192.0.2.255", "192.0.2.0-192.0.2.255", "192.0.2.0", 256),
        ("192.0.2.9-192.0.2.9", "192.0.2.9-192.0.2.9", "192.0.2.9", 1),
        ("192.0.2.9", "192.0.2.9", "192.0.2.9", 1),
        ("2001:DB8::/120", "2001:db8::/120", "2001:db8::", 256),
        ("2001:db8::/64", "2001:db8::/64", "2001:db8::", 2**64),
        ("2001:db8::0a-2001:db8::0F", "2001:db8::a-2001:db8::f", "2001:db8::a", 6),
        ("fd00::1", "fd00::1", "fd00::1", 1),
        ("126.255.255.254/31", "126.255.255.254/31", "126.255.255.254", 2),
        ("126.0.0.0/7", "126.0.0.0/7", "126.0.0.1", 2**24 - 1),
        ("169.253.255.255-169.255.0.0", "169.253.255.255-169.255.0.0", "169.253.255.255", 2),
    ],
)
def test_good_entries_are_canonical_and_hand_out_only_usable_addresses(
    entry: str, canonical: str, first: str, size: int
) -> None:
    parsed = spec(entry)
    assert parsed.addresses == [canonical]
    assert parsed.size() == size
    assert next(parsed.candidates()) == first


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("", "at least 1 character"),
        ("x" * 101, "at most 100 characters"),
        ("example.com", "'example.com' is not an IP address, a CIDR (192.0.2.0/28) or a range"),
        ("192.0.2.256", "'192.0.2.256' is not an IP address"),
        ("192.0.2.0/33", "'192.0.2.0/33' is not an IP address"),
        ("192.0.2.0/24 ", "'192.0.2.0/24 ' is not an IP address"),
        ("192.0.2.1 - 192.0.2.5", "'192.0.2.1 - 192.0.2.5' is not an IP address"),
        ("192.0.2.1-192.0.2.5-192.0.2.9", "'192.0.2.1-192.0.2.5-192.0.2.9' is not an IP address"),
        ("192.0.2.5/24", "'192.0.2.5/24' has host bits set: the network is 192.0.2.0/24"),
        ("192.0.2.20-192.0.2.10", "'192.0.2.20-192.0.2.10' starts above its end"),
        ("192.0.2.1-2001:db8::1", "'192.0.2.1-2001:db8::1' mixes IPv4 and IPv6"),
        ("2001:db8::1%eth0", "'2001:db8::1%eth0' has a zone"),
        ("127.0.0.1", "'127.0.0.1' is a loopback address: not usable for DSR"),
        ("0.0.0.0", "'0.0.0.0' is unspecified"),
        ("224.0.0.5", "'224.0.0.5' is multicast"),
        ("255.255.255.255", "'255.255.255.255' is reserved (or broadcast)"),
        ("fe80::1", "'fe80::1' is link-local"),
        ("::ffff:192.0.2.1", "'::ffff:192.0.2.1' is reserved"),
        ("fec0::1", "'fec0::1' is neither global unicast"),
        ("127.0.0.0/8", "'127.0.0.0/8' holds no address usable as a VIP"),
        ("169.254.0.0/16", "'169.254.0.0/16' holds no address usable as a VIP"),
        ("224.0.0.0-255.255.255.255", "'224.0.0.0-255.255.255.255' holds no address usable as a VIP"),
        ("fe80::/64", "'fe80::/64' holds no address usable as a VIP"),
        ("ff02::1-ff02::ff", "'ff02::1-ff02::ff' holds no address usable as a VIP"),
    ],
)
def test_bad_entries_are_refused_with_the_entry_named(entry: str, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=r"addresses\.0") as caught:
        spec(entry)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        (["192.0.2.0/24", "192.0.2.128/25"], "addresses 192.0.2.0/24 and 192.0.2.128/25 overlap"),
        (["192.0.2.10-192.0.2.20", "192.0.2.20"], "addresses 192.0.2.10-192.0.2.20 and 192.0.2.20 overlap"),
        (["192.0.2.5", "192.0.2.5"], "addresses 192.0.2.5 and 192.0.2.5 overlap"),
        (["2001:db8::/64", "2001:DB8::5"], "addresses 2001:db8::/64 and 2001:db8::5 overlap"),
        (["192.0.2.50", "198.51.100.0/24", "192.0.2.1-192.0.2.100"], "192.0.2.1-192.0.2.100 and 192.0.2.50"),
        (["2001:db8::/64", "192.0.2.0/24", "2001:db8:0:0:1::/80"], "2001:db8::/64 and 2001:db8:0:0:1::/80"),
    ],
)
def test_entries_of_one_pool_must_not_overlap(addresses: list[str], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        spec(*addresses)


def test_disjoint_and_adjacent_entries_and_both_families_are_one_pool() -> None:
    parsed = spec("192.0.2.0/30", "192.0.2.4-192.0.2.5", "2001:db8::/126", "192.0.2.6")
    assert list(parsed.candidates()) == [
        "192.0.2.1", "192.0.2.2", "192.0.2.4", "192.0.2.5", "192.0.2.6",
        "2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db8::3",
    ]
    assert parsed.size() == 9 and parsed.size(4) == 5 and parsed.size(6) == 4
    assert next(parsed.candidates(6)) == "2001:db8::"


def test_the_pool_entry_count_is_bounded() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least 1 item"):
        spec()
    with pytest.raises(pydantic.ValidationError, match="at most 64 items"):
        spec(*(f"192.0.2.{n}" for n in range(1, 66)))


def test_avoided_addresses_are_never_handed_out() -> None:
    parsed = spec("192.0.2.0/28", avoid_addresses=["192.0.2.1", "192.0.2.4-192.0.2.6", "192.0.2.8/30", "10.0.0.0/8"])
    assert list(parsed.candidates()) == ["192.0.2.2", "192.0.2.3", "192.0.2.7", "192.0.2.12", "192.0.2.13",
                                         "192.0.2.14"]
    assert parsed.size() == 6
    assert not parsed.contains("192.0.2.5") and parsed.contains("192.0.2.7")
    assert spec("192.0.2.1", avoid_addresses=["192.0.2.1"]).size() == 0
    with pytest.raises(pydantic.ValidationError, match=r"avoid_addresses\.0"):
        spec("192.0.2.1", avoid_addresses=["nope"])


def test_avoid_entries_are_canonical_and_need_not_be_usable() -> None:
    parsed = spec("192.0.2.0/28", avoid_addresses=["127.0.0.1", "2001:DB8::/64"])
    assert parsed.avoid_addresses == ["127.0.0.1", "2001:db8::/64"]


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("192.0.2.0", False),
        ("192.0.2.1", True),
        ("192.0.2.254", True),
        ("192.0.2.255", False),
        ("192.0.3.1", False),
        ("2001:DB8::00ff", True),
        ("[2001:db8::1]", True),
        ("2001:db8::100", False),
        ("198.51.100.7", True),
        ("nonsense", False),
    ],
)
def test_contains(address: str, inside: bool) -> None:
    assert spec("192.0.2.0/24", "2001:db8::/120", "198.51.100.7").contains(address) is inside


def test_the_usable_ranges_are_what_models_unicast_accepts() -> None:
    edges = ["0.0.0.0", "127.0.0.0", "169.254.0.0", "224.0.0.0", "2000::", "fc00::", "fe00::", "fec0::", "ff00::", "::"]
    probes = {ipaddress.ip_address(a) for a in edges} | {ipaddress.ip_address("255.255.255.255")}
    for address in list(probes):
        for step in (-1, 1):
            try:
                probes.add(address + step)
            except ipaddress.AddressValueError:
                pass
    for network in ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "4000::/3", "fe80::/10"):
        net = ipaddress.ip_network(network)
        probes |= {net.network_address - 1, net.network_address, net.broadcast_address}
        if int(net.broadcast_address) + 1 < 2 ** net.max_prefixlen:
            probes.add(net.broadcast_address + 1)
    for address in sorted(probes, key=lambda a: (a.version, a)):
        try:
            models.unicast(str(address))
            accepted = True
        except ValueError:
            accepted = False
        whole = "0.0.0.0/0" if address.version == 4 else "::/0"
        assert spec(whole).contains(str(address)) is accepted, address


def test_candidates_are_lazy() -> None:
    huge = spec("2001:db8::/32")
    assert list(itertools.islice(huge.candidates(), 3)) == ["2001:db8::", "2001:db8::1", "2001:db8::2"]
    assert huge.size() == 2**96
    assert spec("0.0.0.0/0").size() == 2**32 - 2 - 2**24 - 2**16 - 2**29 + 1


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {}, True),
        ({}, {"team": "a"}, True),
        ({"matchLabels": {}}, {"team": "a"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "a", "env": "prod"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
        ({"matchLabels": {"team": "a"}}, {}, False),
        ({"matchLabels": {"team": "a", "env": "prod"}}, {"team": "a"}, False),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}, {"team": "b"}, True),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {"team": "c"}, False),
        ({"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "c"}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["a"]}]}, {"team": "a"}, False),
        ({"matchExpressions": [{"key": "team", "operator": "Exists"}]}, {"team": ""}, True),
        ({"matchExpressions": [{"key": "team", "operator": "Exists", "values": []}]}, {}, False),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "team", "operator": "DoesNotExist"}]}, {"team": "a"}, False),
        ({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "team", "operator": "Exists"}]},
         {"env": "prod"}, False),
        ({"matchLabels": {"env": "prod"}, "matchExpressions": [{"key": "team", "operator": "Exists"}]},
         {"env": "prod", "team": "a"}, True),
    ],
)
def test_selector_matching(selector: dict[str, Any], labels: dict[str, str], selected: bool) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is selected


@pytest.mark.parametrize(
    ("requirement", "message"),
    [
        ({"key": "team", "operator": "In"}, "operator In needs values"),
        ({"key": "team", "operator": "NotIn", "values": []}, "operator NotIn needs values"),
        ({"key": "team", "operator": "Exists", "values": ["a"]}, "operator Exists takes no values"),
        ({"key": "team", "operator": "DoesNotExist", "values": ["a"]}, "operator DoesNotExist takes no values"),
        ({"key": "team", "operator": "Equals", "values": ["a"]}, "'In', 'NotIn', 'Exists' or 'DoesNotExist'"),
        ({"key": "", "operator": "Exists"}, "at least 1 character"),
    ],
)
def test_bad_selector_requirements(requirement: dict[str, Any], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        LabelSelector.model_validate({"matchExpressions": [requirement]})


def test_a_manifest_parses_with_camel_case_fields() -> None:
    parsed = DsrVipPool.model_validate({
        "apiVersion": "dsr.operators.dev/v1alpha1",
        "kind": "DsrVipPool",
        "metadata": {"name": "public"},
        "spec": {"addresses": ["192.0.2.0/28"], "avoidAddresses": ["192.0.2.1"], "autoAssign": False,
                 "namespaceSelector": {"matchLabels": {"lb": "public"}}},
        "status": {"observedGeneration": 2, "addressesTotal": "13", "addressesUsed": 1,
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
    })
    assert parsed.spec.auto_assign is False and parsed.spec.size() == 13
    assert parsed.status is not None and parsed.status.addresses_total == "13"
    with pytest.raises(pydantic.ValidationError, match="Extra inputs"):
        DsrVipPoolSpec.model_validate({"addresses": ["192.0.2.1"], "autoassign": True})


def test_overlapping_pools_the_later_name_is_reported() -> None:
    pools = [
        pool("c", "192.0.2.128/25"),
        pool("a", "192.0.2.0/24", "2001:db8::/64"),
        pool("b", "198.51.100.0/24"),
        pool("d", "2001:db8::5", "203.0.113.1"),
        pool("e", "203.0.113.1-203.0.113.9"),
        pool("f", "2001:db9::/64", "192.0.2.255"),
    ]
    found = overlapping(pools)
    assert set(found) == {"c", "d", "e", "f"}
    assert found["c"] == "192.0.2.128/25 overlaps 192.0.2.0/24 of DsrVipPool a"
    assert found["d"] == "2001:db8::5 overlaps 2001:db8::/64 of DsrVipPool a"
    assert found["e"] == "203.0.113.1-203.0.113.9 overlaps 203.0.113.1 of DsrVipPool d"
    assert found["f"] == (
        "192.0.2.255 overlaps 192.0.2.0/24 of DsrVipPool a; 192.0.2.255 overlaps 192.0.2.128/25 of DsrVipPool c"
    )
    disjoint = [pool("x", "192.0.2.0/25"), pool("y", "192.0.2.128/25"), pool("z", "192.0.2.1", auto_assign=False)]
    assert overlapping(disjoint) == {"z": "192.0.2.1 overlaps 192.0.2.0/25 of DsrVipPool x"}
    assert overlapping([]) == {}


TEAM_A = {"kubernetes.io/metadata.name": "shop", "team": "a"}
TEAM_B = {"kubernetes.io/metadata.name": "blog", "team": "b"}


@pytest.mark.parametrize(
    ("pools", "kwargs", "outcome"),
    [
        # Name order, then the lowest free address; a /24 never hands out .0 or .255.
        ([pool("b", "198.51.100.0/24"), pool("a", "192.0.2.0/24")], {}, Allocation("192.0.2.1", "a")),
        ([pool("a", "192.0.2.0/24")], {"taken": ["192.0.2.1", "192.0.2.2"]}, Allocation("192.0.2.3", "a")),
        ([pool("a", "192.0.2.0/30"), pool("b", "198.51.100.7")], {"taken": ["192.0.2.1", "192.0.2.2"]},
         Allocation("198.51.100.7", "b")),
        ([pool("a", "192.0.2.0/30")], {"taken": ["192.0.2.2"]}, Allocation("192.0.2.1", "a")),
        ([pool("a", "192.0.2.250-192.0.2.255")], {"taken": ["192.0.2.250"]}, Allocation("192.0.2.251", "a")),
        # Avoided addresses are skipped.
        ([pool("a", "192.0.2.0/29", avoid_addresses=["192.0.2.1-192.0.2.3"])], {}, Allocation("192.0.2.4", "a")),
        # Family.
        ([pool("a", "192.0.2.0/24", "2001:db8::/120")], {"family": 6}, Allocation("2001:db8::", "a")),
        ([pool("a", "2001:db8::/120", "192.0.2.0/24")], {"family": 4}, Allocation("192.0.2.1", "a")),
        ([pool("a", "192.0.2.0/24"), pool("b", "2001:db8::/120")], {"family": 6}, Allocation("2001:db8::", "b")),
        ([pool("a", "192.0.2.0/24")], {"family": 6},
         Refusal("NoPool", "no DsrVipPool with autoAssign offers IPv6 addresses to this namespace")),
        # autoAssign false: only by name or by address.
        ([pool("a", "192.0.2.0/24", auto_assign=False), pool("b", "198.51.100.0/24")], {},
         Allocation("198.51.100.1", "b")),
        ([pool("a", "192.0.2.0/24", auto_assign=False)], {},
         Refusal("NoPool", "no DsrVipPool with autoAssign offers addresses to this namespace")),
        ([pool("a", "192.0.2.0/24", auto_assign=False)], {"pool": "a"}, Allocation("192.0.2.1", "a")),
        ([pool("a", "192.0.2.0/24", auto_assign=False)], {"address": "192.0.2.9"}, Allocation("192.0.2.9", "a")),
        ([], {}, Refusal("NoPool", "no DsrVipPool with autoAssign offers addresses to this namespace")),
        # Named pool.
        ([pool("a", "192.0.2.0/24"), pool("b", "198.51.100.0/24")], {"pool": "b"}, Allocation("198.51.100.1", "b")),
        ([pool("a", "192.0.2.0/24")], {"pool": "z"}, Refusal("PoolNotFound", "no usable DsrVipPool z")),
        ([pool("a", "192.0.2.0/24"), pool("b", "192.0.2.7")], {"pool": "b"},
         Refusal("PoolNotFound", "no usable DsrVipPool b: 192.0.2.7 overlaps 192.0.2.0/24 of DsrVipPool a")),
        ([pool("a", "192.0.2.0/24", namespace_selector={"matchLabels": {"team": "b"}})], {"pool": "a"},
         Refusal("NamespaceNotAllowed", "DsrVipPool a's namespaceSelector excludes this namespace")),
        ([pool("a", "192.0.2.0/30")], {"pool": "a", "taken": ["192.0.2.1", "192.0.2.2"]},
         Refusal("PoolExhausted", "no free address in DsrVipPool a (2 addresses)")),
        ([pool("a", "192.0.2.0/30")], {"pool": "a", "family": 6},
         Refusal("PoolExhausted", "no free IPv6 address in DsrVipPool a (0 IPv6 addresses)")),
        # Requested address (canonicalised first).
        ([pool("a", "2001:db8::/64")], {"address": "2001:DB8::00AB"}, Allocation("2001:db8::ab", "a")),
        ([pool("a", "192.0.2.0/24"), pool("b", "198.51.100.0/24")], {"address": "198.51.100.9"},
         Allocation("198.51.100.9", "b")),
        ([pool("a", "192.0.2.0/24"), pool("b", "198.51.100.0/24")], {"address": "198.51.100.9", "pool": "a"},
         Refusal("AddressNotInPool", "198.51.100.9 is not in DsrVipPool a")),
        ([pool("a", "192.0.2.0/24")], {"address": "192.0.2.9", "pool": "a"}, Allocation("192.0.2.9", "a")),
        ([pool("a", "192.0.2.0/24")], {"address": "192.0.2.255"},
         Refusal("AddressNotInPool", "192.0.2.255 is not in any usable DsrVipPool")),
        ([pool("a", "192.0.2.0/24")], {"address": "203.0.113.1"},
         Refusal("AddressNotInPool", "203.0.113.1 is not in any usable DsrVipPool")),
        ([pool("a", "192.0.2.0/24", avoid_addresses=["192.0.2.9"])], {"address": "192.0.2.9"},
         Refusal("AddressNotInPool", "192.0.2.9 is not in any usable DsrVipPool")),
        ([pool("a", "192.0.2.0/24")], {"address": "banana"},
         Refusal("AddressNotInPool", "'banana' is not an IP address")),
        ([pool("a", "192.0.2.0/24", "2001:db8::/64")], {"address": "192.0.2.9", "family": 6},
         Refusal("AddressNotInPool", "192.0.2.9 is not an IPv6 address")),
        ([pool("a", "192.0.2.0/24")], {"address": "192.0.2.9", "taken": ["192.0.2.9"]},
         Refusal("AddressInUse", "192.0.2.9 is already another Service's VIP")),
        ([pool("a", "2001:db8::/64")], {"address": "2001:db8::9", "taken": ["2001:DB8::0009"]},
         Refusal("AddressInUse", "2001:db8::9 is already another Service's VIP")),
        ([pool("a", "192.0.2.0/24"), pool("b", "192.0.2.7")], {"address": "192.0.2.7"},
         Allocation("192.0.2.7", "a")),
        # Namespace selectors.
        ([pool("a", "192.0.2.0/24", namespace_selector={"matchLabels": {"team": "b"}}),
          pool("b", "198.51.100.0/24", namespace_selector={"matchLabels": {"team": "a"}})], {},
         Allocation("198.51.100.1", "b")),
        ([pool("a", "192.0.2.0/24", namespace_selector={"matchLabels": {"team": "b"}})], {},
         Refusal("NoPool", "no DsrVipPool with autoAssign offers addresses to this namespace")),
        ([pool("a", "192.0.2.0/24", namespace_selector={"matchLabels": {"team": "b"}})], {"address": "192.0.2.5"},
         Refusal("AddressNotInPool", "192.0.2.5 is in DsrVipPool a, which excludes this namespace")),
        ([pool("a", "192.0.2.0/24", namespace_selector={
            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop"]}]})],
         {}, Allocation("192.0.2.1", "a")),
        # Exhausted: every eligible pool, with its size.
        ([pool("a", "192.0.2.1"), pool("b", "198.51.100.0/30"), pool("c", "203.0.113.0/24", auto_assign=False)],
         {"taken": ["192.0.2.1", "198.51.100.1", "198.51.100.2"]},
         Refusal("PoolExhausted", "no free address in DsrVipPool a (1 addresses), b (2 addresses)")),
        ([pool("a", "192.0.2.1", "2001:db8::1")], {"taken": ["2001:db8::1"], "family": 6},
         Refusal("PoolExhausted", "no free IPv6 address in DsrVipPool a (1 IPv6 addresses)")),
        # Overlapping pools are skipped; the earlier name keeps working.
        ([pool("b", "192.0.2.0/24"), pool("a", "192.0.2.0/30")], {"taken": ["192.0.2.1", "192.0.2.2"]},
         Refusal("PoolExhausted", "no free address in DsrVipPool a (2 addresses)")),
        ([pool("a", "192.0.2.0/24", auto_assign=False), pool("b", "192.0.2.0/30")], {},
         Refusal("NoPool", "no DsrVipPool with autoAssign offers addresses to this namespace "
                           "(overlapping another pool: b)")),
    ],
)
def test_allocate(pools: list[Pool], kwargs: dict[str, Any], outcome: Allocation | Refusal) -> None:
    arguments: dict[str, Any] = {"taken": [], **kwargs}
    assert allocate(pools, namespace_labels=TEAM_A, **arguments) == outcome


def test_allocation_from_a_huge_pool_is_immediate() -> None:
    pools = [pool("v6", "2001:db8::/64"), pool("v4", "10.0.0.0/8")]
    taken = {f"2001:db8::{n:x}" for n in range(0, 50)} | {"10.0.0.1"}
    started = time.perf_counter()
    for _ in range(100):
        assert allocate(pools, namespace_labels={}, taken=taken, family=6) == Allocation("2001:db8::32", "v6")
        assert allocate(pools, namespace_labels={}, taken=taken) == Allocation("10.0.0.2", "v4")
    assert time.perf_counter() - started < 2
    assert usage(pools[0], taken) == (2**64, 50)


def test_allocation_of_a_whole_pool_hands_out_each_address_once() -> None:
    pools = [pool("a", "192.0.2.0/29", "2001:db8::/126", avoid_addresses=["192.0.2.3"])]
    taken: list[str] = []
    while isinstance(outcome := allocate(pools, namespace_labels={}, taken=taken), Allocation):
        taken.append(outcome.vip)
    assert taken == ["192.0.2.1", "192.0.2.2", "192.0.2.4", "192.0.2.5", "192.0.2.6",
                     "2001:db8::", "2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert outcome.reason == "PoolExhausted"
    assert usage(pools[0], taken) == (9, 9)


def test_allocate_refuses_an_unknown_family() -> None:
    with pytest.raises(ValueError, match="family must be 4, 6 or None"):
        allocate([], namespace_labels={}, taken=[], family=5)


@pytest.mark.parametrize(
    ("taken", "used"),
    [
        ([], 0),
        (["192.0.2.1", "192.0.2.2"], 2),
        (["192.0.2.0", "192.0.2.255", "192.0.2.7"], 0),
        (["192.0.2.1", "198.51.100.1", "2001:db8::1", "junk"], 1),
        (["2001:db8::5:1", "2001:DB8::5:1", "2001:db8:0::5:2"], 2),
    ],
)
def test_usage(taken: list[str], used: int) -> None:
    assert usage(pool("a", "192.0.2.0/24", "2001:db8::5:0/112", avoid_addresses=["192.0.2.7"]), taken) == (
        253 + 2**16, used
    )


def test_permits_a_vip_only_in_a_usable_pool_that_admits_the_namespace() -> None:
    from dsr_operator.api.vippool import permits

    shop = Pool("a-shop", spec("192.0.2.0/29", avoidAddresses=["192.0.2.3"],
                               namespaceSelector={"matchLabels": {"team": "shop"}}))
    clash = Pool("b-clash", spec("192.0.2.4-192.0.2.10"))  # overlaps a-shop: never used
    labels = {"team": "shop"}
    assert permits([shop, clash], "192.0.2.1", labels) is None
    assert permits([shop, clash], "192.0.2.1", {"team": "other"}) == (
        "192.0.2.1 is in DsrVipPool a-shop, whose namespaceSelector excludes this namespace")
    assert permits([shop], "192.0.2.3", labels) == "192.0.2.3 is in no usable DsrVipPool"  # avoided
    assert permits([shop], "192.0.2.0", labels) == "192.0.2.0 is in no usable DsrVipPool"  # network address
    assert permits([shop, clash], "192.0.2.9", labels) == "192.0.2.9 is in no usable DsrVipPool"  # only in b-clash
    assert permits([], "192.0.2.1", labels) == "192.0.2.1 is in no usable DsrVipPool"
