"""`dsr-operator host-setup`: the loopback VIP steps for a backend host outside Kubernetes.

Renders the exact commands for Linux (iproute2 + sysctl, made persistent with an
/etc/sysctl.d file and an ifupdown `/etc/network/interfaces.d` snippet) or Windows (PowerShell:
KM-TEST loopback adapter, VIP /32 without gateway, no DNS registration or NetBIOS, weak host
send/receive on the adapter and the uplink). Rendering is pure; `--apply` on Linux runs the
agent's own `Host` code instead of the text.

Why ifupdown and not systemd-networkd for persistence: networkd flushes the addresses it does not
know from any link it manages, and managing `lo` to add a VIP would put 127.0.0.1 at risk
(systemd issue #2023). An ifupdown `inet manual` stanza only runs our two commands.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Sequence

from dsr_operator.agent import core

SYSCTL_FILE = "/etc/sysctl.d/90-dsr-operator.conf"
IFUPDOWN_FILE = "/etc/network/interfaces.d/dsr-operator"
WINDOWS_ADAPTER = "DSR-Loopback"
LOOPBACK = "lo"


def _ip(netns: str | None) -> str:
    return f"ip -n {shlex.quote(netns)}" if netns else "ip"


def _sysctl(netns: str | None) -> str:
    return f"ip netns exec {shlex.quote(netns)} sysctl" if netns else "sysctl"


def _add(vip: core.Vip, netns: str | None) -> str:
    if vip.family == 2:
        return f"{_ip(netns)} address replace {vip.cidr} dev {LOOPBACK} label {LOOPBACK}{core.LABEL_SUFFIX}"
    return f"{_ip(netns)} -6 address replace {vip.cidr} dev {LOOPBACK} nodad"


def _del(vip: core.Vip, netns: str | None) -> str:
    return f"{_ip(netns)} {'-6 ' if vip.family != 2 else ''}address del {vip.cidr} dev {LOOPBACK}"


def linux(vips: Sequence[core.Vip], *, remove: bool = False, netns: str | None = None) -> str:
    """Shell commands (run as root) that put the VIPs on `lo` for L2 DSR, or take them away."""
    sysctls = core.desired_sysctls(LOOPBACK, ipv6=core.has_ipv6(vips))
    names = " ".join(v.address for v in vips)
    lines = [f"# dsr-operator host-setup (Linux): {'remove ' if remove else ''}DSR VIP(s) {names} on {LOOPBACK}"]
    if remove:
        lines += ["# 1. Runtime"]
        lines += [_del(v, netns) for v in vips]
        lines += [
            "# 2. Persistence",
            f"rm -f {IFUPDOWN_FILE} {SYSCTL_FILE}",
            "# 3. The sysctls keep their values until the next boot; to go back now, set the values you had",
            "#    before (kernel defaults: 0; an interface's accept_dad 1), e.g.:",
        ]
        # Kernel defaults: 0, except accept_dad 1 on an interface (`all` has 0).
        lines += [
            f"{_sysctl(netns)} -w {key}={1 if key.endswith('.accept_dad') and '.all.' not in key else 0}"
            for key in sysctls
        ]
        return "\n".join(lines) + "\n"
    lines += ["# 1. Runtime: answer ARP only for addresses of the asking interface, never announce the VIP"
              + ("; IPv6: no duplicate address detection, no unsolicited neighbour advertisements"
                 if core.has_ipv6(vips) else "")]
    lines += [f"{_sysctl(netns)} -w {key}={value}" for key, value in sysctls.items()]
    lines += ["# The VIP as a host route on the loopback: the host accepts it, never answers ARP for it"]
    lines += [_add(v, netns) for v in vips]
    lines += [
        "# Check: rp_filter must be 0 or 2 on the interface the VIP traffic arrives on (the max of `all` and",
        "# the interface applies)",
        f"{_sysctl(netns)} -a 2>/dev/null | grep '\\.rp_filter'",
        "# 2. Persistent: sysctls",
        f"cat > {SYSCTL_FILE} <<'EOF'",
        *[f"{key} = {value}" for key, value in sysctls.items()],
        "EOF",
        "# 3. Persistent: addresses, with ifupdown (Debian/Ubuntu with ifupdown; systemd-networkd is not used",
        "#    because it flushes unknown addresses of the links it manages, lo included)",
        f"cat > {IFUPDOWN_FILE} <<'EOF'",
        f"auto {LOOPBACK}{core.LABEL_SUFFIX}",
        f"iface {LOOPBACK}{core.LABEL_SUFFIX} inet manual",
        *[f"    up {_add(v, None)}" for v in vips],
        *[f"    down {_del(v, None)} || true" for v in vips],
        "EOF",
        "# (`host-setup --apply` does step 1 with the node agent's netlink code and also tags each address",
        f"#  with address protocol {core.OWNER_PROTO}, so that `host-setup --apply --remove` removes only those.)",
    ]
    return "\n".join(lines) + "\n"


def _ps(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def windows(
    vips: Sequence[core.Vip], *, remove: bool = False, adapter: str = WINDOWS_ADAPTER, uplink: str = "Ethernet"
) -> str:
    """PowerShell (as Administrator) that holds the VIPs on a KM-TEST loopback adapter, or removes them."""
    names = " ".join(v.address for v in vips)
    lines = [
        f"# dsr-operator host-setup (Windows PowerShell, as Administrator): {'remove ' if remove else ''}"
        f"DSR VIP(s) {names}",
        "$ErrorActionPreference = 'Stop'",
        f"$Name = {_ps(adapter)}",
        f"$Uplink = {_ps(uplink)}   # the adapter the load balancer's frames arrive on",
    ]
    if remove:
        lines += [f"Remove-NetIPAddress -InterfaceAlias $Name -IPAddress {v.address} -Confirm:$false" for v in vips]
        lines += [
            "# Put the uplink back to the strong host model (skip if something else needs weak host there)",
            "Set-NetIPInterface -InterfaceAlias $Uplink -WeakHostReceive Disabled -WeakHostSend Disabled",
            "# Remove the loopback adapter once it holds no VIP",
            "if (-not (Get-NetIPAddress -InterfaceAlias $Name -ErrorAction SilentlyContinue |",
            "          Where-Object { $_.PrefixOrigin -eq 'Manual' })) {",
            "    pnputil /remove-device (Get-NetAdapter -Name $Name).PnPDeviceID",
            "}",
        ]
        return "\n".join(lines) + "\n"
    lines += [
        "# 1. Install the Microsoft KM-TEST Loopback Adapter and name it",
        "#    (devcon.exe ships with the Windows Driver Kit; `Add Legacy Hardware` in hdwwiz.exe is the GUI way)",
        "if (-not (Get-NetAdapter -Name $Name -ErrorAction SilentlyContinue)) {",
        "    $before = @(Get-NetAdapter -IncludeHidden | ForEach-Object InterfaceGuid)",
        "    devcon.exe install \"$env:windir\\inf\\netloop.inf\" '*MSLOOP'",
        "    $new = Get-NetAdapter | Where-Object {",
        "        $_.InterfaceDescription -like 'Microsoft KM-TEST Loopback Adapter*' -and",
        "        $before -notcontains $_.InterfaceGuid } | Select-Object -First 1",
        "    Rename-NetAdapter -Name $new.Name -NewName $Name",
        "}",
        "# 2. The VIP with a /32 mask (255.255.255.255) and no default gateway; never used as a source address",
        "Set-NetIPInterface -InterfaceAlias $Name -Dhcp Disabled",
    ]
    for vip in vips:
        lines.append(
            f"New-NetIPAddress -InterfaceAlias $Name -IPAddress {vip.address} -PrefixLength {vip.prefixlen} "
            "-SkipAsSource $true"
        )
    lines += [
        "# 3. Keep the VIP out of DNS and NetBIOS",
        "Set-DnsClient -InterfaceAlias $Name -RegisterThisConnectionsAddress $false",
        "$index = (Get-NetAdapter -Name $Name).InterfaceIndex",
        'Get-CimInstance Win32_NetworkAdapterConfiguration -Filter "InterfaceIndex=$index" |',
        "    Invoke-CimMethod -MethodName SetTcpipNetbios -Arguments @{ TcpipNetbiosOptions = [uint32]2 }",
        "# 4. Weak host model: accept VIP traffic arriving on the uplink, answer from the VIP through it",
        "Set-NetIPInterface -InterfaceAlias $Name -WeakHostReceive Enabled -WeakHostSend Enabled",
        "Set-NetIPInterface -InterfaceAlias $Uplink -WeakHostReceive Enabled -WeakHostSend Enabled",
        '#    (netsh equivalent: netsh interface ipv4 set interface "DSR-Loopback" weakhostreceive=enabled'
        " weakhostsend=enabled)",
    ]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Join:
    """How a host registers itself for a registry-backed DsrService."""

    etcd: str
    prefix: str
    address: str
    port: int | None = None


def linux_registration(join: Join, vip: str) -> str:
    port = f" --port {join.port}" if join.port else ""
    return "\n".join([
        "# 4. Join the DsrService: put the VIP on lo (step 1, done again by the agent), then register in etcd with a",
        "#    lease kept alive; on stop it drains, deregisters, and only then removes the VIP (see",
        "#    examples/without-kubernetes/dsr-host-agent.service for a systemd unit)",
        f"dsr-operator host-agent --etcd {shlex.quote(join.etcd)} --prefix {shlex.quote(join.prefix)} "
        f"--vip {vip} --address {join.address}{port}",
    ]) + "\n"


def windows_registration(join: Join, vip: str, *, ttl: int = 10, drain_seconds: int = 40) -> str:
    """PowerShell that installs a scheduled task registering the host in etcd (its HTTP API) while it holds the VIP.

    The task renews an etcd lease every few seconds while the loopback adapter holds the VIP, and
    deregisters when it does not; creating the file `drain` in its folder makes it leave gracefully
    (registered as draining for `drain_seconds`, then deregistered).
    """
    record = {"host": join.address, "ttl": ttl, **({"port": join.port} if join.port else {})}
    script = f"""$Etcd = {_ps(join.etcd.rstrip("/"))}
$Vip = {_ps(vip)}
$Name = $env:COMPUTERNAME.ToLower()
$Key = {_ps(join.prefix.rstrip("/") + "/")} + $Name
$Record = {_ps(json.dumps(record, sort_keys=True))} | ConvertFrom-Json
$Record | Add-Member -NotePropertyName name -NotePropertyValue $Name
$Flag = Join-Path $PSScriptRoot 'drain'
function B64([string]$s) {{ [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($s)) }}
function Etcd([string]$path, $body) {{
    $json = $body | ConvertTo-Json -Compress
    Invoke-RestMethod -Method Post -Uri "$Etcd$path" -ContentType 'application/json' -Body $json
}}
function Put($lease, [bool]$drain) {{
    $doc = $Record.PSObject.Copy()
    if ($drain) {{ $doc | Add-Member -NotePropertyName drain -NotePropertyValue $true }}
    $value = B64 ($doc | ConvertTo-Json -Compress)
    Etcd '/v3/kv/put' @{{ key = (B64 $Key); value = $value; lease = $lease }} | Out-Null
}}
function Held {{ [bool](Get-NetIPAddress -IPAddress $Vip -ErrorAction SilentlyContinue) }}
while ($true) {{
    try {{
        if (-not (Held) -or (Test-Path $Flag)) {{ Start-Sleep -Seconds 3; continue }}   # VIP first, bind after
        $lease = (Etcd '/v3/lease/grant' @{{ TTL = '{ttl}' }}).ID
        Put $lease $false
        while ((Held) -and -not (Test-Path $Flag)) {{
            if (-not (Etcd '/v3/lease/keepalive' @{{ ID = $lease }}).result.TTL) {{ break }}   # lease gone: again
            Start-Sleep -Seconds {max(1, ttl // 3)}
        }}
        if (Test-Path $Flag) {{   # leaving: drain first, keep the VIP until NetScaler has let go
            Put $lease $true
            $until = (Get-Date).AddSeconds({drain_seconds})
            while ((Get-Date) -lt $until) {{
                Etcd '/v3/lease/keepalive' @{{ ID = $lease }} | Out-Null
                Start-Sleep -Seconds 3
            }}
        }}
        Etcd '/v3/lease/revoke' @{{ ID = $lease }} | Out-Null
    }} catch {{ Start-Sleep -Seconds 3 }}
}}
"""
    return "\n".join([
        "# 5. Join the DsrService: a scheduled task registers this host in etcd while the adapter holds the VIP",
        "#    (a lease renewed every few seconds: a host that stops is unbound when it runs out).",
        "#    To leave gracefully: New-Item \"$env:ProgramData\\dsr-operator\\drain\"; wait "
        f"{drain_seconds} s; then the removal steps (host-setup --os windows --remove).",
        "$Dir = Join-Path $env:ProgramData 'dsr-operator'",
        "New-Item -ItemType Directory -Force -Path $Dir | Out-Null",
        "Remove-Item (Join-Path $Dir 'drain') -ErrorAction SilentlyContinue",
        "@'",
        script.rstrip("\n"),
        "'@ | Set-Content -Encoding UTF8 -Path (Join-Path $Dir 'register.ps1')",
        "$Action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument "
        "\"-NoProfile -ExecutionPolicy Bypass -File `\"$Dir\\register.ps1`\"\"",
        "Register-ScheduledTask -TaskName 'dsr-operator-register' -Action $Action -Trigger "
        "(New-ScheduledTaskTrigger -AtStartup) -User 'SYSTEM' -RunLevel Highest -Force | Out-Null",
        "Start-ScheduledTask -TaskName 'dsr-operator-register'",
    ]) + "\n"
