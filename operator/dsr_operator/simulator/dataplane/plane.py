"""A real DSR forwarding path for the simulator: NetScaler's MAC-based forwarding, done by nftables.

`Dataplane(netns, dev)` is attached to a `Store` (`make_app(dataplane=...)`, `nitro-sim
--dataplane-netns NS --dataplane-dev DEV`). It turns the configuration into forwarding in the
namespace that plays the NetScaler, the way MBF does it:

* **Which vservers forward.** An lbvserver forwards when it is enabled, of type ANY, has an IPv4 or
  IPv6 `ipv46`, `m` MAC, and nsmode MBF is on. Anything else (m IP, MBF off, disabled) gets no rule, so
  the frame reaches the namespace's own stack, which holds the VIP and listens on nothing: the client is
  refused, a wrong configuration fails visibly. Every vserver's VIP is put on DEV (/32, or /128 without
  duplicate address detection), so the namespace answers ARP, or IPv6 neighbour solicitations, for it
  as the appliance does.
* **IPv6.** The same rules with `ip6` matches and `ipv6_addr` flow keys; backend MACs come from the
  neighbour table filled by neighbour discovery, and probes go from DEV's global IPv6 address as
  hand-made IPv6 frames (TCP SYN, or ICMPv6 echo for PING).
* **Forwarding.** One netdev ingress chain on DEV. A frame for VIP:port (tcp or udp; any port for
  65535) jumps to the vserver's chain, where its destination MAC is rewritten to a bound service's
  MAC, its source MAC to DEV's own (so the bridge never learns the client's MAC on our port and the
  replies go straight from the backend to the client), and it is sent out of DEV again (`fwd to`).
* **Choice and flow stickiness.** A new flow (a TCP SYN without ACK, or a packet of no known flow)
  goes to `jhash(ip saddr . th sport)` over the services that are UP (repeated by weight), and its key
  `ip saddr . th sport . th dport` is added to a per-service dynamic set (timeout `flow_timeout`,
  refreshed by each packet). Packets of a known flow go to the service whose set holds their key, as
  long as that service still *serves*: UP, or draining (GOING OUT OF SERVICE). So a graceful
  disable keeps the connections that started on a backend there while new ones go elsewhere; when
  the service is unbound, OUT OF SERVICE or DOWN, its set is deleted with its rule and its flows fall
  back to the hash (they were going to break anyway). A SYN first deletes its key from every set of
  the vserver, so a reused client port never sticks to an old choice. Sets, not maps: this kernel
  can add and update map elements from the packet path but not delete them.
* **Atomic updates.** Every change in the store (its `listeners` hook), a state that changes with time
  (a drain that ends) or a learnt MAC re-renders the ruleset; when it differs from the applied one it
  is applied as one `nft -f -` transaction (asyncio subprocess) that flushes and refills the chains
  and the choice sets but keeps the flow sets of services that still serve.
* **Backend MACs** come from the namespace's neighbour table; an address that is missing is resolved
  by sending it a datagram from the namespace (the kernel ARPs), as the appliance learns MACs from
  its monitors.
* **Monitors probe for real.** Each enabled service-monitor binding is probed every `interval`, with
  `resptimeout`, from the namespace's own address on DEV, with hand-made frames on an AF_PACKET
  socket: PING sends an ICMP echo, every other type a TCP SYN (SYN-ACK = success, then a RST).
  The probe goes to `destip` (default the service IP) and `destport` (default the service port).
  A transparent monitor sends it to the *backend's* MAC whatever the destination IP, so a probe to
  the VIP reaches the backend through the DSR path and fails where the backend lacks the VIP. A
  service goes DOWN after `retries` failed probes in a row and UP after `successretries` good ones;
  until its first verdict it is DOWN. The verdicts drive `svrstate` and `curstate` through
  `Store.set_probe_results`.
* **Counting.** Rule counters give packets in per vserver, packets forwarded and new flows per service
  (kept across ruleset replacements); the flow sets' elements are each service's live flows, published
  as its current clients (`Store.set_clients`), so a graceful disable ends when they reach 0 and the
  NITRO stat endpoints show real `curclntconnections`, `tothits` and packet counts.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import logging
import random
import socket
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

from dsr_operator import aio
from dsr_operator.simulator import netns as netns_
from dsr_operator.simulator import nitro as store_
from dsr_operator.simulator import stats as stats_

logger = logging.getLogger(__name__)

TABLE = "dsrsim"
WILDCARD_PORT = 65535
FLOW_TIMEOUT = 120.0
RENDER_POLL_SECONDS = 0.25
FLOWS_POLL_SECONDS = 1.0
FLOWS_POLL_DRAINING_SECONDS = 0.25
HISTORY_LENGTH = 1000
NEIGH_REFRESH_SECONDS = 1.0
SERVING_STATES = ("UP", "GOING OUT OF SERVICE")
_TIME_UNIT_S = {"SEC": 1.0, "MSEC": 0.001, "MIN": 60.0}
_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_PACKET_OUTGOING = 4


# ---------------------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class Member:
    """A bound service as the dataplane sees it."""

    service: str
    ip: str
    mac: str
    weight: int
    state: str  # svrstate


@dataclasses.dataclass(frozen=True)
class Vserver:
    """A MAC-mode vserver that forwards, with the services it may send to."""

    name: str
    vip: str
    port: int
    active: tuple[Member, ...]  # UP: new flows
    serving: tuple[Member, ...]  # UP or draining: flows already recorded on them
    family: int = 4  # IP version of the VIP


@dataclasses.dataclass(frozen=True)
class Desired:
    vservers: tuple[Vserver, ...]
    vips: frozenset[str]
    skipped: tuple[tuple[str, str], ...]  # (vserver, why it does not forward)


def desired_state(model: store_.Store, macs: Mapping[str, str]) -> Desired:
    """What the dataplane should do for this configuration and these learnt MACs (pure)."""
    vservers: list[Vserver] = []
    vips: set[str] = set()
    skipped: list[tuple[str, str]] = []
    mbf = "mbf" in model.modes
    bindings = model.objects["lbvserver_service_binding"]
    for (name,), vs in sorted(model.objects["lbvserver"].items()):
        vip = vs.get("ipv46", "0.0.0.0")
        try:
            parsed = ipaddress.ip_address(vip)
        except ValueError:
            parsed = None
        if parsed is None or parsed.is_unspecified:
            skipped.append((name, "no IP VIP"))
            continue
        vip = str(parsed)
        vips.add(vip)
        why = None
        if vs.get("state") == "DISABLED":
            why = "vserver disabled"
        elif vs.get("servicetype") != "ANY":
            why = f"servicetype {vs.get('servicetype')}, not ANY"
        elif vs.get("m", "IP") != "MAC":
            why = f"redirection mode m={vs.get('m', 'IP')}, not MAC"
        elif not mbf:
            why = "nsmode MBF is off"
        if why:
            skipped.append((name, why))
            continue
        members: list[Member] = []
        for (vs_name, svc_name), binding in sorted(bindings.items()):
            if vs_name != name:
                continue
            svc = model.objects["service"].get((svc_name,))
            if svc is None:
                continue
            mac = macs.get(svc["ipaddress"])
            if mac is None:
                continue
            weight = int(binding.get("weight", 1) or 1)
            members.append(Member(svc_name, svc["ipaddress"], mac, weight, model.svrstate(svc)))
        active = tuple(m for m in members if m.state == "UP")
        serving = tuple(m for m in members if m.state in SERVING_STATES)
        vservers.append(Vserver(name, vip, int(vs.get("port", 0)), active, serving, parsed.version))
    return Desired(tuple(vservers), frozenset(vips), tuple(skipped))


class Names:
    """Stable nft names: chain v<N> per vserver, flow set v<N>s<M> per (vserver, service)."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._next = itertools.count(1)
        self.sets: dict[str, tuple[str, str]] = {}
        """flow set name → (vserver, service)"""

    def _id(self, key: str) -> int:
        if key not in self._ids:
            self._ids[key] = next(self._next)
        return self._ids[key]

    def chain(self, vserver: str) -> str:
        return f"v{self._id('vs:' + vserver)}"

    def flows(self, vserver: str, service: str) -> str:
        name = f"{self.chain(vserver)}s{self._id('svc:' + service)}"
        self.sets[name] = (vserver, service)
        return name


def _quote(text: str) -> str:
    return '"' + text.replace('"', "'")[:120] + '"'


def render(
    desired: Desired,
    *,
    dev: str,
    mac: str,
    names: Names,
    previous: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset()),
    flow_timeout: float = FLOW_TIMEOUT,
) -> tuple[str, tuple[frozenset[str], frozenset[str]]]:
    """One nft transaction for `desired`, and the (chains, flow sets) it leaves behind.

    `previous` is what the last transaction left: chains are flushed, flow sets of services that
    still serve are kept with their flows, the rest is deleted after the rules that used it.
    """
    fwd = f'ether saddr set {mac} counter fwd to "{dev}"'
    prev_chains, prev_sets = previous
    chains = {names.chain(v.name) for v in desired.vservers}
    sets = {names.flows(v.name, m.service) for v in desired.vservers for m in v.serving}
    set_family = {names.flows(v.name, m.service): v.family for v in desired.vservers for m in v.serving}
    lines = [
        f"add table netdev {TABLE}",
        f'add chain netdev {TABLE} ingress {{ type filter hook ingress device "{dev}" priority 0; policy accept; }}',
        f"flush chain netdev {TABLE} ingress",
    ]
    for chain in sorted(prev_chains | chains):
        lines += [f"add chain netdev {TABLE} {chain}", f"flush chain netdev {TABLE} {chain}"]
    for flow_set in sorted(sets):
        addr_type = "ipv4_addr" if set_family[flow_set] == 4 else "ipv6_addr"
        lines.append(
            f"add set netdev {TABLE} {flow_set} {{ type {addr_type} . inet_service . inet_service; "
            f"flags dynamic,timeout; timeout {int(flow_timeout)}s; size 65535; }}"
        )
    for v in desired.vservers:
        chain = names.chain(v.name)
        l3 = "ip" if v.family == 4 else "ip6"
        key = f"{l3} saddr . th sport . th dport"
        port = "" if v.port in (0, WILDCARD_PORT) else f" th dport {v.port}"
        lines.append(
            f"add rule netdev {TABLE} ingress {l3} daddr {v.vip} meta l4proto {{ tcp, udp }}{port} counter "
            f"jump {chain} comment {_quote('vserver ' + v.name)}"
        )
        rule = f"add rule netdev {TABLE} {chain}"
        if v.serving:
            deletes = " ".join(f"delete @{names.flows(v.name, m.service)} {{ {key} }}" for m in v.serving)
            lines.append(f"{rule} tcp flags & (syn | ack) == syn {deletes}")
        for m in v.serving:
            flow_set = names.flows(v.name, m.service)
            lines.append(
                f"{rule} {key} @{flow_set} update @{flow_set} {{ {key} }} ether daddr set {m.mac} {fwd} "
                f"comment {_quote('service ' + m.service)}"
            )
        if v.active:
            slots = [m.mac for m in v.active for _ in range(max(1, min(m.weight, 100)))]
            choice = ", ".join(f"{i} : {mac_}" for i, mac_ in enumerate(slots))
            pick = f"jhash {l3} saddr . th sport mod {len(slots)} seed 0xd5 map {{ {choice} }}"
            lines.append(f"{rule} ether daddr set {pick}")
            for m in v.active:
                flow_set = names.flows(v.name, m.service)
                lines.append(
                    f"{rule} ether daddr {m.mac} add @{flow_set} {{ {key} }} {fwd} "
                    f"comment {_quote('newflow ' + m.service)}"
                )
    for flow_set in sorted(prev_sets - sets):
        lines.append(f"delete set netdev {TABLE} {flow_set}")
    for chain in sorted(prev_chains - chains):
        lines.append(f"delete chain netdev {TABLE} {chain}")
    return "\n".join(lines) + "\n", (frozenset(chains), frozenset(sets))


# ---------------------------------------------------------------------------------------- packets


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def _ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.randrange(65536), 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def _ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                         socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))  # fmt: skip
    return header + payload


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!IxxxB", length, proto))  # fmt: skip
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def _tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    pseudo = _pseudo(src, dst, 6, len(segment))
    segment = segment[:16] + struct.pack("!H", _checksum(pseudo + segment)) + segment[18:]
    return _ipv6(src, dst, 6, segment) if ":" in src else _ipv4(src, dst, 6, segment)


def _icmp6_echo(src: str, dst: str, ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"dsr-operator nitro-sim monitor"
    body = body[:2] + struct.pack("!H", _checksum(_pseudo(src, dst, 58, len(body)) + body)) + body[4:]
    return _ipv6(src, dst, 58, body)


def _icmp_echo(src: str, dst: str, ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"dsr-operator nitro-sim monitor"
    body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
    return _ipv4(src, dst, 1, body)


def _frame(src_mac: str, dst_mac: str, packet: bytes) -> bytes:
    ethertype = _ETH_P_IPV6 if packet[0] >> 4 == 6 else _ETH_P_IP
    return _mac_bytes(dst_mac) + _mac_bytes(src_mac) + struct.pack("!H", ethertype) + packet


TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


class Prober:
    """Monitor probes as raw frames on DEV in the namespace (AF_PACKET), with asyncio waiting."""

    def __init__(self, netns: str | None, dev: str) -> None:
        self.netns = netns
        self.dev = dev
        self._sock: socket.socket | None = None
        self._sock6: socket.socket | None = None
        self._pending: dict[tuple[Any, ...], asyncio.Future[tuple[int, ...]]] = {}
        self._ident = random.randrange(1, 65535)
        self._seq = itertools.count(1)

    async def start(self) -> None:
        self._sock = await self._open(_ETH_P_IP)
        self._sock6 = await self._open(_ETH_P_IPV6)

    async def _open(self, ethertype: int) -> socket.socket:
        sock = await asyncio.to_thread(
            netns_.socket_in, self.netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype)
        )
        sock.bind((self.dev, ethertype))
        sock.setblocking(False)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
        return sock

    def close(self) -> None:
        for sock in (self._sock, self._sock6):
            if sock is not None:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(sock.fileno())
                sock.close()
        self._sock = self._sock6 = None
        for fut in self._pending.values():
            fut.cancel()

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(512):
            try:
                data, addr = sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if addr[2] == _PACKET_OUTGOING or len(data) < 34:
                continue
            self._dispatch(data)

    def _dispatch(self, frame: bytes) -> None:
        ip = frame[14:]
        if ip[0] >> 4 == 6:
            if len(ip) < 48:
                return
            proto, src, l4 = ip[6], socket.inet_ntop(socket.AF_INET6, ip[8:24]), ip[40:]
            if proto == 58 and len(l4) >= 8:
                icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", l4[:8])
                fut = self._pending.get(("icmp", src, ident, seq))
                if icmp_type == 129 and fut is not None and not fut.done():
                    fut.set_result((icmp_type,))
                return
        else:
            ihl = (ip[0] & 0x0F) * 4
            proto = ip[9]
            src = socket.inet_ntoa(ip[12:16])
            l4 = ip[ihl:]
        if proto == 6 and len(l4) >= 20:
            sport, dport, seq, ack, _, flags = struct.unpack("!HHIIBB", l4[:14])
            fut = self._pending.get(("tcp", src, sport, dport))
            if fut is not None and not fut.done():
                fut.set_result((flags, seq, ack))
        elif proto == 1 and len(l4) >= 8:
            icmp_type, _, _, ident, seq = struct.unpack("!BBHHH", l4[:8])
            fut = self._pending.get(("icmp", src, ident, seq))
            if icmp_type == 0 and fut is not None and not fut.done():
                fut.set_result((icmp_type,))

    def _send(self, frame: bytes) -> None:
        """Send on the socket of the frame's ethertype (so the kernel tags it as IPv4 or IPv6)."""
        sock = self._sock6 if frame[12:14] == struct.pack("!H", _ETH_P_IPV6) else self._sock
        if sock is None:
            raise RuntimeError("prober not started")
        sock.send(frame)

    async def _exchange(self, key: tuple[Any, ...], frame: bytes, wait: float) -> tuple[int, ...] | None:
        if self._sock is None:
            raise RuntimeError("prober not started")
        fut: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            self._send(frame)
            async with asyncio.timeout(wait):
                return await fut
        except TimeoutError:
            return None
        finally:
            self._pending.pop(key, None)

    async def tcp(self, src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, port: int, wait: float) -> str | None:
        """None when the port answered SYN-ACK, else why the probe failed."""
        sport = random.randrange(33000, 60999)
        while ("tcp", dst_ip, port, sport) in self._pending:
            sport = random.randrange(33000, 60999)
        seq = random.randrange(2**32)
        syn = _frame(src_mac, dst_mac, _tcp(src_ip, dst_ip, sport, port, seq, 0, TCP_SYN))
        reply = await self._exchange(("tcp", dst_ip, port, sport), syn, wait)
        if reply is None:
            return f"no answer from {dst_ip}:{port} within {wait:g}s"
        flags = reply[0]
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
            rst = _frame(src_mac, dst_mac, _tcp(src_ip, dst_ip, sport, port, seq + 1, 0, TCP_RST))
            with contextlib.suppress(OSError, RuntimeError):
                self._send(rst)
            return None
        if flags & TCP_RST:
            return f"connection refused by {dst_ip}:{port}"
        return f"unexpected TCP flags {flags:#x} from {dst_ip}:{port}"

    async def ping(self, src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, wait: float) -> str | None:
        seq = next(self._seq) & 0xFFFF
        echo = _icmp6_echo if ":" in dst_ip else _icmp_echo
        frame = _frame(src_mac, dst_mac, echo(src_ip, dst_ip, self._ident, seq))
        reply = await self._exchange(("icmp", dst_ip, self._ident, seq), frame, wait)
        return None if reply is not None else f"no echo reply from {dst_ip} within {wait:g}s"


# ---------------------------------------------------------------------------------------- probes


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
    service: str
    monitor: str
    type: str
    service_ip: str
    dst_ip: str
    dst_port: int
    transparent: bool
    interval: float
    timeout: float
    retries: int
    successretries: int


def probe_specs(model: store_.Store) -> dict[tuple[str, str], ProbeSpec]:
    """The probes the configuration asks for: one per enabled service-monitor binding."""
    specs: dict[tuple[str, str], ProbeSpec] = {}
    for (svc_name, mon_name), binding in model.objects["service_lbmonitor_binding"].items():
        if binding.get("monstate") == "DISABLED":
            continue
        svc = model.objects["service"].get((svc_name,))
        monitors = sorted(model.objects["lbmonitor"].items())
        monitor = next((m for (n, _), m in monitors if n == mon_name and m.get("state") != "DISABLED"), None)
        if svc is None or monitor is None:
            continue
        destport = int(monitor.get("destport") or 0)
        specs[(svc_name, mon_name)] = ProbeSpec(
            service=svc_name,
            monitor=mon_name,
            type=monitor["type"],
            service_ip=svc["ipaddress"],
            dst_ip=monitor.get("destip") or svc["ipaddress"],
            dst_port=destport or int(svc.get("port", 0)),
            transparent=monitor.get("transparent") == "YES",
            interval=monitor["interval"] * _TIME_UNIT_S[monitor.get("units3", "SEC")],
            timeout=monitor["resptimeout"] * _TIME_UNIT_S[monitor.get("units4", "SEC")],
            retries=int(monitor.get("retries", 3)),
            successretries=int(monitor.get("successretries", 1)),
        )
    return specs


@dataclasses.dataclass
class ProbeState:
    up: bool = False
    streak: int = 0  # >0 successes in a row, <0 failures in a row
    probes: int = 0
    failed: int = 0
    last: str = "not probed yet"
    at: float = 0.0


# ---------------------------------------------------------------------------------------- counting

_COUNTED = ("vserver", "forwarded", "newflow")


def _rule_counts(table: Mapping[str, Any]) -> dict[str, collections.Counter[str]]:
    """Packets by rule comment: per vserver at ingress, per service forwarded (known and new flows),
    per service the first packets of new flows (that is, new flows)."""
    counts: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in _COUNTED}
    for item in table.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        packets = next((e["counter"]["packets"] for e in rule.get("expr", []) if "counter" in e), 0)
        kind, _, name = str(rule.get("comment", "")).partition(" ")
        if kind == "vserver":
            counts["vserver"][name] += packets
        elif kind in ("service", "newflow"):
            counts["forwarded"][name] += packets
            if kind == "newflow":
                counts["newflow"][name] += packets
    return counts


def _flows(table: Mapping[str, Any], names: Names) -> dict[str, int]:
    """Live flows per service: the elements of its flow sets (each expires after `flow_timeout` idle)."""
    flows: collections.Counter[str] = collections.Counter()
    for item in table.get("nftables", []):
        flow_set = item.get("set")
        if not flow_set or flow_set.get("name") not in names.sets:
            continue
        flows[names.sets[flow_set["name"]][1]] += len(flow_set.get("elem", ()))
    return dict(flows)


# ---------------------------------------------------------------------------------------- dataplane


class CommandError(RuntimeError):
    pass


def _host_cidr(address: str) -> str:
    return f"{address}/128" if ":" in address else f"{address}/32"


async def _run(*args: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise CommandError(f"{' '.join(args[:6])}: {err.decode().strip() or proc.returncode}")
    return out.decode()


class Dataplane:
    """The simulator's forwarding path in network namespace `netns` on interface `dev`."""

    def __init__(self, netns: str, dev: str, *, flow_timeout: float = FLOW_TIMEOUT) -> None:
        self.netns = netns
        self.dev = dev
        self.flow_timeout = flow_timeout
        self.mac = ""
        self.address = ""
        self.address6 = ""
        """DEV's global IPv6 address (probes to IPv6 services go from it); empty without one."""
        self.store: store_.Store | None = None
        self.names = Names()
        self.macs: dict[str, str] = {}
        self.probes: dict[tuple[str, str], ProbeState] = {}
        self.applied: Desired | None = None
        self.script = ""
        self.renders = 0
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_LENGTH)
        """Each applied ruleset's forwarding choices, with when its transaction started and ended (wall clock)."""
        self.last_error: str | None = None
        self._objects: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())
        self._carried: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in _COUNTED}
        """Rule counters of rulesets replaced since start (a transaction flushes the chains' counters)."""
        self._vips_added: set[str] = set()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._probe_tasks: dict[tuple[str, str], tuple[ProbeSpec, asyncio.Task[None]]] = {}
        self._prober = Prober(netns, dev)
        self._udp: socket.socket | None = None
        self._udp6: socket.socket | None = None
        self._wanted_ips: set[str] = set()

    # -- lifecycle

    def attach(self, model: store_.Store) -> None:
        """Follow this store's changes; from now on its monitors are real probes."""
        self.store = model
        model.listeners.append(self._changed)
        model.set_probe_results({})

    def _changed(self, change: store_.Change) -> None:
        self._dirty.set()  # never blocks: the render loop does the work

    def _ip(self, *args: str) -> tuple[str, ...]:
        return ("ip", "-n", self.netns, *args)

    async def start(self) -> None:
        links = json.loads(await _run(*self._ip("-j", "addr", "show", "dev", self.dev)))
        if not links:
            raise CommandError(f"no interface {self.dev} in namespace {self.netns}")
        self.mac = links[0]["address"]
        infos = links[0].get("addr_info", [])
        own = [a["local"] for a in infos if a.get("family") == "inet" and a.get("prefixlen", 32) < 32]
        if not own:
            raise CommandError(f"{self.dev} in {self.netns} has no IPv4 subnet address to probe from")
        self.address = own[0]
        own6 = [a["local"] for a in infos if a.get("family") == "inet6" and a.get("scope") == "global"
                and a.get("prefixlen", 128) < 128]  # fmt: skip
        self.address6 = own6[0] if own6 else ""
        # A previous run that died may have left its table behind: start from nothing.
        await _run("ip", "netns", "exec", self.netns, "nft", "-f", "-",
                   stdin=f"add table netdev {TABLE}\ndelete table netdev {TABLE}\n")  # fmt: skip
        await self._prober.start()
        self._udp = await asyncio.to_thread(netns_.socket_in, self.netns, socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.setblocking(False)
        if self.address6:
            self._udp6 = await asyncio.to_thread(netns_.socket_in, self.netns, socket.AF_INET6, socket.SOCK_DGRAM)
            self._udp6.setblocking(False)
        self._tasks = [
            asyncio.create_task(self._render_loop(), name="dataplane-render"),
            asyncio.create_task(self._neigh_loop(), name="dataplane-neigh"),
            asyncio.create_task(self._flows_loop(), name="dataplane-flows"),
        ]
        self._dirty.set()
        logger.info(
            "DSR dataplane on %s in netns %s (MAC %s, probes from %s)", self.dev, self.netns, self.mac, self.address
        )

    async def stop(self) -> None:
        tasks = self._tasks + [task for _, task in self._probe_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._probe_tasks.clear()
        self._prober.close()
        for udp in (self._udp, self._udp6):
            if udp is not None:
                udp.close()
        with contextlib.suppress(CommandError):
            await _run("ip", "netns", "exec", self.netns, "nft", "-f", "-",
                       stdin=f"add table netdev {TABLE}\ndelete table netdev {TABLE}\n")  # fmt: skip
        for vip in sorted(self._vips_added):
            with contextlib.suppress(CommandError):
                await _run(*self._ip("addr", "del", _host_cidr(vip), "dev", self.dev))
        self._vips_added.clear()
        if self.store is not None and self._changed in self.store.listeners:
            self.store.listeners.remove(self._changed)

    # -- rendering

    async def _render_loop(self) -> None:
        while True:
            await aio.wait(self._dirty, RENDER_POLL_SECONDS)
            self._dirty.clear()
            assert self.store is not None
            self._sync_probes()
            self._wanted_ips = {s.service_ip for s in probe_specs(self.store).values()} | {
                svc["ipaddress"] for svc in self.store.objects["service"].values()
            }
            desired = desired_state(self.store, self.macs)
            if desired == self.applied:
                continue
            try:
                await self._apply(desired)
            except (CommandError, OSError) as exc:
                self.last_error = str(exc)
                logger.error("DSR dataplane update failed: %s", exc)
                await asyncio.sleep(1.0)
                self._dirty.set()

    async def _apply(self, desired: Desired) -> None:
        applying = time.time()
        script, objects = render(
            desired,
            dev=self.dev,
            mac=self.mac,
            names=self.names,
            previous=self._objects,
            flow_timeout=self.flow_timeout,
        )
        for vip in sorted(desired.vips - self._vips_added):
            nodad = ("nodad",) if ":" in vip else ()  # usable at once, not after duplicate address detection
            await _run(*self._ip("addr", "replace", _host_cidr(vip), "dev", self.dev, *nodad))
            self._vips_added.add(vip)
        if self._objects[0]:  # the chains' counters restart with the new rules: keep their totals
            with contextlib.suppress(CommandError, ValueError):
                for kind, counts in _rule_counts(await self._table()).items():
                    self._carried[kind].update(counts)
        await _run("ip", "netns", "exec", self.netns, "nft", "-f", "-", stdin=script)
        self._objects = objects
        for vip in sorted(self._vips_added - desired.vips):
            await _run(*self._ip("addr", "del", _host_cidr(vip), "dev", self.dev))
            self._vips_added.discard(vip)
        self.applied = desired
        self.script = script
        self.renders += 1
        self.history.append({
            "applying": applying,
            "time": time.time(),
            "vservers": {v.name: {"newFlows": [m.service for m in v.active], "serving": [m.service for m in v.serving]}
                         for v in desired.vservers},
        })
        self.last_error = None
        for v in desired.vservers:
            logger.info(
                "DSR %s %s:%s -> new flows: %s; serving: %s", v.name, v.vip, v.port,
                [m.service for m in v.active] or "none", [m.service for m in v.serving] or "none",
            )  # fmt: skip
        for name, why in desired.skipped:
            logger.info("DSR %s not forwarded: %s", name, why)

    # -- neighbours

    async def _neighbours(self) -> dict[str, str]:
        rows = json.loads(await _run(*self._ip("-j", "neigh", "show", "dev", self.dev)) or "[]")
        return {
            r["dst"]: r["lladdr"]
            for r in rows
            if "lladdr" in r and not {"FAILED", "INCOMPLETE"} & set(r.get("state", ()))
        }

    def _solicit(self, ips: Iterable[str]) -> None:
        for ip in ips:
            udp = self._udp6 if ":" in ip else self._udp
            if udp is None:
                continue
            with contextlib.suppress(OSError):
                udp.sendto(b"", (ip, 9))  # the kernel resolves the MAC first (ARP or neighbour discovery)

    async def _neigh_loop(self) -> None:
        rounds = 0
        while True:
            try:
                found = await self._neighbours()
            except (CommandError, ValueError) as exc:
                logger.warning("Cannot read the neighbour table of %s: %s", self.netns, exc)
                found = {}
            wanted = self._wanted_ips
            macs = {ip: mac for ip, mac in found.items() if ip in wanted}
            missing = wanted - macs.keys()
            # Missing entries at once; present ones now and then, so the kernel revalidates them.
            self._solicit(missing if rounds % 5 else wanted)
            if macs != self.macs:
                self.macs = macs
                self._dirty.set()
            rounds += 1
            await asyncio.sleep(0.2 if missing else NEIGH_REFRESH_SECONDS)

    async def _mac_of(self, ip: str, wait: float) -> str | None:
        deadline = time.monotonic() + wait
        while True:
            mac = self.macs.get(ip)
            if mac is not None:
                return mac
            self._solicit([ip])
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.1)
            with contextlib.suppress(CommandError, ValueError):
                mac = (await self._neighbours()).get(ip)
                if mac is not None:
                    return mac

    # -- monitors

    def _sync_probes(self) -> None:
        assert self.store is not None
        specs = probe_specs(self.store)
        for key, (spec, task) in list(self._probe_tasks.items()):
            if specs.get(key) != spec:
                task.cancel()
                del self._probe_tasks[key]
                if key not in specs:
                    self.probes.pop(key, None)
        for key, spec in specs.items():
            if key not in self._probe_tasks:
                self.probes.setdefault(key, ProbeState())
                self._probe_tasks[key] = (spec, asyncio.create_task(self._probe_loop(spec), name=f"probe-{key}"))
        self._publish()

    def _publish(self) -> None:
        if self.store is not None:
            self.store.set_probe_results({key: st.up for key, st in self.probes.items()})

    async def probe_once(self, spec: ProbeSpec) -> str | None:
        """One probe; None on success, else the reason it failed."""
        mac_ip = spec.service_ip if spec.transparent else spec.dst_ip
        mac = await self._mac_of(mac_ip, spec.timeout)
        if mac is None:
            return f"no MAC for {mac_ip}"
        source = self.address6 if ":" in spec.dst_ip else self.address
        if not source:
            return f"{self.dev} has no global IPv6 address to probe {spec.dst_ip} from"
        if spec.type == "PING":
            return await self._prober.ping(self.mac, source, mac, spec.dst_ip, spec.timeout)
        if spec.dst_port in (0, WILDCARD_PORT):
            return "monitor has no destination port for a wildcard service"
        return await self._prober.tcp(self.mac, source, mac, spec.dst_ip, spec.dst_port, spec.timeout)

    async def _probe_loop(self, spec: ProbeSpec) -> None:
        key = (spec.service, spec.monitor)
        while True:
            started = time.monotonic()
            try:
                failure = await self.probe_once(spec)
            except OSError as exc:
                failure = f"probe error: {exc}"
            state = self.probes.setdefault(key, ProbeState())
            state.probes += 1
            state.at = time.time()
            if failure is None:
                state.streak = state.streak + 1 if state.streak > 0 else 1
                state.last = "success"
                if not state.up and state.streak >= spec.successretries:
                    state.up = True
                    logger.info("Monitor %s: service %s is UP", spec.monitor, spec.service)
            else:
                state.failed += 1
                state.streak = state.streak - 1 if state.streak < 0 else -1
                state.last = failure
                if state.up and -state.streak >= spec.retries:
                    state.up = False
                    logger.info("Monitor %s: service %s is DOWN (%s)", spec.monitor, spec.service, failure)
            self._publish()
            await asyncio.sleep(max(0.0, spec.interval - (time.monotonic() - started)))

    # -- flows

    async def _flows_loop(self) -> None:
        """Publish each service's live flows as its current clients (a graceful disable ends at 0)."""
        while True:
            assert self.store is not None
            try:
                self.store.set_clients(_flows(await self._table(), self.names), replace=True, live=True)
            except (CommandError, ValueError) as exc:
                logger.debug("Cannot count the dataplane's flows: %s", exc)
            draining = any(svc.get("state") == "DISABLED" for svc in self.store.objects["service"].values())
            await asyncio.sleep(FLOWS_POLL_DRAINING_SECONDS if draining else FLOWS_POLL_SECONDS)

    # -- reporting

    async def _table(self) -> dict[str, Any]:
        out = await _run("ip", "netns", "exec", self.netns, "nft", "-j", "list", "table", "netdev", TABLE)
        table: dict[str, Any] = json.loads(out)
        return table

    async def traffic(self) -> stats_.Traffic:
        """Packets and new flows counted since start, for the NITRO stat endpoints."""
        counts = await self.counters()
        return stats_.Traffic(counts["vserverPackets"], counts["forwardedPackets"], counts["newFlows"])

    async def counters(self) -> dict[str, Any]:
        """Packets per vserver at ingress, forwarded and new flows per service (since start), live flows
        per service, and DEV's counters."""
        table = await self._table()
        counts = _rule_counts(table)
        for kind, carried in self._carried.items():
            counts[kind].update(carried)
        link = json.loads(await _run(*self._ip("-s", "-j", "link", "show", "dev", self.dev)))[0]
        stats = link.get("stats64", link.get("stats", {}))
        return {
            "vserverPackets": dict(counts["vserver"]),
            "forwardedPackets": dict(counts["forwarded"]),
            "newFlows": dict(counts["newflow"]),
            "flows": _flows(table, self.names),
            "interface": {
                "name": self.dev,
                "rxPackets": stats.get("rx", {}).get("packets", 0),
                "txPackets": stats.get("tx", {}).get("packets", 0),
            },
        }

    def describe(self) -> dict[str, Any]:
        """What `/_sim/dataplane` shows: forwarding choices, learnt MACs, probe verdicts."""
        applied = self.applied
        return {
            "netns": self.netns,
            "dev": self.dev,
            "mac": self.mac,
            "address": self.address,
            "address6": self.address6,
            "renders": self.renders,
            "lastError": self.last_error,
            "macs": dict(sorted(self.macs.items())),
            "vips": sorted(applied.vips) if applied else [],
            "vservers": [
                {
                    "name": v.name,
                    "vip": v.vip,
                    "port": v.port,
                    "newFlows": [m.service for m in v.active],
                    "serving": [m.service for m in v.serving],
                }
                for v in (applied.vservers if applied else ())
            ],
            "notForwarded": [{"name": n, "reason": why} for n, why in (applied.skipped if applied else ())],
            "history": list(self.history),
            "probes": [
                {"service": s, "monitor": m, "up": st.up, "probes": st.probes, "failed": st.failed, "last": st.last}
                for (s, m), st in sorted(self.probes.items())
            ],
        }
