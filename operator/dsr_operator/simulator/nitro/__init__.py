"""The simulated NetScaler's NITRO side, in rooms.

* `errors` — `NitroError` and the common refusals;
* `validation` — one object against the schema (values, required fields, defaults, unit normalisation);
* `state` — what the store holds, the journal's `Change`, listeners;
* `rules` — the writes and the rules that cross objects;
* `runtime` — runtime inputs (hosts, probes, clients, HA role) and the states derived from them;
* `reads` — GET rendering, `filter=` and `attrs=`;
* `queries` — the read-only view the dataplane uses (`ConfigView`, frozen dataclasses);
* `persistence` — state and HA sync documents;
* `store` — `Store`, assembled from the above: single and bulk writes, rollback.
"""

from dsr_operator.simulator.nitro.errors import (
    NitroError,
    already_exists,
    argument_missing,
    bad_value,
    invalid_argument,
    not_found,
)
from dsr_operator.simulator.nitro.persistence import STATE_VERSION
from dsr_operator.simulator.nitro.reads import filter_records, select_attrs
from dsr_operator.simulator.nitro.runtime import member_name
from dsr_operator.simulator.nitro.state import Addresses, BulkOutcome, Change, Listener, Record
from dsr_operator.simulator.nitro.store import ONERROR_MODES, ROLLBACK_ACTIONS, Store
from dsr_operator.simulator.nitro.validation import (
    MONITOR_UNITS,
    coerce,
    validate_add,
    validate_key,
)

__all__ = [
    "MONITOR_UNITS",
    "ONERROR_MODES",
    "ROLLBACK_ACTIONS",
    "STATE_VERSION",
    "Addresses",
    "BulkOutcome",
    "Change",
    "Listener",
    "NitroError",
    "Record",
    "Store",
    "already_exists",
    "argument_missing",
    "bad_value",
    "coerce",
    "filter_records",
    "invalid_argument",
    "member_name",
    "not_found",
    "select_attrs",
    "validate_add",
    "validate_key",
]
