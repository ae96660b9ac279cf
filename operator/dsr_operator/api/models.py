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
SERVICE_PLURAL = "dsrservices"
NODECONFIG_KIND = "DsrNodeConfig"
NODECONFIG_PLURAL = "dsrnodeconfigs"

WILDCARD_PORT = "*"
NITRO_WILDCARD_PORT = 65535


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


class _Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,
        alias_generator=pydantic.alias_generators.to_camel,
        use_attribute_docstrings=True,
    )


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from exc


IPAddress = Annotated[str, pydantic.AfterValidator(_ip)]
Port = Annotated[int, pydantic.Field(ge=1, le=65535)] | Literal["*"]


class StaticBackend(_Model):
    """A host outside the cluster, bound directly; its loopback VIP is the host owner's job."""

    name: Annotated[
        str, pydantic.Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    ]
    address: IPAddress


class Backends(_Model):
    """Where the backends come from: exactly one of `service` or `static`."""

    service: Annotated[str, pydantic.Field(min_length=1, max_length=63)] | None = None
    static: Annotated[list[StaticBackend], pydantic.Field(min_length=1, max_length=256)] | None = None

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> Backends:
        if (self.service is None) == (self.static is None):
            raise ValueError("exactly one of backends.service and backends.static must be set")
        if self.static is not None:
            names = [b.name for b in self.static]
            if len(set(names)) != len(names):
                raise ValueError("backends.static names must be unique")
        return self


class HealthCheck(_Model):
    """The NetScaler monitor bound to every service of the DsrService."""

    type: HealthCheckType = HealthCheckType.TCP
    interval_seconds: Annotated[int, pydantic.Field(ge=2, le=20940)] = 5
    timeout_seconds: Annotated[int, pydantic.Field(ge=1, le=20939)] = 2
    retries: Annotated[int, pydantic.Field(ge=1, le=127)] = 3
    port: Annotated[int, pydantic.Field(ge=1, le=65535)] | None = None
    through_vip: bool = True
    """Probe the VIP through the DSR path (destip=VIP, transparent): a host lacking the VIP goes DOWN."""

    @pydantic.model_validator(mode="after")
    def _timeout_below_interval(self) -> HealthCheck:
        if self.timeout_seconds >= self.interval_seconds:
            raise ValueError("healthCheck.timeoutSeconds must be less than healthCheck.intervalSeconds")
        return self


class DsrServiceSpec(_Model):
    """The user's intent: one VIP, its ports, where the backends are, and how to balance them."""

    vip: IPAddress
    ports: Annotated[list[Port], pydantic.Field(min_length=1, max_length=64)]
    backends: Backends
    lb_method: LbMethod = LbMethod.LEASTCONNECTION
    health_check: HealthCheck = HealthCheck()
    drain_seconds: Annotated[int, pydantic.Field(ge=0, le=3600)] | None = None
    """Graceful drain before a backend is removed (seconds); default: the operator's setting (30)."""
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


class NodeConfigSpec(_Model):
    """Written by the operator: the VIPs this node must hold on its loopback/dummy interface."""

    vips: Annotated[list[IPAddress], pydantic.Field(max_length=1024)] = []


class VipError(_Model):
    address: str
    error: str


class Condition(_Model):
    """A Kubernetes-style status condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class DriftRepair(_Model):
    """When the node's agent last restored host state that was changed behind its back, and what."""

    time: str
    repaired: list[str] = []


class NodeConfigStatus(_Model):
    """Written by the node's agent only: what it applied, where, and with which host settings."""

    observed_generation: int | None = None
    applied_vips: list[str] = []
    failed_vips: list[VipError] = []
    interface: str | None = None
    mode: Literal["dummy", "loopback"] | None = None
    sysctls: dict[str, int] = {}
    rp_filter: dict[str, int] = {}
    conditions: list[Condition] = []
    last_error: str | None = None
    last_drift_repair: DriftRepair | None = None


class DsrNodeConfig(_Model):
    api_version: Literal["dsr.operators.dev/v1alpha1"] = "dsr.operators.dev/v1alpha1"
    kind: Literal["DsrNodeConfig"] = "DsrNodeConfig"
    metadata: dict[str, Any]
    spec: NodeConfigSpec = NodeConfigSpec()
    status: NodeConfigStatus | None = None


def nitro_port(port: int | str) -> int:
    """The NITRO representation of a spec port: `*` is 65535 with type ANY."""
    return NITRO_WILDCARD_PORT if port == WILDCARD_PORT else int(port)
