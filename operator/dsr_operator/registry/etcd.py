"""An etcd v3 client over etcd's JSON gateway (`/v3/...`, part of every etcd server), with aiohttp.

What the registry needs and no more: range a prefix, watch it from a revision, put and delete a key,
leases (grant, keep alive, revoke), user/password authentication and TLS. Keys and values travel
base64-encoded, as the gateway wants; 64-bit numbers arrive as strings.

Endpoints are tried in order: a request that cannot reach one goes to the next. An expired auth
token (etcd's simple tokens live five minutes by default) is renewed once per request.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from dsr_operator import settings as settings_mod

log = logging.getLogger(__name__)

#: Seconds a unary request may take.
REQUEST_TIMEOUT = 10.0
#: Seconds to connect to an endpoint.
CONNECT_TIMEOUT = 5.0


class EtcdError(Exception):
    """etcd answered with an error, or could not be reached (the message names the endpoint, never secrets)."""


class Unreachable(EtcdError):
    """No endpoint answered."""


class Compacted(EtcdError):
    """A watch asked for revisions etcd has compacted away: read everything again."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"revision compacted (etcd keeps revisions from {revision})")
        self.revision = revision


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int
    lease: int = 0


@dataclasses.dataclass(frozen=True)
class Event:
    """A change of one key: `value` None when the key was deleted (by a client, or its lease expired)."""

    key: str
    value: bytes | None
    revision: int


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def range_end(prefix: str) -> str:
    """The end of the key range of everything starting with `prefix` (etcd's "prefix + 1")."""
    raw = bytearray(prefix.encode())
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return _b64(b"\0")
    raw[-1] += 1
    return _b64(bytes(raw))


def _kv(doc: dict[str, Any]) -> KeyValue:
    return KeyValue(_unb64(doc.get("key")).decode(errors="replace"), _unb64(doc.get("value")),
                    int(doc.get("mod_revision") or 0), int(doc.get("lease") or 0))


class EtcdClient:
    """One etcd cluster (its client URLs); use `async with`, or call `close()`."""

    def __init__(self, endpoints: Sequence[str], *, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None) -> None:
        if not endpoints:
            raise ValueError("etcd needs at least one endpoint URL")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._username = username
        self._password = password
        self._token: str | None = None
        self._ssl: ssl.SSLContext | None = None
        if ca_file or cert_file or any(e.startswith("https:") for e in self.endpoints):
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if cert_file:
                self._ssl.load_cert_chain(cert_file, key_file)
        self._session: aiohttp.ClientSession | None = None
        self._current = 0

    @classmethod
    def of(cls, settings: settings_mod.EtcdSettings) -> EtcdClient:
        present = settings.present
        return cls(settings.endpoints, username=settings.user(), password=settings.secret(),
                   ca_file=present(settings.ca_file), cert_file=present(settings.cert_file),
                   key_file=present(settings.key_file))

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl or False))
        return self._session

    async def _authenticate(self, base: str) -> None:
        if self._username is None:
            return
        async with self._http().post(f"{base}/v3/auth/authenticate",
                                     json={"name": self._username, "password": self._password or ""},
                                     timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as resp:
            doc = await resp.json(content_type=None)
            if resp.status != 200 or "token" not in doc:
                raise EtcdError(f"etcd at {base} refused user {self._username!r}: {doc.get('message', resp.status)}")
            self._token = str(doc["token"])

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _open(self, path: str, body: dict[str, Any], limits: aiohttp.ClientTimeout
                    ) -> tuple[str, aiohttp.ClientResponse]:
        """POST `body` to the first endpoint that answers; (endpoint, response), authenticated."""
        failures: list[str] = []
        for step in range(len(self.endpoints)):
            index = (self._current + step) % len(self.endpoints)
            base = self.endpoints[index]
            try:
                if self._token is None:
                    await self._authenticate(base)
                for attempt in (1, 2):
                    resp = await self._http().post(f"{base}{path}", json=body, headers=self._headers(),
                                                   timeout=limits)
                    if resp.status == 401 and self._username is not None and attempt == 1:
                        resp.release()  # the token expired: once more with a new one
                        await self._authenticate(base)
                        continue
                    self._current = index
                    return base, resp
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                failures.append(f"{base}: {exc or type(exc).__name__}")
        raise Unreachable("no etcd endpoint answered: " + "; ".join(failures))

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        base, resp = await self._open(path, body, aiohttp.ClientTimeout(total=REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT))
        try:
            async with resp:
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unreachable(f"etcd at {base}: {path}: {exc or type(exc).__name__}") from exc
        if resp.status != 200 or not isinstance(doc, dict):
            message = doc.get("message") if isinstance(doc, dict) else doc
            raise EtcdError(f"etcd at {base}: {path}: HTTP {resp.status}: {message}")
        return doc

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """(revision, every key under `prefix`), read at one revision."""
        doc = await self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": range_end(prefix)})
        revision = int((doc.get("header") or {}).get("revision") or 0)
        return revision, [_kv(kv) for kv in doc.get("kvs") or ()]

    async def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        doc = await self._call("/v3/kv/put", body)
        return int((doc.get("header") or {}).get("revision") or 0)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete a key (or everything under it with `prefix`); how many keys went."""
        body = {"key": _b64(key), **({"range_end": range_end(key)} if prefix else {})}
        doc = await self._call("/v3/kv/deleterange", body)
        return int(doc.get("deleted") or 0)

    async def compact(self, revision: int) -> None:
        await self._call("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    async def grant(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; its ID."""
        doc = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(doc["ID"])

    async def keepalive(self, lease: int) -> int:
        """Renew a lease once; the TTL it has again (0: the lease is gone)."""
        doc = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        result = doc.get("result") or {}
        return int(result.get("TTL") or 0)

    async def revoke(self, lease: int) -> None:
        """End a lease now: its keys are deleted at once."""
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[Event]]:
        """The changes under `prefix` from `start_revision` on, one list per etcd watch response (the
        first, empty, says the watch is in place).

        Ends when the stream ends (etcd restarted, the connection broke); raises `Compacted` when
        `start_revision` is no longer kept, `Unreachable` when no endpoint takes the watch.
        """
        create = {"create_request": {"key": _b64(prefix), "range_end": range_end(prefix),
                                     "start_revision": str(start_revision)}}
        streaming = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT)
        base, resp = await self._open("/v3/watch", create, streaming)
        async with resp:
            if resp.status != 200:
                raise EtcdError(f"etcd at {base}: watch {prefix}: HTTP {resp.status}: {await resp.text()}")
            decoder = json.JSONDecoder()
            buffer = ""
            try:
                async for chunk in resp.content.iter_any():
                    buffer += chunk.decode()
                    while True:
                        buffer = buffer.lstrip()
                        if not buffer:
                            break
                        try:
                            doc, end = decoder.raw_decode(buffer)
                        except ValueError:
                            break  # the rest of this response is in the next chunk
                        buffer = buffer[end:]
                        events = self._watch_events(base, prefix, doc)
                        if events is not None:
                            yield events
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.info("Watch of %s on %s ended: %s", prefix, base, exc or type(exc).__name__)

    @staticmethod
    def _watch_events(base: str, prefix: str, doc: Any) -> list[Event] | None:
        """The events of one watch response: [] when the watch was created, None for anything else."""
        if not isinstance(doc, dict):
            return None
        if "error" in doc:
            error = doc["error"]
            raise EtcdError(f"etcd at {base}: watch {prefix}: {error.get('message', error)}")
        result = doc.get("result") or {}
        compacted = int(result.get("compact_revision") or 0)
        if compacted:
            raise Compacted(compacted)
        if result.get("canceled"):
            raise EtcdError(f"etcd at {base}: watch {prefix} canceled: {result.get('cancel_reason', '')}")
        if result.get("created"):
            return []
        events = []
        for event in result.get("events") or ():
            kv = _kv(event.get("kv") or {})
            deleted = event.get("type") == "DELETE"
            events.append(Event(kv.key, None if deleted else kv.value, kv.mod_revision))
        return events or None
