"""A real DSR forwarding path for the simulator: NetScaler's MAC-based forwarding, done by nftables.

`Dataplane(netns, dev)` is attached to a `Store` (`make_app(dataplane=...)`, `nitro-sim
--dataplane-netns NS --dataplane-dev DEV`), which it reads only through the read-only
`nitro.queries.ConfigView` and reports to through `nitro.queries.RuntimeFeed`. It turns the
configuration into forwarding in the namespace that plays the NetScaler, the way MBF does it:

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
* **Backends.** A vserver's backends are its bound services and the members of its bound service
  groups. A member is named `<servicegroup>/<servername>:<port>` wherever a service is named by its
  own name: `newFlows` and `serving` (in `/_sim/dataplane` and its `history`), probes, flow sets,
  live flows and the per-backend counters. The same server and port in two groups are two backends,
  each with its own state.
* **Atomic updates.** Every change in the store (`ConfigView.subscribe`), a state that changes with time
  (a drain that ends) or a learnt MAC re-renders the ruleset; when it differs from the applied one it
  is applied as one `nft -f -` transaction (asyncio subprocess) that flushes and refills the chains
  and the choice sets but keeps the flow sets of services that still serve.
* **Backend MACs** come from the namespace's neighbour table; an address that is missing is resolved
  by sending it a datagram from the namespace (the kernel ARPs), as the appliance learns MACs from
  its monitors.
* **Monitors probe for real.** Each enabled service-monitor binding is probed every `interval`, with
  `resptimeout`, and so is each member of a group for each enabled monitor bound to the group (a
  member gets its own group's monitors only), from the namespace's own address on DEV, with
  hand-made frames on an AF_PACKET socket: PING sends an ICMP echo, every other type a TCP SYN
  (SYN-ACK = success, then a RST). The probe goes to `destip` (default the service or member IP)
  and `destport` (default its port).
  A transparent monitor sends it to the *backend's* MAC whatever the destination IP, so a probe to
  the VIP reaches the backend through the DSR path and fails where the backend lacks the VIP. A
  service goes DOWN after `retries` failed probes in a row and UP after `successretries` good ones;
  until its first verdict it is DOWN. The verdicts drive `svrstate` and `curstate` through
  `RuntimeFeed.set_probe_results`.
* **Counting.** Rule counters give packets in per vserver, packets forwarded and new flows per service
  (kept across ruleset replacements); the flow sets' elements are each service's live flows, published
  as its current clients (`RuntimeFeed.set_clients`), so a graceful disable ends when they reach 0 and the
  NITRO stat endpoints show real `curclntconnections`, `tothits` and packet counts.

The package's rooms: `model.py` (the forwarding model and the probes the configuration asks for,
pure), `nft.py` (the ruleset and reading its counters back), `packets.py` (hand-made frames),
`prober.py` (probes on the wire), `neighbours.py` (backend MACs), `commands.py` (`ip` and `nft`
subprocesses), `plane.py` (`Dataplane`, which runs them).
"""

from dsr_operator.simulator.dataplane.commands import CommandError
from dsr_operator.simulator.dataplane.model import (
    SERVING_STATES,
    Desired,
    Member,
    ProbeSpec,
    Vserver,
    desired_state,
    probe_specs,
)
from dsr_operator.simulator.dataplane.nft import FLOW_TIMEOUT, TABLE, WILDCARD_PORT, Names, render
from dsr_operator.simulator.dataplane.plane import Dataplane
from dsr_operator.simulator.dataplane.prober import Prober, ProbeState

__all__ = [
    "FLOW_TIMEOUT",
    "SERVING_STATES",
    "TABLE",
    "WILDCARD_PORT",
    "CommandError",
    "Dataplane",
    "Desired",
    "Member",
    "Names",
    "ProbeSpec",
    "ProbeState",
    "Prober",
    "Vserver",
    "desired_state",
    "probe_specs",
    "render",
]
