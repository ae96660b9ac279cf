"""HTTP face of the NITRO simulator: routes, auth, envelopes, bulk, persistence, fault injection.

A plain `aiohttp.web.Application` (see `make_app`) serving the NITRO subset of `schema.py` under
`/nitro/v1/config/`, on top of the pure model in the `nitro` package (`nitro.Store`).
`running()` starts one on a real socket for tests, benchmarks and the `demo` command.

NITRO behaviour worth knowing:
* login: `POST /nitro/v1/config/login` → 201, body `sessionid`, `Set-Cookie: NITRO_AUTH_TOKEN=<url-encoded
  token>; path=/nitro/v1`. A `sessionid` cookie is accepted too, and so are `X-NITRO-USER` /
  `X-NITRO-PASS` headers per request (no cookie). Expired or killed token → 401/444; no credentials
  → 401/1027; bad credentials → 401/354. A bulk write (an array body) on an expired or missing
  session is answered HTTP 200 with errorcode 444 (1027), as a real box does.
* bulk: an array under the type key on add, update, bind and actions. Two more URL shapes are those of
  nitro-python (the Java SDK 10.1 sends the same actions in its legacy form dialect) and are what our
  client relies on: bulk delete is `POST /nitro/v1/config/<type>?action=rm` with an array of key
  objects (`lbmonitor` needs `type` too), and bulk unbind is
  `POST /nitro/v1/config/<binding>?action=unbind` with an array of binding objects.
  `X-NITRO-ONERROR: exit|continue|rollback`, or `?onerror=` in the query string as nitro-python sends
  it, or the legacy body `"params": {"onerror": ...}`; default `exit`. Rollback only for add/bind
  (otherwise 599/1242). All items fine → 201 (add/bind) or 200; any failure → 207 with errorcode
  1243 and a per-item `response` list.
* status lines as the appliance sends them: `599 Netscaler specific error`, `207 Multi Status`.
* `//` in a path counts as `/` (`/nitro/v1//config/lbvserver`), as on the appliance's web server.
* statistics: `GET /nitro/v1/stat/lbvserver[/name]`, `/stat/service[/name]`, `/stat/servicegroup[/name]`,
  `/stat/servicegroupmember?args=servicegroupname:G,servername:S,port:P`, `/stat/hanode` with the
  reference's field names (see `stats.py`); packets and flows are counted for real with a dataplane.
* `POST /config/<type>?idempotent=yes` adds, or updates an existing object (200).
* A client that disconnects before its request is read (it timed out, say, under injected latency)
  is not an error: the request is not carried out and only a debug line is logged.
* GET: `args=k:v,...`, `filter=k:v,...` (exact, or `/regex/`), `attrs=a,b`, `count=yes`
  (`{"<type>":[{"__count":N}]}`, N a number), `bulkbindings=yes` for a binding type without a name
  (not together with `filter=`, which the reference never documents: 599/1092).
  `nsmode` and `nsconfig` come back as objects, everything else as arrays; no key when empty.

Simulator control endpoints, outside `/nitro/`, without auth, JSON in and out (400 on bad input):
* `GET /_sim/faults` current settings; `POST /_sim/faults` `{"latencyMs": float, "errorRate": 0..1,
  "errorStatus": int (503), "errorResources": [type, ...], "dropConnections": int, "expireSessions":
  bool, "seed": int}`, all optional, merged into the current settings; `DELETE /_sim/faults` clears
  them. Latency delays every NITRO request; an error-rate hit answers `errorStatus` with a NITRO
  envelope whose errorcode equals the HTTP status (so it never looks like a validation error), only
  for the listed resource types when `errorResources` is not empty; a dropped request has its
  connection closed without a response; `expireSessions` expires all sessions at once.
* `GET /_sim/stats` → `{"requests", "writes", "byMethod", "byResource"}` over NITRO requests since
  start or `POST /_sim/stats/reset`; `writes` counts non-GET requests other than login/logout.
* `GET /_sim/hosts` → `{"down": [ip, ...]}`; `POST /_sim/hosts` `{"<ip>": "UP"|"DOWN", ...}` marks
  backend hosts reachable or not (drives service `svrstate`; every host is reachable by default).
* `GET /_sim/journal[?since=<seq>]` → ordered successful writes
  `[{"seq", "time", "method", "resource", "action", "name", "key", "haState"}]`; `name` is the first
  key field (the vserver of an lbvserver binding), `key` all of them, `haState` what `hanode/0`
  reported when the write ran. The journal lives in memory: a restarted simulator starts a new one.
* `GET /_sim/ha`, `POST /_sim/ha` `{"state": "Primary"|"Secondary"}` sets what `hanode/0` reports
  (on this node only). In an HA pair (`--peer URL`, or `running_pair()` in-process; see `ha.py`) the
  GET also shows the peer and every role `transitions` with the journal's `seq` at that moment;
  `POST /_sim/failover` swaps both nodes' roles now, or with `{"afterWrites": N}` right after this
  node applied N more write requests (before it answers the last one); `POST /_sim/peer/sync` and
  `/_sim/peer/role` are how the two processes talk.
* `GET /_sim/clients` → `{"clients": {service: n}}`; `POST /_sim/clients` `{"<service>": n, ...}` sets
  a service's current client connections (what `/stat/service` shows as `curclntconnections`; a
  graceful disable lasts while they are above 0); a service-group member is named
  `<servicegroup>/<servername>:<port>`. With a dataplane they are its live flows.
* `GET /_sim/dataplane` (only with a dataplane, else 404): the forwarding choices per vserver, the
  learnt backend MACs, the probe verdicts, the nft and interface packet counters, and `history`: the
  last 1,000 applied rulesets as `{"applying", "time", "vservers": {name: {"newFlows", "serving"}}}`:
  the ruleset took effect between `applying` and `time` (wall clock, as the journal's).
* `GET /_sim/config` the persisted document; `POST /_sim/reset` empties the configuration, the
  journal and the host marks (users and sessions stay).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http
import json
import logging
import os
import pathlib
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

import yarl
from aiohttp import web

from dsr_operator.simulator import dataplane as dataplane_
from dsr_operator.simulator import faults as faults_
from dsr_operator.simulator import ha as ha_
from dsr_operator.simulator import nitro, schema, sessions, stats

logger = logging.getLogger(__name__)

STORE = web.AppKey("store", nitro.Store)
SESSIONS = web.AppKey("sessions", sessions.Sessions)
FAULTS = web.AppKey("faults", faults_.Faults)
STATS = web.AppKey("stats", faults_.Stats)

CONFIG_PREFIX = "/nitro/v1/config"
STAT_PREFIX = "/nitro/v1/stat"
ONERROR_HEADER = "X-NITRO-ONERROR"
COOKIE = "NITRO_AUTH_TOKEN"
NITRO_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "text/plain", "")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------- persistence


class Persister:
    """Keeps the store's state in a JSON file: load at start, save after each write and at stop.

    Files are replaced atomically (temp file, fsync, rename); disk I/O runs in a worker thread.
    """

    def __init__(self, path: pathlib.Path, model: nitro.Store) -> None:
        self.path = path
        self.store = model
        self.dirty = False
        self._lock = asyncio.Lock()
        model.listeners.append(self._mark)

    def _mark(self, change: nitro.Change) -> None:
        self.dirty = True

    async def load(self) -> None:
        doc = await asyncio.to_thread(_read_json, self.path)
        if doc is not None:
            self.store.load(doc)
            logger.info("Loaded simulator state from %s", self.path)
        self.dirty = False

    async def save(self, *, force: bool = False) -> None:
        async with self._lock:
            if not (self.dirty or force):
                return
            self.dirty = False
            doc = self.store.dump()
            await asyncio.to_thread(_write_json_atomic, self.path, doc)


PERSISTER: web.AppKey[Persister | None] = web.AppKey("persister")
HA: web.AppKey[ha_.Node | None] = web.AppKey("ha")
DATAPLANE: web.AppKey[dataplane_.Dataplane | None] = web.AppKey("dataplane")


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _write_json_atomic(path: pathlib.Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def _persistence_ctx(app: web.Application) -> AsyncIterator[None]:
    persister = app[PERSISTER]
    if persister is not None:
        await persister.load()
    yield
    if persister is not None:
        await persister.save(force=True)


# ---------------------------------------------------------------------------- helpers


#: Status lines as NetScaler sends them; adc-nitro-go classifies responses by these literal strings.
REASONS: Mapping[int, str] = {207: "Multi Status", 209: "Netscaler specific warning", 599: "Netscaler specific error"}


def _reply(status: int, extra: Mapping[str, Any] | None = None, error: nitro.NitroError | None = None) -> web.Response:
    body: dict[str, Any] = error.body() if error else {"errorcode": 0, "message": "Done", "severity": "NONE"}
    if extra:
        body |= extra
    return web.json_response(body, status=status, reason=REASONS.get(status))


def _resource_of(path: str) -> str:
    if path.startswith(STAT_PREFIX + "/"):
        return "stat/" + (path[len(STAT_PREFIX) :].strip("/").split("/")[0] or "?")
    parts = path[len(CONFIG_PREFIX) :].strip("/").split("/") if path.startswith(CONFIG_PREFIX) else []
    return parts[0] if parts and parts[0] else "?"


def _decode_name(raw: str | None) -> str | None:
    """URL-decode until stable: the official clients encode names twice."""
    if raw is None:
        return None
    for _ in range(3):
        decoded = urllib.parse.unquote(raw)
        if decoded == raw:
            break
        raw = decoded
    return raw


def _pairs(text: str | None, what: str) -> dict[str, str]:
    """Parse NITRO `k:v,k2:v2` query values (values may contain `:`, e.g. IPv6)."""
    out: dict[str, str] = {}
    if not text:
        return out
    for item in text.split(","):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise nitro.invalid_argument(what)
        out[key.strip()] = urllib.parse.unquote(value)
    return out


async def _read_body(request: web.Request) -> dict[str, Any] | None:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        text = raw.decode("utf-8")
        if request.content_type == "application/x-www-form-urlencoded" and not text.lstrip().startswith("{"):
            # The old SDKs post `object=<json>`; curl labels plain JSON as a form, so sniff.
            text = urllib.parse.parse_qs(text).get("object", [""])[0]
        body = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise nitro.NitroError(400, 1233, "Invalid JSON input") from None
    if not isinstance(body, dict):
        raise nitro.NitroError(400, 1234, "Invalid JSON data type")
    return body


def _items(body: dict[str, Any] | None, resource: str) -> Any:
    if body is None or resource not in body:
        raise nitro.argument_missing(resource)
    value = body[resource]
    if not isinstance(value, dict | list):
        raise nitro.NitroError(599, 1234, f"Invalid JSON data type [{resource}]")
    return value


def _onerror(request: web.Request, body: Mapping[str, Any] | None) -> str:
    params = (body or {}).get("params")
    from_body = params.get("onerror") if isinstance(params, dict) else None
    value = request.headers.get(ONERROR_HEADER) or request.query.get("onerror") or from_body or "exit"
    return str(value).lower()


def _token_of(request: web.Request) -> str | None:
    token = request.cookies.get(COOKIE) or request.cookies.get("sessionid")
    if token is None:
        # The Go client sends its token in a request header named Set-Cookie.
        for header in request.headers.getall("Set-Cookie", []):
            name, _, value = header.partition(";")[0].partition("=")
            if name.strip() == COOKIE:
                token = value.strip()
    return urllib.parse.unquote(token) if token else None


def _authenticate(request: web.Request) -> None:
    table = request.app[SESSIONS]
    token = _token_of(request)
    if token is not None:
        try:
            table.touch(token)
        except sessions.SessionExpired:
            raise nitro.NitroError(401, 444, "Session expired or killed. Please login again") from None
        except sessions.NotLoggedIn:
            raise nitro.NitroError(401, 1027, "Not logged in or connection timed out") from None
        return
    user, password = request.headers.get("X-NITRO-USER"), request.headers.get("X-NITRO-PASS")
    if user is not None and password is not None:
        if not table.check_password(user, password):
            raise nitro.NitroError(401, 354, "Invalid username or password")
        return
    raise nitro.NitroError(401, 1027, "Not logged in or connection timed out")


async def _check_session(request: web.Request, resource: str) -> None:
    """Authenticate; a bulk write on an expired or missing session is answered 200, as a real box does.

    nitro-python's newer releases state it: the session error of a bulk request comes back with HTTP
    200 and errorcode 444 (or 1027) in the body, so a client that trusts the status sees success.
    """
    try:
        _authenticate(request)
    except nitro.NitroError as exc:
        if exc.errorcode in (444, 1027) and await _is_bulk(request, resource):
            raise nitro.NitroError(200, exc.errorcode, exc.message) from None
        raise


async def _is_bulk(request: web.Request, resource: str) -> bool:
    if request.method not in ("POST", "PUT"):
        return False
    try:
        body = await _read_body(request)  # aiohttp keeps the bytes: the handler reads them again
    except nitro.NitroError:
        return False
    return isinstance((body or {}).get(resource), list)


# ---------------------------------------------------------------------------- middleware


@web.middleware
async def _collapse_slashes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve `/nitro/v1//config//x` as `/nitro/v1/config/x`: routed again on the collapsed path."""
    if "//" not in request.path:
        return await handler(request)
    path = re.sub("/{2,}", "/", request.path)
    clean = request.clone(rel_url=request.rel_url.with_path(path).with_query(request.rel_url.query))
    match = await request.app.router.resolve(clean)
    match.add_app(request.app)
    match.freeze()
    clean._match_info = match  # what aiohttp's own dispatch sets, see web_app.Application._handle
    return await _nitro_middleware(clean, functools.partial(_ha_middleware, handler=match.handler))


@web.middleware
async def _ha_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """In an HA pair: a write on the primary is propagated before it is answered; one on the
    secondary stays there (209 with warning 1028 when the client asked for warnings)."""
    response = await handler(request)
    node = request.app[HA]
    if node is None or request.method == "GET" or not request.path.startswith("/nitro/"):
        return response
    secondary = node.state == ha_.SECONDARY
    await node.after_write()
    if secondary and request.query.get("warning") == "yes" and response.status in (200, 201):
        response.set_status(209, REASONS[209])
        response.headers["X-NITRO-WARNING"] = ha_.NOT_PRIMARY_WARNING
    return response



@web.middleware
async def _nitro_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/nitro/"):
        return await handler(request)
    app = request.app
    resource = _resource_of(request.path)
    app[STATS].count(request.method, resource, write=request.method != "GET" and resource not in ("login", "logout"))
    fault = app[FAULTS]
    if fault.take_drop():
        logger.debug("NITRO %s %s dropped (fault)", request.method, request.path)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError()
    if fault.latency_ms > 0:
        await asyncio.sleep(fault.latency_ms / 1000)
    if fault.should_fail(resource):
        status = fault.error_status
        logger.debug("NITRO %s %s -> %d (fault)", request.method, request.path, status)
        return _reply(status, error=nitro.NitroError(status, status, _status_reason(status)))
    response: web.StreamResponse
    try:
        if resource != "login":
            await _check_session(request, resource)
        response = await handler(request)
    except nitro.NitroError as exc:
        response = _reply(exc.status, error=exc)
    except web.HTTPException as exc:
        response = _reply(exc.status, error=nitro.NitroError(exc.status, 1240, exc.reason))
    except ConnectionResetError:
        # The client went away (timed out, closed) before its request was read: nothing to answer,
        # nothing done, and no fault of ours. aiohttp drops the reply on the closed connection.
        logger.debug("NITRO %s %s: client disconnected, not carried out", request.method, request.path_qs)
        return web.Response(status=499, reason="Client Closed Request")
    except Exception:
        logger.exception("Simulator failure on %s %s", request.method, request.path)
        response = _reply(500, error=nitro.NitroError(500, 500, "Internal Server Error"))
    logger.debug("NITRO %s %s -> %d", request.method, request.path_qs, response.status)
    return response


def _status_reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ---------------------------------------------------------------------------- NITRO handlers


async def _login(request: web.Request) -> web.StreamResponse:
    body = await _read_body(request)
    login = _items(body, "login")
    if not isinstance(login, dict):
        raise nitro.NitroError(599, 1234, "Invalid JSON data type [login]")
    user, password = login.get("username"), login.get("password")
    for name, value in (("username", user), ("password", password)):
        if not isinstance(value, str):
            raise nitro.argument_missing(name)
    timeout = login.get("timeout")
    if timeout is not None:
        timeout = nitro.coerce("timeout", schema.Field("int", lo=1, hi=2**31), timeout)
    assert isinstance(user, str) and isinstance(password, str)
    token = request.app[SESSIONS].login(user, password, timeout)
    if token is None:
        raise nitro.NitroError(401, 354, "Invalid username or password")
    logger.debug("NITRO login of %s", user)
    response = _reply(201, {"sessionid": token})
    response.headers.add("Set-Cookie", f"{COOKIE}={urllib.parse.quote(token, safe='')}; path=/nitro/v1")
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    token = _token_of(request)
    if token is not None:
        request.app[SESSIONS].logout(token)
    return _reply(200)


async def _get(request: web.Request) -> web.StreamResponse:
    resource = request.match_info["type"]
    name = _decode_name(request.match_info.get("name"))
    query = request.query
    args = _pairs(query.get("args"), "args")
    filters = _pairs(query.get("filter"), "filter")
    model = request.app[STORE]
    if query.get("bulkbindings") == "yes" and "filter" in query:
        # Documented apart (filter for a binding's get-by-name, bulkbindings for its get-all), never
        # together: refused, so that clients stay in the territory real boxes are known to answer.
        raise nitro.NitroError(599, 1092, "Arguments cannot both be specified [bulkbindings, filter]")
    found = model.records(resource, name, args, bulkbindings=query.get("bulkbindings") == "yes")
    if isinstance(found, dict):
        return _reply(200, {resource: found})
    records = nitro.filter_records(found, filters)
    if query.get("attrs"):
        res = schema.RESOURCES.get(resource)
        keys = res.keys if res else ()
        records = nitro.select_attrs(records, query["attrs"].split(","), keys)
    if query.get("count") == "yes":
        return _reply(200, {resource: [{"__count": len(records)}]})
    return _reply(200, {resource: records} if records else None)


async def _post(request: web.Request) -> web.StreamResponse:
    resource = request.match_info["type"]
    res = schema.RESOURCES.get(resource)
    action = request.query.get("action")
    body = await _read_body(request)
    if action is None:
        if res is not None and res.binding:
            op = "bind"
        elif request.query.get("idempotent") == "yes":
            op = "upsert"
        else:
            op = "add"
    else:
        op = {"rm": "delete"}.get(action, action)
    if resource == "nsconfig" and op == "save":
        payload = (body or {}).get("nsconfig", {})
    else:
        payload = _items(body, resource)
    return await _write(request, resource, op, payload, body)


async def _put(request: web.Request) -> web.StreamResponse:
    resource = request.match_info["type"]
    res = schema.RESOURCES.get(resource)
    body = await _read_body(request)
    payload = _items(body, resource)
    name = _decode_name(request.match_info.get("name"))
    if name is not None and res is not None and isinstance(payload, dict):
        payload.setdefault(res.keys[0], name)
    op = "bind" if res is not None and res.binding else "update"
    return await _write(request, resource, op, payload, body)


async def _delete(request: web.Request) -> web.StreamResponse:
    resource = request.match_info["type"]
    res = schema.RESOURCES.get(resource)
    payload: dict[str, Any] = _pairs(request.query.get("args"), "args")
    name = _decode_name(request.match_info.get("name"))
    if name is not None:
        payload[res.keys[0] if res is not None else "name"] = name
    op = "unbind" if res is not None and res.binding else "delete"
    return await _write(request, resource, op, payload, None)


async def _write(
    request: web.Request, resource: str, op: str, payload: Any, body: Mapping[str, Any] | None
) -> web.StreamResponse:
    model = request.app[STORE]
    try:
        if isinstance(payload, list):
            outcome = model.execute_bulk(request.method, resource, op, payload, _onerror(request, body))
            if outcome.ok:
                return _reply(201 if op in ("add", "bind") else 200)
            responses = [
                err.body() if err else {"errorcode": 0, "message": "Done", "severity": "NONE"}
                for err in outcome.results
            ]
            bulk = nitro.NitroError(207, 1243, "Bulk operation failed")
            return _reply(207, {"response": responses}, error=bulk)
        change = model.execute(request.method, resource, op, payload)
        return _reply(201 if change.action in ("add", "bind") else 200)
    finally:
        persister = request.app[PERSISTER]
        if persister is not None:
            await persister.save()


async def _stat(request: web.Request) -> web.StreamResponse:
    resource = request.match_info["type"]
    name = _decode_name(request.match_info.get("name"))
    plane = request.app[DATAPLANE]
    traffic = stats.Traffic()
    if plane is not None:
        try:
            traffic = await plane.traffic()
        except (dataplane_.CommandError, ValueError) as exc:
            logger.warning("Cannot read the dataplane's counters: %s", exc)
    args = _pairs(request.query.get("args"), "args")
    with request.app[STORE].reading():
        found = stats.records(request.app[STORE], resource, name, traffic, ha_since=_ha_since(request.app), args=args)
    if isinstance(found, dict):
        return _reply(200, {resource: found})
    return _reply(200, {resource: found} if found else None)


def _ha_since(app: web.Application) -> float | None:
    node = app[HA]
    return node.since if node is not None else None


async def _unknown(request: web.Request) -> web.StreamResponse:
    raise nitro.NitroError(404, 1240, f"Invalid nitro action or operation [{request.path}]")


# ---------------------------------------------------------------------------- /_sim handlers


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        doc = await request.json() if (await request.read()).strip() else {}
    except json.JSONDecodeError:
        raise ValueError("body is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    return doc


async def _sim_get_faults(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[FAULTS].as_json())


async def _sim_set_faults(request: web.Request) -> web.StreamResponse:
    try:
        expire = request.app[FAULTS].update(await _json_object(request))
    except ValueError as exc:
        return _bad_request(str(exc))
    if expire:
        count = request.app[SESSIONS].expire_all()
        logger.info("Expired %d NITRO sessions on request", count)
    return web.json_response(request.app[FAULTS].as_json())


async def _sim_clear_faults(request: web.Request) -> web.StreamResponse:
    request.app[FAULTS].clear()
    return web.json_response(request.app[FAULTS].as_json())


async def _sim_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATS].as_json())


async def _sim_reset_stats(request: web.Request) -> web.StreamResponse:
    request.app[STATS].reset()
    return web.json_response(request.app[STATS].as_json())


async def _sim_get_hosts(request: web.Request) -> web.StreamResponse:
    return web.json_response({"down": sorted(request.app[STORE].hosts_down)})


async def _sim_set_hosts(request: web.Request) -> web.StreamResponse:
    try:
        request.app[STORE].set_hosts(await _json_object(request))
    except ValueError as exc:
        return _bad_request(str(exc))
    await _persist(request.app)
    return web.json_response({"down": sorted(request.app[STORE].hosts_down)})


async def _sim_journal(request: web.Request) -> web.StreamResponse:
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        return _bad_request("since must be an integer")
    return web.json_response([c.as_json() for c in request.app[STORE].journal if c.seq > since])


async def _sim_get_clients(request: web.Request) -> web.StreamResponse:
    return web.json_response({"clients": request.app[STORE].clients})


async def _sim_set_clients(request: web.Request) -> web.StreamResponse:
    try:
        doc = await _json_object(request)
        for name, count in doc.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"the client count of {name} must be a whole number >= 0")
    except ValueError as exc:
        return _bad_request(str(exc))
    request.app[STORE].set_clients(doc)
    return web.json_response({"clients": request.app[STORE].clients})


async def _sim_get_ha(request: web.Request) -> web.StreamResponse:
    node = request.app[HA]
    return web.json_response(node.as_json() if node is not None else {"state": request.app[STORE].ha_state})


def _node(request: web.Request) -> ha_.Node:
    node = request.app[HA]
    if node is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "not an HA pair (start with --peer)"}),
                               content_type="application/json")
    return node


async def _sim_failover(request: web.Request) -> web.StreamResponse:
    node = _node(request)
    try:
        after = (await _json_object(request)).get("afterWrites")
        if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 1):
            raise ValueError("afterWrites must be a whole number >= 1")
    except ValueError as exc:
        return _bad_request(str(exc))
    if after is None:
        await node.failover()
    else:
        node.failover_after(after)
    await _persist(request.app)
    return web.json_response(node.as_json())


async def _sim_peer_sync(request: web.Request) -> web.StreamResponse:
    try:
        _node(request).receive(await _json_object(request))
    except ValueError as exc:
        return _bad_request(str(exc))
    await _persist(request.app)
    return web.json_response({"synced": True})


async def _sim_peer_role(request: web.Request) -> web.StreamResponse:
    try:
        await _node(request).become(str((await _json_object(request)).get("state")))
    except ValueError as exc:
        return _bad_request(str(exc))
    await _persist(request.app)
    return web.json_response(_node(request).as_json())


async def _sim_set_ha(request: web.Request) -> web.StreamResponse:
    try:
        state = (await _json_object(request)).get("state")
    except ValueError as exc:
        return _bad_request(str(exc))
    if state not in ("Primary", "Secondary", "UNKNOWN"):
        return _bad_request("state must be Primary, Secondary or UNKNOWN")
    node = request.app[HA]
    if node is not None:
        try:
            await node.become(state)  # this node only: the peer is not told (a split brain, on purpose)
        except ValueError as exc:
            return _bad_request(str(exc))
    else:
        request.app[STORE].set_ha_state(state)
    await _persist(request.app)
    return web.json_response({"state": state})


async def _dataplane_ctx(app: web.Application) -> AsyncIterator[None]:
    plane = app[DATAPLANE]
    if plane is not None:
        await plane.start()
    try:
        yield
    finally:
        if plane is not None:
            await plane.stop()


async def _sim_dataplane(request: web.Request) -> web.StreamResponse:
    plane = request.app[DATAPLANE]
    if plane is None:
        return web.json_response({"error": "no dataplane (start with --dataplane-netns)"}, status=404)
    try:
        counters = await plane.counters()
    except (dataplane_.CommandError, ValueError) as exc:
        counters = {"error": str(exc)}
    return web.json_response(plane.describe() | {"counters": counters})


async def _sim_config(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STORE].dump())


async def _sim_reset(request: web.Request) -> web.StreamResponse:
    request.app[STORE].reset()
    await _persist(request.app)
    return web.json_response({"reset": True})


async def _persist(app: web.Application) -> None:
    persister = app[PERSISTER]
    if persister is not None:
        await persister.save()


# ---------------------------------------------------------------------------- assembly


async def _ha_ctx(app: web.Application) -> AsyncIterator[None]:
    node = app[HA]
    if node is not None and node.state == ha_.PRIMARY:
        await node.push()  # a peer that starts later gets the configuration with the next write
    yield
    if node is not None:
        await node.close()


def make_app(
    *,
    users: dict[str, str] | None = None,
    state_path: pathlib.Path | None = None,
    session_timeout: float = sessions.DEFAULT_TIMEOUT,
    dataplane: dataplane_.Dataplane | None = None,
    nsip: str = "127.0.0.1",
    peer: str | None = None,
    ha_state: str = ha_.PRIMARY,
    peer_ip: str | None = None,
) -> web.Application:
    """A NITRO simulator application; `users` maps user names to passwords (default nsroot/nsroot).

    With `dataplane`, the configuration also drives real forwarding and probes (see the `dataplane` package);
    it starts after the persisted state is loaded and stops with the app. With `peer` (the other
    simulator's base URL) it is one node of an HA pair, in role `ha_state` (see `ha.py`); `nsip` is
    the address `hanode` and `nsconfig` show for this node. With `peer_ip` instead, it is one node of a
    pair whose other node is not simulated: `hanode` lists that peer, roles change only by `/_sim/ha`.
    """
    app = web.Application(middlewares=[_collapse_slashes, _nitro_middleware, _ha_middleware])
    model = nitro.Store()
    model.nsip = nsip
    if peer_ip is not None and peer is None:
        model.ha_peer = {"id": "1", "ipaddress": peer_ip}
    app[STORE] = model
    app[SESSIONS] = sessions.Sessions(users, timeout=session_timeout)
    app[FAULTS] = faults_.Faults()
    app[STATS] = faults_.Stats()
    app[PERSISTER] = Persister(state_path, model) if state_path is not None else None
    app.cleanup_ctx.append(_persistence_ctx)
    app[HA] = None
    if peer is not None:
        app[HA] = ha_.Node(model, ha_.RemotePeer(peer), yarl.URL(peer).host or peer, state=ha_state)
    app.cleanup_ctx.append(_ha_ctx)
    app[DATAPLANE] = dataplane
    if dataplane is not None:
        dataplane.attach(model)
        app.cleanup_ctx.append(_dataplane_ctx)

    router = app.router
    router.add_post(f"{CONFIG_PREFIX}/login", _login)
    router.add_post(f"{CONFIG_PREFIX}/logout", _logout)
    for suffix in ("/{type}", "/{type}/{name}"):
        router.add_get(CONFIG_PREFIX + suffix, _get, allow_head=False)
        router.add_put(CONFIG_PREFIX + suffix, _put)
        router.add_delete(CONFIG_PREFIX + suffix, _delete)
    router.add_post(CONFIG_PREFIX + "/{type}", _post)
    router.add_get(STAT_PREFIX + "/{type}", _stat, allow_head=False)
    router.add_get(STAT_PREFIX + "/{type}/{name}", _stat, allow_head=False)
    router.add_route("*", "/nitro/{tail:.*}", _unknown)

    router.add_get("/_sim/faults", _sim_get_faults)
    router.add_post("/_sim/faults", _sim_set_faults)
    router.add_delete("/_sim/faults", _sim_clear_faults)
    router.add_get("/_sim/stats", _sim_stats)
    router.add_post("/_sim/stats/reset", _sim_reset_stats)
    router.add_get("/_sim/hosts", _sim_get_hosts)
    router.add_post("/_sim/hosts", _sim_set_hosts)
    router.add_get("/_sim/journal", _sim_journal)
    router.add_get("/_sim/clients", _sim_get_clients)
    router.add_post("/_sim/clients", _sim_set_clients)
    router.add_get("/_sim/ha", _sim_get_ha)
    router.add_post("/_sim/ha", _sim_set_ha)
    router.add_post("/_sim/failover", _sim_failover)
    router.add_post("/_sim/peer/sync", _sim_peer_sync)
    router.add_post("/_sim/peer/role", _sim_peer_role)
    router.add_get("/_sim/dataplane", _sim_dataplane)
    router.add_get("/_sim/config", _sim_config)
    router.add_post("/_sim/reset", _sim_reset)
    return app


@dataclasses.dataclass
class Simulator:
    """A running simulator: its base URL and its app (`dsr_lab.simctl` adds the `/_sim/` control calls)."""

    url: str
    app: web.Application

    @property
    def store(self) -> nitro.Store:
        return self.app[STORE]


@contextlib.asynccontextmanager
async def running(host: str = "127.0.0.1", port: int = 0, **make_app_kwargs: Any) -> AsyncIterator[Simulator]:
    """Serve a simulator on a real socket for the duration of the block (port 0 = any free port)."""
    async with serving(make_app(**make_app_kwargs), host, port) as sim:
        yield sim


S = TypeVar("S", bound=Simulator)


@dataclasses.dataclass
class Pair(Generic[S]):
    """Two running simulators that form an HA pair: `a` starts as primary, `b` as secondary."""

    a: S
    b: S

    @property
    def nodes(self) -> tuple[S, S]:
        return self.a, self.b

    def primary(self) -> S:
        return next(n for n in self.nodes if n.store.ha_state == ha_.PRIMARY)


@contextlib.asynccontextmanager
async def running_pair(hosts: tuple[str, str] = ("127.0.0.1", "127.0.0.2"), **make_app_kwargs: Any
                       ) -> AsyncIterator[Pair[Simulator]]:
    """An HA pair of simulators in this process, on two loopback addresses (their NSIPs)."""
    apps = [make_app(nsip=host, **make_app_kwargs) for host in hosts]
    first, second = ha_.pair(apps[0][STORE], apps[1][STORE], *hosts)
    apps[0][HA], apps[1][HA] = first, second
    async with serving(apps[0], hosts[0], 0) as a, serving(apps[1], hosts[1], 0) as b:
        yield Pair(a, b)


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Simulator]:
    """Serve a simulator application made by `make_app` on a real socket for the duration of the block."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        bound_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{bound_host}:{bound[1]}"
        yield Simulator(url=url, app=app)
    finally:
        await runner.cleanup()
