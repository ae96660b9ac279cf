"""Each subcommand loads only what it runs: the agent no kopf, simulator or planner; the operator no pyroute2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from dsr_operator import cli

ON_A_NODE = ("kopf", "dsr_operator.simulator", "dsr_operator.planner", "dsr_operator.controller", "kmock", "dsr_lab")
NEVER = {
    "agent": ON_A_NODE,
    "host-agent": ON_A_NODE,
    "host-setup": ON_A_NODE,
    "run": ("pyroute2", "dsr_operator.simulator", "dsr_operator.agent", "kmock", "dsr_lab"),
    "sync": ("kopf", "pyroute2", "dsr_operator.simulator", "dsr_operator.agent", "kmock", "dsr_lab"),
    "plan": ("kopf", "pyroute2", "dsr_operator.agent", "dsr_operator.controller", "kmock", "dsr_lab"),
    "nitro-sim": ("kopf", "pyroute2", "dsr_operator.planner", "dsr_operator.controller", "dsr_operator.agent"),
    "status": ("pyroute2", "dsr_operator.simulator", "dsr_operator.agent", "kopf", "dsr_lab"),
    "demo": ("kopf", "pyroute2", "dsr_operator.agent", "dsr_operator.controller", "kmock", "dsr_lab"),
}


def test_the_command_table_names_every_subcommand_of_every_component() -> None:
    registered = {}
    for module in cli.COMPONENT_CLIS:
        parser = cli.build_parser((module,))
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        registered.update(dict.fromkeys(action.choices, module))
    assert registered == cli.COMMANDS


@pytest.mark.parametrize("command", sorted(NEVER))
def test_a_subcommand_imports_only_its_component(command: str) -> None:
    probe = ("import json, sys\nfrom dsr_operator import cli\n"
             f"cli.build_parser(cli.components_for(['-v', {command!r}, '--help']))\n"
             "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(done.stdout)
    wrong = [m for m in loaded if any(m == bad or m.startswith(bad + ".") for bad in NEVER[command])]
    assert wrong == [], f"dsr-operator {command} imports {wrong}"
