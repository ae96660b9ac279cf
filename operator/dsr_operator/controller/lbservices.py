"""What a Service of `type: LoadBalancer` asks of us, decided from plain data (pure, no I/O).

A Service we serve (its `loadBalancerClass` is ours, or it has none and this operator is the cluster's
default) gets one DsrService of the same name, owned by it (ownerReference), with the Service's ports,
its endpoints as backends and the settings of its `dsr.operators.dev/` annotations. Its VIP comes
from `spec.loadBalancerIP` or the `dsr.operators.dev/vip` annotation, inside a `DsrVipPool` that
admits the namespace, or is allocated from one. The allocation is recorded on the DsrService
(`spec.vip`), so a restart finds it there, and a VIP is never handed to two Services. The Service's
`status.loadBalancer.ingress` names the VIP while the DsrService is Ready (bound on NetScaler).

`plan(service, owned, context)` is the whole decision; the front door (`frontdoor.py`) does the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from dsr_operator.api import models, vippool

Key = tuple[str, str]

PREFIX = f"{models.GROUP}/"
VIP_ANNOTATION = PREFIX + "vip"
POOL_ANNOTATION = PREFIX + "pool"
OWNER_LABEL = PREFIX + "service"
"""Label on an owned DsrService: the name of the Service it was made from."""
MANAGED_BY = {"app.kubernetes.io/managed-by": "dsr-operator"}

#: Annotations that set DsrService fields: annotation (after the prefix) -> (path in the spec, parser).
SETTINGS: Mapping[str, tuple[tuple[str, ...], type]] = {
    "lb-method": (("lbMethod",), str),
    "drain-seconds": (("drainSeconds",), int),
    "health-check": (("healthCheck", "type"), str),
    "health-check-port": (("healthCheck", "port"), int),
    "health-check-interval-seconds": (("healthCheck", "intervalSeconds"), int),
    "health-check-timeout-seconds": (("healthCheck", "timeoutSeconds"), int),
    "health-check-through-vip": (("healthCheck", "throughVip"), bool),
}


@dataclasses.dataclass(frozen=True)
class LbService:
    """A Service of type LoadBalancer, as the index keeps it."""

    namespace: str
    name: str
    uid: str
    load_balancer_class: str | None
    external_traffic_policy: str
    ports: tuple[tuple[int, str], ...]
    """(port, protocol) in the Service's order."""
    families: tuple[str, ...]
    load_balancer_ip: str | None
    annotations: Mapping[str, str]
    ingress: tuple[str, ...]
    """The addresses `status.loadBalancer.ingress` names now."""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> LbService | None:
        """The summary of a Service, or None when it is not of type LoadBalancer."""
        spec = body.get("spec") or {}
        if spec.get("type") != "LoadBalancer":
            return None
        meta = body.get("metadata") or {}
        ingress = ((body.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
        return cls(
            namespace=meta.get("namespace") or "default",
            name=meta.get("name") or "",
            uid=meta.get("uid") or "",
            load_balancer_class=spec.get("loadBalancerClass"),
            external_traffic_policy=spec.get("externalTrafficPolicy") or "Cluster",
            ports=tuple((int(p.get("port") or 0), str(p.get("protocol") or "TCP")) for p in spec.get("ports") or ()),
            families=tuple(spec.get("ipFamilies") or ()),
            load_balancer_ip=spec.get("loadBalancerIP") or None,
            annotations={k: str(v) for k, v in (meta.get("annotations") or {}).items() if k.startswith(PREFIX)},
            ingress=tuple(str(i.get("ip")) for i in ingress if i.get("ip")),
        )


@dataclasses.dataclass(frozen=True)
class Owned:
    """A DsrService made from a Service (its controller ownerReference names the Service)."""

    name: str
    owner_uid: str
    spec: Mapping[str, Any]
    ready: bool
    """Ready=True for its current generation: bound on NetScaler."""
    deleting: bool = False

    @property
    def vip(self) -> str | None:
        return models.canonical_ip(self.spec.get("vip")) if self.spec.get("vip") else None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> tuple[Key, Owned] | None:
        """(the owning Service's key, the summary), or None for a DsrService no Service owns."""
        meta = body.get("metadata") or {}
        owner = next((o for o in meta.get("ownerReferences") or () if o.get("kind") == "Service"
                      and o.get("apiVersion") == "v1" and o.get("controller")), None)
        if owner is None:
            return None
        status = body.get("status") or {}
        current = status.get("observedGeneration") == meta.get("generation")
        ready = current and any(c.get("type") == "Ready" and c.get("status") == "True"
                                for c in status.get("conditions") or ())
        namespace = meta.get("namespace") or "default"
        return (namespace, str(owner.get("name"))), cls(
            name=meta.get("name") or "", owner_uid=str(owner.get("uid") or ""),
            spec=dict(body.get("spec") or {}), ready=ready, deleting=bool(meta.get("deletionTimestamp")),
        )


@dataclasses.dataclass(frozen=True)
class PoolEntry:
    """A DsrVipPool as the index keeps it: parsed, or why it cannot be."""

    name: str
    generation: int | None
    pool: vippool.Pool | None
    error: str | None
    status: Mapping[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> PoolEntry:
        meta = body.get("metadata") or {}
        name = meta.get("name") or ""
        pool: vippool.Pool | None = None
        error: str | None = None
        try:
            pool = vippool.Pool(name, vippool.DsrVipPoolSpec.model_validate(dict(body.get("spec") or {})))
        except pydantic.ValidationError as exc:
            error = models.validation_message(exc)
        return cls(name=name, generation=meta.get("generation"), pool=pool, error=error,
                   status=dict(body.get("status") or {}))


@dataclasses.dataclass(frozen=True)
class Context:
    """What every Service's decision reads: our class, the pools, the namespaces, who holds which VIP."""

    load_balancer_class: str
    default_class: bool
    pools: Sequence[PoolEntry]
    namespace_labels: Mapping[str, Mapping[str, str]]
    vips: Mapping[str, Key]
    """VIP -> the DsrService that has it (every DsrService, owned or not)."""
    dsrservices: frozenset[Key]
    """Every DsrService that exists."""

    def usable_pools(self) -> list[vippool.Pool]:
        valid = [p.pool for p in self.pools if p.pool is not None]
        broken = vippool.overlapping(valid)
        return [p for p in valid if p.name not in broken]


@dataclasses.dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to do for one Service key."""

    manifest: Mapping[str, Any] | None = None
    """The DsrService to have (created, or its spec patched to this); None: leave or delete it."""
    delete: bool = False
    """Delete the owned DsrService (the Service is gone or no longer ours)."""
    ingress: tuple[str, ...] | None = None
    """What status.loadBalancer.ingress must name; None: not ours to write."""
    refusal: Refusal | None = None
    allocated: vippool.Allocation | None = None
    """A VIP newly taken from a pool for this Service."""


def serves(service: LbService, load_balancer_class: str, default_class: bool) -> bool:
    """Whether a Service of type LoadBalancer is this operator's to serve."""
    if service.load_balancer_class is None:
        return default_class
    return bool(load_balancer_class) and service.load_balancer_class == load_balancer_class


def plan(service: LbService | None, owned: Owned | None, context: Context) -> Plan:
    if owned is not None and owned.deleting:
        return Plan(ingress=() if service is not None else None)  # its finalizer runs; then it is made again
    if service is None or not serves(service, context.load_balancer_class, context.default_class):
        return Plan(delete=owned is not None)
    if owned is not None and owned.owner_uid != service.uid:
        return Plan(delete=True)  # left by a deleted Service of the same name: the new one starts afresh
    ingress = (owned.vip,) if owned is not None and owned.ready and owned.vip else ()
    if owned is None and service.key in context.dsrservices:
        return Plan(ingress=(), refusal=Refusal(
            "DsrServiceExists", f"DsrService {service.namespace}/{service.name} exists and is not made from this "
            "Service: delete it, or rename the Service"))
    refusal = _check(service)
    if refusal is not None:
        return Plan(ingress=ingress, refusal=refusal)  # an existing DsrService keeps serving as it was
    vip, allocated, refusal = _vip(service, owned, context)
    if refusal is not None or vip is None:
        return Plan(ingress=ingress, refusal=refusal)
    spec, refusal = _spec(service, vip)
    if refusal is not None:
        return Plan(ingress=ingress, refusal=refusal)
    if owned is not None and owned.vip != vip:
        ingress = ()
    return Plan(manifest=_manifest(service, spec), ingress=ingress, allocated=allocated)


def _check(service: LbService) -> Refusal | None:
    if service.external_traffic_policy != "Local":
        return Refusal("ExternalTrafficPolicyNotLocal", (
            "set spec.externalTrafficPolicy: Local: with DSR the reply leaves from the node NetScaler chose, "
            "so that node must deliver VIP traffic to its own Pods"))
    if not service.ports:
        return Refusal("NoPorts", "the Service has no ports")
    sctp = sorted({p for p, proto in service.ports if proto not in ("TCP", "UDP")})
    if sctp:
        return Refusal("UnsupportedProtocol", (
            f"port {', '.join(map(str, sctp))}: only TCP and UDP are served (NetScaler's monitors cannot probe SCTP)"))
    wildcard = sorted({p for p, _ in service.ports if p >= models.NITRO_WILDCARD_PORT})
    if wildcard:
        return Refusal("UnsupportedPort", "port 65535 is NetScaler's wildcard port: it cannot be served alone")
    return None


def _family(service: LbService) -> int | None:
    if len(service.families) != 1:
        return None
    return 6 if service.families[0] == "IPv6" else 4


def _vip(service: LbService, owned: Owned | None, context: Context
         ) -> tuple[str | None, vippool.Allocation | None, Refusal | None]:
    requested_text = service.annotations.get(VIP_ANNOTATION) or service.load_balancer_ip
    requested = models.canonical_ip(requested_text) if requested_text else None
    if requested_text and requested is None:
        return None, None, Refusal("InvalidVip", f"{requested_text!r} is not an IP address")
    if owned is not None and owned.vip and requested in (None, owned.vip):
        return owned.vip, None, None  # allocated before (a restart, a pool changed since): kept
    holder_of = {vip: key for vip, key in context.vips.items() if key != service.key}
    if requested is not None and requested in holder_of:
        holder = holder_of[requested]
        return None, None, Refusal("AddressInUse", f"{requested} is the VIP of DsrService {holder[0]}/{holder[1]}")
    result = vippool.allocate(
        context.usable_pools(),
        namespace_labels=context.namespace_labels.get(service.namespace, {}),
        taken=set(holder_of),
        family=_family(service),
        pool=service.annotations.get(POOL_ANNOTATION),
        address=requested,
    )
    if isinstance(result, vippool.Refusal):
        return None, None, Refusal(result.reason, result.message)
    return result.vip, (result if requested is None else None), None


def _spec(service: LbService, vip: str) -> tuple[dict[str, Any], Refusal | None]:
    ports = list(dict.fromkeys(p for p, _ in service.ports))
    spec: dict[str, Any] = {"vip": vip, "ports": ports, "backends": {"service": service.name}}
    tcp = [p for p, proto in service.ports if proto == "TCP"]
    if not tcp:
        spec["healthCheck"] = {"type": "PING"}  # a TCP probe of a UDP port would fail
    elif any(p not in tcp for p in ports):
        spec["healthCheck"] = {"port": tcp[0]}  # probe a TCP port of the Service for its UDP ports too
    for suffix, (path, kind) in SETTINGS.items():
        text = service.annotations.get(PREFIX + suffix)
        if text is None:
            continue
        try:
            value: Any = _parse(text, kind)
        except ValueError:
            return spec, Refusal("InvalidAnnotation", f"{PREFIX}{suffix}: {text!r} is not a valid {kind.__name__}")
        node = spec
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    try:
        models.DsrServiceSpec.model_validate(spec)
    except pydantic.ValidationError as exc:
        message = f"the {PREFIX} annotations make an invalid DsrService: {models.validation_message(exc)}"
        return spec, Refusal("InvalidAnnotation", message)
    return spec, None


def _parse(text: str, kind: type) -> Any:
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(text)
        return text.lower() == "true"
    if kind is int:
        return int(text)
    return text


def _manifest(service: LbService, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.SERVICE_KIND,
        "metadata": {
            "name": service.name,
            "namespace": service.namespace,
            "labels": {OWNER_LABEL: service.name, **MANAGED_BY},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service.name, "uid": service.uid,
                                 "controller": True}],
        },
        "spec": dict(spec),
    }


def spec_patch(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch that turns `current` into `wanted` (keys gone become null), or None if equal."""
    if dict(current) == dict(wanted):
        return None
    patch: dict[str, Any] = {}
    for key in set(current) | set(wanted):
        if key not in wanted:
            patch[key] = None
        elif isinstance(wanted[key], Mapping) and isinstance(current.get(key), Mapping):
            inner = spec_patch(current[key], wanted[key])
            if inner is not None:
                patch[key] = inner
        elif current.get(key) != wanted[key]:
            patch[key] = wanted[key]
    return patch


def pool_status(entry: PoolEntry, context: Context, generation: int | None) -> dict[str, Any]:
    """The status a DsrVipPool should show: addresses total and used, Ready or Stalled with the reason."""
    overlaps = vippool.overlapping([p.pool for p in context.pools if p.pool is not None])
    if entry.pool is None or entry.name in overlaps:
        reason = "InvalidPool" if entry.pool is None else "Overlap"
        message = entry.error if entry.pool is None else overlaps[entry.name]
        return {"observedGeneration": generation or 0, "addressesUsed": 0, "conditions": [
            _condition("Ready", "False", reason, message or "", generation),
            _condition("Stalled", "True", reason, message or "", generation),
        ]}
    total, used = vippool.usage(entry.pool, set(context.vips))
    message = f"{used} of {total} addresses in use"
    return {"observedGeneration": generation or 0, "addressesTotal": str(total), "addressesUsed": used,
            "conditions": [_condition("Ready", "True", "Valid", message, generation),
                           _condition("Stalled", "False", "Valid", "", generation)]}


def _condition(kind: str, status: str, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message, "observedGeneration": generation}
