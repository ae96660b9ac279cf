"""Monitor probes on the wire: raw frames on DEV in the namespace (AF_PACKET), answers awaited with asyncio.

PING sends an ICMP (ICMPv6) echo, every other monitor type a TCP SYN (SYN-ACK = success, then a RST).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import random
import socket
import struct
from typing import Any

from dsr_operator import netns as netns_
from dsr_operator.simulator.dataplane import packets
from dsr_operator.simulator.dataplane.packets import ETH_P_IP, ETH_P_IPV6, TCP_ACK, TCP_RST, TCP_SYN

_PACKET_OUTGOING = 4


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
        self._sock = await self._open(ETH_P_IP)
        self._sock6 = await self._open(ETH_P_IPV6)

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
        sock = self._sock6 if frame[12:14] == struct.pack("!H", ETH_P_IPV6) else self._sock
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
        syn = packets.frame(src_mac, dst_mac, packets.tcp(src_ip, dst_ip, sport, port, seq, 0, TCP_SYN))
        reply = await self._exchange(("tcp", dst_ip, port, sport), syn, wait)
        if reply is None:
            return f"no answer from {dst_ip}:{port} within {wait:g}s"
        flags = reply[0]
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK:
            rst = packets.frame(src_mac, dst_mac, packets.tcp(src_ip, dst_ip, sport, port, seq + 1, 0, TCP_RST))
            with contextlib.suppress(OSError, RuntimeError):
                self._send(rst)
            return None
        if flags & TCP_RST:
            return f"connection refused by {dst_ip}:{port}"
        return f"unexpected TCP flags {flags:#x} from {dst_ip}:{port}"

    async def ping(self, src_mac: str, src_ip: str, dst_mac: str, dst_ip: str, wait: float) -> str | None:
        seq = next(self._seq) & 0xFFFF
        echo = packets.icmp6_echo if ":" in dst_ip else packets.icmp_echo
        frame = packets.frame(src_mac, dst_mac, echo(src_ip, dst_ip, self._ident, seq))
        reply = await self._exchange(("icmp", dst_ip, self._ident, seq), frame, wait)
        return None if reply is not None else f"no echo reply from {dst_ip} within {wait:g}s"


@dataclasses.dataclass
class ProbeState:
    up: bool = False
    streak: int = 0  # >0 successes in a row, <0 failures in a row
    probes: int = 0
    failed: int = 0
    last: str = "not probed yet"
    at: float = 0.0
