"""A pure model of how NetScaler applies our operations, for property tests of the planner.

It applies plan operations to a NetScalerState the way the box would (including drains that take
time), so tests can check that plans converge. Integration tests check the same against the real
simulator over HTTP.
"""

from __future__ import annotations

import dataclasses

from dsr_operator.netscaler import models as ns
from dsr_operator.planner import plan as planner


def apply(state: ns.NetScalerState, plan: planner.Plan, operator_id: str) -> ns.NetScalerState:
    objects = dict(state.objects)
    bindings = set(state.bindings)
    mbf = state.mbf
    for op in plan.ops:
        key = (op.kind, op.name)
        if op.kind == planner.NSMODE:
            mbf = True
        elif op.verb == "add":
            assert key not in objects, f"add of existing {key}"
            assert key not in state.foreign, f"add over a foreign object {key}"
            kind = ns.KINDS[op.kind]
            fields = {k: v for k, v in op.body.items() if k in kind.managed and k != "comment"}
            owner = ns.parse_marker(op.body["comment"], operator_id)
            assert owner is not None
            objects[key] = ns.NsObject.make(op.kind, op.name, owner, state="UP", **fields)
        elif op.verb == "update":
            old = objects[key]
            kind = ns.KINDS[op.kind]
            fields = {
                **old.data,
                **{k: v for k, v in op.body.items() if k in kind.managed and k != "comment"},
            }
            fields.pop("comment", None)
            owner = ns.parse_marker(op.body.get("comment"), operator_id) or old.owner
            objects[key] = ns.NsObject.make(op.kind, op.name, owner, state=old.state, **fields)
        elif op.verb == "delete":
            assert key in objects, f"delete of missing {key}"
            if op.kind == "service":
                assert not any(op.name in (b.parent, b.child) for b in bindings), f"{key} still bound"
            if op.kind == "server":
                assert not any(
                    o.get("servername") == op.name for (k, _), o in objects.items() if k == "service"
                )
            del objects[key]
        elif op.verb in ("enable", "disable"):
            old = objects[key]
            new_state = "UP" if op.verb == "enable" else ns.GOING_OUT_OF_SERVICE
            objects[key] = dataclasses.replace(old, state=new_state)
        elif op.verb == "bind":
            parent, child = op.name.split(" ")
            owner = objects[("lbvserver" if op.kind == ns.VSERVER_BINDING else "service", parent)].owner
            bindings.add(ns.Binding(op.kind, parent, child, owner))
        elif op.verb == "unbind":
            parent, child = op.name.split(" ")
            bindings.discard(ns.Binding(op.kind, parent, child))
        else:  # pragma: no cover
            raise AssertionError(op)
    # Re-attach owners to bindings (Binding equality ignores owner).
    return ns.NetScalerState.build(objects.values(), bindings, mbf=mbf, foreign=state.foreign)


def elapse(state: ns.NetScalerState) -> ns.NetScalerState:
    """Let every drain finish: GOING OUT OF SERVICE becomes OUT OF SERVICE."""
    objects = [
        dataclasses.replace(o, state=ns.OUT_OF_SERVICE) if o.state == ns.GOING_OUT_OF_SERVICE else o
        for o in state.objects.values()
    ]
    return ns.NetScalerState.build(objects, state.bindings, mbf=state.mbf, foreign=state.foreign)


def ours(state: ns.NetScalerState) -> tuple[dict[tuple[str, str], tuple], frozenset[ns.Binding]]:
    """What matters when comparing states: our objects' managed fields and owners, and bindings."""
    return {k: (o.fields, o.owner) for k, o in state.objects.items()}, state.bindings
