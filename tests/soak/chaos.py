"""The chaos soak: the whole product under random change and faults, then an independent judgement.

Runs against a real control plane (`tests/controlplane/conftest.py`), with the operator and the NITRO
simulator as processes (`tests/controlplane/operator_rig.py`): the chart installed for RBAC and
leader election, the simulator persisting to `--state FILE`, the operator as the chart's ServiceAccount.

1. Set-up. Hand-made NetScaler objects the operator must never touch are created through NITRO and
   snapshotted: one object holding one of our names without a marker (the server of a backend
   host, `dsr-198.51.100.99`), objects with our prefix and no marker, objects with another operator
   id's marker, one without our prefix. Then the operator starts; a pool of DsrServices with static
   backends and one Service-backed DsrService (fake Nodes, an EndpointSlice written by the soak, and
   DsrNodeConfig statuses written by a fake agent loop) converge.
2. Chaos, for a bounded time, from a seeded RNG (`DSR_SOAK_SEED`, printed): spec changes (backends,
   ports, lbMethod, health checks, drain, guard), deletes and re-creates, specs the API server
   accepts but the operator must refuse (repeated ports or backend names) and specs the API server
   refuses (counted as refused), two DsrServices on one VIP:port, endpoint flips; NITRO faults
   (5xx at 10-30 %, latency spikes, spikes beyond the client timeout, dropped connections, session
   expiry, failing saves, outages = the simulator SIGSTOPped, simulator restarts from its state file
   by SIGTERM and by SIGKILL, HA Secondary windows); operator SIGKILLs and restarts; and a window
   with the chart's two replicas (the second stands by on the Lease; optionally the leader is SIGKILLed
   and the second takes over). Every
   kind is injected at least once, at seeded times, plus random extra ones.
3. Final changes. Faults end, the second replica stops, the operator gets a rolling restart with a
   long resync period (nothing judged may depend on the drift-repair timer), every chaos DsrService
   gets a fresh valid spec, and scenarios run on DsrServices created now, each from a converged
   baseline: remove a port, replace one of 3 backends under maxUnbindPercent 10, drop the probe port
   and throughVip, add a host whose server name is taken by hand, repeat a port (InvalidSpec: the
   last good configuration stays), a younger DsrService on a held VIP:port, the older of two moving
   onto the younger's VIP:port, a deletion with a drain, a change while NetScaler reports HA
   Secondary, and a last change whose save fails.
4. Settle and judge (`judge.py`): poll until every invariant holds, or nothing has changed (no
   NetScaler write, no DsrService change) for two resync periods of the chaos plus 10 s, or
   `settle_seconds`; then each invariant's verdict with its evidence, and the figures (faults by
   kind, kills, spec changes, refused). A process that exits without being told to is recorded (a
   finding of its own) and started again, so the soak goes on.

`run(cp, Config(...))` returns a `Report`; `tests/soak/test_soak.py` runs it short, `bench/soak.py` long.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import json
import os
import random
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.controlplane import operator_rig as rig
from tests.controlplane.conftest import ControlPlane, ControlPlaneError
from tests.soak import judge
from tests.support.waiting import eventually_sync

SEED_ENV = "DSR_SOAK_SEED"
OPERATOR_ID = "soak"
SIM_USER = "soakadmin"
DSR = rig.DSR_PATH
LB_METHODS = ("ROUNDROBIN", "LEASTCONNECTION", "SOURCEIPHASH", "SRCIPSRCPORTHASH", "LEASTRESPONSETIME",
              "DESTINATIONIPHASH")
PORT_SETS: tuple[list[int | str], ...] = ([80], [443], [80, 443], [8080], [80, 8080, 8443], ["*"])
HOSTS = tuple(f"198.51.100.{i}" for i in range(1, 9))
SQUATTED = "198.51.100.99"  # its server name `dsr-198.51.100.99` is made by hand, without a marker
DRAINED_HOST = "198.51.100.60"  # used by one DsrService only, so its service drains when that one goes
NODE_IPS = ("198.51.100.201", "198.51.100.202")
SERVICE_VIP = "192.0.2.50"
FAULT_KINDS = ("5xx", "latency", "latency-beyond-timeout", "dropped-connections", "session-expiry",
               "failing-saves", "outage", "simulator-restart", "simulator-kill", "ha-secondary")
ACTION_KINDS = ("spec-change", "invalid-spec", "refused-spec", "vip-conflict", "delete", "re-create",
                "endpoints", "operator-kill", "two-replicas")
SAVE_FAILED = "Saving NetScaler configuration failed"
STANDING_BY = "Standing by: Lease"
LEADING = "Leading: this replica"


@dataclasses.dataclass(frozen=True)
class Config:
    chaos_seconds: float
    seed: int
    pool: int = 8
    settle_seconds: float = 120.0
    resync_seconds: float = 10.0
    final_resync_seconds: float = 600.0
    """The operator restarts for the final changes with this resync period, so that nothing judged at the
    end depends on the drift-repair timer (changes and deletions must complete without it)."""
    client_timeout_seconds: float = 5.0
    two_replica_every_seconds: float = 600.0
    standby_takeover: bool = False
    """SIGKILL the leader during the two-replica window and leave it dead until the standby has taken over."""


def seed_from_env() -> int:
    raw = os.environ.get(SEED_ENV)
    return int(raw) if raw else random.SystemRandom().randrange(1, 2**31)


@dataclasses.dataclass
class Figures:
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    actions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    operator_kills: int = 0
    operator_starts: int = 0
    simulator_starts: int = 0
    spec_changes: int = 0
    refused: int = 0
    refused_reasons: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    nitro_requests: int = 0
    journal_writes: int = 0
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        faults = " ".join(f"{k}={self.faults[k]}" for k in FAULT_KINDS)
        actions = " ".join(f"{k}={self.actions[k]}" for k in ACTION_KINDS)
        phases = " ".join(f"{k} {v:.0f}s" for k, v in self.phases.items())
        out = [
            f"faults injected: {faults} (total {sum(self.faults.values())})",
            f"actions: {actions}",
            f"operator SIGKILLs={self.operator_kills} operator starts={self.operator_starts} "
            f"simulator starts={self.simulator_starts}",
            f"spec changes={self.spec_changes} refused by the API server={self.refused} "
            f"({', '.join(f'{k}={v}' for k, v in sorted(self.refused_reasons.items())) or 'none'})",
            f"NITRO writes journaled={self.journal_writes}",
            f"phases: {phases}",
        ]
        return out + [f"note: {n}" for n in self.notes]


@dataclasses.dataclass
class Report:
    seed: int
    config: Config
    figures: Figures
    verdicts: list[judge.Verdict]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def text(self) -> str:
        head = (f"soak seed={self.seed} ({SEED_ENV}={self.seed} to repeat) chaos={self.config.chaos_seconds:.0f}s "
                f"pool={self.config.pool}+1")
        verdicts = [v.line() for v in self.verdicts]
        failed = [v.name for v in self.verdicts if not v.ok]
        tail = f"{len(self.verdicts) - len(failed)} of {len(self.verdicts)} invariants hold" + (
            f"; violated: {', '.join(failed)}" if failed else "")
        return "\n".join([head, *self.figures.lines(), "invariants:", *verdicts, tail])


@dataclasses.dataclass
class Entry:
    """One DsrService the soak drives: what it last applied, and what the API server knows."""

    name: str
    home_vip: str
    spec: dict[str, Any] | None = None
    uid: str | None = None
    service_backed: bool = False


@dataclasses.dataclass
class Window:
    kind: str
    ends: float
    close: Callable[[], bool]
    """Ends the fault; False when it cannot yet (the simulator is paused or down)."""


class Soak:
    def __init__(self, cp: ControlPlane, config: Config, workdir: Path, out: Callable[[str], None]) -> None:
        self.cp = cp
        self.config = config
        self.workdir = workdir
        self.out = out
        self.rng = random.Random(config.seed)
        self.figures = Figures()
        suffix = uuid.uuid4().hex[:6]
        self.ns = f"soak-{suffix}"
        self.nodes = [f"soak-{suffix}-node-{i + 1}" for i in range(len(NODE_IPS))]
        self.entries = [Entry(f"s{i}", f"192.0.2.{10 + i}") for i in range(config.pool)]
        self.entries.append(Entry("svc", SERVICE_VIP, service_backed=True))
        self.cleanup: list[Callable[[], Any]] = []
        # One node of an HA pair (its peer is listed, not simulated): only a pair's node turns Secondary, and the
        # operator asks such a node for its role before every write stage.
        self.sim = rig.SimProcess(workdir, SIM_USER, f"pw-{uuid.uuid4().hex}", state=workdir / "netscaler.json",
                                  extra_args=("--ha-peer-ip", "192.0.2.254"))
        self.chart: rig.ChartInstall | None = None
        self.active: rig.OperatorProcess | None = None
        self.second: rig.OperatorProcess | None = None
        self.windows: list[Window] = []
        self.journal: list[dict[str, Any]] = []
        self.journal_seq = 0
        self.last_journal_poll = 0.0
        self.last_agent_tick = 0.0
        self.endpoints: dict[str, bool | None] = {node: True for node in self.nodes}
        """Per fake node: its endpoint ready, not ready, or absent (None)."""
        self.handmade: frozenset[tuple[str, str]] = frozenset()
        self.handmade_snapshot: dict[str, str] = {}
        self.last_good: dict[str, dict[str, Any]] = {}
        self.replicas: dict[str, Any] = {}
        self.sim_down = False
        """The soak itself stopped the simulator (a restart window is open)."""
        self.told_to_stop: set[str] = set()
        """Process runs the soak stopped or killed on purpose."""
        self.unexpected: list[str] = []

    # ============================================================================ the run

    def run(self) -> Report:
        try:
            self._phase("set-up", self._setup)
            self._phase("chaos", self._chaos)
            self._phase("final changes", self._final_changes)
            capture = self._phase("settle", self._settle)
            verdicts = judge.judge(capture)
        finally:
            self._teardown()
            # For a kept work dir (DSR_SOAK_KEEP=1): the journal, so that a finding can be traced write by write.
            with contextlib.suppress(OSError):
                (self.workdir / "journal.json").write_text(json.dumps(self.journal, indent=1))
        self.figures.journal_writes = len([e for e in self.journal if e.get("resource") != "nsconfig"])
        return Report(self.config.seed, self.config, self.figures, verdicts)

    def _phase(self, name: str, step: Callable[[], Any]) -> Any:
        started = time.monotonic()
        self.out(f"soak: {name} ...")
        try:
            return step()
        finally:
            self.figures.phases[name] = time.monotonic() - started

    def _teardown(self) -> None:
        for op in (self.second, self.active):
            if op is not None:
                with contextlib.suppress(Exception):
                    op.kill()
        with contextlib.suppress(Exception):
            self.sim.kill()
        for step in reversed(self.cleanup):
            with contextlib.suppress(Exception):
                step()

    # ============================================================================ set-up

    def _setup(self) -> None:
        cp = self.cp
        cp.kc("create", "namespace", self.ns)
        self.cleanup.append(lambda: cp.kc("delete", "namespace", self.ns, "--wait=false", check=False))
        chart, undo = rig.install_chart(cp, [self.ns])
        self.chart = chart
        self.cleanup.extend(undo)
        self.sim.start()
        self.figures.simulator_starts += 1
        self._handmade()
        self._cluster_backends()
        self.active = rig.OperatorProcess.for_chart(
            "operator-a", self.workdir, chart, cp, self.sim, OPERATOR_ID, [self.ns],
            resync_seconds=str(self.config.resync_seconds), save_debounce_seconds="1",
            default_drain_seconds="0", netscaler_timeout_seconds=str(self.config.client_timeout_seconds))
        self._start_operator(self.active)
        for entry in self.entries:
            self._create(entry, self._valid_spec(entry))
        self._wait_converged(self.entries, "the initial DsrServices")

    def _handmade(self) -> None:
        """Objects made by hand that the operator must never touch, then their snapshot."""
        other = "dsr-operator:other-cluster:"
        made: list[tuple[str, dict[str, Any]]] = [
            # Exactly one of our names (a backend host's server), no marker.
            ("server", {"name": f"dsr-{SQUATTED}", "ipaddress": SQUATTED, "comment": "racked by hand"}),
            # Our prefix, no marker.
            ("server", {"name": "dsr-manual-host", "ipaddress": "198.51.100.250"}),
            ("service", {"name": "dsr-manual-svc", "servername": "dsr-manual-host", "servicetype": "ANY",
                         "port": 80, "usip": "YES"}),
            ("lbvserver", {"name": "dsr-manual-vs", "servicetype": "ANY", "ipv46": "203.0.113.250", "port": 80,
                           "m": "MAC", "lbmethod": "ROUNDROBIN", "comment": "ops ticket 4711"}),
            ("lbmonitor", {"monitorname": "dsr-manual-mon", "type": "PING", "interval": 7, "resptimeout": 3}),
            ("lbvserver_service_binding", {"name": "dsr-manual-vs", "servicename": "dsr-manual-svc"}),
            ("service_lbmonitor_binding", {"name": "dsr-manual-svc", "monitor_name": "dsr-manual-mon"}),
            ("servicegroup", {"servicegroupname": "dsr-manual-sg", "servicetype": "ANY", "usip": "YES"}),
            ("servicegroup_servicegroupmember_binding", {"servicegroupname": "dsr-manual-sg",
                                                         "servername": "dsr-manual-host", "port": 8080}),
            ("servicegroup_lbmonitor_binding", {"servicegroupname": "dsr-manual-sg", "monitor_name": "dsr-manual-mon"}),
            # Another operator id's marker.
            ("server", {"name": "dsr-198.51.100.251", "ipaddress": "198.51.100.251", "comment": other + "shared"}),
            ("service", {"name": "dsr-198.51.100.251_80", "servername": "dsr-198.51.100.251", "servicetype": "ANY",
                         "port": 80, "usip": "YES", "comment": other + "shared"}),
            ("lbvserver", {"name": "dsr-shop_web_80", "servicetype": "ANY", "ipv46": "203.0.113.251", "port": 80,
                           "m": "MAC", "comment": other + "7d0c3b8e-0000-4000-8000-000000000001"}),
            ("lbmonitor", {"monitorname": "dsr-shop_web_tcp", "type": "TCP", "interval": 5, "resptimeout": 2,
                           "comment": other + "7d0c3b8e-0000-4000-8000-000000000001"}),
            ("lbvserver_service_binding", {"name": "dsr-shop_web_80", "servicename": "dsr-198.51.100.251_80"}),
            ("service_lbmonitor_binding", {"name": "dsr-198.51.100.251_80", "monitor_name": "dsr-shop_web_tcp"}),
            ("servicegroup", {"servicegroupname": "dsr-shop_web_80_sg", "servicetype": "ANY", "usip": "YES",
                              "comment": other + "7d0c3b8e-0000-4000-8000-000000000001"}),
            ("servicegroup_servicegroupmember_binding", {"servicegroupname": "dsr-shop_web_80_sg",
                                                         "servername": "dsr-198.51.100.251", "port": 80}),
            ("servicegroup_lbmonitor_binding", {"servicegroupname": "dsr-shop_web_80_sg",
                                                "monitor_name": "dsr-shop_web_tcp"}),
            ("lbvserver_servicegroup_binding", {"name": "dsr-shop_web_80", "servicegroupname": "dsr-shop_web_80_sg"}),
            # Not our prefix at all.
            ("server", {"name": "legacy-host", "ipaddress": "198.51.100.252"}),
        ]
        for rtype, obj in made:
            self.sim.add(rtype, obj)
        self.handmade = frozenset(
            (rtype, str(obj.get("name") or obj.get("monitorname") or obj.get("servicegroupname")))
            for rtype, obj in made if not rtype.endswith("_binding"))
        self.handmade_snapshot = judge.snapshot(self.sim.config(), self.handmade)

    def _cluster_backends(self) -> None:
        """Fake Nodes with addresses, a Service without selector and its EndpointSlice."""
        cp = self.cp
        for node, address in zip(self.nodes, NODE_IPS, strict=True):
            cp.kc("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Node",
                                                          "metadata": {"name": node}}))
            self.cleanup.append(functools.partial(cp.kc, "delete", "node", node, "--wait=false", check=False))
            self.cleanup.append(functools.partial(cp.kc, "delete", "dsrnodeconfig", node, "--wait=false", check=False))
            cp.kc("patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(
                {"status": {"addresses": [{"type": "InternalIP", "address": address},
                                          {"type": "Hostname", "address": node}]}}))
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": self.ns},
                   "spec": {"externalIPs": [SERVICE_VIP], "ports": [{"name": "http", "port": 80}]}}
        cp.kc("create", "-f", "-", input=json.dumps(service))
        status, body = cp.request("POST", f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices",
                                  self._slice())
        if status != 201:
            raise ControlPlaneError(f"creating the EndpointSlice failed: {status} {body}")

    def _slice(self) -> dict[str, Any]:
        eps = [{"addresses": [f"10.244.{i}.5"], "nodeName": node, "conditions": {"ready": ready}}
               for i, (node, ready) in enumerate(self.endpoints.items()) if ready is not None]
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-soak", "namespace": self.ns,
                             "labels": {"kubernetes.io/service-name": "web",
                                        "endpointslice.kubernetes.io/managed-by": "soak.dsr.test"}},
                "addressType": "IPv4", "endpoints": eps, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}

    def _write_slice(self) -> None:
        patch = [{"op": "replace", "path": "/endpoints", "value": self._slice()["endpoints"]}]
        status, body = self.cp.request("PATCH", f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices/"
                                       "web-soak", patch, content_type="application/json-patch+json")
        if status != 200:
            raise ControlPlaneError(f"patching the EndpointSlice failed: {status} {body}")

    def _start_operator(self, op: rig.OperatorProcess, *, wait: bool = True) -> None:
        op.start()
        self.figures.operator_starts += 1
        if wait:
            op.wait_live(tick=self._tick)

    # ============================================================================ the API

    def _path(self, name: str = "") -> str:
        return f"{DSR}/namespaces/{self.ns}/dsrservices" + (f"/{name}" if name else "")

    def _get(self, name: str) -> dict[str, Any] | None:
        status, body = self.cp.request("GET", self._path(name))
        return body if status == 200 and isinstance(body, dict) else None

    def _list(self) -> list[dict[str, Any]]:
        status, body = self.cp.request("GET", self._path())
        if status != 200:
            raise ControlPlaneError(f"listing DsrServices failed: {status} {body}")
        items: list[dict[str, Any]] = body["items"]
        return items

    def _refused(self, status: int, body: Any) -> bool:
        if status in (400, 422):
            self.figures.refused += 1
            message = body.get("message", "") if isinstance(body, dict) else str(body)
            fields = re.findall(r"spec\.[A-Za-z.]+", message) or ["spec"]
            self.figures.refused_reasons[fields[0]] += 1
            return True
        return False

    def _create(self, entry: Entry, spec: dict[str, Any]) -> bool:
        body = {"apiVersion": f"{rig.GROUP}/{rig.VERSION}", "kind": "DsrService",
                "metadata": {"name": entry.name, "namespace": self.ns}, "spec": spec}
        status, answer = self.cp.request("POST", self._path() + "?fieldValidation=Strict", body)
        if self._refused(status, answer):
            return False
        if status == 409:
            return False  # still finalizing its previous incarnation
        if status != 201:
            raise ControlPlaneError(f"creating DsrService {entry.name} failed: {status} {answer}")
        entry.spec, entry.uid = spec, answer["metadata"]["uid"]
        self.figures.spec_changes += 1
        return True

    def _apply(self, entry: Entry, spec: dict[str, Any]) -> bool:
        """Replace the spec; False when refused or gone."""
        status, answer = self.cp.request("PATCH", self._path(entry.name) + "?fieldValidation=Strict",
                                         [{"op": "replace", "path": "/spec", "value": spec}],
                                         content_type="application/json-patch+json")
        if self._refused(status, answer):
            return False
        if status == 404:
            entry.spec = entry.uid = None
            return False
        if status != 200:
            raise ControlPlaneError(f"changing DsrService {entry.name} failed: {status} {answer}")
        entry.spec = spec
        self.figures.spec_changes += 1
        return True

    def _delete(self, entry: Entry) -> None:
        status, answer = self.cp.request("DELETE", self._path(entry.name))
        if status not in (200, 202, 404):
            raise ControlPlaneError(f"deleting DsrService {entry.name} failed: {status} {answer}")
        entry.spec = entry.uid = None
        self.figures.spec_changes += 1

    # ============================================================================ specs

    def _valid_spec(self, entry: Entry, vip: str | None = None, ports: list[int | str] | None = None,
                    hosts: list[str] | None = None) -> dict[str, Any]:
        rng = self.rng
        ports = list(ports if ports is not None else rng.choice(PORT_SETS))
        check: dict[str, Any] = {"type": "PING" if rng.random() < 0.15 else "TCP",
                                 "intervalSeconds": rng.choice((5, 10)), "timeoutSeconds": rng.choice((1, 2)),
                                 "retries": rng.choice((2, 3)), "throughVip": rng.random() < 0.8}
        if check["type"] == "TCP" and (ports == ["*"] or rng.random() < 0.5):
            check["port"] = rng.choice((80, 443))
        spec: dict[str, Any] = {"vip": vip or entry.home_vip, "ports": ports, "lbMethod": rng.choice(LB_METHODS),
                                "healthCheck": check, "drainSeconds": rng.choice((0, 0, 1, 2))}
        if entry.service_backed:
            spec["backends"] = {"service": "web"}
        else:
            chosen = hosts if hosts is not None else rng.sample(HOSTS, rng.randint(1, 4))
            spec["backends"] = {"static": [{"name": f"h{h.rsplit('.', 1)[1]}", "address": h} for h in chosen]}
        guard = rng.choice((None, None, None, 10, 34, 50, 100))
        if guard is not None:
            spec["maxUnbindPercent"] = guard
        return spec

    def _mutated(self, entry: Entry) -> dict[str, Any]:
        """One change to the current spec: a backend, the ports, lbMethod, the check, drain or guard."""
        rng = self.rng
        spec = copy.deepcopy(entry.spec) if entry.spec else self._valid_spec(entry)
        what = rng.choice(("backend+", "backend-", "ports", "lbMethod", "check", "drain", "guard", "home"))
        static = spec["backends"].get("static")
        if what in ("backend+", "backend-") and static is not None:
            have = [b["address"] for b in static]
            if what == "backend+" or len(have) == 1:
                pool = [h for h in (*HOSTS, SQUATTED) if h not in have]
                weights = [0.3 if h == SQUATTED else 1.0 for h in pool]
                have.append(rng.choices(pool, weights)[0])
            else:
                have.remove(rng.choice(have))
            spec["backends"] = {"static": [{"name": f"h{h.rsplit('.', 1)[1]}", "address": h} for h in have]}
        elif what == "ports":
            spec["ports"] = list(rng.choice(PORT_SETS))
        elif what == "lbMethod":
            spec["lbMethod"] = rng.choice(LB_METHODS)
        elif what == "check":
            check = spec.setdefault("healthCheck", {})
            change = rng.choice(("port", "throughVip", "type", "interval"))
            if change == "port":
                if "port" in check:
                    check.pop("port")
                else:
                    check["port"] = rng.choice((80, 443))
            elif change == "throughVip":
                check["throughVip"] = not check.get("throughVip", True)
            elif change == "type":
                check["type"] = "PING" if check.get("type", "TCP") == "TCP" else "TCP"
            else:
                check["intervalSeconds"] = rng.choice((5, 10, 15))
        elif what == "drain":
            spec["drainSeconds"] = rng.choice((0, 1, 2))
        elif what == "guard":
            if "maxUnbindPercent" in spec:
                spec.pop("maxUnbindPercent")
            else:
                spec["maxUnbindPercent"] = rng.choice((10, 34, 50))
        else:
            spec["vip"] = entry.home_vip
        check = spec.get("healthCheck") or {}
        if spec["ports"] == ["*"] and check.get("type", "TCP") == "TCP" and "port" not in check:
            check["port"] = 80
        return spec

    # ============================================================================ background duties

    def _tick(self) -> None:
        """The fake node agents, the journal collector and the process check, called from every wait."""
        self._check_processes()
        now = time.monotonic()
        if now - self.last_agent_tick >= 0.5:
            self.last_agent_tick = now
            self._agents()
        if now - self.last_journal_poll >= 2.0:
            self.last_journal_poll = now
            self._collect_journal()

    def _check_processes(self) -> None:
        """A process that exits without being told to is a finding; it is started again so the soak goes on."""
        sim = self.sim.proc
        if sim is not None and not self.sim_down and sim.popen.poll() is not None:
            self.unexpected.append(f"{sim.name} exited by itself with code {sim.popen.returncode}: "
                                   f"{' | '.join(sim.tail(5).splitlines())[:600]}")
            self._restart_sim()
        for op in (self.active, self.second):
            proc = op.proc if op is not None else None
            if op is None or proc is None or proc.popen.poll() is None or proc.name in self.told_to_stop:
                continue
            self.unexpected.append(f"{proc.name} exited by itself with code {proc.popen.returncode}: "
                                   f"{' | '.join(proc.tail(5).splitlines())[:600]}")
            self.told_to_stop.add(proc.name)
            if op is self.active and not self.replicas.get("killed"):
                self._start_operator(op, wait=False)

    def _stop_operator(self, op: rig.OperatorProcess, *, kill: bool = False) -> None:
        if op.proc is not None:
            self.told_to_stop.add(op.proc.name)
        if kill:
            op.kill()
        else:
            op.stop()

    def _sim_control(self, method: str, path: str, body: Any = None) -> Any:
        """A `/_sim` call once the simulator runs (restarted first if it died by itself)."""
        self._check_processes()
        return self.sim.control(method, path, body)

    def _agents(self) -> None:
        """Each fake node's agent reports its DsrNodeConfig's VIPs applied at the current generation."""
        for node in self.nodes:
            status, body = self.cp.request("GET", f"{DSR}/dsrnodeconfigs/{node}")
            if status != 200:
                continue
            vips = sorted((body.get("spec") or {}).get("vips") or [])
            generation = body["metadata"].get("generation")
            seen = body.get("status") or {}
            if seen.get("observedGeneration") == generation and sorted(seen.get("appliedVips") or []) == vips:
                continue
            self.cp.request("PATCH", f"{DSR}/dsrnodeconfigs/{node}/status",
                            {"status": {"observedGeneration": generation, "appliedVips": vips,
                                        "interface": "lo", "mode": "loopback"}},
                            content_type="application/merge-patch+json")

    def _collect_journal(self) -> None:
        if not self.sim.running() or self.sim.paused:
            return
        try:
            entries = self.sim.journal(self.journal_seq)
        except (OSError, RuntimeError):
            return
        run = len(self.sim.runs)
        for entry in entries:
            self.journal.append({**entry, "epoch": run})
            self.journal_seq = max(self.journal_seq, int(entry["seq"]))

    def _pause(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._tick()
            time.sleep(min(0.25, max(0.0, end - time.monotonic())))

    # ============================================================================ faults

    def _sim_up(self) -> bool:
        return self.sim.running() and not self.sim.paused

    def _set_faults(self, **settings: Any) -> bool:
        if not self._sim_up():
            return False
        try:
            self.sim.control("POST", "/_sim/faults", settings)
        except (OSError, RuntimeError):
            return False
        return True

    def _open(self, kind: str) -> bool:
        """Inject one fault; False when it cannot be now (the simulator down, or one of its class open)."""
        rng = self.rng
        now = time.monotonic()
        open_kinds = {w.kind for w in self.windows}
        errors = {"5xx", "failing-saves"}
        if kind in errors and open_kinds & errors:
            return False
        if kind in ("latency", "latency-beyond-timeout") and open_kinds & {"latency", "latency-beyond-timeout"}:
            return False
        if kind in ("outage", "simulator-restart", "simulator-kill") and open_kinds & {
                "outage", "simulator-restart", "simulator-kill", "ha-secondary"}:
            return False
        if kind == "ha-secondary" and open_kinds & {"ha-secondary", "outage", "simulator-restart", "simulator-kill"}:
            return False
        if not self._sim_up():
            return False

        def clear(**keys: Any) -> Callable[[], bool]:
            return lambda: (not self.sim.running()) or self._set_faults(**keys)

        if kind == "5xx":
            self._set_faults(errorRate=round(rng.uniform(0.1, 0.3), 2), errorStatus=rng.choice((500, 502, 503)),
                             errorResources=[])
            self.windows.append(Window(kind, now + rng.uniform(2, 5), clear(errorRate=0.0)))
        elif kind == "failing-saves":
            self._set_faults(errorRate=1.0, errorStatus=503, errorResources=["nsconfig"])
            self.windows.append(Window(kind, now + rng.uniform(3, 6), clear(errorRate=0.0, errorResources=[])))
        elif kind == "latency":
            self._set_faults(latencyMs=rng.choice((200, 500, 1500)))
            self.windows.append(Window(kind, now + rng.uniform(2, 4), clear(latencyMs=0)))
        elif kind == "latency-beyond-timeout":
            self._set_faults(latencyMs=int(self.config.client_timeout_seconds * 1000 + 1500))
            self.windows.append(Window(kind, now + rng.uniform(2, 4), clear(latencyMs=0)))
        elif kind == "dropped-connections":
            self._set_faults(dropConnections=rng.randint(1, 4))
        elif kind == "session-expiry":
            self._set_faults(expireSessions=True)
        elif kind == "outage":
            self._collect_journal()
            self.sim.pause()
            self.windows.append(Window(kind, now + rng.uniform(2, 4), self._end_outage))
        elif kind in ("simulator-restart", "simulator-kill"):
            self._collect_journal()
            self.sim_down = True
            if kind == "simulator-kill":
                self.sim.kill()
            else:
                self.sim.stop()
            self.windows = [w for w in self.windows if w.kind in ("outage",)]  # settings die with the process
            self.windows.append(Window(kind, now + rng.uniform(1, 3), self._restart_sim))
        elif kind == "ha-secondary":
            self.sim.control("POST", "/_sim/ha", {"state": "Secondary"})
            self.windows.append(Window(kind, now + rng.uniform(2, 4), self._end_secondary))
        self.figures.faults[kind] += 1
        return True

    def _end_outage(self) -> bool:
        self.sim.resume()
        return True

    def _restart_sim(self) -> bool:
        self.sim.start()
        self.sim_down = False
        self.figures.simulator_starts += 1
        self.journal_seq = 0  # a new process keeps a new journal
        return True

    def _end_secondary(self) -> bool:
        if not self._sim_up():
            return False
        try:
            self.sim.control("POST", "/_sim/ha", {"state": "Primary"})
        except (OSError, RuntimeError):
            return False
        self._collect_journal()
        return True

    def _close_windows(self, *, all_now: bool = False) -> None:
        now = time.monotonic()
        for window in sorted(self.windows, key=lambda w: w.kind != "outage"):  # resume before anything else
            if (all_now or window.ends <= now) and window.close():
                self.windows.remove(window)

    # ============================================================================ chaos

    def _chaos(self) -> None:
        rng, config = self.rng, self.config
        started = time.monotonic()
        end = started + config.chaos_seconds
        must = [k for k in (*FAULT_KINDS, *ACTION_KINDS) if k != "two-replicas"]
        rng.shuffle(must)
        # Every kind at least once, at evenly spread seeded times; two replicas early, then every N seconds.
        schedule = [(started + config.chaos_seconds * (i + 0.5) / len(must), kind, 0) for i, kind in enumerate(must)]
        t = started + config.chaos_seconds * rng.uniform(0.1, 0.4)
        while t < end:
            schedule.append((t, "two-replicas", 0))
            t += config.two_replica_every_seconds
        while time.monotonic() < end or self.replicas or schedule:
            now = time.monotonic()
            self._close_windows()
            self._step_replicas()
            if now >= end:  # what was due and could not be done yet, and a replica window, run out
                for item in [i for i in schedule if i[2] >= 60]:
                    schedule.remove(item)
                    self.figures.notes.append(f"chaos: could not inject {item[1]}")
                for item in [i for i in schedule if i[0] <= now]:
                    schedule.remove(item)
                    if not self._do(item[1]):
                        schedule.append((now + 0.5, item[1], item[2] + 1))
                if len(schedule) == 0 and not self.replicas:
                    break
                self._pause(0.5)
                continue
            due = sorted(item for item in schedule if item[0] <= now)
            schedule = [item for item in schedule if item[0] > now]
            for _, kind, tries in due:
                if self._do(kind):
                    continue
                if tries < 60:
                    schedule.append((now + 0.5, kind, tries + 1))  # e.g. the simulator is down right now
                else:
                    self.figures.notes.append(f"chaos: could not inject {kind}")
            if rng.random() < 0.75:
                self._do(rng.choices(("spec-change", "invalid-spec", "refused-spec", "vip-conflict", "delete",
                                      "re-create", "endpoints"), (30, 3, 3, 3, 3, 4, 5))[0])
            if rng.random() < 0.12:
                self._do(rng.choice(FAULT_KINDS))
            if rng.random() < 0.02:
                self._do("operator-kill")
            self._pause(rng.uniform(0.1, 0.5))

    def _do(self, kind: str) -> bool:
        """One action or fault; False when it cannot be done now."""
        if kind in FAULT_KINDS:
            return self._open(kind)
        if kind == "two-replicas":
            return bool(self.replicas) or self._begin_replicas()
        if kind == "operator-kill":
            return self._kill_active()
        done = self._spec_action(kind)
        if done:
            self.figures.actions[kind] += 1
        return done

    def _spec_action(self, kind: str) -> bool:
        rng = self.rng
        live = [e for e in self.entries if e.spec is not None]
        gone = [e for e in self.entries if e.spec is None]
        static = [e for e in live if not e.service_backed]
        if kind == "spec-change" and live:
            entry = rng.choice(live)
            return self._apply(entry, self._mutated(entry))
        if kind == "invalid-spec" and static:
            entry = rng.choice(static)
            spec = copy.deepcopy(entry.spec or {})
            if rng.random() < 0.5:
                spec["ports"] = [spec["ports"][0], spec["ports"][0]] if spec["ports"] != ["*"] else [80, 80]
            else:
                first = spec["backends"]["static"][0]
                spec["backends"]["static"] = [first, {"name": first["name"], "address": rng.choice(HOSTS)}]
            return self._apply(entry, spec)
        if kind == "refused-spec" and live:
            entry = rng.choice(live)
            spec = copy.deepcopy(entry.spec or {})
            bad = rng.choice(("port", "vip", "lbMethod", "both-backends", "wildcard-and-port", "timeout"))
            if bad == "port":
                spec["ports"] = [rng.choice((0, 65536, -1))]
            elif bad == "vip":
                spec["vip"] = rng.choice(("192.0.2.300", "not-an-ip", "192.0.2.0/24"))
            elif bad == "lbMethod":
                spec["lbMethod"] = "FASTEST"
            elif bad == "both-backends":
                spec["backends"] = {"service": "web", "static": [{"name": "h1", "address": HOSTS[0]}]}
            elif bad == "wildcard-and-port":
                spec["ports"] = ["*", 80]
            else:
                spec["healthCheck"] = {**(spec.get("healthCheck") or {}), "intervalSeconds": 5, "timeoutSeconds": 5}
            before = self.figures.refused
            self._apply(entry, spec)
            if self.figures.refused == before:
                self.figures.notes.append(f"the API server accepted a spec it should refuse ({bad}): {spec}")
            return True
        if kind == "vip-conflict" and len(live) >= 2:
            entry, other = rng.sample(live, 2)
            spec = copy.deepcopy(entry.spec or {})
            spec["vip"] = (other.spec or {})["vip"]
            spec["ports"] = [(other.spec or {})["ports"][0]]
            check = spec.get("healthCheck") or {}
            if spec["ports"] == ["*"] and check.get("type", "TCP") == "TCP" and "port" not in check:
                check["port"] = 80
            return self._apply(entry, spec)
        if kind == "delete" and live:
            self._delete(rng.choice(live))
            return True
        if kind == "re-create" and gone:
            entry = rng.choice(gone)
            return self._create(entry, self._valid_spec(entry))
        if kind == "endpoints":
            node = rng.choice(self.nodes)
            self.endpoints[node] = rng.choice([x for x in (True, False, None) if x != self.endpoints[node]])
            self._write_slice()
            return True
        return False

    def _kill_active(self) -> bool:
        op = self.active
        if op is None or not op.running():
            return False
        self._stop_operator(op, kill=True)
        self.figures.operator_kills += 1
        self.figures.actions["operator-kill"] += 1
        self._pause(self.rng.uniform(0, 2))
        if not self.replicas.get("takeover"):
            self._start_operator(op, wait=False)
        return True

    # -- two replicas

    def _begin_replicas(self) -> bool:
        assert self.chart is not None and self.active is not None
        if not self.active.running():
            return False
        if self.second is None:
            settings = ("resync_seconds", "save_debounce_seconds", "default_drain_seconds", "netscaler_timeout_seconds")
            self.second = rig.OperatorProcess.for_chart(
                "operator-b", self.workdir, self.chart, self.cp, self.sim, OPERATOR_ID, [self.ns],
                **{k: self.active.env[f"DSR_{k.upper()}"] for k in settings})
        self._start_operator(self.second, wait=False)
        self.figures.actions["two-replicas"] += 1
        now = time.monotonic()
        self.replicas = {"since": now, "ends": now + self.rng.uniform(8, 15), "takeover": self.config.standby_takeover,
                         "b_logs": self._log_sizes(self.second)}
        return True

    @staticmethod
    def _log_sizes(op: rig.OperatorProcess) -> dict[str, int]:
        return {name: len(text) for name, text in op.logs().items()}

    @staticmethod
    def _logged_since(op: rig.OperatorProcess, sizes: dict[str, int], needle: str) -> bool:
        return any(needle in text[sizes.get(name, 0):] for name, text in op.logs().items())

    def _step_replicas(self) -> None:
        """The two-replica window, one step per call: the second replica stands by while the leader runs;
        with `standby_takeover`, the leader is SIGKILLed once the second stands by, and must be replaced."""
        state = self.replicas
        if not state:
            return
        a, b = self.active, self.second
        assert a is not None and b is not None
        now = time.monotonic()
        if "standing_by" not in state and self._logged_since(b, state["b_logs"], STANDING_BY):
            state["standing_by"] = now - state["since"]
        if state["takeover"] and "standing_by" in state and "killed" not in state and a.running():
            self._stop_operator(a, kill=True)
            self.figures.operator_kills += 1
            state.update(killed=now, ends=now + 120)
        if state.get("killed") and "took_over" not in state and self._logged_since(b, state["b_logs"], LEADING):
            state["took_over"] = now - state["killed"]
            state["ends"] = now + 10
        if now < state["ends"]:
            return
        led_early = "killed" not in state and self._logged_since(b, state["b_logs"], LEADING)
        note = (f"second replica: stood by on the Lease: {'standing_by' in state}; "
                f"stayed a stand-by while the leader ran: {not led_early}")
        if led_early:
            self.unexpected.append("the second replica took the Lease while the leader was running")
        if state["takeover"]:
            took = state.get("took_over")
            note += (f"; with the leader SIGKILLed the stand-by led after {took:.0f}s (Lease duration 15s)"
                     if took is not None else "; the stand-by never took over")
            if took is None:
                self.unexpected.append("the stand-by never took over from a SIGKILLed leader")
        self.figures.notes.append(note)
        self._stop_operator(b)
        if not a.running():
            self._start_operator(a, wait=False)
        self.replicas = {}

    # ============================================================================ final changes

    def _quiesce(self) -> None:
        """Faults off, the simulator up and Primary, one operator replica running."""
        if self.replicas and self.second is not None:
            self._stop_operator(self.second)
            self.replicas = {}
        self._close_windows(all_now=True)
        self.sim.resume()
        if not self.sim.running():
            self._restart_sim()
        self.windows = []
        self._sim_control("DELETE", "/_sim/faults")
        self._sim_control("POST", "/_sim/ha", {"state": "Primary"})
        assert self.active is not None
        self._stop_operator(self.active)  # a rolling restart, with the final resync period
        self.active.env["DSR_RESYNC_SECONDS"] = str(self.config.final_resync_seconds)
        self._start_operator(self.active)

    def _final_changes(self) -> None:
        """Faults off: every chaos DsrService to a fresh valid spec, and scenarios on fresh DsrServices.

        The scenarios run on DsrServices created now (no history from the chaos), in this order of
        creation: each gets a known baseline, converges, then gets the change under test."""
        self._quiesce()
        rng = self.rng
        self.endpoints = {node: True for node in self.nodes}
        self._write_slice()
        for entry in self.entries:
            self._ensure(entry, self._valid_spec(entry))
        names = ("f-drop-port", "f-floor-zero", "f-unset-check", "f-squat", "f-delete", "f-invalid",
                 "f-held", "f-older", "f-younger", "f-secondary", "f-save")
        fresh = {name: Entry(name, f"192.0.2.{100 + i}") for i, name in enumerate(names)}
        check = {"type": "TCP", "intervalSeconds": 5, "timeoutSeconds": 2, "retries": 3, "port": 80,
                 "throughVip": True}
        for name, entry in fresh.items():
            hosts = [DRAINED_HOST] if name == "f-delete" else rng.sample(HOSTS, 3 if name == "f-floor-zero" else 2)
            spec = self._valid_spec(entry, hosts=hosts, ports=[80, 443] if name == "f-drop-port" else [80])
            spec.pop("maxUnbindPercent", None)
            if name == "f-floor-zero":
                spec["maxUnbindPercent"] = 10
            if name == "f-unset-check":
                spec["healthCheck"] = dict(check)
            if name == "f-delete":
                spec["drainSeconds"] = 2
            self._create(entry, spec)
            self.entries.append(entry)
        self._wait_converged(self.entries, "the final baseline")
        ready = self._ready_now()

        def edit(name: str, change: Callable[[dict[str, Any]], None], note: str) -> None:
            entry = fresh[name]
            if entry.spec is None or name not in ready:
                self.figures.notes.append(f"final scenario skipped, {name} did not converge: {note}")
                return
            spec = copy.deepcopy(entry.spec)
            change(spec)
            if self._apply(entry, spec):
                self.figures.notes.append(f"final scenario {name}: {note}")

        def hosts_of(spec: dict[str, Any]) -> list[str]:
            return [b["address"] for b in spec["backends"]["static"]]

        def static(hosts: list[str]) -> dict[str, Any]:
            return {"static": [{"name": f"h{h.rsplit('.', 1)[1]}", "address": h} for h in hosts]}

        # Changes that must complete.
        edit("f-drop-port", lambda s: s.update(ports=[80]), "ports [80, 443] -> [80]")
        edit("f-floor-zero", lambda s: s.update(backends=static(
            [*hosts_of(s)[1:], rng.choice([h for h in HOSTS if h not in hosts_of(s)])])),
            "one of 3 bound backends replaced under maxUnbindPercent 10")
        edit("f-unset-check", lambda s: s.update(healthCheck={k: v for k, v in check.items() if k != "port"}
                                                 | {"throughVip": False}),
             "healthCheck.port removed and throughVip false (destport and destip must go)")
        edit("f-squat", lambda s: s.update(backends=static([*hosts_of(s), SQUATTED])),
             f"adds backend {SQUATTED}, whose server name dsr-{SQUATTED} is taken by hand (NameConflict)")
        # An invalid spec keeps the last good configuration.
        victim = fresh["f-invalid"]
        if victim.spec is not None and victim.name in ready:
            self.last_good[str(victim.uid)] = copy.deepcopy(victim.spec)
        edit("f-invalid", lambda s: s.update(ports=[80, 80]), "ports [80] -> [80, 80] (InvalidSpec, keeps its config)")
        # A younger DsrService on a VIP:port that is held: it stalls, NetScaler is untouched for it.
        held = fresh["f-held"]
        if held.spec is not None:
            late = Entry("late", held.home_vip)
            if self._create(late, self._valid_spec(late, ports=[80])):
                self.figures.notes.append(f"final scenario late: a younger DsrService asks for {held.home_vip}:80, "
                                          "held by f-held (VipConflict)")
        # The older of two moves onto the VIP:port the younger serves: the holder keeps it (f-younger stays
        # Ready), the older one is VipConflict and keeps its last good configuration on its old VIP.
        older, younger = fresh["f-older"], fresh["f-younger"]
        if younger.spec is not None and younger.name in ready and older.name in ready:
            self.last_good[str(younger.uid)] = copy.deepcopy(younger.spec)
            if older.spec is not None:
                self.last_good[str(older.uid)] = copy.deepcopy(older.spec)
        edit("f-older", lambda s: s.update(vip=younger.home_vip, ports=[80]),
             f"the older f-older moves onto f-younger's {younger.home_vip}:80 (f-older: VipConflict, the holder "
             "keeps it)")
        # Deletion, with a drain (judged at the end).
        self._delete(fresh["f-delete"])
        self.figures.actions["delete"] += 1
        self.figures.notes.append("final scenario f-delete: deleted, its only backend's service drains 2s first")
        # NetScaler turns Secondary, then a change: it must not be written there.
        secondary = fresh["f-secondary"]
        if secondary.spec is not None and secondary.name in ready:
            seq = self.journal_seq
            self._sim_control("POST", "/_sim/ha", {"state": "Secondary"})
            self.figures.faults["ha-secondary"] += 1
            edit("f-secondary", lambda s: s.update(lbMethod=rng.choice(
                [m for m in LB_METHODS if m != s.get("lbMethod")])), "NetScaler Secondary, then an lbMethod change")

            def refused_or_written() -> bool:
                self._collect_journal()
                body = self._get(secondary.name) or {}
                stalled: dict[str, Any] = next((c for c in (body.get("status") or {}).get("conditions") or ()
                                if c.get("type") == "Stalled"), {})
                at_generation = (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"]
                return (any(e.get("haState") == "Secondary" and int(e["seq"]) > seq for e in self.journal)
                        or (at_generation and stalled.get("reason") == "NetScalerUnreachable"))

            with contextlib.suppress(ControlPlaneError):
                eventually_sync(refused_or_written, timeout=60, what="the operator to refuse or write while Secondary",
                                tick=self._tick, error=ControlPlaneError)
            self._sim_control("POST", "/_sim/ha", {"state": "Primary"})
        # A last change whose save fails: every save refused until the operator says saving failed.
        # First NetScaler idle and saved, so that this change is the last one.
        def idle_and_saved() -> bool:
            self._collect_journal()
            last_write = max((float(e["time"]) for e in self.journal), default=0.0)
            return self.sim.config()["nsconfig"]["configchanged"] is False and time.time() - last_write > 3
        self._until(idle_and_saved, "NetScaler idle and saved before the last change")
        last = fresh["f-save"]
        if last.spec is not None and self.active is not None:
            failures = self.active.log().count(SAVE_FAILED)
            self._set_faults(errorRate=1.0, errorStatus=503, errorResources=["nsconfig"])
            self.figures.faults["failing-saves"] += 1
            edit("f-save", lambda s: s.update(lbMethod=rng.choice([m for m in LB_METHODS if m != s.get("lbMethod")])),
                 "lbMethod changed, then every save refused (503) until the operator logged that saving failed")
            try:
                eventually_sync(lambda: self.active is not None and self.active.log().count(SAVE_FAILED) > failures,
                                timeout=90, what="the operator to report a failed save", tick=self._tick,
                                error=ControlPlaneError)
            except ControlPlaneError:
                self.figures.notes.append("final scenario f-save: the operator never logged a failed save")
            self._sim_control("DELETE", "/_sim/faults")

    def _entry(self, name: str) -> Entry:
        return next(e for e in self.entries if e.name == name)

    def _ensure(self, entry: Entry, spec: dict[str, Any]) -> None:
        """Apply `spec`, creating the DsrService (once a previous deletion finished) when missing."""
        body = self._get(entry.name)
        if body is not None and not body["metadata"].get("deletionTimestamp"):
            entry.uid = body["metadata"]["uid"]
            if self._apply(entry, spec):
                return
        eventually_sync(lambda: self._get(entry.name) is None, timeout=self.config.settle_seconds,
                        what=f"the deletion of {entry.name} to finish", interval=0.5, tick=self._tick,
                        error=ControlPlaneError)
        if not self._create(entry, spec):
            raise ControlPlaneError(f"cannot create DsrService {entry.name} again")

    def _created(self, entry: Entry) -> tuple[str, str]:
        body = self._get(entry.name) or {}
        return (str((body.get("metadata") or {}).get("creationTimestamp")), entry.name)

    def _ready_now(self) -> set[str]:
        out = set()
        for body in self._list():
            meta, status = body["metadata"], body.get("status") or {}
            ready = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
            if ready and ready[0].get("status") == "True" and status.get("observedGeneration") == meta["generation"]:
                out.add(meta["name"])
        return out

    def _wait_converged(self, entries: list[Entry], what: str) -> bool:
        names = {e.name for e in entries if e.spec is not None}
        if self._until(lambda: names <= self._ready_now(), what):
            return True
        self.figures.notes.append(f"{what}: not Ready: {sorted(names - self._ready_now())}")
        return False

    def _dsr_states(self) -> list[tuple[str, Any, str, bool]]:
        """What the operator shows of each DsrService (not kopf's bookkeeping annotations)."""
        return sorted((b["metadata"]["name"], b["metadata"].get("generation"),
                       json.dumps(b.get("status"), sort_keys=True), bool(b["metadata"].get("deletionTimestamp")))
                      for b in self._list())

    def _until(self, done: Callable[[], bool], what: str) -> bool:
        """Poll until done(); give up when nothing moves any more or at `settle_seconds`.

        Nothing moves: no NetScaler write and no change to any DsrService for two resync periods
        plus the longest drain, in which the operator has re-read NetScaler twice."""
        quiet = 2 * self.config.resync_seconds + 10  # the chaos' resync: also enough for drains and retries
        deadline = time.monotonic() + self.config.settle_seconds
        seen: Any = None
        changed = time.monotonic()
        while True:
            if done():
                return True
            now = time.monotonic()
            self._collect_journal()
            activity = (len(self.sim.runs), self.journal_seq, self._dsr_states())
            if activity != seen:
                seen, changed = activity, now
            elif now - changed > quiet:
                self.figures.notes.append(f"{what}: gave up after {quiet:.0f}s without any change")
                return False
            if now > deadline:
                self.figures.notes.append(f"{what}: gave up after {self.config.settle_seconds:.0f}s")
                return False
            self._pause(1.0)

    # ============================================================================ settle and capture

    def _settle(self) -> judge.Capture:
        """Wait until every invariant holds, or nothing changes any more; the last capture is judged."""
        captured: list[judge.Capture] = []

        def holds() -> bool:
            captured[:] = [self._capture()]
            return all(v.ok for v in judge.judge(captured[0]))

        self._until(holds, "the final state")
        return captured[0]

    def _items(self, path: str) -> list[dict[str, Any]]:
        status, body = self.cp.request("GET", path)
        if status != 200:
            raise ControlPlaneError(f"GET {path} failed: {status} {body}")
        items: list[dict[str, Any]] = body["items"]
        return items

    def _capture(self) -> judge.Capture:
        cp = self.cp
        self._collect_journal()
        nodes, configs = [], []
        for node in self.nodes:
            status, body = cp.request("GET", f"/api/v1/nodes/{node}")
            if status == 200:
                nodes.append(body)
            status, body = cp.request("GET", f"{DSR}/dsrnodeconfigs/{node}")
            if status == 200:
                configs.append(body)
        logs: dict[str, str] = {}
        metrics: dict[str, str] = {}
        for op in (self.active, self.second):
            if op is None:
                continue
            logs |= op.logs()
            text = op.metrics() if op.running() else None
            if text is not None:
                metrics[op.name] = text
        assert self.chart is not None
        return judge.Capture(
            operator_id=OPERATOR_ID,
            dsrservices=tuple(judge.DsrObject.from_api(b) for b in self._list()),
            netscaler=self.sim.config(),
            handmade=self.handmade,
            handmade_snapshot=self.handmade_snapshot,
            last_good=dict(self.last_good),
            k8s_services=frozenset((self.ns, s["metadata"]["name"])
                                   for s in self._items(f"/api/v1/namespaces/{self.ns}/services")),
            slices=tuple(self._items(f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices")),
            nodes=tuple(nodes), nodeconfigs=tuple(configs), judged_nodes=frozenset(self.nodes),
            journal=tuple(self.journal),
            operator_logs=logs,
            simulator_log=self.sim.logs(),
            events=tuple(self._items(f"/api/v1/namespaces/{self.ns}/events")),
            metrics=metrics,
            secrets={"NITRO password": self.sim.password, "kube token": self.chart.token},
            unexpected_exits=tuple(self.unexpected),
        )


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dsr-soak-"))
    try:
        yield path
    finally:
        if not keep and os.environ.get("DSR_SOAK_KEEP") != "1":
            shutil.rmtree(path, ignore_errors=True)


def run(cp: ControlPlane, config: Config, out: Callable[[str], None] = print, keep: bool = False) -> Report:
    """One soak run; processes it started are stopped before it returns (also on errors)."""
    with workdir(keep) as path:
        out(f"soak: seed {config.seed} ({SEED_ENV}={config.seed} repeats it), work dir {path}")
        report = Soak(cp, config, path, out).run()
        if not report.ok:
            out(f"soak: logs are kept in {path} only with DSR_SOAK_KEEP=1")
        return report

