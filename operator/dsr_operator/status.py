"""`dsr-operator status`: each backend of a DsrService (or of all) as NetScaler, its node and the API see it.

Read-only: it lists DsrServices, DsrNodeConfigs, Nodes and the DsrServices' Events from the Kubernetes
API and GETs vservers' bindings and services from NITRO; it never writes. `report` is a pure function
from what was read to one row per (DsrService, port, backend); `gather` does the reading.

A DsrService's backends are the union of what is bound on NetScaler, its static hosts, and the nodes
whose DsrNodeConfig the operator asked for the VIP (a node is matched to an address by its InternalIP).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import lightkube
import lightkube.resources.core_v1

from dsr_operator import kube
from dsr_operator import settings as settings_mod
from dsr_operator.api import models
from dsr_operator.model import names, ops
from dsr_operator.model import state as nsstate
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors, executor


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What `gather` read, as plain JSON documents."""

    dsrservices: Sequence[Mapping[str, Any]]
    nodeconfigs: Mapping[str, Mapping[str, Any]]
    """By node name."""
    node_addresses: Mapping[str, str]
    """InternalIP -> node name."""
    bindings: Mapping[str, Sequence[str]]
    """Vserver name -> bound service names (absent: the vserver does not exist on NetScaler)."""
    services: Mapping[str, Mapping[str, Any]]
    """Service name -> the NITRO service record."""
    events: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] = dataclasses.field(default_factory=dict)
    """(namespace, name) -> the DsrService's Events."""
    netscaler_error: str | None = None


@dataclasses.dataclass(frozen=True)
class Row:
    dsrservice: str
    port: str
    address: str
    node: str
    netscaler: str
    node_vip: str
    last_change: str


def _time(event: Mapping[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or "")


def _condition(obj: Mapping[str, Any] | None, ctype: str) -> Mapping[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return {}


def _netscaler_state(snapshot: Snapshot, vserver: str, service: str) -> str:
    if snapshot.netscaler_error is not None:
        return "unknown (NetScaler unreachable)"
    record = snapshot.services.get(service)
    if vserver not in snapshot.bindings:
        return "no vserver"
    state = str(record.get("svrstate") or record.get("state") or "?") if record else None
    if service in snapshot.bindings[vserver]:
        return f"bound, {state or '?'}"
    if record is None:
        return "not created"
    return f"not bound, {state}"


def _node_vip(snapshot: Snapshot, node: str | None, vip: str) -> tuple[str, str]:
    """(the VIP's state on the node, when the node's agent last changed its Ready condition)."""
    if node is None:
        return "- (static host)", ""
    config = snapshot.nodeconfigs.get(node)
    if config is None:
        return "no DsrNodeConfig", ""
    spec_vips = (config.get("spec") or {}).get("vips") or []
    status = config.get("status") or {}
    since = str(_condition(config, "Ready").get("lastTransitionTime") or "")
    generation = (config.get("metadata") or {}).get("generation")
    current = status.get("observedGeneration") == generation
    failed = {f.get("address"): f.get("error") for f in status.get("failedVips") or []}
    if vip in failed:
        return f"refused: {failed[vip]}", since
    if vip in (status.get("appliedVips") or []):
        return ("applied" if current else "applied (agent behind the spec)"), since
    if vip in spec_vips:
        return "requested, not applied yet", since
    return "not requested", since


def _last_event(events: Iterable[Mapping[str, Any]], needles: Sequence[str]) -> str:
    matching = [e for e in events if any(n in str(e.get("message") or "") for n in needles)]
    if not matching:
        return ""
    latest = max(matching, key=_time)
    message = str(latest.get("message") or "")
    # A batched event lists many changes ("12 NetScaler changes: a; b; ..."): show the one about this backend.
    changes = re.sub(r"^\d+ NetScaler changes: ", "", message).split("; ")
    parts = [p for p in changes if any(n in p for n in needles)]
    text = parts[-1] if parts else message
    return f"{_time(latest)} {latest.get('reason', '')}: {text[:160]}"


def report(snapshot: Snapshot) -> list[Row]:
    """One row per (DsrService, port, backend address), sorted by DsrService, port, address."""
    rows: list[Row] = []
    by_address = dict(snapshot.node_addresses)
    for obj in sorted(snapshot.dsrservices, key=lambda o: (o["metadata"].get("namespace"), o["metadata"]["name"])):
        meta = obj["metadata"]
        key = f"{meta.get('namespace')}/{meta['name']}"
        try:
            svc = models.DsrService.model_validate({**obj, "status": None})
        except ValueError as exc:
            rows.append(Row(key, "-", "-", "-", "-", "-", f"invalid spec: {str(exc).splitlines()[0]}"))
            continue
        ref, spec = svc.ref, svc.spec
        events = snapshot.events.get((ref.namespace, ref.name), ())
        static = {b.address: b.name for b in spec.backends.static or ()}
        asked = {
            addr for addr, node in by_address.items()
            if spec.vip in ((snapshot.nodeconfigs.get(node) or {}).get("spec") or {}).get("vips", [])
        }  # fmt: skip
        for port in spec.ports:
            vserver = names.vserver(ref, port)
            bound = {
                str(snapshot.services.get(s, {}).get("ipaddress") or "") for s in snapshot.bindings.get(vserver, ())
            } - {""}
            addresses = sorted(bound | set(static) | (asked if spec.backends.service else set()))
            if not addresses:
                ready = _condition(obj, "Ready")
                rows.append(Row(key, names.port_label(port), "-", "-", _netscaler_state(snapshot, vserver, ""),
                                "-", f"no backend ({ready.get('reason', 'no status yet')})"))
                continue
            for address in addresses:
                service = names.service(port, address)
                node = None if address in static else by_address.get(address)
                vip_state, since = _node_vip(snapshot, node, spec.vip)
                change = _last_event(events, (service, address)) or (f"{since} node {node}" if since else "")
                rows.append(Row(
                    dsrservice=key, port=names.port_label(port), address=address,
                    node=node or (f"static {static[address]}" if address in static else "?"),
                    netscaler=_netscaler_state(snapshot, vserver, service), node_vip=vip_state, last_change=change,
                ))  # fmt: skip
    return rows


HEADERS = ("DSRSERVICE", "PORT", "BACKEND", "NODE", "NETSCALER", "NODE VIP", "LAST CHANGE")


def render(rows: Sequence[Row], out: TextIO) -> None:
    """A kubectl-like table."""
    table = [HEADERS, *((r.dsrservice, r.port, r.address, r.node, r.netscaler, r.node_vip, r.last_change)
                        for r in rows)]  # fmt: skip
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS) - 1)]
    for line in table:
        out.write("   ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=False)) + "   " + line[-1] + "\n")


# ---------------------------------------------------------------------------------------------- I/O


def _plain(obj: Any) -> dict[str, Any]:
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    plain: dict[str, Any] = json.loads(json.dumps(data, default=str))
    return plain


async def gather(
    api: lightkube.AsyncClient, netscaler: nitro.NitroClient | None, *, namespace: str | None, name: str | None
) -> Snapshot:
    """Read everything `report` needs (GETs and LISTs only)."""
    if name is not None:
        dsrservices = [_plain(await api.get(kube.DsrService, name, namespace=namespace))]
    else:
        ns = namespace if namespace is not None else lightkube.ALL_NS
        dsrservices = [_plain(o) async for o in api.list(kube.DsrService, namespace=ns)]
    nodeconfigs = {o["metadata"]["name"]: o for o in [_plain(c) async for c in api.list(kube.DsrNodeConfig)]}
    node_addresses: dict[str, str] = {}
    async for node in api.list(lightkube.resources.core_v1.Node):
        doc = _plain(node)
        for addr in (doc.get("status") or {}).get("addresses") or []:
            if addr.get("type") == "InternalIP":
                node_addresses[addr["address"]] = doc["metadata"]["name"]
    events: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for obj in dsrservices:
        meta = obj["metadata"]
        listing = api.list(lightkube.resources.core_v1.Event, namespace=meta.get("namespace"),
                           fields={"involvedObject.name": meta["name"]})  # fmt: skip
        events[(meta.get("namespace"), meta["name"])] = [_plain(e) async for e in listing]

    bindings: dict[str, list[str]] = {}
    services: dict[str, dict[str, Any]] = {}
    problem = None
    if netscaler is None:
        problem = "no NetScaler URL given"
    else:
        try:
            services = {s["name"]: s for s in await netscaler.get("service") if s.get("name", "").startswith("dsr-")}
            present = {v["name"] for v in await netscaler.get("lbvserver") if v.get("name", "").startswith("dsr-")}
            for vserver in sorted(present):
                rows = await netscaler.get("lbvserver_service_binding", vserver)
                bindings[vserver] = [r["servicename"] for r in rows if "servicename" in r]
                # A servicegroup's members are shown as the backends they are, named as a service would be.
                for group in await netscaler.get("lbvserver_servicegroup_binding", vserver):
                    for member in await netscaler.get(nsstate.MEMBER_BINDING, str(group.get("servicegroupname"))):
                        key = names.service(ops.spec_port(member.get("port")), str(member.get("ip")))
                        services[key] = {**member, "ipaddress": member.get("ip")}
                        bindings[vserver].append(key)
        except errors.NitroError as exc:
            problem = str(exc)
    return Snapshot(dsrservices, nodeconfigs, node_addresses, bindings, services, events, problem)


async def run(args: argparse.Namespace, out: TextIO) -> int:
    connection = kube.Connection(
        kubeconfig=args.kubeconfig, server=args.server, token_file=args.token_file, certificate_authority=args.ca_file
    )
    config = await asyncio.to_thread(kube.load_config, connection)
    api = kube.make_client(config, connection, field_manager="dsr-operator-status")
    namespace, name = _target(args)
    try:
        url = args.netscaler or os.environ.get("DSR_NETSCALER_URL")
        if url:
            async with executor.connect(_nitro_settings(args, url)) as client:
                snapshot = await gather(api, client, namespace=namespace, name=name)
        else:
            snapshot = await gather(api, None, namespace=namespace, name=name)
    except lightkube.ApiError as exc:
        print(f"dsr-operator status: {exc.status.message}", file=sys.stderr)
        return 1
    finally:
        await api.close()
    if snapshot.netscaler_error:
        print(f"# NetScaler not read: {snapshot.netscaler_error}", file=out)
    rows = report(snapshot)
    if not rows:
        print("No DsrServices found", file=out)
        return 0
    render(rows, out)
    return 0


def _nitro_settings(args: argparse.Namespace, url: str) -> settings_mod.NitroSettings:
    overrides: dict[str, Any] = {"url": url}
    if args.user:
        overrides["username"] = args.user
    if args.password_file:
        overrides["password_file"] = pathlib.Path(args.password_file)
    if args.insecure_skip_tls_verify:
        overrides["verify_tls"] = False
    if args.netscaler_ca_file:
        overrides["ca_file"] = args.netscaler_ca_file
    overrides.setdefault("retries", 1)
    return settings_mod.NitroSettings(**overrides)


def _target(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(namespace or None for all, name or None for every DsrService there)."""
    if args.target and "/" in args.target:
        namespace, _, name = args.target.partition("/")
        return namespace, name
    if args.all_namespaces:
        return None, None
    namespace = args.namespace or "default"
    return namespace, args.target


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "status",
        help="each backend's state on NetScaler and its node's VIP, for a DsrService or all (read-only)",
        description="For each DsrService backend: bound and state on NetScaler, the VIP on its node, the last change.",
    )
    p.add_argument("target", nargs="?", help="NAME or NAMESPACE/NAME (default: every DsrService of the namespace)")
    p.add_argument("-n", "--namespace", help="namespace (default: default)")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="DsrServices of every namespace")
    p.add_argument("--kubeconfig", type=pathlib.Path, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    p.add_argument("--server", help="API server URL (instead of a kubeconfig)")
    p.add_argument("--token-file", type=pathlib.Path, help="bearer token file for --server")
    p.add_argument("--ca-file", type=pathlib.Path, help="CA bundle of the --server certificate")
    p.add_argument("--netscaler", metavar="URL", help="NITRO base URL (env DSR_NETSCALER_URL; without: API only)")
    p.add_argument("--user", help="NITRO user (env DSR_NETSCALER_USERNAME; default nsroot)")
    p.add_argument("--password-file", metavar="FILE", help="file holding the NITRO password "
                   "(env DSR_NETSCALER_PASSWORD_FILE, or DSR_NETSCALER_PASSWORD)")  # fmt: skip
    p.add_argument("--netscaler-ca-file", metavar="FILE", help="CA bundle of NetScaler's TLS certificate")
    p.add_argument("--insecure-skip-tls-verify", action="store_true", help="do not verify NetScaler's TLS (lab)")
    p.set_defaults(func=lambda args: asyncio.run(run(args, sys.stdout)))
