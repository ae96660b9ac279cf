"""The `dsr-operator nitro-sim` subcommand: serve the NITRO simulator until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import signal
from typing import Any

from dsr_operator.simulator import dataplane, server

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `nitro-sim` subcommand."""
    parser = subparsers.add_parser(
        "nitro-sim",
        help="serve a NetScaler NITRO simulator",
        description="Serve a NetScaler stand-in speaking the NITRO subset dsr-operator uses, "
        "with fault injection under /_sim/.",
    )
    parser.add_argument("--listen", default="127.0.0.1:9080", metavar="HOST:PORT", help="default %(default)s")
    parser.add_argument("--state", type=pathlib.Path, metavar="FILE", help="persist the configuration here")
    parser.add_argument("--user", help="NITRO user (env DSR_SIM_USER; default nsroot)")
    parser.add_argument("--password-file", type=pathlib.Path, metavar="P", help="password file (env DSR_SIM_PASSWORD)")
    parser.add_argument(
        "--session-timeout", type=float, default=1800.0, metavar="SECONDS", help="idle timeout (%(default)s)"
    )
    parser.add_argument(
        "--dataplane-netns",
        metavar="NS",
        help="forward DSR traffic for real in this network namespace (nftables; needs root), as MBF does",
    )
    parser.add_argument(
        "--dataplane-dev", metavar="DEV", help="the interface in --dataplane-netns that faces clients and backends"
    )
    parser.add_argument(
        "--peer", metavar="URL", help="the other simulator of an HA pair (its base URL): configuration is "
        "synchronised from the primary, POST /_sim/failover swaps the roles",
    )
    parser.add_argument("--ha-state", choices=("Primary", "Secondary"), default="Primary",
                        help="this node's role in the pair (%(default)s)")
    parser.add_argument("--ha-peer-ip", metavar="IP", help="without --peer: list this peer in hanode, as one node "
                        "of a pair whose other node is not simulated (roles change only through /_sim/ha)")
    parser.add_argument("--nsip", metavar="IP", help="the address hanode and nsconfig show (default: --listen host)")
    parser.set_defaults(func=run)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def credentials(args: argparse.Namespace) -> dict[str, str]:
    user = args.user or os.environ.get("DSR_SIM_USER") or "nsroot"
    if args.password_file is not None:
        password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
    else:
        password = os.environ.get("DSR_SIM_PASSWORD") or "nsroot"
    return {user: password}


def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_listen(args.listen)
        users = credentials(args)
        if bool(args.dataplane_netns) != bool(args.dataplane_dev):
            raise ValueError("--dataplane-netns and --dataplane-dev go together")
    except (ValueError, OSError) as exc:
        logger.error("Cannot start the NITRO simulator: %s", exc)
        return 2
    pair = {"peer": args.peer, "ha_state": args.ha_state, "nsip": args.nsip or host, "peer_ip": args.ha_peer_ip}
    try:
        serve = _serve(host, port, users, args.state, args.session_timeout, args.dataplane_netns, args.dataplane_dev,
                       **pair)
        asyncio.run(serve)
    except dataplane.CommandError as exc:
        logger.error("Cannot start the DSR dataplane: %s", exc)
        return 1
    return 0


async def _serve(
    host: str,
    port: int,
    users: dict[str, str],
    state: pathlib.Path | None,
    session_timeout: float,
    netns: str | None = None,
    dev: str | None = None,
    **pair: Any,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    plane = dataplane.Dataplane(netns, dev) if netns and dev else None
    serving = server.running(
        host, port, users=users, state_path=state, session_timeout=session_timeout, dataplane=plane, **pair
    )
    async with serving as sim:
        logger.info("NITRO simulator listening on %s (state: %s)", sim.url, state or "in memory")
        if pair.get("peer"):
            logger.info("HA pair with %s; this node is %s", pair["peer"], sim.store.ha_state)
        await stop.wait()
        logger.info("Stopping the NITRO simulator")
