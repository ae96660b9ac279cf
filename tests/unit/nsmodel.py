"""How NetScaler applies our operations, as the planner tests' oracle (strict: refuses what the box would)."""

from __future__ import annotations

from dsr_operator.model import state as ns
from dsr_operator.planner import effects
from dsr_operator.planner import plan as planner


def elapse(state: ns.NetScalerState) -> ns.NetScalerState:
    """Drains end, and every new member has had its first probe (UP)."""
    return effects.probed(effects.elapse(state))


def apply(state: ns.NetScalerState, plan: planner.Plan, operator_id: str) -> ns.NetScalerState:
    return effects.after(state, plan.ops, operator_id, strict=True)


def ours(state: ns.NetScalerState) -> tuple[dict[tuple[str, str], tuple], frozenset[ns.Binding]]:
    """What matters when comparing states: our objects' managed fields and owners, and bindings."""
    return {k: (o.fields, o.owner) for k, o in state.objects.items()}, state.bindings
