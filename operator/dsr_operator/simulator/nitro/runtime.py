"""Derived runtime state, and the runtime inputs it is derived from (host marks, probe verdicts, clients).

A service is UP when enabled and its IP is not marked unreachable (`hosts_down`), or when its
`healthmonitor` is NO; OUT OF SERVICE when it or its server is disabled; GOING OUT OF SERVICE while a
disable `delay` runs, and for a graceful disable (`graceful: YES`) only while the service still has
clients (`clients`, from `/_sim/clients` or the dataplane's live flows): it ends when they reach 0 or
the delay passes, whichever comes first, as on a real box. A vserver is UP when any bound service is UP.
When a dataplane probes for real (`probe_results` is not None), a bound, enabled monitor must also
have passed.

A service-group member is a backend of its own, named `<servicegroup>/<servername>:<port>`
(`member_name`) wherever a backend is named by a string: in probe verdicts (keyed by that name and
the monitor), in client counts, and in the dataplane. Its state is derived as a service's is, from
its own state, its group's and its server's (enable/disable), its group's `healthmonitor`, and the
verdicts of the monitors bound to its group (and only those): the same server and port may be UP
in one group and DOWN in another. A vserver's backends are its bound services and the members of
its bound groups.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from dsr_operator.simulator.nitro.state import Record, StoreState


class RuntimeState(StoreState):
    """The runtime inputs (outside NITRO) and the states NITRO reads derive from them."""

    # -- inputs

    def set_hosts(self, states: Mapping[str, str]) -> None:
        """Mark backend hosts reachable ("UP") or not ("DOWN"); drives service `svrstate`."""
        parsed: dict[str, bool] = {}
        for host, state in states.items():
            ip = str(ipaddress.ip_address(host))
            if not isinstance(state, str) or state.upper() not in ("UP", "DOWN"):
                raise ValueError(f"host state must be UP or DOWN, not {state!r}")
            parsed[ip] = state.upper() == "UP"
        for ip, up in parsed.items():
            if up:
                self.hosts_down.discard(ip)
            else:
                self.hosts_down.add(ip)
        self._notify(self._change("POST", "", "hosts", {}), journal=False)

    def set_probe_results(self, results: Mapping[tuple[str, str], bool]) -> None:
        """Real monitor verdicts per (service, monitor binding); announced to listeners when they change.

        From the first call on, a bound, enabled monitor without a verdict counts as DOWN (not yet probed).
        """
        new = dict(results)
        if new == self.probe_results:
            return
        self.probe_results = new
        self._notify(self._change("POST", "", "probes", {}), journal=False)

    def set_clients(self, counts: Mapping[str, int], *, replace: bool = False, live: bool = False) -> None:
        """Current client connections per service (`replace`: every service not named has none;
        `live`: counted just now, as a dataplane does)."""
        new = ({} if replace else dict(self.clients)) | {k: int(v) for k, v in counts.items()}
        new = {k: v for k, v in new.items() if v > 0}
        if live:
            self.clients_live, self.clients_counted = True, self.clock()
        if new == self.clients:
            return
        self.clients = new
        self._notify(self._change("POST", "", "clients", {}), journal=False)

    def set_ha_state(self, state: str) -> None:
        """What `hanode/0` reports as this node's state (Primary, Secondary, UNKNOWN)."""
        self.ha_state = state
        self._notify(self._change("POST", "", "ha", {}), journal=False)

    # -- derived state

    def _disabled_state(self, obj: Record | None) -> str | None:
        if obj is None or obj.get("state") != "DISABLED":
            return None
        until = obj.get("_until")
        graceful = obj.get("_graceful")
        if graceful:
            # `disable service S D -graceful YES`: until its clients reach 0 or D passes, whichever
            # comes first; D = 0 waits for the last client. Live counts must postdate the disable.
            counted = not self.clients_live or (self.clients_counted or 0.0) > float(graceful)
            if counted and self.client_count(obj) == 0:
                return "OUT OF SERVICE"
            return "GOING OUT OF SERVICE" if until is None or self.clock() < until else "OUT OF SERVICE"
        if until is not None and self.clock() < until:
            return "GOING OUT OF SERVICE"
        return "OUT OF SERVICE"

    def client_count(self, obj: Record) -> int:
        """Current client connections of a service or a group member, or of every backend of a server or
        a group."""
        if "servicegroupname" in obj:
            if "servername" in obj:
                return self.clients.get(member_name(obj), 0)
            return sum(self.clients.get(member_name(m), 0) for m in self.members_of(obj["servicegroupname"]))
        if "servername" in obj:
            return self.clients.get(obj["name"], 0)
        return sum(self.clients.get(s["name"], 0) for s in self.objects["service"].values()
                   if s["servername"] == obj["name"]) + sum(
            self.clients.get(member_name(m), 0)
            for m in self.objects["servicegroup_servicegroupmember_binding"].values() if m["servername"] == obj["name"])

    def svrstate(self, service: Record) -> str:
        server = self.objects["server"].get((service["servername"],))
        disabled = self._disabled_state(service) or self._disabled_state(server)
        if disabled == "OUT OF SERVICE":
            return disabled
        healthy = service.get("healthmonitor") == "NO" or (
            service["ipaddress"] not in self.hosts_down and self._probes_pass(service)
        )
        if disabled is not None:
            return disabled if healthy else "DOWN WHEN GOING OUT OF SERVICE"
        return "UP" if healthy else "DOWN"

    def member_state(self, member: Record) -> str:
        """A service-group member's `svrstate`, derived as a service's is (see the module docstring)."""
        group = self.objects["servicegroup"].get((member["servicegroupname"],))
        server = self.objects["server"].get((member["servername"],))
        disabled = self._disabled_state(member) or self._disabled_state(group) or self._disabled_state(server)
        if disabled == "OUT OF SERVICE":
            return disabled
        healthy = (group is not None and group.get("healthmonitor") == "NO") or (
            member["ip"] not in self.hosts_down and self._member_probes_pass(member)
        )
        if disabled is not None:
            return disabled if healthy else "DOWN WHEN GOING OUT OF SERVICE"
        return "UP" if healthy else "DOWN"

    def _member_probes_pass(self, member: Record) -> bool:
        if self.probe_results is None:
            return True
        name = member_name(member)
        bindings = self._bindings_of("servicegroup_lbmonitor_binding", member["servicegroupname"])
        results = self.probe_results
        return all(results.get((name, b["monitor_name"]), False) for b in bindings if self._monitor_enabled(b))

    def members_of(self, group: str) -> list[Record]:
        return self._bindings_of("servicegroup_servicegroupmember_binding", group)

    def group_state(self, group: Record) -> str:
        """`servicegroupeffectivestate`, from its members' states as D-REF:servicegroup puts it: all UP → UP,
        all DOWN → DOWN, all out of service → OUT OF SERVICE; some UP → PARTIAL-UP; else some DOWN and
        the rest out of service → PARTIAL-DOWN. A draining member counts as out of service; no member: DOWN."""
        kinds = set()
        for m in self.members_of(group["servicegroupname"]):
            state = self.member_state(m)
            kinds.add("UP" if state == "UP" else "OUT OF SERVICE" if state.endswith("OUT OF SERVICE") else "DOWN")
        if len(kinds) == 1:
            return kinds.pop()
        if "UP" in kinds:
            return "PARTIAL-UP"
        return "PARTIAL-DOWN" if kinds else "DOWN"

    def _monitor_enabled(self, binding: Record) -> bool:
        monitors = self._monitors_named(binding["monitor_name"])
        return binding.get("monstate") != "DISABLED" and any(m.get("state") != "DISABLED" for m in monitors)

    def _probes_pass(self, service: Record) -> bool:
        if self.probe_results is None:
            return True
        bindings = self._bindings_of("service_lbmonitor_binding", service["name"])
        results = self.probe_results
        return all(
            results.get((service["name"], b["monitor_name"]), False) for b in bindings if self._monitor_enabled(b)
        )

    def _monitor_state(self, binding: Record) -> str:
        service = self.objects["service"][(binding["name"],)]
        if not self._monitor_enabled(binding):
            return "DISABLED"
        if service["ipaddress"] in self.hosts_down:
            return "DOWN"
        if self.probe_results is not None and not self.probe_results.get((binding["name"], binding["monitor_name"])):
            return "DOWN"
        return "UP"

    def vserver_backends(self, vserver: str) -> list[tuple[str, Record, int, str]]:
        """A vserver's backends: (name, record, weight, svrstate) of each bound service and of each
        member of each bound group."""
        out: list[tuple[str, Record, int, str]] = []
        for b in self._bindings_of("lbvserver_service_binding", vserver):
            svc = self.objects["service"][(b["servicename"],)]
            out.append((svc["name"], svc, b["weight"], self.svrstate(svc)))
        for g in self._bindings_of("lbvserver_servicegroup_binding", vserver):
            for m in self.members_of(g["servicegroupname"]):
                out.append((member_name(m), m, m["weight"], self.member_state(m)))
        return out

    def _vserver_runtime(self, vserver: Record) -> Record:
        bindings = self.vserver_backends(vserver["name"])
        total_weight = active_weight = active = 0
        for _, _, weight, state in bindings:
            total_weight += weight
            if state == "UP":
                active += 1
                active_weight += weight
        if vserver.get("state") == "DISABLED":
            state = "OUT OF SERVICE"
        else:
            state = "UP" if active else "DOWN"
        health = round(100 * active_weight / total_weight) if total_weight else 0
        return {
            "curstate": state,
            "effectivestate": state,
            "health": str(health),
            "totalservices": str(len(bindings)),
            "activeservices": str(active),
            "type": "ADDRESS",
        }


def member_name(member: Record) -> str:
    """How a service-group member is named as a backend: `<servicegroup>/<servername>:<port>`."""
    return f"{member['servicegroupname']}/{member['servername']}:{member['port']}"
