"""The `dsr-operator` command: one entry point, one subcommand per component.

Each component owns a `cli` module with `register(subparsers)`; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

COMPONENT_CLIS = (
    "dsr_operator.oneshot",
    "dsr_operator.simulator.cli",
    "dsr_operator.controller.cli",
    "dsr_operator.agent.cli",
    "dsr_operator.demo_dsr",
    "dsr_operator.status",
)


class _NoAbbreviations(argparse.ArgumentParser):
    """A parser that takes options only as spelt out in full."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsr-operator",
        description="Direct Server Return load balancing on NetScaler, from Kubernetes.",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # No abbreviations anywhere: `--password x` must never be taken for `--password-file x`.
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND",
        parser_class=_NoAbbreviations,
    )
    for module_name in COMPONENT_CLIS:
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
