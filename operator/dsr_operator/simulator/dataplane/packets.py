"""Hand-made frames for the monitor probes: Ethernet, IPv4 / IPv6, TCP, ICMP and ICMPv6 echo (pure)."""

from __future__ import annotations

import random
import socket
import struct

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.randrange(65536), 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return header + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64,
                         socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))  # fmt: skip
    return header + payload


def pseudo_header(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!IxxxB", length, proto))  # fmt: skip
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, length)


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    pseudo = pseudo_header(src, dst, 6, len(segment))
    segment = segment[:16] + struct.pack("!H", checksum(pseudo + segment)) + segment[18:]
    return ipv6(src, dst, 6, segment) if ":" in src else ipv4(src, dst, 6, segment)


def icmp6_echo(src: str, dst: str, ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"dsr-operator nitro-sim monitor"
    body = body[:2] + struct.pack("!H", checksum(pseudo_header(src, dst, 58, len(body)) + body)) + body[4:]
    return ipv6(src, dst, 58, body)


def icmp_echo(src: str, dst: str, ident: int, seq: int) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"dsr-operator nitro-sim monitor"
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ipv4(src, dst, 1, body)


def frame(src_mac: str, dst_mac: str, packet: bytes) -> bytes:
    ethertype = ETH_P_IPV6 if packet[0] >> 4 == 6 else ETH_P_IP
    return mac_bytes(dst_mac) + mac_bytes(src_mac) + struct.pack("!H", ethertype) + packet
