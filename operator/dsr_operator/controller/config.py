"""Operator settings: one root of small groups, from flags or environment (prefix DSR_).

The root is read once, when `dsr-operator run` starts (or built by whoever embeds the operator), and
handed down: nothing below reads the environment. Its groups: `netscaler` (DSR_NETSCALER_*), `etcd`
(DSR_ETCD_*), the Kubernetes connection (`kube_*`), and the operator's own behaviour.
"""

from __future__ import annotations

import pathlib

import pydantic
import pydantic_settings

from dsr_operator import settings as base

SERVICE_ACCOUNT_NAMESPACE = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class OperatorSettings(pydantic_settings.BaseSettings):
    """`dsr-operator run` settings; every field also reads from the environment (DSR_<FIELD>)."""

    model_config = pydantic_settings.SettingsConfigDict(env_prefix="DSR_", extra="ignore")

    netscaler: base.NitroSettings = pydantic.Field(default_factory=base.NitroSettings)
    """How to reach NetScaler (its own variables, DSR_NETSCALER_*), read with the root."""
    etcd: base.EtcdSettings = pydantic.Field(default_factory=base.EtcdSettings)
    """The service registry, if any (DSR_ETCD_*), read with the root."""

    operator_id: str = pydantic.Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    """The ownership marker in every NetScaler object's comment; one per cluster sharing a NetScaler."""
    namespaces: list[str] = []
    """Namespaces to watch for DsrServices; empty means cluster-wide."""
    resync_seconds: float = pydantic.Field(default=60.0, gt=0)
    """How often NetScaler is re-read to repair drift (seconds)."""
    debounce_seconds: float = pydantic.Field(default=0.05, ge=0)
    """Wait after a wake-up before reconciling, to batch bursts of events (seconds)."""
    save_debounce_seconds: float = pydantic.Field(default=5.0, ge=0)
    """Wait after the last change before saving NetScaler's configuration (seconds)."""
    metrics_port: int = pydantic.Field(default=8080, ge=0, le=65535)
    """Port of the Prometheus `/metrics` endpoint; 0 disables it."""
    liveness_port: int = pydantic.Field(default=8081, ge=0, le=65535)
    """Port of the liveness endpoint `/healthz` (a stand-by replica answers too); 0 disables it."""
    default_drain_seconds: int = pydantic.Field(default=30, ge=0)
    """Drain time for DsrServices that do not set `drainSeconds` (seconds)."""
    drain_check_seconds: float = pydantic.Field(default=1.0, gt=0)
    """How often a draining backend is asked about while it drains: NetScaler ends a drain early when
    its last client leaves, and the status shows its connections (seconds)."""
    max_unbind_percent: int = pydantic.Field(default=50, ge=1, le=100)
    """Blast-radius guard: most of a vserver's bound backends one reconcile may remove (percent)."""
    step_changes: int = pydantic.Field(default=1000, ge=1)
    """Most NetScaler changes one DsrService gets per batch; a bigger change goes in steps, so that other
    DsrServices' changes never wait for all of it."""
    batch_limit: int = pydantic.Field(default=250, ge=1)
    """Most DsrServices one batch reconciles; the rest go in the next batch at once. A batch's plan,
    request bodies and replies are in memory together, so this bounds the operator's peak memory."""
    load_balancer_class: str = pydantic.Field(default="dsr.operators.dev/netscaler", max_length=63)
    """Services of type LoadBalancer with this `spec.loadBalancerClass` get an owned DsrService; empty (and
    `default_load_balancer` false): the operator serves no Services of type LoadBalancer."""
    default_load_balancer: bool = False
    """Also serve Services of type LoadBalancer without a class (this operator is the cluster's default)."""
    require_vip_pool: bool = False
    """Serve a DsrService only if its VIP lies in a DsrVipPool whose namespaceSelector admits its namespace
    (else it is Stalled, VipNotAllowed, and nothing is sent): the cluster admin decides who may claim
    which VIP. The chart turns it on; off, any VIP no other namespace holds may be claimed."""
    shutdown_quiet_seconds: float = pydantic.Field(default=1.0, ge=0)
    """On SIGTERM, keep reconciling until nothing has been in hand for this long (a `kubectl drain` evicts
    the leader together with app Pods: their endpoint changes arrive just after the signal)."""
    shutdown_max_seconds: float = pydantic.Field(default=10.0, ge=0)
    """...but no longer than this after SIGTERM; then stop (and release the Lease: the stand-by takes over)."""
    kube_server: str | None = None
    """Kubernetes API URL; default: in-cluster service account, else KUBECONFIG."""
    kube_token_file: pathlib.Path | None = None
    kube_ca_file: pathlib.Path | None = None
    kubeconfig: pathlib.Path | None = None
    leader_election: str | None = None
    """Name of the Lease the replicas elect a leader on; only its holder reconciles. None: no election
    (one process, e.g. outside a cluster)."""
    leader_election_namespace: str | None = None
    """Namespace of that Lease; default: the Pod's own (from its service account), else `default`."""
    pod_name: str | None = None
    """This replica's identity in the Lease (the chart passes the Pod name); default: the host name and a
    random suffix. Two running replicas must never share it."""

    @property
    def front_door(self) -> bool:
        """Whether Services of type LoadBalancer are served at all."""
        return bool(self.load_balancer_class) or self.default_load_balancer

    @property
    def reads_pools(self) -> bool:
        """Whether DsrVipPools are watched (to hand out VIPs, or to judge every DsrService's VIP)."""
        return self.front_door or self.require_vip_pool

    def lease_namespace(self) -> str:
        if self.leader_election_namespace:
            return self.leader_election_namespace
        try:
            return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            return "default"

