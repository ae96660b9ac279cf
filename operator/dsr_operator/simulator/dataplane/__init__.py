"""The simulator's DSR forwarding path (see `plane.py`)."""

from dsr_operator.simulator.dataplane.plane import (
    FLOW_TIMEOUT,
    SERVING_STATES,
    TABLE,
    WILDCARD_PORT,
    CommandError,
    Dataplane,
    Desired,
    Member,
    Names,
    Prober,
    ProbeSpec,
    ProbeState,
    Vserver,
    desired_state,
    probe_specs,
    render,
)

__all__ = [
    "FLOW_TIMEOUT",
    "SERVING_STATES",
    "TABLE",
    "WILDCARD_PORT",
    "CommandError",
    "Dataplane",
    "Desired",
    "Member",
    "Names",
    "ProbeSpec",
    "ProbeState",
    "Prober",
    "Vserver",
    "desired_state",
    "probe_specs",
    "render",
]
