"""`dsr-operator demo`: the example manifests applied to an embedded NITRO simulator, start to finish.

It needs nothing but the installed package: the examples ship inside it, and the simulator is the
product's own `nitro-sim`. It composes the one-shot commands with the simulator, so it sits above both.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import pathlib
import sys
from typing import TextIO

from dsr_operator import oneshot
from dsr_operator.netscaler import client as nitro
from dsr_operator.simulator import server as sim

# The demo's manifests, shipped in the package (the repository's examples/ is a link to them).
EXAMPLES = importlib.resources.files("dsr_operator") / "examples"


async def run_demo(out: TextIO, examples: pathlib.Path | None = None) -> int:
    """Start an embedded simulator, apply the examples, show the plan before and the objects after."""
    if examples is None:
        with importlib.resources.as_file(EXAMPLES) as packaged:
            loaded, problems, notices = oneshot.load_manifests([packaged])
        # Name the packaged files as the repository shows them, not by their place in site-packages.
        problems, notices = ([m.replace(f"{packaged}/", "examples/") for m in ms] for ms in (problems, notices))
    else:
        loaded, problems, notices = oneshot.load_manifests([examples])
    if problems:
        for problem in problems:
            print(problem, file=out)
        return oneshot.EXIT_INVALID
    for notice in notices:
        print(f"# {notice}", file=out)
    intents = oneshot.intents(loaded)
    async with sim.running(users={"nsroot": "demo-password"}) as handle:
        print(f"# NITRO simulator listening on {handle.url}", file=out)
        async with nitro.NitroClient(handle.url, username="nsroot", password="demo-password") as client:
            print("\n## Plan (what an admin would type in the NetScaler CLI)", file=out)
            await oneshot.run_plan(client, intents, "demo", False, out)
            print("\n## Apply", file=out)
            code = await oneshot.run_apply(client, intents, "demo", False, out)
            if code:
                return code
            print("\n## NetScaler objects after", file=out)
            await oneshot.show_objects(client, "demo", out)
            print("\n## Plan again", file=out)
            await oneshot.run_plan(client, intents, "demo", False, out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = subparsers.add_parser(
        "demo", help="apply the example manifests (examples/) to an embedded NITRO simulator and show the result"
    )
    demo.set_defaults(func=lambda args: asyncio.run(run_demo(sys.stdout)))
