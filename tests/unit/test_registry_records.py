"""Registry records as backends: what a key holds, and which hosts a DsrService takes from a prefix."""

from __future__ import annotations

import pytest

from dsr_operator.registry import records

P = "/skydns/local/shop/web/"


@pytest.mark.parametrize(("value", "error"), [
    ("{not json", "is not JSON"),
    ('["198.51.100.21"]', "is not a JSON object"),
    ('{"port": 80}', 'has no "host"'),
    ('{"host": "pi.example"}', "host 'pi.example' is not an IP address (DSR binds addresses, not names)"),
    ('{"host": "127.0.0.1"}', "host '127.0.0.1' is a loopback address: not usable for DSR"),
    ('{"host": "198.51.100.21", "port": 70000}', "port 70000 is not 0-65535"),
    ('{"host": "198.51.100.21", "port": true}', "port True is not 0-65535"),
    ('{"host": "198.51.100.21", "name": "Pi 1"}', "name 'Pi 1' is not a DNS label"),
    ('{"host": "198.51.100.21", "drain": "yes"}', "drain 'yes' is not true or false"),
    (b"\xff\xfe", "is not JSON"),
])
def test_a_key_that_is_not_a_usable_record_says_why(value: str | bytes, error: str) -> None:
    assert records.parse(P + "x", value) == records.Record(P + "x", error=error)


def test_a_record_in_coredns_form_is_a_host_named_after_its_key() -> None:
    record = records.parse(P + "Pi_1", '{"host": "2001:DB8::0A", "port": 80, "ttl": 30, "priority": 10}')
    assert record == records.Record(P + "Pi_1", host="2001:db8::a", port=80, name="pi-1")


def test_hosts_skip_other_families_other_ports_and_second_registrations_and_say_so() -> None:
    found = records.hosts({
        P + "a": records.parse(P + "a", '{"host": "198.51.100.21", "port": 80}'),
        P + "b": records.parse(P + "b", '{"host": "198.51.100.22", "port": 8080}'),
        P + "c": records.parse(P + "c", '{"host": "2001:db8::1"}'),
        P + "d": records.parse(P + "d", '{"host": "198.51.100.21"}'),
        P + "e": records.parse(P + "e", '{"host": "198.51.100.23", "drain": true}'),
        P + "f": records.parse(P + "f", "oops"),
    }, "192.0.2.10", [80, 443])
    assert found.backends == (("a", "198.51.100.21"),)
    assert found.draining == ("198.51.100.23",)
    assert found.problems == (
        f"{P}b port 8080 is not one of the ports (80,443): MAC mode cannot remap ports",
        f"{P}c host 2001:db8::1 is not in the VIP's address family (IPv4)",
        f"{P}d host 198.51.100.21 is already registered as {P}a",
        f"{P}f is not JSON",
    )


def test_a_wildcard_dsrservice_takes_a_host_on_any_port() -> None:
    found = records.hosts({P + "b": records.parse(P + "b", '{"host": "198.51.100.22", "port": 8080}')},
                          "192.0.2.10", ["*"])
    assert found.backends == (("b", "198.51.100.22"),)


def test_past_the_limit_no_host_is_taken() -> None:
    many = {f"{P}{i:05d}": records.Record(f"{P}{i:05d}", host=f"10.{i // 250}.{i % 250}.1", name=f"h{i}")
            for i in range(records.MAX_HOSTS + 1)}
    found = records.hosts(many, "10.200.0.1", [80])
    assert found.too_many and found.backends == ()


def test_a_long_list_of_problems_is_cut_in_status() -> None:
    assert records.summary([f"p{i}" for i in range(12)]) == "; ".join(f"p{i}" for i in range(10)) + "; and 2 more"
