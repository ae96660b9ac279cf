"""Deterministic NetScaler object names derived from (namespace, name, port) or (backend, port).

NetScaler names start with a letter, digit or `_`, then use letters, digits and `_ # . space : @ = -`
(NITRO error 1075), and we keep them within 127 characters. Kubernetes names never contain `_`, so
`_` separates the parts without ambiguity (`a-b`/`c` and `a`/`b-c` cannot collide). A name that
would break the rules is cut and given a hash suffix of the full name, so it stays unique and stable.
"""

from __future__ import annotations

import hashlib
import re

from dsr_operator.api import models
from dsr_operator.model.state import PREFIX

MAX_LENGTH = 127
HASH_LENGTH = 10
_VALID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_#.:@= -]*$")


def fit(name: str) -> str:
    """Return `name` if NetScaler accepts it as is, else a shortened, hash-suffixed, valid form."""
    if len(name) <= MAX_LENGTH and _VALID.match(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:HASH_LENGTH]
    cleaned = re.sub(r"[^A-Za-z0-9_#.:@=-]", "-", name)
    return f"{cleaned[: MAX_LENGTH - HASH_LENGTH - 1]}-{digest}"


def port_label(port: int | str) -> str:
    return "any" if port == models.WILDCARD_PORT else str(port)


def vserver(ref: models.ObjectRef, port: int | str) -> str:
    return fit(f"{PREFIX}{ref.namespace}_{ref.name}_{port_label(port)}")


def service(port: int | str, address: str) -> str:
    """A shared service of earlier versions: one per host and port for every DsrService (NetScaler
    allows one service per IP, port and type). Read to move them to servicegroups, never made."""
    return fit(f"{PREFIX}{address}_{port_label(port)}")


def servicegroup(ref: models.ObjectRef, port: int | str) -> str:
    """One DsrService's backends on one port: its own members, judged by its own monitor only."""
    return fit(f"{PREFIX}{ref.namespace}_{ref.name}_{port_label(port)}_sg")


def monitor(ref: models.ObjectRef, check_type: str) -> str:
    return fit(f"{PREFIX}{ref.namespace}_{ref.name}_{check_type.lower()}")


def server(address: str) -> str:
    return fit(f"{PREFIX}{address}")
