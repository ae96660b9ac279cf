"""A DSR lab in network namespaces: client, lb (the simulator's dataplane), backends, one bridge.

Used by `dsr-operator demo-dsr` (`dsr_lab.demo`) and by the netns, cluster and benchmark tiers.
Everything lives in namespaces named `<prefix>-<role>`, on one /24 (default 10.77.0.0/24, VIP
10.77.0.100); with `net6` (e.g. "fd77::") also on one IPv6 /64 (VIP `vip6`, default <net6>100; addresses
without duplicate address detection, the bridge without multicast snooping so neighbour solicitations
reach every port, the HTTP servers dual-stack); traffic goes only to those addresses. `Lab.down()`
deletes the namespaces, which takes their links, addresses and nftables state with them, and stops the
processes the lab started.

    bridge ns: br0 ── p-client ── client ns (eth0 .10)
                  ├── p-lb ────── lb ns (eth0 .2; the simulator's dataplane, answers ARP for the VIP)
                  ├── p-b1.. ──── b1.. ns (eth0 .11..; HTTP server on 0.0.0.0:80 answering its name)
                  ├── p-n1.. ──── n1.. ns (eth0 .21..; `nodes`: bare ports, e.g. Kubernetes nodes)
                  └── p-host ──── host_link in the host's namespace (.1; only with `host_link`)

`nodes` are namespaces on the same segment with nothing started in them (the cluster tier runs a
kubelet in each); `host_link` plugs the host itself into the bridge, with `<net>.1/24` on a veth of
that name (deleted by `down()`), so that processes in the host namespace and the namespaces reach
each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dsr_operator import netns as netns_

HTTP_SERVER = r"""
import http.server, socket, sys
NAME = sys.argv[1]
HOST = sys.argv[2] if len(sys.argv) > 2 else "0.0.0.0"
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (NAME + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET6 if ":" in HOST else socket.AF_INET
    def server_bind(self):
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
        super().server_bind()
Server((HOST, 80), Handler).serve_forever()
"""


def sh(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30, input=stdin)


def missing_tools() -> str | None:
    """Why the lab cannot run here, or None."""
    if sys.platform != "linux":
        return "the DSR lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the DSR lab needs root (network namespaces, nftables)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("tcpdump", "tcpdump")):
        if not _which(tool):
            return f"the DSR lab needs `{tool}`: apt-get install {package}"
    return None


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


@dataclasses.dataclass
class Reply:
    ok: bool
    backend: str  # the name the backend answered with, or the error
    sport: int = 0


def stop_processes(procs: Iterable[subprocess.Popen[Any]], timeout: float) -> None:
    """Terminate processes, wait for them, and kill those that outlive `timeout` seconds."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@dataclasses.dataclass
class Lab:
    prefix: str
    backends: Sequence[str] = ("b1", "b2", "b3")
    net: str = "10.77.0"
    vip: str = "10.77.0.100"
    net6: str | None = None
    """An IPv6 /64 prefix such as "fd77::" (None: IPv4 only)."""
    vip6: str | None = None
    nodes: Sequence[str] = ()
    """Extra namespaces on the bridge (eth0 .21..), with no server and no instrumentation."""
    host_link: str | None = None
    """Name of a veth in the host's namespace plugged into the bridge, with address `<net>.1/24`."""
    _procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    _namespaces: list[str] = dataclasses.field(default_factory=list)
    _host_link_up: bool = False

    # -- names and addresses

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def _host(self, role: str) -> int:
        fixed = {"host": 1, "lb": 2, "client": 10}
        if role in fixed:
            return fixed[role]
        if role in self.nodes:
            return 21 + list(self.nodes).index(role)
        return 11 + list(self.backends).index(role)

    def ip(self, role: str) -> str:
        """The role's IPv4 address; "host" is the host's end of `host_link`."""
        return f"{self.net}.{self._host(role)}"

    def ip6(self, role: str) -> str:
        if self.net6 is None:
            raise ValueError("this lab has no IPv6 network (net6)")
        return f"{self.net6}{self._host(role)}"

    @property
    def v6vip(self) -> str:
        if self.net6 is None:
            raise ValueError("this lab has no IPv6 network (net6)")
        return self.vip6 or f"{self.net6}100"

    def mac(self, role: str) -> str:
        shown = sh("ip", "-n", self.ns(role), "-j", "link", "show", "dev", "eth0").stdout
        links: list[dict[str, Any]] = json.loads(shown)
        return str(links[0]["address"])

    # -- life cycle

    def up(self) -> Lab:
        if len(self.backends) > 10 or len(self.nodes) > 79:
            raise ValueError("a lab has room for 10 backends and 79 nodes")
        bridge = self.ns("br")
        self._add_ns(bridge)
        sh("ip", "-n", bridge, "link", "add", "br0", "type", "bridge")
        if self.net6 is not None:
            sh("ip", "-n", bridge, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        sh("ip", "-n", bridge, "link", "set", "br0", "up")
        for role in ("client", "lb", *self.backends, *self.nodes):
            ns = self.ns(role)
            self._add_ns(ns)
            port = f"p-{role}"[:15]
            sh("ip", "-n", bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", bridge, "link", "set", port, "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(role)}/24", "dev", "eth0")
            if self.net6 is not None:
                sh("ip", "-n", ns, "-6", "addr", "add", f"{self.ip6(role)}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if self.host_link is not None:
            self._plug_host(bridge, self.host_link)
        for backend in self.backends:
            self._instrument(backend)
            self.start_http(backend)
        return self

    def _plug_host(self, bridge: str, link: str) -> None:
        sh("ip", "link", "del", link, check=False)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "p-host", "netns", bridge)
        self._host_link_up = True
        sh("ip", "-n", bridge, "link", "set", "p-host", "master", "br0", "up")
        # No IPv6 on the host's end: no link-local address, no router solicitations from the host.
        sh("sysctl", "-q", "-w", f"net.ipv6.conf.{link}.disable_ipv6=1", check=False)
        sh("ip", "addr", "add", f"{self.ip('host')}/24", "dev", link)
        sh("ip", "link", "set", link, "up")

    def _add_ns(self, ns: str) -> None:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        stop_processes(self._procs.values(), timeout=5)
        self._procs.clear()
        if self._host_link_up and self.host_link is not None:
            sh("ip", "link", "del", self.host_link, check=False)
            self._host_link_up = False
        for ns in reversed(self._namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self._namespaces.clear()

    def __enter__(self) -> Lab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- backends

    def start_http(self, backend: str) -> None:
        ns = self.ns(backend)
        self._procs[f"http-{backend}"] = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", HTTP_SERVER, backend,
             "::" if self.net6 is not None else "0.0.0.0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            sock = netns_.socket_in(ns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(0.5)
                sock.connect(("127.0.0.1", 80))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP server in {ns} did not start") from None
                time.sleep(0.05)
            finally:
                sock.close()

    def _instrument(self, backend: str) -> None:
        """Count, in the backend, client packets to the VIP (in) and replies from the VIP (out); not probes."""
        rules = (
            "add table inet dsrlab\n"
            "add chain inet dsrlab pre { type filter hook prerouting priority -300; }\n"
            "add chain inet dsrlab out { type filter hook output priority -300; }\n"
            f"add rule inet dsrlab pre ip saddr {self.ip('client')} ip daddr {self.vip} counter\n"
            f"add rule inet dsrlab out ip saddr {self.vip} ip daddr {self.ip('client')} counter\n"
        )
        if self.net6 is not None:
            rules += (
                "add chain inet dsrlab pre6 { type filter hook prerouting priority -300; }\n"
                "add chain inet dsrlab out6 { type filter hook output priority -300; }\n"
                f"add rule inet dsrlab pre6 ip6 saddr {self.ip6('client')} ip6 daddr {self.v6vip} counter\n"
                f"add rule inet dsrlab out6 ip6 saddr {self.v6vip} ip6 daddr {self.ip6('client')} counter\n"
            )
        sh("ip", "netns", "exec", self.ns(backend), "nft", "-f", "-", stdin=rules)

    def vip_packets(self, backend: str) -> tuple[int, int]:
        """(client packets to the VIP received, packets from the VIP to the client sent) by this backend."""
        counts = self._chain_packets(backend)
        return counts.get("pre", 0), counts.get("out", 0)

    def vip6_packets(self, backend: str) -> tuple[int, int]:
        """As `vip_packets`, for the IPv6 VIP and the client's IPv6 address."""
        counts = self._chain_packets(backend)
        return counts.get("pre6", 0), counts.get("out6", 0)

    def _chain_packets(self, backend: str) -> dict[str, int]:
        """Packets counted by each chain of the backend's `dsrlab` table."""
        out = sh("ip", "netns", "exec", self.ns(backend), "nft", "-j", "list", "table", "inet", "dsrlab").stdout
        counts: dict[str, int] = {}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if rule:
                counts[rule["chain"]] = next(e["counter"]["packets"] for e in rule["expr"] if "counter" in e)
        return counts

    def link_packets(self, role: str) -> tuple[int, int]:
        """(rx, tx) packets of the role's eth0."""
        link = json.loads(sh("ip", "-n", self.ns(role), "-s", "-j", "link", "show", "dev", "eth0").stdout)[0]
        stats = link.get("stats64", link.get("stats", {}))
        return stats["rx"]["packets"], stats["tx"]["packets"]

    def has_vip(self, backend: str) -> bool:
        out = sh("ip", "-n", self.ns(backend), "-j", "addr", "show", "dev", "lo").stdout
        return any(a.get("local") == self.vip for link in json.loads(out) for a in link.get("addr_info", []))

    # -- client

    def get(self, timeout: float = 1.0, path: str = "/", *, ipv6: bool = False, vip: str | None = None) -> Reply:
        """One HTTP GET to VIP:80 (with `ipv6`, [vip6]:80; or another `vip`) from the client namespace, on a
        new connection."""
        vip = vip or (self.v6vip if ipv6 else self.vip)
        ipv6 = ":" in vip
        sock = netns_.socket_in(self.ns("client"), socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        sport = 0
        try:
            sock.settimeout(timeout)
            sock.bind(("::" if ipv6 else "0.0.0.0", 0))  # the source port is known before the SYN: a refusal names it
            sport = sock.getsockname()[1]
            sock.connect((vip, 80))
            host = f"[{vip}]" if ipv6 else vip
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        except OSError as exc:
            return Reply(False, f"{type(exc).__name__}: {exc}", sport)
        finally:
            sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            return Reply(False, f"bad reply {head[:40]!r}", sport)
        return Reply(True, body.decode().strip(), sport)

    def connection(self, timeout: float = 2.0) -> http.client.HTTPConnection:
        """A keep-alive HTTP connection from the client namespace to VIP:80."""
        return _NsConnection(self.ns("client"), self.vip, 80, timeout=timeout)

    # -- captures

    @contextlib.contextmanager
    def capture(self, role: str, bpf: str) -> Iterator[list[dict[str, Any]]]:
        """tcpdump on the role's eth0 for the block; the list fills with parsed frames at exit."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(role), "tcpdump", "-l", "-nn", "-e", "-i", "eth0", bpf],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        frames: list[dict[str, Any]] = []
        try:
            assert proc.stderr is not None
            seen = ""
            for _ in range(5):  # "listening on eth0, ..." once the capture runs
                line = proc.stderr.readline()
                seen += line
                if "listening" in line or not line:
                    break
            if "listening" not in seen:
                raise RuntimeError(f"tcpdump in {role} did not start: {seen}")
            yield frames
            time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=10)
            frames.extend(f for f in map(parse_tcpdump, out.splitlines()) if f)


_TCPDUMP = re.compile(
    r"(?P<src_mac>[0-9a-f:]{17}) > (?P<dst_mac>[0-9a-f:]{17}), ethertype IPv[46] .*?: "
    r"(?P<src>[0-9a-f:.]+?)\.(?P<sport>\d+) > (?P<dst>[0-9a-f:.]+?)\.(?P<dport>\d+): (?P<rest>.*)"
)


def parse_tcpdump(line: str) -> dict[str, Any] | None:
    match = _TCPDUMP.search(line)
    return match.groupdict() if match else None


class _NsConnection(http.client.HTTPConnection):
    def __init__(self, netns: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._netns = netns

    def connect(self) -> None:
        sock = netns_.socket_in(self._netns, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock
