"""The simulator's NITRO store without HTTP."""

from __future__ import annotations

import pytest

from dsr_operator.simulator import nitro


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
