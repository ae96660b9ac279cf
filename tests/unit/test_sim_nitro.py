"""The simulator's NITRO store without HTTP: HA sync documents and the read-only view the dataplane uses."""

from __future__ import annotations

import dataclasses

import pytest

from dsr_operator.simulator import nitro
from dsr_operator.simulator.nitro import queries


def _store_with_server(name: str, ip: str) -> nitro.Store:
    model = nitro.Store()
    model.execute("POST", "server", "add", {"name": name, "ipaddress": ip})
    return model


def test_an_ha_sync_drops_the_addresses_of_the_configuration_it_replaces() -> None:
    secondary = _store_with_server("old", "10.0.0.1")
    secondary.load_config_document(nitro.Store().config_document())  # the primary has no server
    secondary.execute("POST", "server", "add", {"name": "new", "ipaddress": "10.0.0.1"})
    assert list(secondary.objects["server"]) == [("new",)]


def test_an_ha_sync_brings_the_addresses_of_the_configuration_it_takes() -> None:
    primary = _store_with_server("there", "10.0.0.2")
    secondary = _store_with_server("here", "10.0.0.1")
    secondary.load_config_document(primary.config_document())
    with pytest.raises(nitro.NitroError) as refused:
        secondary.execute("POST", "server", "add", {"name": "again", "ipaddress": "10.0.0.2"})
    assert (refused.value.status, refused.value.errorcode) == (409, 1335)
    assert refused.value.message == "Server already exists [there]"


def _dsr_store() -> nitro.Store:
    model = nitro.Store()
    model.execute("POST", "nsmode", "enable", {"mode": ["MBF"]})
    model.execute("POST", "server", "add", {"name": "h1", "ipaddress": "10.0.0.11"})
    model.execute("POST", "service", "add", {"name": "s1", "servername": "h1", "servicetype": "ANY", "port": 80,
                                             "usip": "YES"})  # fmt: skip
    model.execute("POST", "lbvserver", "add", {"name": "v", "servicetype": "ANY", "ipv46": "192.0.2.1", "port": 80,
                                               "m": "MAC", "lbmethod": "ROUNDROBIN"})  # fmt: skip
    model.execute("POST", "lbvserver_service_binding", "bind", {"name": "v", "servicename": "s1", "weight": 3})
    model.execute("POST", "lbmonitor", "add", {"monitorname": "m", "type": "TCP", "interval": 60, "resptimeout": 2})
    model.execute("POST", "service_lbmonitor_binding", "bind", {"name": "s1", "monitor_name": "m"})
    return model


def test_the_config_view_answers_with_frozen_copies() -> None:
    view: queries.ConfigView = _dsr_store()
    assert view.mbf()
    (vserver,) = view.vservers()
    assert vserver == queries.VserverInfo("v", "192.0.2.1", 80, "ANY", "MAC", enabled=True)
    assert view.services() == (queries.ServiceInfo("s1", "10.0.0.11", 80, enabled=True, svrstate="UP"),)
    assert view.service_bindings() == (queries.BindingInfo("v", "s1", 3),)
    (monitor,) = view.monitors()
    assert (monitor.name, monitor.type, monitor.interval, monitor.resptimeout) == ("m", "TCP", 60.0, 2.0)
    assert view.monitor_bindings() == (queries.MonitorBindingInfo("s1", "m", enabled=True),)
    with pytest.raises(dataclasses.FrozenInstanceError):
        vserver.port = 81  # type: ignore[misc]


def test_the_config_view_follows_runtime_state() -> None:
    model = _dsr_store()
    model.set_hosts({"10.0.0.11": "DOWN"})
    assert [s.svrstate for s in model.services()] == ["DOWN"]


def test_a_subscription_sees_each_change_until_it_stops() -> None:
    model = _dsr_store()
    calls: list[None] = []
    stop = model.subscribe(lambda: calls.append(None))
    model.execute("POST", "service", "disable", {"name": "s1"})
    model.set_clients({"s1": 2})
    stop()
    model.execute("POST", "service", "enable", {"name": "s1"})
    assert len(calls) == 2
    stop()  # stopping twice is harmless
