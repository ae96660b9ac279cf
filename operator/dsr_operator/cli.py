"""The `dsr-operator` command: one entry point, one subcommand per component.

Each component owns a `cli` module with `register(subparsers)`; this module only assembles them.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

COMPONENT_CLIS = (
    "dsr_operator.oneshot",
    "dsr_operator.demo",
    "dsr_operator.sync",
    "dsr_operator.simulator.cli",
    "dsr_operator.controller.cli",
    "dsr_operator.agent.cli",
    "dsr_lab.demo",
    "dsr_operator.status",
)
#: Which component registers each subcommand: a command loads only its own component (the agent never
#: imports kopf or the simulator, the operator never pyroute2). A test checks this table against them.
COMMANDS = {
    "plan": "dsr_operator.oneshot", "apply": "dsr_operator.oneshot", "crd": "dsr_operator.oneshot",
    "demo": "dsr_operator.demo", "sync": "dsr_operator.sync", "nitro-sim": "dsr_operator.simulator.cli",
    "run": "dsr_operator.controller.cli", "agent": "dsr_operator.agent.cli", "host-setup": "dsr_operator.agent.cli",
    "host-agent": "dsr_operator.agent.cli", "demo-dsr": "dsr_lab.demo", "status": "dsr_operator.status",
}


class _NoAbbreviations(argparse.ArgumentParser):
    """A parser that takes options only as spelt out in full."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def components_for(argv: Sequence[str] | None) -> tuple[str, ...]:
    """The component modules to load for this command line: the command's own, or all (help, no command)."""
    for arg in sys.argv[1:] if argv is None else argv:
        if arg in COMMANDS:
            return (COMMANDS[arg],)
    return COMPONENT_CLIS


def build_parser(components: Sequence[str] = COMPONENT_CLIS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsr-operator",
        description="Direct Server Return load balancing on NetScaler, from Kubernetes or a service registry.",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("DSR_LOG_FORMAT", "text"),
                        help="text lines, or one JSON object per line for log collectors (DSR_LOG_FORMAT)")
    # No abbreviations anywhere: `--password x` must never be taken for `--password-file x`.
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND",
        parser_class=_NoAbbreviations,
    )
    for module_name in components:
        module = importlib.import_module(module_name)
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(components_for(argv))
    args = parser.parse_args(argv)
    configure_logging(args.log_format, debug=args.verbose)
    return int(args.func(args) or 0)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


#: Loggers that tell every HTTP request at INFO (lightkube's client): 43 % of the operator's log lines
#: at 1,000 DsrServices. Shown with --verbose.
CHATTY = ("httpx", "httpx2")


class _NoSuccessLines(logging.Filter):
    """Drops kopf's "Handler '…' succeeded." (one per handler per event: 57 % of the operator's lines);
    its failures and retries stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not (record.levelno == logging.INFO and message.startswith("Handler ")
                    and message.endswith(" succeeded."))


_NO_SUCCESS_LINES = _NoSuccessLines()


def configure_logging(log_format: str = "text", *, debug: bool = False, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    objects = logging.getLogger("kopf.objects")
    objects.removeFilter(_NO_SUCCESS_LINES)
    if not debug:
        objects.addFilter(_NO_SUCCESS_LINES)


if __name__ == "__main__":
    sys.exit(main())
