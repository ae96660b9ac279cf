"""`dsr-operator host-setup`: printed Linux/Windows steps, and --apply / --apply --remove in a namespace."""

from __future__ import annotations

import pathlib
import sys

import pytest

from dsr_operator import cli
from tests.support.hostcheck import addresses, cidrs, run, set_sysctl, sysctl

ARP_KEYS = (
    "net.ipv4.conf.all.arp_ignore",
    "net.ipv4.conf.all.arp_announce",
    "net.ipv4.conf.lo.arp_ignore",
    "net.ipv4.conf.lo.arp_announce",
)


def host_setup(*args: str) -> tuple[int, str, str]:
    proc = run(sys.executable, "-m", "dsr_operator.cli", "host-setup", *args, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_apply_then_remove_in_a_namespace(netns: str, tmp_path: pathlib.Path) -> None:
    run("ip", "-n", netns, "addr", "add", "192.0.2.200/32", "dev", "lo")  # not ours
    set_sysctl(netns, "net.ipv4.conf.lo.arp_announce", 1)
    before = {key: sysctl(netns, key) for key in ARP_KEYS}

    code, out, err = host_setup("--vip", "192.0.2.50", "--vip", "2001:db8::50", "--apply", "--netns", netns,
                                "--state-dir", str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert "holding 192.0.2.50 on lo" in out
    assert {"192.0.2.50/32", "2001:db8::50/128"} <= cidrs(netns, "lo")
    assert next(a for a in addresses(netns) if a["local"] == "192.0.2.50")["label"] == "lo:dsr"
    assert [sysctl(netns, key) for key in ARP_KEYS] == [1, 2, 1, 2]

    code, out, err = host_setup("--vip", "192.0.2.50", "--apply", "--remove", "--netns", netns,
                                "--state-dir", str(tmp_path))  # fmt: skip
    assert code == 0, err
    assert "removed 192.0.2.50 from lo" in out
    assert not {"192.0.2.50/32", "2001:db8::50/128"} & cidrs(netns, "lo")
    assert "192.0.2.200/32" in cidrs(netns, "lo")
    assert {key: sysctl(netns, key) for key in ARP_KEYS} == before


def test_invalid_vip_is_refused() -> None:
    code, _, err = host_setup("--vip", "192.0.2.300")
    assert code == 2 and "not an IPv4 or IPv6 address" in err


def test_linux_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["host-setup", "--vip", "192.0.2.10", "--vip", "2001:db8::10"]) == 0
    out = capsys.readouterr().out
    for line in (
        "sysctl -w net.ipv4.conf.all.arp_ignore=1",
        "sysctl -w net.ipv4.conf.all.arp_announce=2",
        "sysctl -w net.ipv4.conf.lo.arp_ignore=1",
        "sysctl -w net.ipv4.conf.lo.arp_announce=2",
        "ip address replace 192.0.2.10/32 dev lo label lo:dsr",
        "ip -6 address replace 2001:db8::10/128 dev lo nodad",
        "cat > /etc/sysctl.d/90-dsr-operator.conf <<'EOF'",
        "net.ipv4.conf.all.arp_ignore = 1",
        "cat > /etc/network/interfaces.d/dsr-operator <<'EOF'",
        "iface lo:dsr inet manual",
        "    up ip address replace 192.0.2.10/32 dev lo label lo:dsr",
        "    down ip address del 192.0.2.10/32 dev lo || true",
        # With an IPv6 VIP, the same IPv6 settings as the node agent keeps.
        "sysctl -w net.ipv6.conf.all.accept_dad=0",
        "sysctl -w net.ipv6.conf.lo.ndisc_notify=0",
        "net.ipv6.conf.all.ndisc_notify = 0",
    ):
        assert line in out.splitlines(), line
    assert cli.main(["host-setup", "--vip", "192.0.2.10"]) == 0
    assert "ipv6" not in capsys.readouterr().out, "IPv4 VIPs only: no IPv6 settings"

    assert cli.main(["host-setup", "--vip", "192.0.2.10", "--remove", "--netns", "ns1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "ip -n ns1 address del 192.0.2.10/32 dev lo" in out
    assert "rm -f /etc/network/interfaces.d/dsr-operator /etc/sysctl.d/90-dsr-operator.conf" in out


def test_windows_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["host-setup", "--os", "windows", "--vip", "192.0.2.10", "--uplink", "Uplink 1"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert "devcon.exe install \"$env:windir\\inf\\netloop.inf\" '*MSLOOP'" in lines
    assert "$_.InterfaceDescription -like 'Microsoft KM-TEST Loopback Adapter*' -and" in lines
    assert "Rename-NetAdapter -Name $new.Name -NewName $Name" in lines
    assert "$Uplink = 'Uplink 1'   # the adapter the load balancer's frames arrive on" in lines
    assert "New-NetIPAddress -InterfaceAlias $Name -IPAddress 192.0.2.10 -PrefixLength 32 -SkipAsSource $true" in lines
    assert "DefaultGateway" not in out
    assert "255.255.255.255" in out
    assert "Set-DnsClient -InterfaceAlias $Name -RegisterThisConnectionsAddress $false" in lines
    assert "Invoke-CimMethod -MethodName SetTcpipNetbios -Arguments @{ TcpipNetbiosOptions = [uint32]2 }" in lines
    assert "Set-NetIPInterface -InterfaceAlias $Name -WeakHostReceive Enabled -WeakHostSend Enabled" in lines
    assert "Set-NetIPInterface -InterfaceAlias $Uplink -WeakHostReceive Enabled -WeakHostSend Enabled" in lines

    assert cli.main(["host-setup", "--os", "windows", "--vip", "192.0.2.10", "--remove"]) == 0
    out = capsys.readouterr().out
    assert "Remove-NetIPAddress -InterfaceAlias $Name -IPAddress 192.0.2.10 -Confirm:$false" in out
    assert "pnputil /remove-device" in out
    assert cli.main(["host-setup", "--os", "windows", "--vip", "192.0.2.10", "--apply"]) == 2
