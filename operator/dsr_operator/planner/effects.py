"""The state NetScaler is in after it applied some operations (pure).

The operator keeps its view of NetScaler current from the operations that succeeded, instead of
reading the box again after every change; a resync re-reads it. Drains take time on the box: a
gracefully disabled service or member is GOING OUT OF SERVICE here until it is read again. A new
member's state is unknown (None) until the box is read: its first probe decides it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns


class InvalidOperation(ValueError):
    """An operation NetScaler would refuse in this state (used by tests as an oracle)."""


def after(
    state: ns.NetScalerState, ops: Iterable[nsops.Op], operator_id: str, *, strict: bool = False
) -> ns.NetScalerState:
    objects = dict(state.objects)
    bindings = {b: b for b in state.bindings}
    mbf = state.mbf

    def check(ok: bool, message: str) -> None:
        if strict and not ok:
            raise InvalidOperation(message)

    for op in ops:
        key = (op.kind, op.name)
        if op.kind == nsops.NSMODE:
            mbf = True
        elif op.verb == "add":
            check(key not in objects and key not in state.foreign, f"add of existing {key}")
            kind = ns.KINDS[op.kind]
            fields = {k: v for k, v in op.body.items() if k in kind.managed and k != "comment"}
            owner = ns.parse_marker(op.body.get("comment"), operator_id) or ns.SHARED_OWNER
            objects[key] = ns.NsObject.make(op.kind, op.name, owner, state="UP", **fields)
        elif op.verb == "update":
            check(key in objects, f"update of missing {key}")
            old = objects.get(key)
            if old is None:
                continue
            kind = ns.KINDS[op.kind]
            changed = {k: v for k, v in op.body.items() if k in kind.managed and k != "comment"}
            owner = ns.parse_marker(op.body.get("comment"), operator_id) or old.owner
            objects[key] = ns.NsObject.make(op.kind, op.name, owner, state=old.state, **{**old.data, **changed})
        elif op.verb == "unset":
            check(key in objects, f"unset of missing {key}")
            old = objects.get(key)
            if old is None:
                continue
            cleared = {k for k, v in op.body.items() if v is True}
            kept = {k: v for k, v in old.data.items() if k not in cleared}
            objects[key] = ns.NsObject.make(op.kind, op.name, old.owner, state=old.state, **kept)
        elif op.verb == "delete":
            check(key in objects, f"delete of missing {key}")
            if op.kind == "service":
                check(not any(op.name in (b.parent, b.child) for b in bindings), f"{key} still bound")
            if op.kind == "server":
                check(
                    not any(o.get("servername") == op.name for (k, _), o in objects.items() if k == "service"),
                    f"{key} still used by a service",
                )
                check(not any(b.kind == ns.MEMBER_BINDING and b.child == op.name for b in bindings),
                      f"{key} still a member of a servicegroup")
            if op.kind == "servicegroup":  # NetScaler removes a servicegroup's bindings with it
                for b in [b for b in bindings if op.name in (b.parent, b.child) and b.kind in _GROUP_KINDS]:
                    bindings.pop(b)
            objects.pop(key, None)
        elif op.verb in ("enable", "disable") and op.kind == "servicegroup" and op.child:
            member = ns.Binding(ns.MEMBER_BINDING, op.name, op.child, port=_port(op))
            old_member = bindings.get(member)
            if old_member is not None:
                new_state = None if op.verb == "enable" else ns.GOING_OUT_OF_SERVICE
                bindings[member] = dataclasses.replace(old_member, state=new_state)
        elif op.verb in ("enable", "disable"):
            old = objects.get(key)
            if old is not None:
                new_state = "UP" if op.verb == "enable" else ns.GOING_OUT_OF_SERVICE
                objects[key] = dataclasses.replace(old, state=new_state)
        elif op.verb == "bind":
            binding = ns.Binding(op.kind, op.name, op.child, op.owner, port=_port(op))
            bindings[binding] = binding
        elif op.verb == "unbind":
            bindings.pop(ns.Binding(op.kind, op.name, op.child, port=_port(op)), None)
        else:  # pragma: no cover - every verb of nsops.ORDER is handled above
            raise InvalidOperation(f"unknown operation {op}")
    return ns.NetScalerState.build(objects.values(), bindings.values(), mbf=mbf, foreign=state.foreign)


_GROUP_KINDS = (ns.GROUP_BINDING, ns.GROUP_MONITOR_BINDING, ns.MEMBER_BINDING)


def _port(op: nsops.Op) -> int:
    """A member operation's port (0 for every other kind)."""
    return int(str(op.body.get("port") or 0)) if op.kind in (ns.MEMBER_BINDING, "servicegroup") else 0


def elapse(state: ns.NetScalerState) -> ns.NetScalerState:
    """Let every drain finish: GOING OUT OF SERVICE becomes OUT OF SERVICE."""
    objects = [
        dataclasses.replace(o, state=ns.OUT_OF_SERVICE) if o.state == ns.GOING_OUT_OF_SERVICE else o
        for o in state.objects.values()
    ]
    bindings = [
        dataclasses.replace(b, state=ns.OUT_OF_SERVICE) if b.state == ns.GOING_OUT_OF_SERVICE else b
        for b in state.bindings
    ]
    return ns.NetScalerState.build(objects, bindings, mbf=state.mbf, foreign=state.foreign)


def probed(state: ns.NetScalerState, down: frozenset[tuple[str, str]] = frozenset()) -> ns.NetScalerState:
    """Every member of unknown state after its first probe: UP, or DOWN for (group, server) in `down`."""
    bindings = [
        dataclasses.replace(b, state="DOWN" if (b.parent, b.child) in down else "UP")
        if b.kind == ns.MEMBER_BINDING and b.state is None else b
        for b in state.bindings
    ]
    return ns.NetScalerState.build(state.objects.values(), bindings, mbf=state.mbf, foreign=state.foreign)
