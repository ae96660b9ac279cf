"""Schema table of the NITRO resources the simulator serves: fields, types, enums, ranges, keys.

One compact `Resource` per NITRO type drives validation of add/update/action payloads and the
rendering of GET records (integers as JSON numbers, NITRO "double" properties as strings). Field
names, enums and ranges follow the NITRO 12 YAML specs and reference pages; only the subset the
simulator needs is listed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

Kind = Literal["str", "name", "int", "double", "ip", "enum", "bool", "list"]

#: NetScaler object names: an ASCII letter, digit or `_`, then letters, digits and `_ # . space : @ = -`.
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_#. :@=\-]*$")
NAME_MAX_LENGTH = 127
NAME_RULES = (
    "Invalid name; names must begin with an alphanumeric character or underscore and must contain "
    "only alphanumerics, _, #, ., space, :, @, = or -"
)


@dataclasses.dataclass(frozen=True)
class Field:
    """One property: its kind, allowed values, range, default, and in which operations it is accepted."""

    kind: Kind = "str"
    choices: tuple[str, ...] = ()
    lo: int | None = None
    hi: int | None = None
    default: Any = None
    add: bool = True  # accepted in an add payload
    update: bool = False  # changed by an update (PUT); known-but-immutable fields are silently ignored
    required: bool = False  # required on add


@dataclasses.dataclass(frozen=True)
class Resource:
    """A NITRO resource type (or binding type) as the simulator understands it."""

    name: str
    keys: tuple[str, ...]
    fields: Mapping[str, Field]
    mutex: tuple[tuple[str, str], ...] = ()
    actions: frozenset[str] = frozenset()
    binding: bool = False
    renamable: bool = False
    parent: str = ""
    """For a binding: the type of the object its first key names (a GET by name needs that object)."""

    def key_of(self, obj: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(obj[k]) for k in self.keys)


def _s(**kw: Any) -> Field:
    return Field("str", **kw)


def _e(*choices: str, **kw: Any) -> Field:
    return Field("enum", choices=choices, **kw)


def _i(lo: int, hi: int, **kw: Any) -> Field:
    return Field("int", lo=lo, hi=hi, **kw)


def _d(lo: int, hi: int, **kw: Any) -> Field:
    return Field("double", lo=lo, hi=hi, **kw)


YES_NO = ("YES", "NO")
ON_OFF = ("ON", "OFF")
ENABLED_DISABLED = ("ENABLED", "DISABLED")

SERVICE_TYPES = (
    "HTTP FTP TCP UDP SSL SSL_BRIDGE SSL_TCP DTLS NNTP RPCSVR DNS ADNS SNMP RTSP DHCPRA ANY SIP_UDP SIP_TCP "
    "SIP_SSL DNS_TCP ADNS_TCP MYSQL MSSQL ORACLE RADIUS RADIUSListener RDP DIAMETER SSL_DIAMETER TFTP SMPP "
    "PPTP GRE SYSLOGTCP SYSLOGUDP FIX SSL_FIX USER_TCP USER_SSL_TCP QUIC"
).split()
VSERVER_TYPES = (
    "HTTP FTP TCP UDP SSL SSL_BRIDGE SSL_TCP DTLS NNTP DNS DHCPRA ANY SIP_UDP SIP_TCP SIP_SSL DNS_TCP RTSP "
    "PUSH SSL_PUSH RADIUS RDP MYSQL MSSQL DIAMETER SSL_DIAMETER TFTP ORACLE SMPP SYSLOGTCP SYSLOGUDP FIX "
    "SSL_FIX PROXY USER_TCP USER_SSL_TCP QUIC"
).split()
LB_METHODS = (
    "ROUNDROBIN LEASTCONNECTION LEASTRESPONSETIME URLHASH DOMAINHASH DESTINATIONIPHASH SOURCEIPHASH "
    "SRCIPDESTIPHASH LEASTBANDWIDTH LEASTPACKETS TOKEN SRCIPSRCPORTHASH LRTM CALLIDHASH CUSTOMLOAD "
    "LEASTREQUEST AUDITLOGHASH STATICPROXIMITY USER_TOKEN"
).split()
PERSISTENCE_TYPES = (
    "SOURCEIP COOKIEINSERT SSLSESSION RULE URLPASSIVE CUSTOMSERVERID DESTIP SRCIPDESTIP CALLID RTSPSID "
    "DIAMETER FIXSESSION USERSESSION NONE"
).split()
MONITOR_TYPES = (
    "PING TCP HTTP TCP-ECV HTTP-ECV UDP-ECV DNS FTP LDNS-PING LDNS-TCP LDNS-DNS RADIUS USER HTTP-INLINE "
    "SIP-UDP SIP-TCP LOAD FTP-EXTENDED SMTP SNMP NNTP MYSQL MYSQL-ECV MSSQL-ECV ORACLE-ECV LDAP POP3 "
    "CITRIX-XML-SERVICE CITRIX-WEB-INTERFACE DNS-TCP RTSP ARP CITRIX-AG CITRIX-AAC-LOGINPAGE CITRIX-AAC-LAS "
    "CITRIX-XD-DDC ND6 CITRIX-WI-EXTENDED DIAMETER RADIUS_ACCOUNTING STOREFRONT APPC SMPP CITRIX-XNC-ECV "
    "CITRIX-XDM CITRIX-STA-SERVICE CITRIX-STA-SERVICE-NHOP"
).split()
TIME_UNITS = ("SEC", "MSEC", "MIN")

#: nsmode names accepted by enable/disable, mapped to the read-only boolean shown on GET.
NSMODES: Mapping[str, str] = {
    "FR": "fr", "FASTRAMP": "fr",
    "L2": "l2", "L2MODE": "l2",
    "L3": "l3", "L3MODE": "l3",
    "USIP": "usip", "USESOURCEIP": "usip",
    "CKA": "cka", "CLIENTKEEPALIVE": "cka",
    "TCPB": "tcpb", "TCPBUFFERING": "tcpb",
    "MBF": "mbf", "MACBASEDFORWARDING": "mbf",
    "EDGE": "edge",
    "USNIP": "usnip",
    "SRADV": "sradv", "DRADV": "dradv", "IRADV": "iradv", "SRADV6": "sradv6", "DRADV6": "dradv6",
    "PMTUD": "pmtud",
    "RISE_APBR": "rise_apbr", "RISE_RHI": "rise_rhi",
    "BRIDGEBPDUS": "bridgebpdus",
    "ULFD": "ulfd",
    "MEDIACLASSIFICATION": "mediaclassification",
    "SINGLE_IP": "single_ip",
}  # fmt: skip
#: How GET spells each enabled mode inside `mode` (the booleans are the reliable part).
NSMODE_DISPLAY: Mapping[str, str] = {
    "fr": "FR", "l2": "L2", "l3": "L3", "usip": "USIP", "cka": "CKA", "tcpb": "TCPB", "mbf": "MBF",
    "edge": "Edge", "usnip": "USNIP", "sradv": "SRADV", "dradv": "DRADV", "iradv": "IRADV",
    "sradv6": "SRADV6", "dradv6": "DRADV6", "pmtud": "PMTUD", "rise_apbr": "RISE_APBR",
    "rise_rhi": "RISE_RHI", "bridgebpdus": "BridgeBPDUs", "ulfd": "ULFD",
    "mediaclassification": "Mediaclassification", "single_ip": "SINGLE_IP",
}  # fmt: skip
#: Modes a fresh NetScaler has enabled.
NSMODE_DEFAULTS = frozenset({"fr", "l3", "edge", "usnip", "pmtud"})

STATE_ACTIONS = frozenset({"enable", "disable"})

SERVER = Resource(
    name="server",
    keys=("name",),
    renamable=True,
    actions=STATE_ACTIONS | {"rename"},
    mutex=(("ipaddress", "domain"),),
    fields={
        "name": Field("name", required=True),
        "ipaddress": Field("ip", update=True),
        "domain": _s(),
        "state": _e(*ENABLED_DISABLED, default="ENABLED"),
        "comment": _s(update=True),
        "td": _d(0, 4094),
        "translationip": Field("ip", update=True),
        "translationmask": Field("ip", update=True),
        "domainresolveretry": _i(5, 20939, update=True),
        "ipv6address": _e(*YES_NO),
    },
)

SERVICE = Resource(
    name="service",
    keys=("name",),
    renamable=True,
    actions=STATE_ACTIONS | {"rename"},
    mutex=(("ip", "servername"),),
    fields={
        "name": Field("name", required=True),
        "ip": Field("ip"),
        "servername": Field("name"),
        "ipaddress": Field("ip", add=False, update=True),
        "servicetype": _e(*SERVICE_TYPES, required=True),
        "port": _i(1, 65535, required=True),
        "usip": _e(*YES_NO, update=True),
        "useproxyport": _e(*YES_NO, update=True),
        "healthmonitor": _e(*YES_NO, default="YES", update=True),
        "maxclient": _d(0, 4294967294, default=0, update=True),
        "maxreq": _d(0, 65535, update=True),
        "cip": _e(*ENABLED_DISABLED, update=True),
        "cipheader": _s(update=True),
        "cka": _e(*YES_NO, update=True),
        "tcpb": _e(*YES_NO, update=True),
        "cmp": _e(*YES_NO, update=True),
        "sp": _e(*ON_OFF, update=True),
        "sc": _e(*ON_OFF, update=True),
        "clttimeout": _i(0, 31536000, update=True),
        "svrtimeout": _i(0, 31536000, update=True),
        "accessdown": _e(*YES_NO, update=True),
        "downstateflush": _e(*ENABLED_DISABLED, update=True),
        "monthreshold": _d(0, 65535, update=True),
        "processlocal": _e(*ENABLED_DISABLED, update=True),
        "comment": _s(update=True),
        "state": _e(*ENABLED_DISABLED, default="ENABLED"),
        "td": _d(0, 4094),
    },
)

LBVSERVER = Resource(
    name="lbvserver",
    keys=("name",),
    renamable=True,
    actions=STATE_ACTIONS | {"rename"},
    fields={
        "name": Field("name", required=True),
        "servicetype": _e(*VSERVER_TYPES, required=True),
        "ipv46": Field("ip", update=True),
        "port": _i(1, 65535),
        "lbmethod": _e(*LB_METHODS, default="LEASTCONNECTION", update=True),
        "m": _e("IP", "MAC", "IPTUNNEL", "TOS", default="IP", update=True),
        "tosid": _d(1, 63, update=True),
        "persistencetype": _e(*PERSISTENCE_TYPES, default="NONE", update=True),
        "timeout": _i(0, 1440, default=2, update=True),
        "sessionless": _e(*ENABLED_DISABLED, default="DISABLED", update=True),
        "connfailover": _e("DISABLED", "STATEFUL", "STATELESS", default="DISABLED", update=True),
        "l2conn": _e(*ON_OFF, update=True),
        "macmoderetainvlan": _e(*ENABLED_DISABLED, update=True),
        "clttimeout": _d(0, 31536000, update=True),
        "comment": _s(update=True),
        "state": _e(*ENABLED_DISABLED, default="ENABLED"),
        "td": _d(0, 4094),
    },
)

LBMONITOR = Resource(
    name="lbmonitor",
    keys=("monitorname", "type"),
    fields={
        "monitorname": Field("name", required=True),
        "type": _e(*MONITOR_TYPES, required=True),
        "interval": _i(1, 20940, default=5, update=True),
        "units3": _e(*TIME_UNITS, default="SEC", update=True),
        "resptimeout": _i(1, 20939, default=2, update=True),
        "units4": _e(*TIME_UNITS, default="SEC", update=True),
        "retries": _i(1, 127, default=3, update=True),
        "successretries": _i(1, 32, default=1, update=True),
        "failureretries": _i(0, 32, update=True),
        "downtime": _i(1, 20939, default=30, update=True),
        "destip": Field("ip", update=True),
        "destport": _i(0, 65535, update=True),
        "transparent": _e(*YES_NO, default="NO", update=True),
        "reverse": _e(*YES_NO, default="NO", update=True),
        "lrtm": _e(*ENABLED_DISABLED, update=True),
        "httprequest": _s(update=True),
        "respcode": Field("list", update=True),
        "send": _s(update=True),
        "recv": _s(update=True),
        "comment": _s(update=True),
        "state": _e(*ENABLED_DISABLED, default="ENABLED", update=True),
    },
)

LBVSERVER_SERVICE_BINDING = Resource(
    name="lbvserver_service_binding",
    keys=("name", "servicename"),
    binding=True,
    parent="lbvserver",
    mutex=(("servicename", "servicegroupname"),),
    fields={
        "name": Field("name", required=True),
        "servicename": Field("name", required=True),
        "servicegroupname": Field("name"),
        "weight": _d(1, 100, default=1),
    },
)

SERVICE_LBMONITOR_BINDING = Resource(
    name="service_lbmonitor_binding",
    keys=("name", "monitor_name"),
    binding=True,
    parent="service",
    fields={
        "name": Field("name", required=True),
        "monitor_name": Field("name", required=True),
        "weight": _d(1, 100, default=1),
        "monstate": _e(*ENABLED_DISABLED, default="ENABLED"),
        "passive": Field("bool"),
    },
)

#: A service group: the service's settings without an address; its members are (server, port) bindings.
SERVICEGROUP = Resource(
    name="servicegroup",
    keys=("servicegroupname",),
    renamable=True,
    actions=STATE_ACTIONS | {"rename"},
    fields={
        "servicegroupname": Field("name", required=True),
        "servicetype": _e(*SERVICE_TYPES, required=True),
        "usip": _e(*YES_NO, update=True),
        "useproxyport": _e(*YES_NO, update=True),
        "healthmonitor": _e(*YES_NO, default="YES", update=True),
        "maxclient": _d(0, 4294967294, default=0, update=True),
        "maxreq": _d(0, 65535, update=True),
        "cip": _e(*ENABLED_DISABLED, update=True),
        "cipheader": _s(update=True),
        "cka": _e(*YES_NO, update=True),
        "tcpb": _e(*YES_NO, update=True),
        "cmp": _e(*YES_NO, update=True),
        "sp": _e(*ON_OFF, update=True),
        "sc": _e(*ON_OFF, update=True),
        "clttimeout": _i(0, 31536000, update=True),
        "svrtimeout": _i(0, 31536000, update=True),
        "downstateflush": _e(*ENABLED_DISABLED, update=True),
        "monthreshold": _d(0, 65535, update=True),
        "comment": _s(update=True),
        "state": _e(*ENABLED_DISABLED, default="ENABLED"),
        "td": _d(0, 4094),
    },
)

#: A member of a service group: a server (by name, or by `ip`, which names a new server after itself)
#: and a port. Stored with the server's name and IP; `ip` selects the member on unbind too.
SERVICEGROUP_SERVICEGROUPMEMBER_BINDING = Resource(
    name="servicegroup_servicegroupmember_binding",
    keys=("servicegroupname", "servername", "port"),
    binding=True,
    parent="servicegroup",
    mutex=(("ip", "servername"),),
    fields={
        "servicegroupname": Field("name", required=True),
        "ip": Field("ip"),
        "servername": Field("name"),
        "port": _i(1, 65535, required=True),
        "weight": _d(1, 100, default=1),
        "state": _e(*ENABLED_DISABLED, default="ENABLED"),
    },
)

SERVICEGROUP_LBMONITOR_BINDING = Resource(
    name="servicegroup_lbmonitor_binding",
    keys=("servicegroupname", "monitor_name"),
    binding=True,
    parent="servicegroup",
    fields={
        "servicegroupname": Field("name", required=True),
        "monitor_name": Field("name", required=True),
        "weight": _d(1, 100, default=1),
        "monstate": _e(*ENABLED_DISABLED, default="ENABLED"),
        "passive": Field("bool"),
    },
)

LBVSERVER_SERVICEGROUP_BINDING = Resource(
    name="lbvserver_servicegroup_binding",
    keys=("name", "servicegroupname"),
    binding=True,
    parent="lbvserver",
    fields={
        "name": Field("name", required=True),
        "servicegroupname": Field("name", required=True),
        "weight": _d(1, 100),  # accepted and shown; each member's own weight is what the choice uses
    },
)

RESOURCES: Mapping[str, Resource] = {
    r.name: r
    for r in (
        SERVER, SERVICE, LBVSERVER, LBMONITOR, LBVSERVER_SERVICE_BINDING, SERVICE_LBMONITOR_BINDING,
        SERVICEGROUP, SERVICEGROUP_SERVICEGROUPMEMBER_BINDING, SERVICEGROUP_LBMONITOR_BINDING,
        LBVSERVER_SERVICEGROUP_BINDING,
    )
}  # fmt: skip
#: Singletons and read-mostly types handled by the store outside the table.
SPECIAL_TYPES = frozenset({"nsmode", "nsconfig", "hanode"})


def render_value(field: Field | None, value: Any) -> Any:
    """Format a stored value as NITRO would on GET: doubles as strings, everything else as is."""
    if field is not None and field.kind == "double" and isinstance(value, int | float):
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


#: Updatable fields `?action=unset` refuses: an object's own address has no default to return to.
NOT_UNSETTABLE: Mapping[str, frozenset[str]] = {
    "server": frozenset({"ipaddress"}),
    "service": frozenset({"ipaddress"}),
    "lbvserver": frozenset({"ipv46"}),
}

#: Extra arguments accepted by `?action=disable` on server and service (besides the key).
DISABLE_FIELDS: Mapping[str, Field] = {
    "delay": _d(0, 4294967294),
    "graceful": _e(*YES_NO),
}

#: Extra arguments of `servicegroup?action=enable|disable`: `servername` and `port` pick one member
#: (both or neither); disable also takes `delay` and `graceful`, for a member or the whole group.
MEMBER_FIELDS: Mapping[str, Field] = {
    "servername": Field("name"),
    "port": _i(1, 65535),
}
