"""Shared Kubernetes access: our custom resources as lightkube classes, and the async client factory.

Both programs (operator and node agent) talk to the API server through `lightkube.AsyncClient`.
This module names the resources once (from `dsr_operator.api.models`) and builds clients from,
in order of precedence: an explicit server URL (+ token or token file), a kubeconfig file, the
in-cluster service account, `$KUBECONFIG` / `~/.kube/config`.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import httpx2
import lightkube
import lightkube.config.kubeconfig
import lightkube.config.models
import lightkube.generic_resource
import lightkube.models.core_v1
import lightkube.models.meta_v1
import lightkube.resources.core_v1

from dsr_operator import clock
from dsr_operator.api import models

DsrService = lightkube.generic_resource.create_namespaced_resource(
    models.GROUP, models.VERSION, models.SERVICE_KIND, models.SERVICE_PLURAL
)
"""DsrService (namespaced); `DsrService.Status` addresses its status subresource."""

DsrNodeConfig = lightkube.generic_resource.create_global_resource(
    models.GROUP, models.VERSION, models.NODECONFIG_KIND, models.NODECONFIG_PLURAL
)
"""DsrNodeConfig (cluster-scoped, named after its node); `DsrNodeConfig.Status` is its status subresource."""

DsrVipPool = lightkube.generic_resource.create_global_resource(
    models.GROUP, models.VERSION, "DsrVipPool", "dsrvippools"
)
"""DsrVipPool (cluster-scoped): addresses Services of type LoadBalancer get their VIP from."""

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Involved:
    """The object an Event is about."""

    kind: str
    name: str
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    api_version: str = models.API_VERSION


async def post_event(
    client: lightkube.AsyncClient, involved: Involved, reason: str, message: str, *, component: str,
    namespace: str | None = None, warning: bool = False, host: str | None = None,
) -> None:
    """Post a core/v1 Event about `involved` (best effort: a failure is logged, never raised)."""
    now = clock.utcnow()
    where = namespace or involved.namespace or "default"
    event = lightkube.resources.core_v1.Event(
        metadata=lightkube.models.meta_v1.ObjectMeta(generateName=f"{involved.name}.", namespace=where),
        involvedObject=lightkube.models.core_v1.ObjectReference(
            apiVersion=involved.api_version, kind=involved.kind, name=involved.name, namespace=involved.namespace,
            uid=involved.uid, resourceVersion=involved.resource_version,
        ),
        reason=reason,
        message=message[:1024],
        type="Warning" if warning else "Normal",
        source=lightkube.models.core_v1.EventSource(component=component, host=host),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
        reportingComponent=component,
        reportingInstance=host or component,
    )
    try:
        await client.create(event)
    except Exception as exc:  # an event is best effort
        log.warning("Posting event %s for %s %s failed: %s", reason, involved.kind, involved.name, exc)


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where the API server is and how to authenticate; empty means "discover from the environment"."""

    kubeconfig: pathlib.Path | None = None
    """A kubeconfig file; its current context is used unless `context` names another."""
    context: str | None = None
    server: str | None = None
    """An explicit API server URL (e.g. `https://10.0.0.1:6443`, or a test emulator's `http://` URL)."""
    token: str | None = dataclasses.field(default=None, repr=False)
    token_file: pathlib.Path | None = None
    """Re-read on every request, so a rotated projected service-account token keeps working."""
    certificate_authority: pathlib.Path | None = None
    insecure_skip_tls_verify: bool = False
    timeout_seconds: float = 10.0
    """Per-request timeout (connect, read, write, pool); watches have no read timeout."""


def load_config(connection: Connection) -> lightkube.KubeConfig:
    """Resolve a `Connection` into a lightkube configuration (reads files: call it off the event loop)."""
    if connection.server is not None:
        user = lightkube.config.models.User(  # lightkube needs a user, even an anonymous one
            token=connection.token,
            token_file=str(connection.token_file) if connection.token_file is not None else None,
        )
        cluster = lightkube.config.models.Cluster(
            server=connection.server,
            certificate_auth=str(connection.certificate_authority) if connection.certificate_authority else None,
            insecure=connection.insecure_skip_tls_verify,
        )
        return lightkube.KubeConfig.from_one(cluster=cluster, user=user)
    if connection.kubeconfig is not None:
        return lightkube.KubeConfig.from_file(connection.kubeconfig)
    return lightkube.KubeConfig.from_env()


def make_client(config: lightkube.KubeConfig, connection: Connection, *, field_manager: str) -> lightkube.AsyncClient:
    """An `AsyncClient` for one program; close it with `await client.close()` (or `async with`)."""
    single = config.get(connection.context)
    return lightkube.AsyncClient(
        single,
        timeout=httpx2.Timeout(connection.timeout_seconds),
        field_manager=field_manager,
        trust_env=False,
    )


@dataclasses.dataclass(frozen=True)
class Credentials:
    """What a non-lightkube client (kopf) needs to reach the API server, from the same resolution."""

    server: str
    token: str | None = dataclasses.field(default=None, repr=False)
    ca_path: str | None = None
    ca_data: bytes | None = None
    certificate_path: str | None = None
    certificate_data: bytes | None = None
    private_key_path: str | None = None
    private_key_data: bytes | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False


def credentials(config: lightkube.KubeConfig, connection: Connection) -> Credentials:
    """Resolve a loaded configuration into plain credentials (token files are read now)."""
    import base64

    single = config.get(connection.context)
    if single is None:
        raise ValueError("the Kubernetes configuration has no usable context")
    cluster, user = single.cluster, single.user

    def path(value: str | None) -> str | None:
        return str(single.abs_file(value)) if value else None

    def data(value: str | None) -> bytes | None:
        return base64.b64decode(value) if value else None

    token = user.token if user else None
    if user is not None and user.token_file:
        token = pathlib.Path(single.abs_file(user.token_file)).read_text().strip()
    return Credentials(
        server=cluster.server,
        token=token,
        ca_path=path(cluster.certificate_auth),
        ca_data=data(cluster.certificate_auth_data),
        certificate_path=path(user.client_cert) if user else None,
        certificate_data=data(user.client_cert_data) if user else None,
        private_key_path=path(user.client_key) if user else None,
        private_key_data=data(user.client_key_data) if user else None,
        insecure=cluster.insecure,
    )
