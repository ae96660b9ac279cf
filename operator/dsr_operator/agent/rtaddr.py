"""A small rtnetlink codec for the one hot path of the agent: address requests, acks and address dumps.

pyroute2's generic marshalling costs tens of microseconds per message, which dominates a pass over
a thousand VIPs. Address messages are fixed and tiny (nlmsghdr, ifaddrmsg, a few rtattrs), so this
module packs and parses them with `struct`, and `agent.netlink` sends them in batches over a netlink
socket that pyroute2 opened in the right namespace. Links still go through pyroute2's `AsyncIPRoute`.
Pure functions over bytes, no I/O.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
from collections.abc import Iterator

NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_LABEL = 3
IFA_FLAGS = 8
IFA_PROTO = 11
IFA_F_NODAD = 0x02

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # length, type
_U32 = struct.Struct("=I")
_S32 = struct.Struct("=i")


@dataclasses.dataclass(frozen=True)
class AddrMessage:
    """One address from a dump."""

    index: int
    family: int
    prefixlen: int
    address: str
    label: str | None
    proto: int | None


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def address_request(
    seq: int,
    msg_type: int,
    *,
    family: int,
    prefixlen: int,
    index: int,
    address: str,
    label: str | None = None,
    proto: int | None = None,
    nodad: bool = False,
    replace: bool = False,
) -> bytes:
    """RTM_NEWADDR (with `replace`: create-or-replace) or RTM_DELADDR, asking for an ack."""
    raw = socket.inet_pton(family, address)
    attrs = _attr(IFA_LOCAL, raw) if family == socket.AF_INET else b""
    attrs += _attr(IFA_ADDRESS, raw)
    if label:
        attrs += _attr(IFA_LABEL, label.encode() + b"\0")
    if nodad:
        attrs += _attr(IFA_FLAGS, _U32.pack(IFA_F_NODAD))
    if proto is not None:
        attrs += _attr(IFA_PROTO, bytes([proto]))
    body = _IFADDRMSG.pack(family, prefixlen, IFA_F_NODAD if nodad else 0, 0, index) + attrs
    flags = NLM_F_REQUEST | NLM_F_ACK | (NLM_F_CREATE | NLM_F_REPLACE if replace else 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def dump_request(seq: int) -> bytes:
    """RTM_GETADDR dump of every address of every family."""
    body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, seq, payload) of each netlink message in a datagram."""
    view = memoryview(data)
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, _ = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield msg_type, flags, seq, view[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def error_code(payload: memoryview) -> int:
    """The (positive) errno of an NLMSG_ERROR payload; 0 is an ack."""
    return -int(_S32.unpack_from(payload, 0)[0])


def parse_address(payload: memoryview) -> AddrMessage:
    family, prefixlen, _, _, index = _IFADDRMSG.unpack_from(payload, 0)
    attrs: dict[int, bytes] = {}
    offset = _IFADDRMSG.size
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        attrs[kind] = bytes(payload[offset + _RTATTR.size : offset + length])
        offset += (length + 3) & ~3
    raw = attrs.get(IFA_LOCAL) if family == socket.AF_INET and IFA_LOCAL in attrs else attrs.get(IFA_ADDRESS)
    address = socket.inet_ntop(family, raw) if raw else ""
    label = attrs[IFA_LABEL].split(b"\0", 1)[0].decode(errors="replace") if IFA_LABEL in attrs else None
    proto = attrs[IFA_PROTO][0] if attrs.get(IFA_PROTO) else None
    return AddrMessage(index=index, family=family, prefixlen=prefixlen, address=address, label=label, proto=proto)
