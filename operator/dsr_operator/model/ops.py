"""Plan operations as typed values, and the order in which their stages are safe to run."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from dsr_operator.api.models import WILDCARD_PORT
from dsr_operator.model import state as ns

NSMODE = "nsmode"
"""The pseudo-kind of `enable nsmode`: one system-wide operation, owned by nobody in particular."""

NITRO_WILDCARD_PORT = 65535
"""NITRO's port 65535 means every port; a spec writes it "*", so it never appears by accident."""

# (verb, kind) in execution order: what a later stage needs exists by then; removal runs in reverse.
ORDER: tuple[tuple[str, str], ...] = (
    ("enable", NSMODE),
    ("add", "server"),
    ("update", "server"),
    ("add", "lbmonitor"),
    ("update", "lbmonitor"),
    ("unset", "lbmonitor"),
    ("add", "service"),
    ("update", "service"),
    ("enable", "service"),
    ("bind", ns.MONITOR_BINDING),
    ("add", "servicegroup"),
    ("update", "servicegroup"),
    ("bind", ns.GROUP_MONITOR_BINDING),  # a member is judged by its group's monitor from the start
    ("enable", "servicegroup"),  # a draining member wanted again
    ("bind", ns.MEMBER_BINDING),
    ("add", "lbvserver"),
    ("update", "lbvserver"),
    ("bind", ns.GROUP_BINDING),
    ("bind", ns.VSERVER_BINDING),
    ("disable", "servicegroup"),  # a member drains before it leaves its group
    ("disable", "service"),
    ("unbind", ns.MEMBER_BINDING),
    ("unbind", ns.VSERVER_BINDING),
    ("unbind", ns.GROUP_BINDING),
    ("unbind", ns.GROUP_MONITOR_BINDING),
    ("unbind", ns.MONITOR_BINDING),
    ("delete", "servicegroup"),
    ("delete", "service"),
    ("delete", "lbvserver"),
    ("delete", "lbmonitor"),
    ("delete", "server"),
)
_RANK = {step: i for i, step in enumerate(ORDER)}


@dataclasses.dataclass(frozen=True)
class Op:
    """One NITRO operation on one object, or on one binding (`name` its parent, `child` the bound object)."""

    verb: str
    kind: str
    name: str
    owner: str
    body: Mapping[str, Any] = dataclasses.field(hash=False, compare=False)
    child: str = ""

    @classmethod
    def binding(cls, verb: str, binding: ns.Binding) -> Op:
        """Bind or unbind `binding`, on behalf of its owner."""
        body = binding.payload() if verb == "bind" else binding.unbind_payload()
        return cls(verb, binding.kind, binding.parent, binding.owner, body, child=binding.child)

    @property
    def target(self) -> str:
        """What the operation acts on, as a person reads it: `name`, or `parent -> child` for a binding."""
        return f"{self.name} -> {self.child}" if self.child else self.name


@dataclasses.dataclass(frozen=True)
class Stage:
    """Operations of one verb on one kind: one bulk request."""

    verb: str
    kind: str
    ops: tuple[Op, ...]


def stages(ops: Iterable[Op]) -> tuple[Stage, ...]:
    """Operations grouped into stages (one verb on one kind each), in the safe order."""
    grouped: dict[tuple[str, str], list[Op]] = defaultdict(list)
    for op in ops:
        grouped[(op.verb, op.kind)].append(op)
    return tuple(
        Stage(verb, kind, tuple(sorted(grouped[(verb, kind)], key=lambda o: (o.name, o.child))))
        for verb, kind in sorted(grouped, key=lambda step: _RANK[step])
    )


def nitro_port(port: int | str) -> int:
    """The NITRO representation of a spec port: `*` is 65535 (with service type ANY)."""
    return NITRO_WILDCARD_PORT if port == WILDCARD_PORT else int(port)


def spec_port(port: object) -> int | str:
    """The spec representation of a NITRO port: 65535 is `*`."""
    number = int(str(port))
    return WILDCARD_PORT if number == NITRO_WILDCARD_PORT else number
