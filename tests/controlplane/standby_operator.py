"""`dsr-operator run` as a kopf peering standby: the same program, with peering priority -1.

Two replicas of the chart run at the same kopf priority (0), and kopf pauses every operator that
sees a live peer of the same priority, itself included: a known defect tracked elsewhere. The
operator has no flag for the priority, so this wrapper sets the one kopf setting the chart would
need and runs the real command unchanged otherwise; kopf then pauses this replica while one of
priority 0 is alive and lets it take over when that one is gone.

Usage: python -m tests.controlplane.standby_operator run [dsr-operator run flags]
"""

from __future__ import annotations

import sys

import kopf

from dsr_operator import cli
from dsr_operator.controller import cli as controller_cli
from dsr_operator.controller import config

STANDBY_PRIORITY = -1
_chart_settings = controller_cli.kopf_settings


def standby_settings(settings: config.OperatorSettings) -> kopf.OperatorSettings:
    kopf_settings: kopf.OperatorSettings = _chart_settings(settings)
    kopf_settings.peering.priority = STANDBY_PRIORITY
    return kopf_settings


controller_cli.kopf_settings = standby_settings

if __name__ == "__main__":
    sys.exit(cli.main())
