"""What a Service of `type: LoadBalancer` asks of us, decided from plain data (pure, no I/O).

A Service we serve (its `loadBalancerClass` is ours, or it has none and this operator is the cluster's
default) gets one DsrService of the same name, owned by it (ownerReference), with the Service's ports,
its endpoints as backends and the settings of its `dsr.operators.dev/` annotations. Its VIP comes
from `spec.loadBalancerIP` or the `dsr.operators.dev/vip` annotation, inside a `DsrVipPool` that
admits the namespace, or is allocated from one. The allocation is recorded on the DsrService
(`spec.vip`), so a restart finds it there, and a VIP is never handed to two Services. The Service's
`status.loadBalancer.ingress` names the VIP while the DsrService is Ready (bound on NetScaler), and
its condition `dsr.operators.dev/Ready` says why not otherwise (a refusal such as PoolExhausted, the
DsrService's own reason while it is not Ready): events expire, the condition stays while it holds.

`plan(service, owned, context)` is the whole decision; the front door (`frontdoor.py`) does the I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from dsr_operator.api import conditions as api_conditions
from dsr_operator.api import models, vippool
from dsr_operator.model import ops as nsops

Key = tuple[str, str]

PREFIX = f"{models.GROUP}/"
VIP_ANNOTATION = PREFIX + "vip"
POOL_ANNOTATION = PREFIX + "pool"
CONDITION = PREFIX + "Ready"
"""The condition the operator keeps in a served Service's `status.conditions`."""
MAX_CONDITION_MESSAGE = 32768
"""metav1.Condition's limit on a message."""
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
    conditions: tuple[Mapping[str, Any], ...] = ()
    """`status.conditions` as they are (ours and any other controller's)."""

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
        status = body.get("status") or {}
        ingress = (status.get("loadBalancer") or {}).get("ingress") or ()
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
            conditions=tuple(dict(c) for c in status.get("conditions") or () if isinstance(c, Mapping)),
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
    why: tuple[str, str] | None = None
    """(reason, message) of its Ready condition while it is not Ready; None before the operator acted."""

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
        condition = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
        ready = current and condition is not None and condition.get("status") == "True"
        why = (str(condition.get("reason") or "NotReady"), str(condition.get("message") or "")) \
            if current and condition is not None and not ready else None
        namespace = meta.get("namespace") or "default"
        return (namespace, str(owner.get("name"))), cls(
            name=meta.get("name") or "", owner_uid=str(owner.get("uid") or ""),
            spec=dict(body.get("spec") or {}), ready=ready, deleting=bool(meta.get("deletionTimestamp")), why=why,
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
class Condition:
    """Our condition on a served Service: `True` while its VIP is served, else why not."""

    status: str
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
    condition: Condition | None = None
    """Our condition on the Service; None: the Service is not ours (any condition of ours goes)."""


def serves(service: LbService, load_balancer_class: str, default_class: bool) -> bool:
    """Whether a Service of type LoadBalancer is this operator's to serve."""
    if service.load_balancer_class is None:
        return default_class
    return bool(load_balancer_class) and service.load_balancer_class == load_balancer_class


def plan(service: LbService | None, owned: Owned | None, context: Context) -> Plan:
    decided = _plan(service, owned, context)
    if service is None or not serves(service, context.load_balancer_class, context.default_class):
        return decided
    return dataclasses.replace(decided, condition=_condition_for(service, owned, decided))


def _condition_for(service: LbService, owned: Owned | None, decided: Plan) -> Condition:
    if decided.refusal is not None:
        return Condition("False", decided.refusal.reason, decided.refusal.message)
    name = f"DsrService {service.namespace}/{service.name}"
    if owned is not None and owned.deleting:
        return Condition("False", "Deleting", f"{name} is being deleted: its NetScaler objects go first")
    if decided.delete:
        return Condition("False", "Replacing", f"{name} was made from an earlier Service of this name: replaced")
    vip = decided.manifest["spec"]["vip"] if decided.manifest is not None else None
    if decided.ingress:
        return Condition("True", "Serving", f"{decided.ingress[0]} is served through NetScaler ({name})")
    if owned is not None and owned.why is not None and vip == owned.vip:
        reason, message = owned.why
        return Condition("False", reason, f"{name}: {message}" if message else name)
    return Condition("False", "Pending", f"{name} on {vip}: waiting for the operator to bind it on NetScaler")


def _plan(service: LbService | None, owned: Owned | None, context: Context) -> Plan:
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
    wildcard = sorted({p for p, _ in service.ports if p >= nsops.NITRO_WILDCARD_PORT})
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
            api_conditions.condition("Ready", "False", reason, message or "", generation=generation),
            api_conditions.condition("Stalled", "True", reason, message or "", generation=generation),
        ]}
    total, used = vippool.usage(entry.pool, set(context.vips))
    message = f"{used} of {total} addresses in use"
    return {"observedGeneration": generation or 0, "addressesTotal": str(total), "addressesUsed": used,
            "conditions": [api_conditions.condition("Ready", "True", "Valid", message, generation=generation),
                           api_conditions.condition("Stalled", "False", "Valid", "", generation=generation)]}


def condition_patch(service: LbService, condition: Condition | None, now: str
                    ) -> list[dict[str, Any]] | dict[str, Any] | None:
    """A patch of the Service's status that puts `condition` in place of ours (None: takes ours away),
    leaving other controllers' conditions as they are; None when nothing changes.

    A JSON patch (a list) where the Service has conditions: each change tests what it replaces, so a
    list changed meanwhile fails (422) instead of overwriting someone else's condition, and the next
    pass reads it again. A merge patch (a mapping) that creates the list where there is none.
    """
    index = next((i for i, c in enumerate(service.conditions) if c.get("type") == CONDITION), None)
    current = service.conditions[index] if index is not None else None
    if condition is None:
        if index is None:
            return None
        return [{"op": "test", "path": f"/status/conditions/{index}/type", "value": CONDITION},
                {"op": "remove", "path": f"/status/conditions/{index}"}]
    message = condition.message[:MAX_CONDITION_MESSAGE]
    if current is not None and (current.get("status"), current.get("reason"), current.get("message")) == (
            condition.status, condition.reason, message):
        return None
    value = api_conditions.condition(CONDITION, condition.status, condition.reason, message, with_generation=False,
                                 now=now, previous=current)
    if index is not None:
        return [{"op": "test", "path": f"/status/conditions/{index}/type", "value": CONDITION},
                {"op": "replace", "path": f"/status/conditions/{index}", "value": value}]
    if service.conditions:
        return [{"op": "test", "path": "/status/conditions", "value": list(service.conditions)},
                {"op": "add", "path": "/status/conditions/-", "value": value}]
    return {"status": {"conditions": [value]}}
