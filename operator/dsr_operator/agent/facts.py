"""The cluster's addresses that no node may take as a VIP, read from the API server by the agent itself.

`cluster_protected` lists, each with what it is: every node's InternalIP and ExternalIP, every node's pod
CIDRs, the API server's addresses (the `default/kubernetes` EndpointSlice, the in-cluster service host and
the server the agent talks to), the ServiceCIDRs (networking.k8s.io/v1, where the cluster serves them) and
the ranges given with `--protected-cidr`. Nodes must be readable: without them the answer says it is
`unknown`, and the agent adds no VIP until it can check (fail safe). The other sources are best effort.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

import lightkube
import lightkube.resources.core_v1
import lightkube.resources.discovery_v1
import lightkube.resources.networking_v1

from dsr_operator.agent import core
from dsr_operator.api import models

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(cidr: object) -> Network | None:
    try:
        return ipaddress.ip_network(str(cidr), strict=False)
    except ValueError:
        return None


def static_protected(api_hosts: Iterable[str], cidrs: Iterable[str]) -> core.Protected:
    """What the agent's own settings forbid: the API server hosts it was given and `--protected-cidr` ranges."""
    addresses = {a: "the API server's address" for host in api_hosts if (a := models.canonical_ip(host)) is not None}
    networks = tuple((n, "a protected range (--protected-cidr)") for c in cidrs if (n := _network(c)) is not None)
    return core.Protected(addresses=addresses, networks=networks)


async def cluster_protected(client: lightkube.AsyncClient) -> core.Protected:
    """The addresses and ranges the cluster itself forbids (see the module docstring); never raises."""
    addresses: dict[str, str] = {}
    networks: list[tuple[Network, str]] = []
    try:
        async for node in client.list(lightkube.resources.core_v1.Node):
            name = node.metadata.name if node.metadata else "?"
            for item in (node.status.addresses if node.status and node.status.addresses else ()):
                if item.type in ("InternalIP", "ExternalIP") and (a := models.canonical_ip(item.address)) is not None:
                    addresses.setdefault(a, f"node {name}'s {item.type}")
            spec = node.spec
            for cidr in (spec.podCIDRs or ([spec.podCIDR] if spec.podCIDR else [])) if spec else ():
                if (n := _network(cidr)) is not None:
                    networks.append((n, f"node {name}'s pod CIDR"))
    except Exception as exc:  # API and transport errors alike
        return core.Protected(unknown=f"listing Nodes failed: {str(exc) or type(exc).__name__}")
    try:
        api = await client.get(lightkube.resources.discovery_v1.EndpointSlice, "kubernetes", namespace="default")
        for endpoint in api.endpoints or ():
            for address in endpoint.addresses or ():
                if (a := models.canonical_ip(address)) is not None:
                    addresses[a] = "the API server's address"
    except Exception as exc:  # optional: RBAC may not grant it, a cluster may name it differently
        logger.debug("Reading the API server's EndpointSlice failed: %s", exc)
    try:
        async for service_cidr in client.list(lightkube.resources.networking_v1.ServiceCIDR):
            for cidr in (service_cidr.spec.cidrs or ()) if service_cidr.spec else ():
                if (n := _network(cidr)) is not None:
                    networks.append((n, "the cluster's service CIDR"))
    except Exception as exc:  # optional: ServiceCIDR is GA in 1.33; older clusters do not serve it
        logger.debug("Listing ServiceCIDRs failed: %s", exc)
    return core.Protected(addresses=addresses, networks=tuple(networks))
