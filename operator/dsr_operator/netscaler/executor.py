"""Read our objects from NetScaler and carry out a plan, stage by stage, in bulk requests.

Reading costs one GET per object type (filtered to our name prefix, only the fields we use; the
bindings of every parent come unfiltered, as `bulkbindings=yes` is documented, and are filtered here).
Writing sends each plan stage as bulk requests with `X-NITRO-ONERROR: continue`, so one bad object
fails alone and is reported against its DsrService (per-object error isolation). Outcomes that mean
"already as wanted" (deleting what is gone, binding what is bound) count as success, so a partly
applied plan is safe to run again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import errors

log = logging.getLogger(__name__)

#: Largest number of objects sent in one bulk request.
CHUNK = 1000

_BINDING_ATTRS: dict[str, tuple[str, ...]] = {
    ns.VSERVER_BINDING: ("name", "servicename", "curstate"),
    ns.MONITOR_BINDING: ("name", "monitor_name"),
    ns.GROUP_BINDING: ("name", "servicegroupname"),
    ns.GROUP_MONITOR_BINDING: ("servicegroupname", "monitor_name"),
    ns.MEMBER_BINDING: ("servicegroupname", "servername", "port", "svrstate"),
}
#: The field of a binding record that names its parent.
_PARENT = {ns.GROUP_MONITOR_BINDING: "servicegroupname", ns.MEMBER_BINDING: "servicegroupname"}
_ATTRS: dict[str, tuple[str, ...]] = {
    "server": ("name", "ipaddress", "comment", "state"),
    "service": ("name", "servername", "servicetype", "port", "usip", "healthmonitor", "comment", "svrstate"),
    "servicegroup": ("servicegroupname", "servicetype", "usip", "healthmonitor", "comment"),
    "lbvserver": ("name", "servicetype", "ipv46", "port", "lbmethod", "m", "comment", "curstate"),
    "lbmonitor": (
        "monitorname",
        "type",
        "interval",
        "units3",
        "resptimeout",
        "units4",
        "retries",
        "destip",
        "destport",
        "transparent",
        "comment",
    ),
}


@dataclasses.dataclass(frozen=True)
class Failure:
    op: nsops.Op
    error: errors.NitroError

    def __str__(self) -> str:
        return f"{self.op.verb} {self.op.kind} {self.op.target}: {self.error}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    applied: tuple[nsops.Op, ...]
    failures: tuple[Failure, ...]
    complete: bool = True
    """False when `before_stage` stopped the plan (the node is no longer the HA primary)."""


async def read_actual(client: nitro.NitroClient, operator_id: str) -> ns.NetScalerState:
    """Our objects on the box (and the names of hand-made ones with our prefix), in one GET per type."""

    async def objects(rtype: str) -> list[dict[str, Any]]:
        key = ns.KINDS[rtype].key
        return await client.get(rtype, filter={key: f"/^{ns.PREFIX}/"}, attrs=_ATTRS[rtype])

    async def bindings(rtype: str) -> list[dict[str, Any]]:
        # `bulkbindings=yes` is documented for a get-all only, never with `filter=` or `attrs=`: filter
        # here, and keep only the fields read (a binding record has 14; the whole box's are large).
        rows = await client.get(rtype, bulkbindings=True)
        wanted, parent = _BINDING_ATTRS[rtype], _PARENT.get(rtype, "name")
        return [{k: row[k] for k in wanted if k in row}
                for row in rows if str(row.get(parent, "")).startswith(ns.PREFIX)]

    results = await asyncio.gather(
        client.get_modes(),
        *(objects(rtype) for rtype in ns.KINDS),
        return_exceptions=True,  # let every read finish before the caller may close the client
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    modes = typing.cast(dict[str, Any], results[0])
    records = typing.cast(list[list[dict[str, Any]]], results[1:])
    by_type = dict(zip(ns.KINDS, records, strict=True))
    # The bindings one type after the other: each is the whole box's, and its records, 14 fields each,
    # are cut down before the next is read (read together, the two were the operator's peak memory).
    for rtype in ns.BINDING_KINDS:
        by_type[rtype] = await bindings(rtype)
    return ns.parse_actual(by_type, operator_id=operator_id, mbf=_truthy(modes.get("mbf")))


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "enabled"))


def _benign(op: nsops.Op, error: errors.NitroError) -> bool:
    """Errors that mean the object is already as the operation wants it."""
    if op.verb in ("delete", "unbind"):
        return isinstance(error, errors.NitroNotFound | errors.NitroNotBound)
    if op.verb == "bind":
        return isinstance(error, errors.NitroAlreadyExists)
    return False


async def _send(client: nitro.NitroClient, stage: nsops.Stage, batch: Sequence[nsops.Op]) -> list[Any]:
    bodies = [dict(op.body) for op in batch]
    if stage.kind == nsops.NSMODE:
        await client.enable_modes(sorted({m for body in bodies for m in body["mode"]}))
        return [nitro.ItemResult(i, b, ok=True) for i, b in enumerate(bodies)]
    verb = stage.verb
    if verb == "add":
        return await client.add(stage.kind, bodies)
    if verb == "update":
        return await client.update(stage.kind, bodies)
    if verb == "delete":
        return await client.delete(stage.kind, bodies)
    if verb == "bind":
        return await client.bind(stage.kind, bodies)
    if verb == "unbind":
        return await client.unbind(stage.kind, bodies)
    return await client.action(stage.kind, verb, bodies)


async def execute(
    client: nitro.NitroClient,
    stages: Sequence[nsops.Stage],
    *,
    before_stage: Callable[[], Awaitable[bool]] | None = None,
) -> Outcome:
    """Carry out a plan's stages in order; failed objects are reported, the rest goes on.

    An operation whose prerequisite failed (a service whose server could not be added) fails on
    the box too and is reported the same way; nothing is skipped silently. `before_stage` is
    asked before each stage (an HA pair: is this node still the primary?); when it says no, the
    plan stops there and the outcome is not `complete`.
    """
    applied: list[nsops.Op] = []
    failures: list[Failure] = []
    complete = True
    for stage in stages:
        if before_stage is not None and not await before_stage():
            complete = False
            break
        batches = [stage.ops[i : i + CHUNK] for i in range(0, len(stage.ops), CHUNK)]
        results = await asyncio.gather(*(_send(client, stage, b) for b in batches), return_exceptions=True)
        for batch, result in zip(batches, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, errors.NitroError):
                    raise result
                if isinstance(result, errors.NitroTransportError | errors.NitroServerError):
                    raise result  # the box is unreachable or failing: stop, the next run resumes
                # One error for the whole request: judged per operation by the same "already done"
                # rules as per-item results (an unbind of what is already unbound is done).
                for op in batch:
                    if _benign(op, result):
                        applied.append(op)
                    else:
                        failures.append(Failure(op, result))
                continue
            for op, item in zip(batch, result, strict=True):
                if item.ok or (item.error is not None and _benign(op, item.error)):
                    applied.append(op)
                elif item.error is not None:
                    failures.append(Failure(op, item.error))
                else:
                    failures.append(Failure(op, errors.NitroError("not attempted")))
    for failure in failures:
        log.warning("NetScaler refused: %s", failure)
    return Outcome(applied=tuple(applied), failures=tuple(failures), complete=complete)


def connect(settings: Any, url: str | None = None, **kwargs: Any) -> nitro.NitroClient:
    """A NITRO client from `settings.NitroSettings` (not yet opened; use `async with`), to `url`
    (one of the settings' endpoints) or to the settings' one URL."""
    import aiohttp  # local: keeps this module importable for type checks without a session

    username, password = settings.credentials()
    return nitro.NitroClient(
        url or settings.url,
        username=username,
        password=password,
        verify_tls=settings.verify_tls,
        ca_file=settings.ca_file,
        timeout=aiohttp.ClientTimeout(
            total=settings.timeout_seconds, connect=min(5.0, settings.timeout_seconds)
        ),
        max_concurrency=settings.max_concurrency,
        retries=settings.retries,
        **kwargs,
    )
