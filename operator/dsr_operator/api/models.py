"""Typed models of the DsrService and DsrNodeConfig custom resources.

These models are the one parser of user intent: the CLI reads manifests through them, the operator
reads the objects it watches through them, and the CRD schemas are generated from them.
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Annotated, Any, Literal

import pydantic
import pydantic.alias_generators

GROUP = "dsr.operators.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
SERVICE_KIND = "DsrService"
FINALIZER = f"{GROUP}/finalizer"
"""Held by every DsrService the operator serves until its NetScaler objects and node VIPs are gone."""
SERVICE_PLURAL = "dsrservices"
NODECONFIG_KIND = "DsrNodeConfig"
NODECONFIG_PLURAL = "dsrnodeconfigs"

WILDCARD_PORT = "*"


class LbMethod(enum.StrEnum):
    """NetScaler lbmethod values that make sense for an L2 DSR vserver of type ANY."""

    ROUNDROBIN = "ROUNDROBIN"
    LEASTCONNECTION = "LEASTCONNECTION"
    LEASTRESPONSETIME = "LEASTRESPONSETIME"
    SOURCEIPHASH = "SOURCEIPHASH"
    DESTINATIONIPHASH = "DESTINATIONIPHASH"
    SRCIPDESTIPHASH = "SRCIPDESTIPHASH"
    SRCIPSRCPORTHASH = "SRCIPSRCPORTHASH"
    LEASTBANDWIDTH = "LEASTBANDWIDTH"
    LEASTPACKETS = "LEASTPACKETS"


class HealthCheckType(enum.StrEnum):
    """Monitor types that let NetScaler learn backend MACs (script monitors cannot: CTX138969)."""

    TCP = "TCP"
    PING = "PING"


_CONFIG = pydantic.ConfigDict(
    extra="forbid",
    populate_by_name=True,
    alias_generator=pydantic.alias_generators.to_camel,
    use_attribute_docstrings=True,
)


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, **_CONFIG)


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc


def canonical_ip(value: object) -> str | None:
    """An IP address in canonical form (`2001:DB8::0A` -> `2001:db8::a`, brackets dropped), or None."""
    try:
        return str(ipaddress.ip_address(str(value).strip("[]")))
    except ValueError:
        return None


def unicast(value: str) -> str:
    """A unicast address a VIP or a backend can be: not unspecified, loopback, link-local, multicast or reserved."""
    address = ipaddress.ip_address(_ip(value))
    for bad, what in ((address.is_unspecified, "unspecified"), (address.is_loopback, "a loopback address"),
                      (address.is_link_local, "link-local"), (address.is_multicast, "multicast"),
                      (address.is_reserved, "reserved (or broadcast)")):
        if bad:
            raise ValueError(f"{value!r} is {what}: not usable for DSR")
    if address.version == 6 and not any(address in ipaddress.ip_network(n) for n in ("2000::/3", "fc00::/7")):
        raise ValueError(f"{value!r} is neither global unicast (2000::/3) nor unique local (fc00::/7): "
                         "not usable for DSR")
    return str(address)


def validation_message(exc: pydantic.ValidationError) -> str:
    """A ValidationError as one line for status and events: `field.path: message; ...`."""
    return "; ".join(": ".join([".".join(str(p) for p in e["loc"]), e["msg"]] if e["loc"] else [e["msg"]])
                     for e in exc.errors())


IPAddress = Annotated[str, pydantic.AfterValidator(_ip)]
UnicastAddress = Annotated[str, pydantic.AfterValidator(unicast)]
"""An IP address in canonical form that a VIP or a backend host can use."""
Port = Annotated[int, pydantic.Field(ge=1, le=65534)] | Literal["*"]
"""1-65534 or "*" for every port. 65535 is refused: a load balancer may read it as every port, so that
is always written "*" and never happens by accident."""


# A pydantic dataclass with slots, not a model (no field set and no dict per instance): the operator
# holds every DsrService's backends, and 20,000 of them took 8 MiB less.
@pydantic.dataclasses.dataclass(frozen=True, slots=True, config=_CONFIG)
class StaticBackend:
    """A host outside the cluster, bound directly; its loopback VIP is the host owner's job."""

    name: Annotated[
        str, pydantic.Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    """A DNS label naming the host (unique in this DsrService); part of the NetScaler object names."""
    address: UnicastAddress
    """The host's IP address on the NetScaler's L2 segment (IPv4 or IPv6)."""


class EtcdRegistry(_Model):
    """Hosts registered in etcd, one key per host under a prefix (CoreDNS/SkyDNS records)."""

    prefix: Annotated[str, pydantic.Field(min_length=2, max_length=512, pattern=r"^/[^\x00]*[^/\x00]/?$")]
    """The key prefix, such as `/skydns/local/shop/web`: every key below it is one host (`{"host": IP, ...}`)."""

    @property
    def key_prefix(self) -> str:
        """The prefix as keys are ranged: always ending in `/` (so `/web` never matches `/web2/...`)."""
        return self.prefix if self.prefix.endswith("/") else self.prefix + "/"


class RegistryBackends(_Model):
    """A service registry the backends register themselves in, after their VIP loopback is in place."""

    etcd: EtcdRegistry
    """etcd v3 (endpoints, TLS and credentials are the operator's settings: DSR_REGISTRY_CONFIG)."""


class Backends(_Model):
    """Where the backends come from: exactly one of `service`, `static` or `registry`."""

    service: Annotated[str, pydantic.Field(min_length=1, max_length=63)] | None = None
    """A Service in the DsrService's namespace: the nodes hosting its ready endpoints (their InternalIP)."""
    static: Annotated[list[StaticBackend], pydantic.Field(min_length=1, max_length=256)] | None = None
    """Hosts outside the cluster, bound directly; run `dsr-operator host-setup` on each."""
    registry: RegistryBackends | None = None
    """Hosts that register themselves (`dsr-operator host-agent`) in a service registry; they come and go."""

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> Backends:
        if sum(source is not None for source in (self.service, self.static, self.registry)) != 1:
            raise ValueError("exactly one of backends.service, backends.static and backends.registry must be set")
        if self.static is not None:
            names = [b.name for b in self.static]
            if len(set(names)) != len(names):
                raise ValueError("backends.static names must be unique")
        return self


class HealthCheck(_Model):
    """The NetScaler monitor bound to every service of the DsrService."""

    type: HealthCheckType = HealthCheckType.TCP
    """TCP (a SYN to the port) or PING (ICMP echo); both let NetScaler learn the backend's MAC."""
    interval_seconds: Annotated[int, pydantic.Field(ge=2, le=20940)] = 5
    """Seconds between probes."""
    timeout_seconds: Annotated[int, pydantic.Field(ge=1, le=20939)] = 2
    """Seconds a probe may take (less than intervalSeconds)."""
    retries: Annotated[int, pydantic.Field(ge=1, le=127)] = 3
    """Failed probes in a row before a backend goes DOWN."""
    port: Annotated[int, pydantic.Field(ge=1, le=65535)] | None = None
    """The port TCP probes go to (default: the service port; required with ports ["*"])."""
    through_vip: bool = True
    """Probe the VIP through the DSR path (destip=VIP, transparent): a host lacking the VIP goes DOWN."""

    @pydantic.model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthCheck:
        if self.timeout_seconds >= self.interval_seconds:
            raise ValueError("healthCheck.timeoutSeconds must be less than healthCheck.intervalSeconds")
        return self


class DsrServiceSpec(_Model):
    """The user's intent: one VIP, its ports, where the backends are, and how to balance them."""

    vip: UnicastAddress
    """The load-balanced IP (IPv4 or IPv6): NetScaler answers ARP or neighbour discovery for it, backends hold it."""
    ports: Annotated[list[Port], pydantic.Field(min_length=1, max_length=64)]
    """Ports (1-65534) served on the VIP, one vserver each, or ["*"] alone for every port."""
    backends: Backends
    """Where the backends come from: exactly one of `service`, `static` or `registry`."""
    lb_method: LbMethod = LbMethod.LEASTCONNECTION
    """NetScaler's load-balancing method (lbmethod) for the vservers."""
    health_check: HealthCheck = HealthCheck()
    """The NetScaler monitor bound to every backend (a TCP or PING probe)."""
    drain_seconds: Annotated[int, pydantic.Field(ge=0, le=3600)] | None = None
    """Graceful disable before a removed backend is unbound (seconds): existing connections get this long.
    Default: the operator's setting (DSR_DEFAULT_DRAIN_SECONDS, 30)."""
    max_unbind_percent: Annotated[int, pydantic.Field(ge=1, le=100)] | None = None
    """Blast-radius guard: most of a vserver's bound backends one reconcile may remove (operator default)."""

    @pydantic.field_validator("ports")
    @classmethod
    def _ports_unique(cls, ports: list[int | str]) -> list[int | str]:
        if len(set(ports)) != len(ports):
            raise ValueError("ports must be unique")
        if WILDCARD_PORT in ports and len(ports) > 1:
            raise ValueError('"*" already covers every port; list it alone')
        return ports

    @property
    def ports_text(self) -> str:
        """The ports as `kubectl get` shows them (status.portsText): `80,443`, or `*`."""
        return ",".join(str(port) for port in self.ports)

    @pydantic.model_validator(mode="after")
    def _static_hosts_fit_the_vip(self) -> DsrServiceSpec:
        hosts = self.backends.static or []
        family = ipaddress.ip_address(self.vip).version
        addresses = [h.address for h in hosts]
        twice = sorted({a for a in addresses if addresses.count(a) > 1})
        if twice:
            raise ValueError(f"backends.static lists {', '.join(twice)} more than once")
        other = [a for a in addresses if ipaddress.ip_address(a).version != family]
        if other:
            raise ValueError(f"backends.static {', '.join(other)} is not in the VIP's address family (IPv{family})")
        return self

    @pydantic.model_validator(mode="after")
    def _wildcard_needs_probe_port(self) -> DsrServiceSpec:
        if self.ports == [WILDCARD_PORT] and self.health_check.type == HealthCheckType.TCP:
            if self.health_check.port is None:
                raise ValueError(
                    'healthCheck.port is required when ports is ["*"] and healthCheck.type is TCP'
                )
        return self


class ObjectRef(_Model):
    """Who a DsrService is, as the planner needs it: names derive from it, ownership marks carry it."""

    namespace: str
    name: str
    uid: str


class DsrService(_Model):
    """A parsed DsrService manifest."""

    api_version: Literal["dsr.operators.dev/v1alpha1"] = "dsr.operators.dev/v1alpha1"
    kind: Literal["DsrService"] = "DsrService"
    metadata: dict[str, Any]
    spec: DsrServiceSpec
    status: dict[str, Any] | None = None

    @property
    def ref(self) -> ObjectRef:
        meta = self.metadata
        namespace = meta.get("namespace") or "default"
        uid = meta.get("uid") or f"{namespace}/{meta['name']}"
        return ObjectRef(namespace=namespace, name=meta["name"], uid=uid)


class BackendCounts(_Model):
    """How many backends a DsrService has at each step of the safety order."""

    desired: int = 0
    """Backends the DsrService wants (ready endpoints' nodes, or static hosts)."""
    loopback_ready: int = 0
    """Of those, nodes whose agent reports the VIP applied (static hosts count as ready)."""
    bound: int = 0
    """Backends bound to the vservers on NetScaler: the ones that get traffic."""


class VserverStatus(_Model):
    """One vserver of the DsrService as read from NetScaler."""

    name: str
    """The NetScaler lbvserver name."""
    port: int | str
    """The spec port it serves (or "*")."""
    state: str
    """NetScaler's state of the vserver (UP, DOWN, OUT OF SERVICE), or ABSENT."""


class DsrServiceStatus(_Model):
    """Written by the operator only. Ready=True means serving: at least one backend bound."""

    # The CRD's status schema is generated from this model (for `kubectl explain`); it keeps unknown fields.

    observed_generation: int | None = None
    """The metadata.generation this status describes."""
    conditions: list[Condition] = []
    """Ready (serving: at least one backend bound), Reconciling and Stalled, kstatus style."""
    backends: BackendCounts | None = None
    """Backend counts: desired, loopbackReady, bound (strict gate: bound equals desired)."""
    vservers: list[VserverStatus] = []
    """Each vserver's state on NetScaler."""
    vserver_state: str | None = None
    """UP when every vserver is UP, DOWN when one is not, ABSENT when none exists."""
    warnings: list[str] = []
    """Problems that do not stop reconciling (e.g. a Service without the VIP in externalIPs)."""
    ports_text: str | None = None
    """The spec's ports as one string (`80,443` or `*`), for `kubectl get` (written by the operator)."""


class NodeConfigSpec(_Model):
    """Written by the operator: the VIPs this node must hold on its loopback/dummy interface."""

    vips: Annotated[list[IPAddress], pydantic.Field(max_length=1024)] = []
    """Every VIP some DsrService needs on this node (the union)."""


class VipError(_Model):
    """A VIP the agent could not apply, and why."""

    address: str
    """The VIP as written in spec.vips."""
    error: str
    """Why it was refused."""


class Condition(_Model):
    """A Kubernetes-style status condition."""

    type: str
    """The condition's type (Ready, Reconciling, Stalled; Degraded on DsrNodeConfigs)."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str
    """A CamelCase reason, e.g. Converged, WaitingForLoopback, NetScalerUnreachable."""
    message: str = ""
    """Details for humans."""
    last_transition_time: str | None = None
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation the condition was computed for."""


class DriftRepair(_Model):
    """When the node's agent last restored host state that was changed behind its back, and what."""

    time: str
    """When (RFC 3339)."""
    repaired: list[str] = []
    """What was restored, one line each."""


class NodeConfigStatus(_Model):
    """Written by the node's agent only: what it applied, where, and with which host settings."""

    observed_generation: int | None = None
    """The metadata.generation whose spec.vips this status reports."""
    applied_vips: list[str] = []
    """VIPs held on the interface (the operator binds a node only for these)."""
    failed_vips: list[VipError] = []
    """VIPs refused, with the reason."""
    applied_count: int | None = None
    """len(appliedVips), for `kubectl get dsrnodeconfigs`."""
    failed_count: int | None = None
    """len(failedVips), for `kubectl get dsrnodeconfigs`."""
    interface: str | None = None
    """Where the VIPs are: lo or the dsr0 dummy link."""
    mode: Literal["dummy", "loopback"] | None = None
    """dummy (a dsr0 link) or loopback (lo)."""
    sysctls: dict[str, int] = {}
    """The ARP (and for IPv6 VIPs, DAD and neighbour-notify) sysctls the agent keeps, with their values."""
    rp_filter: dict[str, int] = {}
    """net.ipv4.conf.<if>.rp_filter per interface as found (VIP traffic needs 0 or 2 where it arrives)."""
    rp_filter_max: int | None = None
    """The strictest rp_filter found (1 = strict may drop VIP traffic), for `kubectl get dsrnodeconfigs`."""
    conditions: list[Condition] = []
    """Ready (every VIP applied) and Degraded (some VIP refused)."""
    last_error: str | None = None
    """Why the last pass could not configure the host, if it could not."""
    last_drift_repair: DriftRepair | None = None
    """When the agent last restored host state changed behind its back."""


class DsrNodeConfig(_Model):
    api_version: Literal["dsr.operators.dev/v1alpha1"] = "dsr.operators.dev/v1alpha1"
    kind: Literal["DsrNodeConfig"] = "DsrNodeConfig"
    metadata: dict[str, Any]
    spec: NodeConfigSpec = NodeConfigSpec()
    status: NodeConfigStatus | None = None
