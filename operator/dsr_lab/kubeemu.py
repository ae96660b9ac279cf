"""A small in-memory Kubernetes API for the demo and the tests: kmock's emulator with API-server rules.

Used by `dsr-operator demo-dsr` (the operator and the node agents run against it) and by the test
tiers (`tests/conftest.py`'s `kube` fixture). It needs the `kmock` package, which is installed with
the project's `[test]` extra (`make setup`, or `pip install kmock`); importing this module without it
raises an ImportError that says so. Nothing in the operator, the agent or the simulator imports it.

`serve()` runs one on a real socket with `RESOURCES` registered for discovery and yields
`(emulator, url)`.

kmock's `KubernetesEmulator` stores objects as plain JSON and merges every write into them. Our
operator and agent depend on a few more rules of a real kube-apiserver, which `KubeEmulator` adds:

- `metadata.uid`, `creationTimestamp`, `resourceVersion` (a global counter, bumped on each write)
  and `generation` (1 on create, +1 whenever anything but `metadata` and `status` changes);
  `generateName` on create (kopf posts Events that way);
- status subresource: for resources registered with `status=True`, a PATCH/PUT to `.../status`
  changes only `status`, and writes to the main resource (create included) ignore `status`;
- PUT (replace) on the main resource and on `.../status`, with the resourceVersion precondition
  (409 Conflict on mismatch), also honoured by a PATCH whose body names a resourceVersion;
- patches: JSON merge patch (RFC 7386: `null` deletes a key, lists replace) for merge, strategic
  and apply content types (strategic-merge list semantics are NOT emulated), JSON patch for lists
  (a failed `test` operation answers 422, as kopf's optimistic finalizer writes expect);
- the Namespace resource itself at `/api/v1/namespaces[/NAME]` (kmock reads it as a namespace path);
- `fieldSelector` (`metadata.name`, `metadata.namespace`, `=`/`==`/`!=`) and equality-based
  `labelSelector` on list and watch; `resourceVersion` on watch (only objects changed after it are
  replayed) and `timeoutSeconds` (the stream ends, as a real server does).

Everything else (reactions with `kmock[...] << ...`, `kmock.objects`, request assertions) works
as in kmock. Deletions between a list and a watch are not replayed (no event history is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import attrs

try:
    import jsonpatch  # kmock's own JSON patch library
    import kmock
    from kmock._internal import apps, dicts, parsing, rendering
except ImportError as exc:  # kmock comes with the lab extra, never with the product
    raise ImportError(
        "dsr_lab.kubeemu (the in-memory Kubernetes API of demo-dsr and the tests) needs the kmock "
        "package: pip install 'dsr-operator[lab]', or `make setup`"
    ) from exc

from dsr_operator import clock
from dsr_operator.api import models

RESOURCES: tuple[tuple[str, str, bool, bool], ...] = (
    # (group/version/plural, kind, namespaced, status subresource)
    (f"{models.GROUP}/{models.VERSION}/{models.SERVICE_PLURAL}", models.SERVICE_KIND, True, True),
    (f"{models.GROUP}/{models.VERSION}/{models.NODECONFIG_PLURAL}", models.NODECONFIG_KIND, False, True),
    (f"{models.GROUP}/{models.VERSION}/dsrvippools", "DsrVipPool", False, True),
    ("v1/nodes", "Node", False, True),
    ("v1/services", "Service", True, True),
    ("v1/namespaces", "Namespace", False, True),
    ("v1/events", "Event", True, False),
    ("discovery.k8s.io/v1/endpointslices", "EndpointSlice", True, False),
)
"""What `serve()` registers for discovery: what the operator and the agent read and write."""

_SELECTOR_TERM = re.compile(r"^\s*([^!=\s]+)\s*(==|=|!=)\s*([^\s]*)\s*$")


class KubernetesConflictError(kmock.KubernetesError):
    """A 409 Conflict, as the API server answers a stale resourceVersion."""


def _now() -> str:
    return clock.rfc3339(clock.utcnow())


def _parse_selector(text: str | None) -> list[tuple[str, str, str]]:
    terms: list[tuple[str, str, str]] = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        match = _SELECTOR_TERM.match(part)
        if match is None:
            if part.strip().startswith("!"):
                terms.append((part.strip()[1:], "absent", ""))
            else:
                terms.append((part.strip(), "exists", ""))
            continue
        key, op, value = match.groups()
        terms.append((key, "!=" if op == "!=" else "=", value))
    return terms


def _field(obj: Mapping[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _selected(obj: Mapping[str, Any], fields: list[tuple[str, str, str]], labels: list[tuple[str, str, str]]) -> bool:
    for key, op, value in fields:
        actual = _field(obj, key)
        actual_text = "" if actual is None else str(actual)
        if (op == "=") != (actual_text == value):
            return False
    obj_labels = _field(obj, "metadata.labels") or {}
    for key, op, value in labels:
        if op == "exists" and key not in obj_labels:
            return False
        if op == "absent" and key in obj_labels:
            return False
        if op == "=" and obj_labels.get(key) != value:
            return False
        if op == "!=" and obj_labels.get(key) == value:
            return False
    return True


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int(_field(obj, "metadata.resourceVersion") or 0)
    except ValueError:
        return 0


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock's path parser, with the cluster-scoped Namespace resource itself understood.

    kmock reads `/api/v1/namespaces` (list, watch) and `/api/v1/namespaces/NAME[/status]` as paths
    inside a namespace; a real API server serves the Namespace objects there.
    """
    parts = path.strip("/").split("/")
    core = parts[:2] == ["api", "v1"]
    rest = parts[2:] if core else []
    if rest and rest[0] == "namespaces" and (len(rest) <= 2 or (len(rest) == 3 and rest[2] in ("status", "finalize"))):
        return parsing.ParsedPath("", "v1", "namespaces", None, rest[1] if len(rest) > 1 else None,
                                  rest[2] if len(rest) > 2 else None)
    return _kmock_parse_path(path)


_kmock_parse_path = parsing.parse_path
parsing.parse_path = _parse_path

REQUEST_LOG_LIMIT = 32
"""How many recent requests the emulator keeps for assertions."""


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with uid/generation/resourceVersion, status subresources and selectors."""

    _status_resources: set[kmock.resource] = attrs.field(factory=set, init=False)
    _revision: int = attrs.field(default=0, init=False)
    _results: dict[int, dict[str, Any]] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_update

    def register(
        self,
        resource: str,
        *,
        kind: str,
        namespaced: bool,
        status: bool = False,
        verbs: tuple[str, ...] = ("list", "watch", "get", "create", "patch", "update", "delete"),
    ) -> None:
        """Declare a resource for discovery, e.g. `register("dsr.operators.dev/v1alpha1/dsrservices", ...)`."""
        key = kmock.resource(resource)
        self.resources[key] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=namespaced,
            verbs=set(verbs),
            subresources={"status"} if status else set(),
        )
        if status:
            self._status_resources.add(key)

    @property
    def revision(self) -> int:
        """The last resourceVersion handed out."""
        return self._revision

    # --- writes --------------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock matches every request against its whole request log, which makes a long run
        # quadratic; keep only the recent requests (results are keyed by identity, not by log index).
        if len(self._requests) > REQUEST_LOG_LIMIT:
            del self._requests[:-REQUEST_LOG_LIMIT]
        resource = request.resource
        is_write = (
            resource is not None
            and resource.plural is not None
            and (
                (request.method == kmock.method.POST and request.name is None)
                or (request.method in (kmock.method.PATCH, kmock.method.PUT) and request.name is not None)
                or (request.method == kmock.method.DELETE and request.name is not None)
            )
        )
        if not is_write or request.subresource not in (None, "status"):
            return await super()._handle(request)
        gc_key: tuple[Any, ...] | None = None
        try:
            async with self._lock:
                gc_key = await self._write(request)
            return await apps.RawHandler._handle(self, request)
        finally:
            self._results.pop(id(request), None)
            if gc_key is not None:
                assert resource is not None
                async with self._lock:
                    raw = self._objects[gc_key].raw
                    self._objects[gc_key].delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    async def _write(self, request: rendering.Request) -> tuple[Any, ...] | None:
        """Apply one write under the lock; return the key of an object to garbage-collect after."""
        resource = request.resource
        assert resource is not None
        has_status = resource in self._status_resources
        body = request.data if request.data is not None else {}

        if request.method == kmock.method.POST:
            if not isinstance(body, Mapping):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="body must be an object")
            obj = copy.deepcopy(dict(body))
            meta = obj.setdefault("metadata", {})
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise kmock.KubernetesError(status=422, reason="Invalid", message="metadata.name is required")
                # Unique like the API server's (which retries on a clash): a random part and a counter.
                meta["name"] = f"{meta['generateName']}{secrets.token_hex(2)}{self._next_revision()}"
            if request.namespace is not None:
                meta["namespace"] = request.namespace
            if has_status:
                obj.pop("status", None)
            key = (resource, meta.get("namespace"), meta["name"])
            if key in self._objects and not self._objects[key].deleted:
                raise kmock.KubernetesError(
                    status=409, reason="AlreadyExists", message=f"{resource.plural} {meta['name']!r} already exists"
                )
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            meta["resourceVersion"] = self._next_revision()
            meta.pop("deletionTimestamp", None)
            if key in self._objects:
                self._objects[key].create(obj)
            else:
                self._objects[key] = obj
            self._results[id(request)] = obj
            await self._buses[resource].put({"type": "ADDED", "object": obj})
            return None

        assert request.name is not None  # writes to a named object only (see _handle)
        key = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        old = copy.deepcopy(self._objects[key].raw)

        if request.method == kmock.method.DELETE:
            meta = old.get("metadata", {})
            if meta.get("deletionTimestamp"):
                self._results[id(request)] = old
                return None
            if meta.get("finalizers"):
                meta["deletionTimestamp"] = _now()
                meta["resourceVersion"] = self._next_revision()
                self._objects[key].patch(
                    {
                        "metadata": {
                            "deletionTimestamp": meta["deletionTimestamp"],
                            "resourceVersion": meta["resourceVersion"],
                        }
                    }
                )
                self._results[id(request)] = old
                await self._buses[resource].put({"type": "MODIFIED", "object": old})
                return None
            meta["resourceVersion"] = self._next_revision()
            self._objects[key].delete()
            self._results[id(request)] = old
            await self._buses[resource].put({"type": "DELETED", "object": old})
            return None

        expected_rv = body.get("metadata", {}).get("resourceVersion") if isinstance(body, Mapping) else None
        if expected_rv and str(expected_rv) != str(old.get("metadata", {}).get("resourceVersion")):
            raise KubernetesConflictError(
                status=409,
                reason="Conflict",
                message="the object has been modified; please apply your changes to the latest version",
            )

        if request.method == kmock.method.PUT:
            if not isinstance(body, Mapping):
                raise kmock.KubernetesError(status=400, reason="BadRequest", message="body must be an object")
            candidate = copy.deepcopy(dict(body))
        elif isinstance(body, list):  # JSON patch; a failed `test` is 422, as kopf's finalizer writes expect
            try:
                candidate = dict(dicts.json_patch_dict(old, body))
            except jsonpatch.JsonPatchTestFailed as exc:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"the patch's test failed: {exc}") \
                    from exc
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:  # a path that is not there
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"the patch does not apply: {exc}") \
                    from exc
        elif isinstance(body, Mapping):  # merge, strategic (approximated) and apply patches
            candidate = dict(dicts.merge_patch_dict(old, body))
        else:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="unsupported patch body")

        new = copy.deepcopy(old)
        if request.subresource == "status":
            if candidate.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = candidate["status"]
        else:
            kept_status = old.get("status")
            new = {k: v for k, v in candidate.items() if k != "metadata"}
            if has_status:
                new.pop("status", None)
                if kept_status is not None:
                    new["status"] = kept_status
            new_meta = dict(candidate.get("metadata") or {})
            for immutable in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
                if immutable in old.get("metadata", {}):
                    new_meta[immutable] = old["metadata"][immutable]
                else:
                    new_meta.pop(immutable, None)
            new["metadata"] = new_meta

        def content(o: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in o.items() if k not in ("metadata", "status") or (k == "status" and not has_status)}

        meta = new.setdefault("metadata", {})
        if content(new) != content(old):
            meta["generation"] = int(old.get("metadata", {}).get("generation") or 1) + 1
        if new == old:
            self._results[id(request)] = old
            return None  # a no-op write keeps the resourceVersion, as the API server does
        meta["resourceVersion"] = self._next_revision()
        self._objects[key].history.append(new)
        self._results[id(request)] = new
        gc = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers")
        if gc:
            return key
        await self._buses[resource].put({"type": "MODIFIED", "object": new})
        return None

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return self._results.get(id(request)) or await super()._serve_create(request)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return self._results.get(id(request)) or await super()._serve_update(request)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return self._results.get(id(request)) or await super()._serve_delete(request)

    # --- reads ---------------------------------------------------------------------------------

    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        fields = _parse_selector(request.params.get("fieldSelector"))
        labels = _parse_selector(request.params.get("labelSelector"))
        found = []
        for (resource, namespace, name), obj in self._objects.items():
            if resource != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name is not None and name != request.name:
                continue
            raw = obj.raw
            if _selected(raw, fields, labels):
                found.append(raw)
        return found

    def _list_kind(self, request: rendering.Request) -> tuple[str, str]:
        resource = request.resource
        assert resource is not None
        info = self.resources[resource] if resource in self.resources else None
        kind = (info.kind if info is not None and info.kind else str(resource.plural).capitalize()) + "List"
        api_version = f"{resource.group}/{resource.version}" if resource.group else str(resource.version)
        return kind, api_version

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        if request.resource not in self._get_resources():
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._matching(request)
            revision = str(self._revision)
        kind, api_version = self._list_kind(request)
        return {"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": revision}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now, as kmock does
        assert request.resource is not None
        since_text = request.params.get("resourceVersion") or ""
        since = int(since_text) if since_text.isdigit() and since_text != "0" else None
        timeout = request.params.get("timeoutSeconds")
        fields = _parse_selector(request.params.get("fieldSelector"))
        labels = _parse_selector(request.params.get("labelSelector"))
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            initial = [o for o in self._matching(request) if since is None or _rv(o) > since]
        try:
            async with asyncio.timeout(float(timeout) if timeout else None):
                for obj in initial:
                    yield {"type": "ADDED", "object": obj}
                async for event in bus.stream(since=marker):
                    obj = event.get("object", {})
                    meta = obj.get("metadata", {})
                    if request.namespace is not None and meta.get("namespace") != request.namespace:
                        continue
                    if request.name is not None and meta.get("name") != request.name:
                        continue
                    if since is not None and _rv(obj) <= since:
                        continue
                    if _selected(obj, fields, labels):
                        yield event
        except TimeoutError:
            return
        finally:
            await bus.unmark(marker)


@contextlib.asynccontextmanager
async def serve(host: str = "127.0.0.1", port: int | None = None) -> AsyncIterator[tuple[KubeEmulator, str]]:
    """An emulator with `RESOURCES` registered, on a real socket (any free port by default): (emulator, url)."""
    async with KubeEmulator() as emulator, kmock.Server(emulator, host=host, port=port) as server:
        for resource, kind, namespaced, status in RESOURCES:
            emulator.register(resource, kind=kind, namespaced=namespaced, status=status)
        yield emulator, str(server.url).rstrip("/")
