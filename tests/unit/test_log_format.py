"""`--log-format json`: one JSON object per log line, for log collectors."""

from __future__ import annotations

import io
import json
import logging

import pytest

from dsr_operator import cli


def test_json_lines_carry_time_level_logger_message_and_the_traceback() -> None:
    out = io.StringIO()
    cli.configure_logging("json", stream=out)
    try:
        logging.getLogger("dsr_operator.controller.reconcile").info("Batch of %d DsrService(s)", 3)
        try:
            raise KeyError("gone")
        except KeyError:
            logging.getLogger("dsr_operator.agent").exception("Pass failed")
    finally:
        cli.configure_logging("text")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "dsr_operator.controller.reconcile"
    assert first["message"] == "Batch of 3 DsrService(s)" and first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "KeyError: 'gone'" in second["exception"]


def test_the_flag_and_the_environment_choose_the_format(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.build_parser().parse_args(["crd"]).log_format == "text"
    assert cli.build_parser().parse_args(["--log-format", "json", "crd"]).log_format == "json"
    monkeypatch.setenv("DSR_LOG_FORMAT", "json")
    assert cli.build_parser().parse_args(["crd"]).log_format == "json"
