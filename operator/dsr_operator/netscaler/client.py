"""Async NITRO client: one aiohttp session per NetScaler, typed errors, bulk verbs with per-item results.

Usage::

    async with client.NitroClient("https://10.0.0.5", username="nsroot", password=pw) as ns:
        vservers = await ns.get("lbvserver", filter={"name": "/^dsr-/"})
        results = await ns.add("server", [{"name": "web-1", "ipaddress": "198.51.100.21"}])

One private method, ``NitroClient._request``, owns every HTTP exchange: login and logout go through
it, it re-logs in once when the session expired (errorcode 444 or 1027, whatever the HTTP status: a
bulk request on an expired session is answered 200 with errorcode 444) and repeats the request once,
it bounds concurrency with a semaphore, and it retries with full-jitter exponential backoff only on
transient faults (connection errors, timeouts, HTTP 5xx other than 599). 4xx and 599 (NetScaler's
validation errors) are never retried. A write repeated after a dropped connection may already have
been applied by the box; its per-item result then says "already exists" (or "not found" for a
delete), which callers of idempotent plans treat as done.

The password is held in a ``Secret`` that never renders, and is scrubbed from error messages; login
bodies are never logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import aiohttp
import yarl

from dsr_operator.netscaler import errors

logger = logging.getLogger(__name__)

#: Default timeouts: 5 s to connect, 30 s for a whole request (one attempt).
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=5.0)

#: errorcodes after which the client logs in again and repeats the request once.
RELOGIN_ERRORCODES = frozenset({444, 1027})

#: Name of the session cookie set by a successful login.
AUTH_COOKIE = "NITRO_AUTH_TOKEN"

OnError = Literal["continue", "exit"]

#: Called once per HTTP exchange: (method, rtype, HTTP status or 0, errorcode, seconds).
RequestHook = Callable[[str, str, int, int, float], None]

#: Builds the aiohttp session; called with keyword arguments ``connector``, ``timeout``,
#: ``cookie_jar``, ``headers`` and ``raise_for_status`` that should be passed on to
#: ``aiohttp.ClientSession`` (a factory may add its own, such as ``trace_configs``).
SessionFactory = Callable[..., aiohttp.ClientSession]


def as_int(value: Any) -> int:
    """Coerce a NITRO numeric value (``80``, ``"536936451"``, ``"1.0"``) to ``int``.

    NITRO sends many numbers as strings; the client returns raw values and callers coerce what
    they use. ``None`` or an empty value is a ``ValueError``.
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return int(float(text))
    raise ValueError(f"not a NITRO number: {value!r}")


class Secret:
    """A string that does not render: ``repr`` and ``str`` give ``***``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return errors.REDACTED


class State(enum.Enum):
    """Lifecycle of a client: opened once, closed once, never reused."""

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


@dataclasses.dataclass
class ClientStats:
    """Counters of one client, for benchmarks and debugging.

    ``requests`` counts every HTTP request sent (login, logout, retries and the repeat after a
    re-login included); ``retries`` counts the backoff retries; ``relogins`` the logins after an
    expired session; ``errors_by_code`` counts the NITRO errorcode of every error response (each
    attempt; 0 when the body had none) and of every failed item inside a bulk (207) response.
    """

    requests: int = 0
    retries: int = 0
    relogins: int = 0
    errors_by_code: dict[int, int] = dataclasses.field(default_factory=dict)

    def count_error(self, errorcode: int) -> None:
        self.errors_by_code[errorcode] = self.errors_by_code.get(errorcode, 0) + 1


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """The outcome of one object of a bulk request.

    ``object`` is what was sent. ``ok`` is true when the device applied it. A failed item carries
    its typed ``error``; an item after the failing one of an ``onerror="exit"`` request was never
    attempted: ``ok=False``, ``error=None``, ``attempted=False``.
    """

    index: int
    object: Mapping[str, Any]
    ok: bool
    error: errors.NitroApiError | None = None
    attempted: bool = True


@dataclasses.dataclass(frozen=True)
class _Response:
    status: int
    body: dict[str, Any]  # {} when the body is empty or not a JSON object
    raw: bytes
    token: str | None = None


class NitroClient:
    """An async client of one NetScaler's NITRO API; use it as ``async with NitroClient(...) as ns``.

    Timeouts apply per attempt; ``retries`` is the number of retries after the first attempt of a
    request that failed transiently; backoff before retry n is uniform in
    ``[0, min(backoff_max, backoff_base * 2**(n-1))]`` seconds. At most ``max_concurrency`` requests
    are in flight at once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        username: str,
        password: str,
        verify_tls: bool = True,
        ca_file: str | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        max_concurrency: int = 8,
        retries: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        session_factory: SessionFactory | None = None,
        on_request: RequestHook | None = None,
    ) -> None:
        url = yarl.URL(base_url)
        if not url.is_absolute() or url.scheme not in ("http", "https"):
            raise ValueError("base_url must be an absolute http(s) URL")
        if url.user is not None or url.password is not None:
            raise ValueError("base_url must not carry credentials; pass username and password")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.base_url = url.with_path(url.path.rstrip("/")).with_query(None).with_fragment(None)
        self.username = username
        self._password = Secret(password)
        self.verify_tls = verify_tls
        self.ca_file = ca_file
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.on_request = on_request
        self.stats = ClientStats()
        self._session_factory: SessionFactory = session_factory or aiohttp.ClientSession
        self._state = State.UNOPENED
        self._session: aiohttp.ClientSession | None = None
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._login_lock = asyncio.Lock()
        self._token: str | None = None
        self._token_generation = 0

    def __repr__(self) -> str:
        return f"<NitroClient {self.base_url} user={self.username!r} {self._state.value}>"

    @property
    def state(self) -> State:
        return self._state

    # Lifecycle

    async def __aenter__(self) -> NitroClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the session (TLS context built once, here) and log in."""
        if self._state is not State.UNOPENED:
            raise RuntimeError(f"NitroClient cannot be opened: it is {self._state.value}")
        self._state = State.OPENED
        try:
            ssl_option: ssl.SSLContext | bool = False
            if self.base_url.scheme == "https" and self.verify_tls:
                ssl_option = await asyncio.to_thread(ssl.create_default_context, cafile=self.ca_file)
            connector = aiohttp.TCPConnector(ssl=ssl_option, limit=self.max_concurrency)
            self._session = self._session_factory(
                connector=connector,
                timeout=self.timeout,
                cookie_jar=aiohttp.DummyCookieJar(),  # the token is sent explicitly, see _send
                headers={"Accept": "application/json"},
                raise_for_status=False,
            )
            await self._login()
        except BaseException:
            await self._shutdown()
            raise

    async def close(self) -> None:
        """Log out (always attempted, failures logged) and close the session; idempotent."""
        if self._state is State.CLOSED:
            return
        if self._state is State.UNOPENED:
            self._state = State.CLOSED
            return
        try:
            if self._token is not None:
                await self._request("POST", "logout", payload={"logout": {}}, relogin=False, retry=False)
        except errors.NitroError as exc:
            logger.warning("Logout from %s failed: %s", self.base_url, exc)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        self._state = State.CLOSED
        self._token = None
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # Reading

    async def get(
        self,
        rtype: str,
        name: str | None = None,
        *,
        filter: Mapping[str, str] | None = None,
        attrs: Sequence[str] | None = None,
        args: Mapping[str, str] | None = None,
        bulkbindings: bool = False,
    ) -> list[dict[str, Any]]:
        """Objects of ``rtype`` (one named object, or those matching ``filter``/``args``); raw values.

        An empty result is ``[]``; a singleton resource (``nsmode``) comes back as ``[object]``.
        A missing named object raises ``NitroNotFound``.
        """
        params: dict[str, str] = {}
        if filter:
            params["filter"] = _pairs(filter)
        if args:
            params["args"] = _pairs(args)
        if attrs:
            params["attrs"] = ",".join(attrs)
        if bulkbindings:
            params["bulkbindings"] = "yes"
        response = await self._request("GET", rtype, name=name, params=params)
        return _records(response.body, rtype)

    async def stat(
        self, rtype: str, name: str | None = None, *, args: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Statistics of ``rtype`` (``service``, ``lbvserver``, ``hanode`` …): ``GET /stat/<rtype>[/<name>]``;
        ``args`` name a ``servicegroupmember`` (``servicegroupname``, ``servername``, ``port``).

        Counters come as NITRO sends them (mostly numeric strings: use ``as_int``).
        """
        params = {"args": _pairs(args)} if args else None
        response = await self._request("GET", rtype, name=name, api="stat", params=params)
        return _records(response.body, rtype)

    async def get_modes(self) -> dict[str, Any]:
        """The ``nsmode`` record: ``mode`` (enabled names) and booleans such as ``mbf``."""
        records = await self.get("nsmode")
        return records[0] if records else {}

    async def ha_state(self) -> str:
        """This node's HA state: ``Primary``, ``Secondary``, ``UNKNOWN`` …"""
        records = await self.get("hanode", "0")
        return str(records[0].get("state", "UNKNOWN")) if records else "UNKNOWN"

    async def config_changed(self) -> bool:
        """Whether the running configuration has unsaved changes."""
        records = await self.get("nsconfig")
        value = records[0].get("configchanged", False) if records else False
        if isinstance(value, str):
            return value.strip().lower() in ("true", "yes", "1")
        return bool(value)

    # Writing (bulk shape always; a list of one is a bulk of one)

    async def add(
        self, rtype: str, objects: Sequence[Mapping[str, Any]], *, onerror: OnError = "continue"
    ) -> list[ItemResult]:
        """Create objects: ``POST /config/<rtype>``."""
        return await self._bulk("POST", rtype, objects, onerror=onerror)

    async def update(
        self, rtype: str, objects: Sequence[Mapping[str, Any]], *, onerror: OnError = "continue"
    ) -> list[ItemResult]:
        """Change objects (each carries its key): ``PUT /config/<rtype>``."""
        return await self._bulk("PUT", rtype, objects, onerror=onerror)

    async def delete(
        self, rtype: str, keys: Sequence[Mapping[str, Any]], *, onerror: OnError = "continue"
    ) -> list[ItemResult]:
        """Remove objects by key: ``POST /config/<rtype>?action=rm`` with an array body."""
        return await self._bulk("POST", rtype, keys, action="rm", onerror=onerror)

    async def bind(
        self, binding_type: str, objects: Sequence[Mapping[str, Any]], *, onerror: OnError = "continue"
    ) -> list[ItemResult]:
        """Create bindings: ``PUT /config/<binding_type>``."""
        return await self._bulk("PUT", binding_type, objects, onerror=onerror)

    async def unbind(
        self, binding_type: str, objects: Sequence[Mapping[str, Any]], *, onerror: OnError = "continue"
    ) -> list[ItemResult]:
        """Remove bindings: ``POST /config/<binding_type>?action=unbind`` with an array body."""
        return await self._bulk("POST", binding_type, objects, action="unbind", onerror=onerror)

    async def action(
        self,
        rtype: str,
        action: str,
        objects: Sequence[Mapping[str, Any]],
        *,
        onerror: OnError = "continue",
    ) -> list[ItemResult]:
        """Run an action (``enable``, ``disable``, ``rename`` …): ``POST /config/<rtype>?action=<action>``."""
        return await self._bulk("POST", rtype, objects, action=action, onerror=onerror)

    async def enable_modes(self, modes: Sequence[str]) -> None:
        """Enable global modes, e.g. ``["MBF"]``: ``POST /config/nsmode?action=enable``."""
        await self._request("POST", "nsmode", params={"action": "enable"}, payload={"nsmode": {"mode": list(modes)}})

    async def save_config(self) -> None:
        """Save the running configuration: ``POST /config/nsconfig?action=save``."""
        await self._request("POST", "nsconfig", params={"action": "save"}, payload={"nsconfig": {}})

    async def _bulk(
        self,
        method: str,
        rtype: str,
        objects: Sequence[Mapping[str, Any]],
        *,
        action: str | None = None,
        onerror: OnError,
    ) -> list[ItemResult]:
        if onerror not in ("continue", "exit"):
            raise ValueError(f"onerror must be 'continue' or 'exit', not {onerror!r}")
        items = list(objects)
        if not items:
            return []
        response = await self._request(
            method,
            rtype,
            params={"action": action} if action else None,
            payload={rtype: items},
            headers={"X-NITRO-ONERROR": onerror},
        )
        if response.status != 207:
            return [ItemResult(index, item, ok=True) for index, item in enumerate(items)]
        per_item = response.body.get("response")
        if not isinstance(per_item, list):
            raise errors.error_from_response(response.status, response.body)
        results: list[ItemResult] = []
        for index, item in enumerate(items):
            if index >= len(per_item):
                results.append(ItemResult(index, item, ok=False, error=None, attempted=False))
                continue
            entry = per_item[index] if isinstance(per_item[index], Mapping) else {}
            errorcode = errors.parse_errorcode(entry.get("errorcode"))
            if errorcode == 0:
                results.append(ItemResult(index, item, ok=True))
                continue
            error = errors.error_from_response(response.status, entry or None, redact=(self._password.reveal(),))
            self.stats.count_error(error.errorcode)
            results.append(ItemResult(index, item, ok=False, error=error))
        return results

    # The one request path

    async def _login(self) -> None:
        payload = {"login": {"username": self.username, "password": self._password.reveal()}}
        response = await self._request("POST", "login", payload=payload, authenticated=False)
        if not response.token:
            raise errors.NitroServerError(response.status, 0, "Login response carried no session token")
        self._token = response.token
        self._token_generation += 1

    async def _relogin(self, seen_generation: int) -> None:
        async with self._login_lock:
            if self._token_generation == seen_generation:  # nobody else has logged in meanwhile
                logger.info("Session on %s expired; logging in again", self.base_url)
                self.stats.relogins += 1
                await self._login()

    async def _request(
        self,
        method: str,
        rtype: str,
        *,
        name: str | None = None,
        params: Mapping[str, str] | None = None,
        payload: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        authenticated: bool = True,
        relogin: bool = True,
        retry: bool = True,
        api: str = "config",
    ) -> _Response:
        """Send one NITRO request; return a success (2xx, 207 included) or raise a typed error.

        A 2xx body with a non-zero top-level errorcode (other than the 207 bulk envelope) is an error.
        """
        if self._state is not State.OPENED or self._session is None:
            raise RuntimeError(f"NitroClient is {self._state.value}; use it inside `async with`")
        url = self._url(rtype, name, params, api)
        attempts = 1 + (self.retries if retry else 0)
        attempt = 0
        relogged = False
        while True:
            attempt += 1
            generation = self._token_generation
            try:
                response = await self._send(method, rtype, url, payload, headers, authenticated)
            except aiohttp.ClientSSLError as exc:  # a certificate problem does not heal by retrying
                raise errors.NitroTransportError(f"{method} {rtype}: {_describe(exc)}") from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if attempt < attempts:
                    await self._backoff(method, rtype, attempt, attempts, _describe(exc))
                    continue
                logger.warning(
                    "Request %s %s failed: %s (attempt %d/%d)",
                    method,
                    rtype,
                    _describe(exc),
                    attempt,
                    attempts,
                )
                if isinstance(exc, TimeoutError):
                    raise errors.NitroTimeoutError(f"{method} {rtype}: timed out") from exc
                raise errors.NitroTransportError(f"{method} {rtype}: {_describe(exc)}") from exc

            status, errorcode = response.status, _errorcode(response.body)
            if status < 400 and (response.body or not response.raw.strip()) and not _failed(response):
                return response
            self.stats.count_error(errorcode)
            if status >= 500 and status != errors.NETSCALER_ERROR_STATUS and attempt < attempts:
                await self._backoff(method, rtype, attempt, attempts, f"HTTP {status}")
                continue
            if authenticated and relogin and not relogged and errorcode in RELOGIN_ERRORCODES:
                relogged = True
                await self._relogin(generation)
                attempt -= 1  # the repeat after a re-login is not a backoff retry
                continue
            error = errors.error_from_response(status, response.body or response.raw, redact=(self._password.reveal(),))
            logger.debug("Request %s %s failed: %s (attempt %d/%d)", method, rtype, error, attempt, attempts)
            raise error

    async def _send(
        self,
        method: str,
        rtype: str,
        url: yarl.URL,
        payload: Mapping[str, Any] | None,
        extra_headers: Mapping[str, str] | None,
        authenticated: bool,
    ) -> _Response:
        assert self._session is not None
        headers = dict(extra_headers or {})
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if authenticated:
            if self._token is None:
                raise errors.NitroSessionExpired(0, 0, "Not logged in", "ERROR")
            headers["Cookie"] = f"{AUTH_COOKIE}={self._token}"
        data = json.dumps(payload).encode() if payload is not None else None
        async with self._semaphore:
            self.stats.requests += 1
            started = time.monotonic()
            try:
                async with self._session.request(method, url, data=data, headers=headers) as resp:
                    raw = await resp.read()
                    morsel = resp.cookies.get(AUTH_COOKIE)
            except BaseException:
                self._notify(method, rtype, 0, 0, time.monotonic() - started)
                raise
            elapsed = time.monotonic() - started
        body = _parse(raw)
        errorcode = _errorcode(body)
        self._notify(method, rtype, resp.status, errorcode, elapsed)
        logger.debug(
            "Request %s %s answered HTTP %d errorcode %d in %.3f s",
            method,
            rtype,
            resp.status,
            errorcode,
            elapsed,
        )
        token = morsel.value if morsel is not None and morsel.value else None
        if token is None and isinstance(body.get("sessionid"), str) and body["sessionid"]:
            token = urllib.parse.quote(body["sessionid"], safe="")
        return _Response(resp.status, body, raw, token)

    async def _backoff(self, method: str, rtype: str, attempt: int, attempts: int, reason: str) -> None:
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        delay = random.uniform(0.0, ceiling)
        self.stats.retries += 1
        logger.warning(
            "Request %s %s failed: %s; retrying in %.2f s (attempt %d/%d)",
            method,
            rtype,
            reason,
            delay,
            attempt,
            attempts,
        )
        await asyncio.sleep(delay)

    def _notify(self, method: str, rtype: str, status: int, errorcode: int, seconds: float) -> None:
        if self.on_request is None:
            return
        try:
            self.on_request(method, rtype, status, errorcode, seconds)
        except Exception:
            logger.exception("The on_request hook failed")

    def _url(self, rtype: str, name: str | None, params: Mapping[str, str] | None, api: str = "config") -> yarl.URL:
        url = f"{self.base_url}/nitro/v1/{api}/{_quote(rtype)}"
        if name is not None:
            url += "/" + _quote(_quote(name))  # double-encoded, as NetScaler's own clients do
        if params:
            url += "?" + urllib.parse.urlencode(dict(params), safe=":,", quote_via=urllib.parse.quote)
        return yarl.URL(url, encoded=True)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _pairs(mapping: Mapping[str, str]) -> str:
    """``key:value`` pairs joined by commas, as NITRO's ``filter=`` and ``args=`` take them."""
    return ",".join(f"{key}:{_flag(value)}" for key, value in mapping.items())


def _flag(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _errorcode(body: Mapping[str, Any]) -> int:
    code = errors.parse_errorcode(body.get("errorcode"))
    return code if code is not None else 0


def _failed(response: _Response) -> bool:
    """A 2xx answer whose body says the request failed.

    A real box answers a bulk request made on an expired session with HTTP 200 and errorcode 444
    (or 1027) in the body: judged by the status alone, every item would look applied. 207 is the
    bulk envelope (errorcode 1243 with a per-item ``response`` list); warnings are not failures.
    """
    if _errorcode(response.body) == 0:
        return False
    if response.status == 207 and isinstance(response.body.get("response"), list):
        return False
    return str(response.body.get("severity", "ERROR")).upper() != "WARNING"


def _records(body: Mapping[str, Any], rtype: str) -> list[dict[str, Any]]:
    value = body.get(rtype)
    if value is None:
        return []
    if isinstance(value, Mapping):
        return [dict(value)]
    if isinstance(value, list):
        return [dict(item) for item in value if isinstance(item, Mapping)]
    raise errors.NitroServerError(200, 0, f"Unexpected {rtype!r} value in response: {str(value)[:80]}")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
