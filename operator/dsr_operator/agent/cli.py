"""Command-line entry points of the agents: `dsr-operator agent`, `host-setup` and `host-agent`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import pathlib
import re
import signal
import socket
import sys
import urllib.parse
from collections.abc import Coroutine
from typing import Any

import lightkube

from dsr_operator import kube
from dsr_operator import settings as settings_mod
from dsr_operator.agent import core, host, hostsetup, loop, metrics, netlink, registration, state
from dsr_operator.api import models
from dsr_operator.registry import etcd

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this component's subcommands."""
    agent = subparsers.add_parser(
        "agent",
        help="node agent: hold this node's VIPs on a dummy/loopback interface (DaemonSet)",
        description="Watch this node's DsrNodeConfig and hold its VIPs on the host with netlink.",
    )
    agent.add_argument(
        "--node-name", default=os.environ.get("NODE_NAME"), help="this node's name (default: $NODE_NAME)"
    )
    agent.add_argument(
        "--interface-mode",
        choices=("auto", "dummy", "loopback"),
        default="auto",
        help="dummy: a dsr0 dummy link; loopback: VIPs on lo; auto: dummy if the kernel has it",
    )
    agent.add_argument("--interface", default="dsr0", help="name of the dummy interface (default: dsr0)")
    agent.add_argument(
        "--resync-seconds",
        type=float,
        default=30.0,
        help="re-check and repair the host at least this often (default: 30)",
    )
    agent.add_argument("--netns", help="apply inside this named network namespace (ip netns)")
    agent.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("DSR_AGENT_METRICS_PORT", "0")),
        help="serve Prometheus /metrics on this port (default: $DSR_AGENT_METRICS_PORT, else 0: off)",
    )
    agent.add_argument(
        "--state-dir",
        type=pathlib.Path,
        default=state.DEFAULT_DIR,
        help=f"where the agent remembers what it changed (default: {state.DEFAULT_DIR})",
    )
    agent.add_argument(
        "--kubeconfig",
        type=pathlib.Path,
        default=None,
        help="kubeconfig file (default: in-cluster, then $KUBECONFIG, then ~/.kube/config)",
    )
    agent.add_argument("--server", help="API server URL (instead of a kubeconfig)")
    agent.add_argument("--token-file", type=pathlib.Path, help="bearer token file for --server")
    agent.add_argument("--ca-file", type=pathlib.Path, help="CA bundle that signed the --server certificate")
    agent.add_argument(
        "--protected-cidr",
        action="append",
        default=[],
        metavar="CIDR",
        help="never take a VIP in this range (repeat; the cluster's node, pod, service and API server "
        "addresses are always refused)",
    )
    agent.add_argument(
        "--api-grace-seconds",
        type=float,
        default=10.0,
        help="remove VIPs just added when the API server does not answer for this long after (default: 10)",
    )
    agent.add_argument(
        "--uninstall",
        action="store_true",
        help="remove the VIPs and dummy link the agent added, restore the sysctls, exit",
    )
    agent.set_defaults(func=run_agent)

    setup = subparsers.add_parser(
        "host-setup",
        help="print or apply the loopback VIP steps for a backend host outside Kubernetes",
        description="Print the commands that make a host a DSR backend for the VIPs, or (Linux) apply them.",
    )
    setup.add_argument("--vip", action="append", required=True, help="a VIP (repeat for several)")
    setup.add_argument("--os", choices=("linux", "windows"), default="linux", dest="target_os")
    setup.add_argument(
        "--apply", action="store_true", help="Linux: perform the runtime steps now, with the node agent's code"
    )
    setup.add_argument(
        "--remove",
        action="store_true",
        help="the undo steps; with --apply, remove what --apply added and restore the sysctls",
    )
    setup.add_argument("--netns", help="Linux: a named network namespace instead of the host")
    setup.add_argument("--uplink", default="Ethernet", help="Windows: the uplink adapter (default: Ethernet)")
    setup.add_argument(
        "--state-dir",
        type=pathlib.Path,
        default=state.DEFAULT_DIR,
        help=f"Linux --apply: where changes are remembered (default: {state.DEFAULT_DIR})",
    )
    setup.add_argument("--etcd", metavar="URL",
                       help="with --prefix and --address: also print how the host registers itself in etcd "
                       "(Windows: a scheduled task; Linux: the host-agent command)")
    setup.add_argument("--prefix", help="the DsrService's backends.registry.etcd.prefix")
    setup.add_argument("--address", help="this host's address on the NetScaler's segment")
    setup.add_argument("--port", type=int, help="the service port, for the record (DNS SRV)")
    setup.set_defaults(func=run_host_setup)

    agent_help = "join a registry-backed DsrService from a Linux host: VIP on the loopback first, then register in etcd"
    reg = subparsers.add_parser("host-agent", help=agent_help, description=agent_help + (
        "; on SIGTERM: drain, deregister, then remove the VIP"))
    reg.add_argument("--etcd", metavar="URL", action="append",
                     help="etcd client URL (repeatable; env DSR_ETCD_ENDPOINTS, DSR_ETCD_USERNAME, "
                     "DSR_ETCD_PASSWORD_FILE, DSR_ETCD_CA_FILE, DSR_ETCD_CERT_FILE, DSR_ETCD_KEY_FILE)")
    reg.add_argument("--prefix", required=True, help="the DsrService's backends.registry.etcd.prefix")
    reg.add_argument("--vip", required=True, help="the DsrService's VIP")
    reg.add_argument("--address", required=True, help="this host's address on the NetScaler's segment")
    reg.add_argument("--port", type=int, help="the service port, for the record (DNS SRV; must be a DsrService port)")
    reg.add_argument("--name", help="the host's name in the registry (default: the host name)")
    reg.add_argument("--ttl", type=int, default=10, help="lease seconds: a crashed host is unbound this long after "
                     "its last renewal (default 10)")
    reg.add_argument("--drain-seconds", type=float, default=40.0,
                     help="on stop, stay registered as draining (VIP in place) this long before leaving: the "
                     "DsrService's drainSeconds plus a few seconds (default 40)")
    reg.add_argument("--netns", help="a named network namespace instead of the host")
    reg.add_argument("--state-dir", type=pathlib.Path, default=state.DEFAULT_DIR.parent / "host-agent",
                     help="where the VIP changes are remembered (default: %(default)s)")
    reg.set_defaults(func=run_host_agent)


def run_agent(args: argparse.Namespace) -> int:
    if not args.uninstall and not args.node_name:
        print("dsr-operator agent: --node-name (or $NODE_NAME) is required", file=sys.stderr)
        return 2
    settings = loop.Settings(
        node_name=args.node_name or "",
        interface_mode=args.interface_mode,
        interface=args.interface,
        resync_seconds=args.resync_seconds,
        netns=args.netns,
        state_dir=args.state_dir,
        metrics_port=args.metrics_port,
        protected_cidrs=tuple(args.protected_cidr),
        api_grace_seconds=args.api_grace_seconds,
    )
    connection = kube.Connection(
        kubeconfig=args.kubeconfig, server=args.server, token_file=args.token_file, certificate_authority=args.ca_file
    )
    return asyncio.run(_agent_main(settings, connection, uninstall=args.uninstall))


async def _agent_main(settings: loop.Settings, connection: kube.Connection, *, uninstall: bool) -> int:
    async with host.Host(
        netns=settings.netns,
        mode=settings.interface_mode,
        interface=settings.interface,
        state_dir=settings.state_dir,
    ) as the_host:
        if uninstall:
            try:
                done = await the_host.uninstall()
            except host.HostError as exc:
                logger.error("Uninstall incomplete: %s", exc)
                return 1
            for line in done or ["nothing to undo"]:
                print(line)
            return 0
        config = await asyncio.to_thread(kube.load_config, connection)
        settings = dataclasses.replace(settings, api_hosts=_api_hosts(config, connection))
        client = kube.make_client(config, connection, field_manager=loop.COMPONENT)
        exporter = metrics.AgentMetrics(settings.node_name) if settings.metrics_port else None
        runner = await exporter.serve(settings.metrics_port) if exporter is not None else None
        try:
            agent = loop.Agent(settings, the_host, client, metrics=exporter)
            return await _until_signal(agent.run())
        except netlink.LinkTypeUnsupported as exc:
            logger.error("Interface mode %s is not possible here: %s; use --interface-mode auto or loopback",
                         settings.interface_mode, exc)
            return 2
        finally:
            if runner is not None:
                await runner.cleanup()
            await client.close()


def _api_hosts(config: lightkube.KubeConfig, connection: kube.Connection) -> tuple[str, ...]:
    """The hosts the agent reaches the API server by: the configured server, and the in-cluster service host."""
    hosts = [os.environ.get("KUBERNETES_SERVICE_HOST", "")]
    with contextlib.suppress(Exception):  # a context without a server: nothing to add
        single = config.get(connection.context)
        if single is not None:
            hosts.append(urllib.parse.urlsplit(single.cluster.server).hostname or "")
    return tuple(h for h in hosts if h)


async def _until_signal(work: Coroutine[Any, Any, None]) -> int:
    """Run `work` until SIGTERM/SIGINT; stopping leaves the VIPs in place (an upgrade must not drop traffic)."""
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.remove_signal_handler(sig)
        stopper.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if stop.is_set():
        logger.info("Stopping on signal; the VIPs stay in place")
        return 0
    task.result()  # re-raise what ended the agent
    return 1


def run_host_agent(args: argparse.Namespace) -> int:
    vips, invalid = core.parse_vips([args.vip])
    address = models.canonical_ip(args.address)
    problems = [f"--vip {f.address}: {f.error}" for f in invalid]
    if address is None:
        problems.append(f"--address {args.address!r} is not an IP address")
    name = args.name or socket.gethostname().split(".")[0].lower()
    if not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", name):
        problems.append(f"--name {name!r} is not a DNS label")
    try:
        etcd_settings = settings_mod.EtcdSettings(**({"endpoints": args.etcd} if args.etcd else {}))
        if not etcd_settings.configured:
            problems.append("no etcd: give --etcd URL (or DSR_ETCD_ENDPOINTS)")
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        for problem in problems:
            print(f"dsr-operator host-agent: {problem}", file=sys.stderr)
        return 2
    assert address is not None
    reg = registration.Registration(args.prefix, name, address, args.port, args.ttl, args.drain_seconds)
    return asyncio.run(_host_agent_main(reg, etcd_settings, vips, args.netns, args.state_dir))


async def _host_agent_main(reg: registration.Registration, etcd_settings: settings_mod.EtcdSettings,
                           vips: list[core.Vip], netns: str | None, state_dir: pathlib.Path) -> int:
    stop = asyncio.Event()
    running = asyncio.get_running_loop()

    def leave(sig: signal.Signals) -> None:
        logger.info("%s: leaving", sig.name)
        stop.set()

    async with etcd.EtcdClient.of(etcd_settings) as client, host.Host(
            netns=netns, mode="loopback", state_dir=state_dir) as the_host:
        # Only now: opening the Host forks pyroute2's netns helper, which must not share asyncio's wakeup
        # fd (a signal it gets would read as ours, see agent.netlink).
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.add_signal_handler(sig, leave, sig)
        try:
            return await registration.HostAgent(reg, client, the_host, vips).run(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                running.remove_signal_handler(sig)


def run_host_setup(args: argparse.Namespace) -> int:
    vips, invalid = core.parse_vips(args.vip)
    if invalid:
        for failure in invalid:
            print(f"dsr-operator host-setup: {failure.address}: {failure.error}", file=sys.stderr)
        return 2
    join: hostsetup.Join | None = None
    if args.etcd or args.prefix or args.address:
        address = models.canonical_ip(args.address or "")
        if not (args.etcd and args.prefix and address) or args.remove or len(vips) != 1:
            print("dsr-operator host-setup: registering needs --etcd, --prefix, a valid --address and one --vip "
                  "(and no --remove)", file=sys.stderr)
            return 2
        join = hostsetup.Join(args.etcd, args.prefix, address, args.port)
    if args.target_os == "windows":
        if args.apply:
            print(
                "dsr-operator host-setup: --apply works on Linux only; run the printed PowerShell instead",
                file=sys.stderr,
            )
            return 2
        sys.stdout.write(hostsetup.windows(vips, remove=args.remove, uplink=args.uplink))
        if join is not None:
            sys.stdout.write(hostsetup.windows_registration(join, vips[0].address))
        return 0
    if not args.apply:
        sys.stdout.write(hostsetup.linux(vips, remove=args.remove, netns=args.netns))
        if join is not None:
            sys.stdout.write(hostsetup.linux_registration(join, vips[0].address))
        return 0
    return asyncio.run(_host_setup_apply(vips, remove=args.remove, netns=args.netns, state_dir=args.state_dir))


async def _host_setup_apply(vips: list[core.Vip], *, remove: bool, netns: str | None, state_dir: pathlib.Path) -> int:
    async with host.Host(netns=netns, mode="loopback", state_dir=state_dir) as the_host:
        if remove:
            try:
                done = await the_host.uninstall()
            except host.HostError as exc:
                print(f"dsr-operator host-setup: {exc}", file=sys.stderr)
                return 1
            for line in done or ["nothing to undo"]:
                print(line)
            return 0
        outcome = await the_host.apply(vips)
    for address in outcome.applied:
        print(f"holding {address} on {outcome.interface}")
    for key, value in sorted(outcome.sysctls.items()):
        print(f"{key} = {value}")
    for name, value in sorted(outcome.rp_filter.items()):
        if value == 1:
            print(f"warning: net.ipv4.conf.{name}.rp_filter = 1 (strict) may drop VIP traffic; use 0 or 2")
    for failure in outcome.failed:
        print(f"failed: {failure.address}: {failure.error}", file=sys.stderr)
    if outcome.error:
        print(f"error: {outcome.error}", file=sys.stderr)
    return 1 if outcome.error or outcome.failed else 0
