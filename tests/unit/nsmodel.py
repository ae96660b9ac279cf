"""How NetScaler applies our operations, as the planner tests' oracle (strict: refuses what the box would)."""

from __future__ import annotations

from dsr_operator.model import state as ns
from dsr_operator.planner import effects
from dsr_operator.planner import plan as planner

elapse = effects.elapse


def apply(state: ns.NetScalerState, plan: planner.Plan, operator_id: str) -> ns.NetScalerState:
    return effects.after(state, plan.ops, operator_id, strict=True)


def ours(state: ns.NetScalerState) -> tuple[dict[tuple[str, str], tuple], frozenset[ns.Binding]]:
    """What matters when comparing states: our objects' managed fields and owners, and bindings."""
    return {k: (o.fields, o.owner) for k, o in state.objects.items()}, state.bindings
