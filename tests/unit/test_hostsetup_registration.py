"""`host-setup --etcd ...`: the registration step printed for hosts that join a registry-backed DsrService."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from dsr_operator.agent import hostsetup

JOIN = hostsetup.Join("http://10.0.0.7:2379/", "/skydns/local/shop/web/", "198.51.100.22", 80)


def test_windows_registers_only_while_the_adapter_holds_the_vip_and_drains_before_leaving() -> None:
    text = hostsetup.windows_registration(JOIN, "192.0.2.10", ttl=10, drain_seconds=40)
    script = text[text.index("@'\n") + 3:text.index("\n'@")]
    assert "$Etcd = 'http://10.0.0.7:2379'" in script
    assert "$Key = '/skydns/local/shop/web/' + $Name" in script
    record = re.search(r"\$Record = '([^']+)' \| ConvertFrom-Json", script)
    assert record is not None and json.loads(record.group(1)) == {"host": "198.51.100.22", "port": 80, "ttl": 10}
    # The etcd HTTP API calls, in the order of a life: lease, record, renewals, draining record, revoke.
    calls = re.findall(r"Etcd '(/v3/[a-z/]+)'", script)
    assert calls == ["/v3/kv/put", "/v3/lease/grant", "/v3/lease/keepalive", "/v3/lease/keepalive",
                     "/v3/lease/revoke"], calls
    assert script.index("if (-not (Held)") < script.index("/v3/lease/grant")  # VIP first, registration after
    assert "Put $lease $true" in script and "AddSeconds(40)" in script  # drain: true, then wait, then revoke
    assert "Register-ScheduledTask -TaskName 'dsr-operator-register'" in text
    assert "-User 'SYSTEM'" in text and "New-ScheduledTaskTrigger -AtStartup" in text


def test_linux_prints_the_host_agent_command() -> None:
    text = hostsetup.linux_registration(JOIN, "192.0.2.10")
    assert text.splitlines()[-1] == ("dsr-operator host-agent --etcd http://10.0.0.7:2379/ --prefix "
                                     "/skydns/local/shop/web/ --vip 192.0.2.10 --address 198.51.100.22 --port 80")


def test_the_command_wants_every_registration_flag_or_none() -> None:
    done = subprocess.run([sys.executable, "-m", "dsr_operator.cli", "host-setup", "--vip", "192.0.2.10",
                           "--etcd", "http://10.0.0.7:2379"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "registering needs --etcd, --prefix, a valid --address" in done.stderr
    done = subprocess.run([sys.executable, "-m", "dsr_operator.cli", "host-setup", "--os", "windows", "--vip",
                           "192.0.2.10", "--etcd", "http://10.0.0.7:2379", "--prefix", "/skydns/x", "--address",
                           "198.51.100.22"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "New-NetIPAddress" in done.stdout and "/v3/lease/grant" in done.stdout
