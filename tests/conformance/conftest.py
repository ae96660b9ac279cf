"""The conformance suite's target: your own NetScaler when NETSCALER_URL is set, else the simulator.

`make test-netscaler NETSCALER_URL=https://10.0.0.5 NETSCALER_PASSWORD_FILE=~/ns.password` runs
these tests against a real box (a VPX or the free NetScaler Express); without the variables they run
against an in-process simulator, so the same tests keep the simulator honest. Variables:

| variable | meaning |
| --- | --- |
| NETSCALER_URL | NITRO base URL of the box (its NSIP; the HA primary if it is a pair) |
| NETSCALER_PASSWORD_FILE | a file holding the password (never on the command line) |
| NETSCALER_USERNAME | default nsroot |
| NETSCALER_CA_FILE | CA bundle of the box's certificate; or NETSCALER_INSECURE=1 to skip TLS checks |
| NETSCALER_ENABLE_MBF | `yes`: let the DSR test enable MAC-based forwarding if it is off (never disabled) |

Every object a test creates carries a prefix unique to the run (`Target.prefix`) or, for the
DSR test, this run's own ownership marker (`Target.operator_id`), and is removed in a `finally`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dsr_lab import simctl
from dsr_operator.netscaler import client as nitro

SIM_PASSWORD = "conformance-Pa55"


@dataclasses.dataclass
class Target:
    """Where the suite runs and how to reach it."""

    url: str
    username: str
    password: str
    verify_tls: bool = True
    ca_file: str | None = None
    sim: simctl.Simulator | None = None
    run: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))

    @property
    def real(self) -> bool:
        return self.sim is None

    @property
    def prefix(self) -> str:
        """Names of objects the client tests create: unique per run, outside the operator's `dsr-`."""
        return f"dsrconf-{self.run}-"

    @property
    def operator_id(self) -> str:
        """The ownership marker of the DSR test's objects: unique per run."""
        return f"conf{self.run}"

    def client(self, **kwargs: Any) -> nitro.NitroClient:
        return nitro.NitroClient(self.url, username=self.username, password=self.password,
                                 verify_tls=self.verify_tls, ca_file=self.ca_file, **kwargs)


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    url = _env("NETSCALER_URL")
    if url is None:
        async with simctl.running(users={"nsroot": SIM_PASSWORD}) as sim:
            yield Target(sim.url, "nsroot", SIM_PASSWORD, sim=sim)
        return
    password_file = _env("NETSCALER_PASSWORD_FILE")
    if password_file is None:
        pytest.fail("NETSCALER_URL is set but NETSCALER_PASSWORD_FILE is not: put the password in a file")
    password = pathlib.Path(password_file).expanduser().read_text().rstrip("\r\n")  # noqa: ASYNC240 (once)
    yield Target(url, _env("NETSCALER_USERNAME") or "nsroot", password,
                 verify_tls=_env("NETSCALER_INSECURE") not in ("1", "yes", "true"), ca_file=_env("NETSCALER_CA_FILE"))


@pytest.fixture
async def ns(target: Target) -> AsyncIterator[nitro.NitroClient]:
    async with target.client() as client:
        yield client
