"""The registry source against a real etcd: reads, watches, leases, a broken watch, a compaction."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from dsr_operator.registry import etcd, source
from tests.registry.conftest import Certificates, Etcd, Link
from tests.support.waiting import eventually

PREFIX = "/skydns/local/shop/web/"


def record(host: str, **fields: object) -> str:
    return json.dumps({"host": host, "port": 80, **fields})


def hosts(registry: source.Registry) -> dict[str, str | None]:
    view = registry.view(PREFIX)
    return {} if view is None else {k: r.host for k, r in view.records.items()}


async def test_the_client_reads_puts_deletes_and_ranges_only_the_prefix(etcd_server: Etcd) -> None:
    async with etcd_server.client() as client:
        await client.put(PREFIX + "a", record("198.51.100.21"))
        await client.put("/skydns/local/shop/web2/b", record("198.51.100.22"))  # a neighbour prefix
        revision, kvs = await client.range_prefix(PREFIX)
        assert [kv.key for kv in kvs] == [PREFIX + "a"]
        assert json.loads(kvs[0].value)["host"] == "198.51.100.21"
        assert revision >= kvs[0].mod_revision
        assert await client.delete(PREFIX, prefix=True) == 1
        assert (await client.range_prefix(PREFIX))[1] == []


async def test_a_lease_keeps_a_key_while_it_is_renewed_and_revoking_it_deletes_it(etcd_server: Etcd) -> None:
    async with etcd_server.client() as client:
        lease = await client.grant(5)
        await client.put(PREFIX + "a", record("198.51.100.21"), lease=lease)
        assert await client.keepalive(lease) == 5
        await client.revoke(lease)
        assert (await client.range_prefix(PREFIX))[1] == []
        assert await client.keepalive(lease) == 0  # a gone lease renews to nothing


async def test_the_source_follows_puts_deletes_and_lease_expiry(etcd_server: Etcd) -> None:
    changes: list[str] = []
    async with etcd_server.client() as writer:
        await writer.put(PREFIX + "a", record("198.51.100.21"))
        registry = source.Registry(etcd_server.client(), changes.append)
        try:
            registry.want([PREFIX])
            await eventually(lambda: hosts(registry) == {PREFIX + "a": "198.51.100.21"}, what="the first read")
            lease = await writer.grant(2)
            await writer.put(PREFIX + "b", record("198.51.100.22"), lease=lease)
            await writer.put(PREFIX + "c", "not json")
            await eventually(lambda: len(hosts(registry)) == 3, what="two more keys")
            view = registry.view(PREFIX)
            assert view is not None and view.records[PREFIX + "c"].error == "is not JSON"
            await writer.delete(PREFIX + "a")
            # The lease is never renewed: etcd deletes b when it expires (a crashed host).
            await eventually(lambda: hosts(registry) == {PREFIX + "c": None}, what="a deleted and b expired",
                             timeout=60)
            assert registry.reads(PREFIX) == 1  # watched, not read again
            assert changes and set(changes) == {PREFIX}
        finally:
            await registry.close()


async def test_a_broken_watch_keeps_the_last_records_then_resumes_without_losing_a_change(
        etcd_server: Etcd) -> None:
    registry = source.Registry(etcd_server.client(), lambda prefix: None, retry_max=0.5)
    try:
        async with etcd_server.client() as writer:
            await writer.put(PREFIX + "a", record("198.51.100.21"))
        registry.want([PREFIX])
        await eventually(lambda: bool(hosts(registry)), what="the first read")
        etcd_server.stop()
        await eventually(lambda: registry.error(PREFIX) is not None, what="the watch to break")
        view = registry.view(PREFIX)
        assert view is not None and view.error and view.since is not None
        assert hosts(registry) == {PREFIX + "a": "198.51.100.21"}  # the last good records stay
        etcd_server.start()
        async with etcd_server.client() as writer:
            await writer.put(PREFIX + "b", record("198.51.100.22"))
        await eventually(lambda: len(hosts(registry)) == 2 and registry.error(PREFIX) is None, what="the resumed watch")
        assert registry.reads(PREFIX) == 1  # resumed from its revision, not read again
    finally:
        await registry.close()


async def test_a_watch_behind_a_compaction_reads_everything_again(etcd_server: Etcd) -> None:
    async with Link(etcd_server.port) as link, etcd_server.client() as writer:
        registry = source.Registry(etcd.EtcdClient([link.url]), lambda prefix: None, retry_max=0.2)
        try:
            await writer.put(PREFIX + "a", record("198.51.100.21"))
            registry.want([PREFIX])
            await eventually(lambda: bool(hosts(registry)), what="the first read")
            link.cut()
            await eventually(lambda: registry.error(PREFIX) is not None, what="the watch to break")
            # While the follower is cut off: a change, then a compaction past it.
            await writer.delete(PREFIX + "a")
            revision = await writer.put(PREFIX + "b", record("198.51.100.22"))
            await writer.put("/elsewhere", "x")
            await writer.compact(revision + 1)
            link.heal()
            await eventually(lambda: hosts(registry) == {PREFIX + "b": "198.51.100.22"}, what="the full re-read")
            assert registry.reads(PREFIX) == 2
            assert registry.error(PREFIX) is None
        finally:
            await registry.close()


async def test_a_prefix_no_one_wants_is_no_longer_followed(etcd_server: Etcd) -> None:
    registry = source.Registry(etcd_server.client(), lambda prefix: None)
    try:
        registry.want([PREFIX])
        await eventually(lambda: registry.view(PREFIX) is not None, what="the first read")
        registry.want([])
        assert registry.view(PREFIX) is None
    finally:
        await registry.close()


async def test_an_unreachable_etcd_is_an_error_not_an_empty_prefix() -> None:
    registry = source.Registry(etcd.EtcdClient(["http://127.0.0.1:9"]), lambda prefix: None, retry_max=0.2)
    try:
        registry.want([PREFIX])
        await eventually(lambda: registry.error(PREFIX) is not None, what="the error")
        assert registry.view(PREFIX) is None
        assert "no etcd endpoint answered" in (registry.error(PREFIX) or "")
    finally:
        await registry.close()


@pytest.mark.parametrize("count", [5000])
async def test_a_prefix_with_thousands_of_keys_is_read_in_one_go(etcd_server: Etcd, count: int) -> None:
    async with etcd_server.client() as writer:
        await asyncio.gather(*(writer.put(f"{PREFIX}h{i:05d}", record(f"10.{i // 250}.{i % 250}.1"))
                               for i in range(count)))
    registry = source.Registry(etcd_server.client(), lambda prefix: None)
    try:
        registry.want([PREFIX])
        await eventually(lambda: len(hosts(registry)) == count, what=f"{count} keys", timeout=120)
    finally:
        await registry.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the TLS test makes its certificates with openssl")
async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    certs = Certificates.make(tmp_path / "pki")
    server = Etcd(tmp_path, tls=certs)
    server.start()
    try:
        trusted = etcd.EtcdClient([server.url], ca_file=str(certs.ca), cert_file=str(certs.client_cert),
                                  key_file=str(certs.client_key))
        async with trusted:
            await trusted.put(PREFIX + "a", record("198.51.100.21"))
            assert [kv.key for kv in (await trusted.range_prefix(PREFIX))[1]] == [PREFIX + "a"]
        # Without the client certificate, or without trusting the CA: refused, and said so.
        for client in (etcd.EtcdClient([server.url], ca_file=str(certs.ca)), etcd.EtcdClient([server.url])):
            async with client:
                with pytest.raises(etcd.Unreachable, match="no etcd endpoint answered"):
                    await client.range_prefix(PREFIX)
    finally:
        server.stop()
