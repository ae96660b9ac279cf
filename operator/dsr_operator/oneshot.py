"""One-shot commands without a cluster: `plan`, `apply` (and `apply --delete`) and `crd`.

They read DsrService manifests with static backends (the same YAML `kubectl apply` takes), plan
against the objects read from NetScaler, and print the change as NetScaler CLI commands.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import pydantic
import yaml

from dsr_operator import settings as settings_mod
from dsr_operator.api import models
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors, executor, ha, render
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner

EXIT_INVALID = 2
EXIT_FAILED = 1


@dataclasses.dataclass(frozen=True)
class Loaded:
    path: pathlib.Path
    service: models.DsrService


def _field_path(loc: Sequence[Any]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("constrained")))]
    out = ""
    for part in parts:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def load_manifests(paths: Iterable[pathlib.Path], *, registry: bool = False
                   ) -> tuple[list[Loaded], list[str], list[str]]:
    """Parse DsrServices from files or folders: (loaded, errors, notices).

    Registry-backed ones are loaded only with `registry` (`sync` follows registries; `plan` and
    `apply` do not).
    """
    loaded: list[Loaded] = []
    problems: list[str] = []
    notices: list[str] = []
    files: list[pathlib.Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.y*ml")) if path.is_dir() else [path])
    for path in files:
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        for doc in documents:
            if not isinstance(doc, dict) or doc.get("kind") != models.SERVICE_KIND:
                continue
            meta = doc.get("metadata") or {}
            label = f"DsrService {meta.get('namespace', 'default')}/{meta.get('name', '?')}"
            try:
                svc = models.DsrService.model_validate(doc)
            except pydantic.ValidationError as exc:
                for err in exc.errors():
                    problems.append(f"{path}: {label}: {_field_path(err['loc'])}: {err['msg']}")
                continue
            if svc.spec.backends.service is not None:
                notices.append(
                    f"{path}: {label}: backends.service needs the operator in a cluster; skipped here"
                )
                continue
            if svc.spec.backends.registry is not None and not registry:
                notices.append(f"{path}: {label}: backends.registry needs `dsr-operator sync` or the operator; "
                               "skipped here")
                continue
            loaded.append(Loaded(path, svc))
    seen: dict[tuple[str, str], pathlib.Path] = {}
    for item in loaded:
        key = (item.service.ref.namespace, item.service.ref.name)
        if key in seen:
            problems.append(
                f"{item.path}: DsrService {key[0]}/{key[1]}: metadata.name: also defined in {seen[key]}"
            )
        seen[key] = item.path
    by_ref = {item.service.ref: item for item in loaded}
    order = {item.service.ref: i for i, item in enumerate(loaded)}
    for conflict in desired_mod.vip_conflicts(
        (item.service.ref, item.service.spec, f"{order[item.service.ref]:08d}") for item in loaded
    ):
        item = by_ref[conflict.loser]
        winner = f"{conflict.winner.namespace}/{conflict.winner.name}"
        problems.append(
            f"{item.path}: DsrService {conflict.loser.namespace}/{conflict.loser.name}: spec.ports: "
            f"{conflict.endpoint} is already claimed by DsrService {winner}"
        )
    return loaded, problems, notices


def intents(loaded: Iterable[Loaded]) -> list[desired_mod.Intent]:
    return [
        desired_mod.Intent(
            item.service.ref, item.service.spec, desired_mod.static_backends(item.service.spec)
        )
        for item in loaded
    ]


def _policy(operator_id: str, intents: Sequence[desired_mod.Intent]) -> planner.Policy:
    return planner.Policy(
        operator_id=operator_id,
        drain_seconds={i.ref.uid: i.spec.drain_seconds for i in intents if i.spec.drain_seconds is not None},
        guard_percent={i.ref.uid: i.spec.max_unbind_percent for i in intents if i.spec.max_unbind_percent},
        default_guard_percent=100,  # a one-shot apply is the admin's explicit request
    )


def print_plan(plan: planner.Plan, out: TextIO) -> None:
    if plan.empty and not plan.holds:
        print("No changes: NetScaler matches the manifests.", file=out)
        return
    for op in plan.ops:
        print(render.command(op.verb, op.kind, op.body), file=out)
    for hold in plan.holds:
        print(f"# {hold.reason}: {hold.message}", file=out)


async def _plan_once(
    client: nitro.NitroClient, intents: Sequence[desired_mod.Intent], operator_id: str, delete: bool
) -> planner.Plan:
    actual = await executor.read_actual(client, operator_id)
    scope = frozenset(i.ref.uid for i in intents)
    want = desired_mod.desired([] if delete else intents)
    return planner.diff(want, actual, _policy(operator_id, intents), scope)


async def run_plan(
    client: nitro.NitroClient,
    intents: Sequence[desired_mod.Intent],
    operator_id: str,
    delete: bool,
    out: TextIO,
) -> int:
    print_plan(await _plan_once(client, intents, operator_id, delete), out)
    return 0


#: Failovers an apply follows before it gives up (the pair keeps flapping).
MAX_FAILOVERS = 3


async def run_apply(
    target: nitro.NitroClient | ha.Nodes,
    intents: Sequence[desired_mod.Intent],
    operator_id: str,
    delete: bool,
    out: TextIO,
    wait: bool = True,
    save: bool = True,
) -> int:
    """Apply until converged (waiting out drains); print what was done and any NetScaler error.

    `target` is one NetScaler, or the `ha.Nodes` of an HA pair: then the primary is asked again
    before each write stage, and after a failover the rest is planned against the new primary.
    `save`: save the configuration at the end (the conformance suite leaves a user's box unsaved).
    """
    nodes = target if isinstance(target, ha.Nodes) else None
    started = time.monotonic()
    requests_before = _requests(target)
    changes = failovers = 0
    while True:
        client = await nodes.primary() if nodes is not None else target
        assert isinstance(client, nitro.NitroClient)
        plan = await _plan_once(client, intents, operator_id, delete)
        if plan.empty and not plan.holds:
            break
        outcome = await executor.execute(client, plan.stages, before_stage=nodes.still_primary if nodes else None)
        for op in outcome.applied:
            print(f"applied: {render.command(op.verb, op.kind, op.body)}", file=out)
        changes += len(outcome.applied)
        if not outcome.complete:
            failovers += 1
            if failovers > MAX_FAILOVERS:
                print(f"NetScaler failed over {failovers} times; run apply again", file=out)
                return EXIT_FAILED
            print("# NetScaler failed over: planning the rest against the new HA primary", file=out)
            continue
        if outcome.failures:
            for failure in outcome.failures:
                err = failure.error
                code = err.errorcode if isinstance(err, errors.NitroApiError) else "-"
                print(
                    f"failed: {render.command(failure.op.verb, failure.op.kind, failure.op.body)}: "
                    f"errorcode {code}: {err}",
                    file=out,
                )
            print("Some changes failed; the rest were applied. Fix the cause and run apply again.", file=out)
            return EXIT_FAILED
        delay = plan.retry_after
        if delay is None and plan.empty:
            for hold in plan.holds:
                print(f"# {hold.reason}: {hold.message}", file=out)
            break
        if delay is not None:
            if not wait:
                print(
                    f"# waiting is off; {len(plan.holds)} change(s) wait for drains; run apply again",
                    file=out,
                )
                break
            for hold in plan.holds:
                print(f"# {hold.reason}: {hold.message}", file=out)
            await asyncio.sleep(min(delay, 5.0))
    if changes and save:
        client = await nodes.primary() if nodes is not None else target
        assert isinstance(client, nitro.NitroClient)
        await client.save_config()
    elapsed = time.monotonic() - started
    print(
        f"Applied {changes} change(s) with {_requests(target) - requests_before} NITRO request(s) "
        f"in {elapsed:.2f}s.",
        file=out,
    )
    return 0


def _requests(target: nitro.NitroClient | ha.Nodes) -> int:
    return target.requests if isinstance(target, ha.Nodes) else target.stats.requests


async def show_objects(client: nitro.NitroClient, operator_id: str, out: TextIO) -> None:
    """Print our vservers with their bound services and runtime states."""
    actual = await executor.read_actual(client, operator_id)
    for vs in actual.of_kind("lbvserver"):
        port = nsops.spec_port(vs.get("port"))
        print(
            f"lb vserver {vs.name}  {vs.get('servicetype')} {vs.get('ipv46')}:{port}  -m {vs.get('m')}  "
            f"-lbMethod {vs.get('lbmethod')}  state {vs.state}",
            file=out,
        )
        for group in sorted(b.child for b in actual.bindings_of(vs.name)
                            if b.kind == ns.GROUP_BINDING and b.parent == vs.name):
            print(f"  bound servicegroup {group}", file=out)
            for m in sorted(b for b in actual.bindings_of(group) if b.kind == ns.MEMBER_BINDING and b.parent == group):
                print(f"    member {m.child} {nsops.spec_port(m.port)}  state {m.state or '?'}", file=out)
        for b in sorted(b for b in actual.bindings_of(vs.name) if b.kind == ns.VSERVER_BINDING and b.parent == vs.name):
            svc = actual.get("service", b.child)
            state = svc.state if svc else "?"
            server = svc.get("servername") if svc else "?"
            print(
                f"  bound service {b.child}  server {server}  -usip {svc.get('usip') if svc else '?'}  "
                f"state {state}",
                file=out,
            )
    print(
        f"nsmode MBF: {'enabled' if actual.mbf else 'disabled'}; servers: "
        f"{', '.join(s.name for s in actual.of_kind('server')) or 'none'}",
        file=out,
    )


def nitro_settings_of(args: argparse.Namespace) -> settings_mod.NitroSettings:
    overrides: dict[str, Any] = {}
    if args.netscaler and len(args.netscaler) > 2:
        raise ValueError("--netscaler takes one URL, or an HA pair's two NSIPs")
    if args.netscaler and len(args.netscaler) == 2:
        overrides["urls"] = args.netscaler
    elif args.netscaler:
        overrides["url"] = args.netscaler[0]
    if args.user:
        overrides["username"] = args.user
    if args.password_file:
        overrides["password_file"] = args.password_file
    if args.ca_file:
        overrides["ca_file"] = args.ca_file
    if args.insecure_skip_tls_verify:
        overrides["verify_tls"] = False
    return settings_mod.NitroSettings(**overrides)


async def _with_client(args: argparse.Namespace, intents: list[desired_mod.Intent]) -> int:
    nitro_settings = nitro_settings_of(args)
    operator_id = args.operator_id
    urls = nitro_settings.endpoints()
    nodes = ha.Nodes(urls, lambda url: executor.connect(nitro_settings, url))
    try:
        if args.command == "plan" and len(urls) == 1:  # reading: any node will do
            async with executor.connect(nitro_settings) as client:
                return await run_plan(client, intents, operator_id, args.delete, sys.stdout)
        try:
            client = await nodes.primary()
        except ha.NotPrimary:
            for url, state in nodes.states.items():
                print(f"NetScaler at {url} is the HA {state}: changes there would be lost; apply to the primary",
                      file=sys.stderr)
            return EXIT_FAILED
        if args.command == "plan":
            return await run_plan(client, intents, operator_id, args.delete, sys.stdout)
        return await run_apply(nodes, intents, operator_id, args.delete, sys.stdout, wait=not args.no_wait)
    except errors.NitroApiError as exc:
        print(f"NetScaler error: errorcode {exc.errorcode}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except errors.NitroError as exc:
        print(f"NetScaler unreachable at {', '.join(urls)}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        await nodes.close()


def _cmd_plan_apply(args: argparse.Namespace) -> int:
    loaded, problems, notices = load_manifests(pathlib.Path(f) for f in args.filename)
    for notice in notices:
        print(notice, file=sys.stderr)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    try:
        return asyncio.run(_with_client(args, intents(loaded)))
    except ValueError as exc:  # missing credentials and the like
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID


def _cmd_crd(args: argparse.Namespace) -> int:
    from dsr_operator.api import crd

    files = crd.render()
    if args.output_dir:
        out = pathlib.Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (out / name).write_text(text)
        return 0
    print("---\n".join(files.values()), end="")
    return 0


def connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--netscaler", metavar="URL", action="append",
        help="NITRO base URL (env DSR_NETSCALER_URL); give it twice for an HA pair's two NSIPs "
        "(env DSR_NETSCALER_URLS): changes go to the primary only",
    )
    parser.add_argument("--user", help="NITRO user (env DSR_NETSCALER_USERNAME; default nsroot)")
    parser.add_argument(
        "--password-file",
        metavar="FILE",
        help="file holding the NITRO password (env DSR_NETSCALER_PASSWORD_FILE, "
        "or the password itself in DSR_NETSCALER_PASSWORD)",
    )
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify NetScaler's TLS certificate")
    parser.add_argument(
        "--insecure-skip-tls-verify", action="store_true", help="do not verify TLS (lab only)"
    )
    parser.add_argument(
        "--operator-id",
        default=os.environ.get("DSR_OPERATOR_ID", "default"),
        help="ownership marker written into each object's comment (default: default)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, text in (
        ("plan", "print the NetScaler change for DsrService manifests, as CLI commands"),
        ("apply", "make NetScaler match DsrService manifests (static backends)"),
    ):
        p = subparsers.add_parser(name, help=text, description=text)
        p.add_argument(
            "-f",
            "--filename",
            action="append",
            required=True,
            metavar="FILE",
            help="manifest file or folder (repeatable)",
        )
        p.add_argument("--delete", action="store_true", help="remove what these manifests created")
        if name == "apply":
            p.add_argument("--no-wait", action="store_true", help="do not wait for drains to finish")
        connection_flags(p)
        p.set_defaults(func=_cmd_plan_apply)
    crd = subparsers.add_parser("crd", help="print the CustomResourceDefinitions (or write them to a folder)")
    crd.add_argument("--output-dir", metavar="DIR", help="write dsrservice.yaml and dsrnodeconfig.yaml here")
    crd.set_defaults(func=_cmd_crd)
