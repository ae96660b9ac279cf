"""The dataplane's forwarding model and nft rendering, from a store's read-only view (pure, no namespace)."""

from __future__ import annotations

from dsr_operator.simulator import dataplane, nitro

MACS = {"10.0.0.11": "02:00:00:00:00:11", "10.0.0.12": "02:00:00:00:00:12"}


def _store(*, mbf: bool = True) -> nitro.Store:
    model = nitro.Store()
    if mbf:
        model.execute("POST", "nsmode", "enable", {"mode": ["MBF"]})
    for i in (1, 2):
        model.execute("POST", "server", "add", {"name": f"h{i}", "ipaddress": f"10.0.0.1{i}"})
        model.execute("POST", "service", "add", {"name": f"s{i}", "servername": f"h{i}", "servicetype": "ANY",
                                                 "port": 80, "usip": "YES"})  # fmt: skip
    model.execute("POST", "lbvserver", "add", {"name": "v", "servicetype": "ANY", "ipv46": "192.0.2.1", "port": 80,
                                               "m": "MAC", "lbmethod": "ROUNDROBIN"})  # fmt: skip
    model.execute("POST", "lbvserver", "add", {"name": "w", "servicetype": "ANY", "ipv46": "192.0.2.2", "port": 80,
                                               "lbmethod": "ROUNDROBIN"})  # fmt: skip
    for i in (1, 2):
        model.execute("POST", "lbvserver_service_binding", "bind", {"name": "v", "servicename": f"s{i}", "weight": i})
    return model


def test_a_mac_mode_vserver_forwards_to_its_services_with_known_macs() -> None:
    model = _store()
    model.execute("POST", "service", "disable", {"name": "s2", "delay": 60})  # draining: serves, takes no new flows
    desired = dataplane.desired_state(model, MACS)
    (v,) = desired.vservers
    assert (v.name, v.vip, v.port, v.family) == ("v", "192.0.2.1", 80, 4)
    assert [m.service for m in v.active] == ["s1"]
    assert [(m.service, m.mac, m.weight, m.state) for m in v.serving] == [
        ("s1", "02:00:00:00:00:11", 1, "UP"),
        ("s2", "02:00:00:00:00:12", 2, "GOING OUT OF SERVICE"),
    ]
    assert desired.vips == {"192.0.2.1", "192.0.2.2"}
    assert desired.skipped == (("w", "redirection mode m=IP, not MAC"),)
    assert dataplane.desired_state(model, {}).vservers[0].serving == ()  # no MAC, no member


def test_without_mbf_nothing_forwards() -> None:
    desired = dataplane.desired_state(_store(mbf=False), MACS)
    assert desired.vservers == ()
    assert dict(desired.skipped)["v"] == "nsmode MBF is off"


def test_the_ruleset_sends_new_flows_by_weight() -> None:
    script, (chains, sets) = dataplane.render(
        dataplane.desired_state(_store(), MACS), dev="eth0", mac="02:00:00:00:00:01", names=dataplane.Names()
    )
    assert chains == {"v1"} and sets == {"v1s2", "v1s3"}
    assert "ip daddr 192.0.2.1 meta l4proto { tcp, udp } th dport 80 counter jump v1" in script
    assert "mod 3 seed 0xd5 map { 0 : 02:00:00:00:00:11, 1 : 02:00:00:00:00:12, 2 : 02:00:00:00:00:12 }" in script


def test_probes_follow_the_monitor_bindings() -> None:
    model = _store()
    model.execute("POST", "lbmonitor", "add", {"monitorname": "m", "type": "TCP", "interval": 120, "resptimeout": 2,
                                               "destport": 8080, "retries": 2})  # fmt: skip
    model.execute("POST", "service_lbmonitor_binding", "bind", {"name": "s1", "monitor_name": "m"})
    model.execute("POST", "service_lbmonitor_binding", "bind", {"name": "s2", "monitor_name": "m",
                                                                "monstate": "DISABLED"})  # fmt: skip
    specs = dataplane.probe_specs(model)
    assert list(specs) == [("s1", "m")]
    spec = specs[("s1", "m")]
    assert (spec.type, spec.dst_ip, spec.dst_port, spec.interval, spec.timeout, spec.retries) == (
        "TCP", "10.0.0.11", 8080, 120.0, 2.0, 2,
    )  # fmt: skip
