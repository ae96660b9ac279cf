"""The short chaos soak (see chaos.py): the operator, the simulator and the API server as processes.

About 30 s of chaos (DSR_SOAK_SECONDS), a seed from DSR_SOAK_SEED or a random one (printed); the
report (figures, each invariant's verdict with its evidence) is printed and fails the test on any
violation. `python bench/soak.py --minutes N` runs the same soak for longer.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.soak import chaos

if TYPE_CHECKING:
    from tests.controlplane.conftest import ControlPlane

pytestmark = [pytest.mark.soak, pytest.mark.controlplane, pytest.mark.timeout(900)]


def test_chaos_soak_ends_in_the_state_the_specs_require(controlplane: ControlPlane) -> None:
    config = chaos.Config(chaos_seconds=float(os.environ.get("DSR_SOAK_SECONDS", "30")), seed=chaos.seed_from_env())
    report = chaos.run(controlplane, config)
    print(report.text())
    assert report.ok, report.text()
