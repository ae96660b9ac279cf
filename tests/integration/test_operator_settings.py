"""`dsr-operator run` refuses bad settings at start-up with one clear line each, and never echoes a secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SECRET = "s3cret-Pa55"


def run_operator(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSR_")}
    return subprocess.run([sys.executable, "-m", "dsr_operator.cli", "run"], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(("env", "message"), [
    ({"DSR_NETSCALER_URL": f"https://nsroot:{SECRET}@192.0.2.5"},
     "invalid setting DSR_NETSCALER_URL: Value error, the NetScaler URL must not carry credentials"),
    ({"DSR_NETSCALER_URLS": f'["https://192.0.2.5", "https://nsroot:{SECRET}@192.0.2.6"]'},
     "invalid setting DSR_NETSCALER_URLS: Value error, the NetScaler URL must not carry credentials"),
    ({"DSR_NETSCALER_URL": "192.0.2.5"}, "invalid setting DSR_NETSCALER_URL: Value error, the NetScaler URL must be"),
    ({"DSR_RESYNC_SECONDS": "0"}, "invalid setting DSR_RESYNC_SECONDS: Input should be greater than 0"),
])
def test_bad_settings_stop_the_operator_before_it_starts(env: dict[str, str], message: str) -> None:
    result = run_operator(DSR_NETSCALER_PASSWORD=SECRET, **env)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr + result.stdout
