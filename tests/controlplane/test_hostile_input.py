"""Hostile DsrService specs against the real API server and the running operator (hypothesis).

The operator (`python -m dsr_operator.cli run`, as the chart's ServiceAccount) and the NITRO
simulator run as processes; three valid DsrServices converge first. Then hypothesis generates
hostile specs, each a valid spec with one to three of: wrong types, out-of-range ports, strange
VIPs (not IPs, or addresses no VIP can be: unspecified, loopback, multicast, broadcast, link-local),
huge lists, unicode and malformed names, missing fields, both or no backend kinds, empty specs,
repeated ports or backends, unknown fields, a health check the rules forbid, or a VIP:port that a
valid DsrService already holds. Each one is applied, and must either be

* refused by the API server (with `fieldValidation=Strict`, as kubectl sends) with a message that
  names a field it broke, or
* accepted, and then Stalled with a reason by the operator at its generation, while NetScaler
  holds nothing for it (the simulator's configuration is what it was before);

and the three valid DsrServices stay Ready at their generation with their NetScaler objects
untouched (no write in the simulator's journal names them; their configuration is unchanged).
Every example is collected and the test fails at the end listing each finding with its exact spec,
so one run shows all of them (no shrinking against a live API server).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import hypothesis
import pytest
from hypothesis import strategies as st

from tests.controlplane import operator_rig as rig
from tests.controlplane.conftest import ControlPlaneError
from tests.support.waiting import eventually_sync

if TYPE_CHECKING:
    from tests.controlplane.conftest import ControlPlane

pytestmark = [pytest.mark.controlplane, pytest.mark.timeout(900)]
OPERATOR_ID = "hostile"
DELETE = object()  # a mutation that removes the field
VALID_VIPS = ("192.0.2.31", "192.0.2.32", "192.0.2.33")
STRANGE_VIPS = ("", " ", "192.0.2.256", "192.0.2.1 ", " 192.0.2.1", "192.0.2.1/32", "192.0.2", "1.2.3.4.5",
                "0x7f.0.0.1", "\u0661\u0669\u0662.\u0660.\u0662.\u0661", "fe80::1%eth0", "[2001:db8::1]",
                "localhost", "192.0.2.1\n", "x" * 46,
                # IPs, but no VIP can be one of these.
                "0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "169.254.1.1", "::", "::1",
                "ff02::1", "fe80::1")
STALLED_REASONS = frozenset({"InvalidSpec", "VipConflict", "VipNotAllowed", "NameConflict", "NetScalerRejected"})
WAITING_REASONS = frozenset({"ServiceNotFound"})
"""Reasons that heal by themselves (the Service appears): Reconciling, not Stalled, and NetScaler untouched."""


@dataclasses.dataclass
class World:
    cp: ControlPlane
    namespace: str
    sim: rig.SimProcess
    operator: rig.OperatorProcess
    valid: dict[str, dict[str, Any]]
    """name → the valid DsrService as created (uid, generation)."""
    baseline: dict[str, str]
    """The simulator's configuration, record by record, once the valid ones converged."""
    valid_names: frozenset[str]
    """NetScaler names of the valid DsrServices' objects."""
    journal_seq: int

    def path(self, name: str = "") -> str:
        return f"{rig.DSR_PATH}/namespaces/{self.namespace}/dsrservices" + (f"/{name}" if name else "")

    def get(self, name: str) -> dict[str, Any] | None:
        status, body = self.cp.request("GET", self.path(name))
        return body if status == 200 and isinstance(body, dict) else None

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            for proc in (self.operator.proc, self.sim.proc):
                if proc is not None:
                    proc.check_alive()
            return predicate()

        return eventually_sync(check, timeout=timeout, what=what, interval=0.2, error=ControlPlaneError)


def _effective(mutations: list[Mutation]) -> list[Mutation]:
    """The mutations a later one does not overwrite (same path, or a parent of it)."""
    return [m for i, m in enumerate(mutations)
            if not any(m.path == later.path or m.path.startswith(later.path + ".") for later in mutations[i + 1:])]


def _records(doc: dict[str, Any]) -> dict[str, str]:
    keys = {"lbmonitor": ("monitorname", "type"), "lbvserver_service_binding": ("name", "servicename"),
            "service_lbmonitor_binding": ("name", "monitor_name"), "servicegroup": ("servicegroupname",),
            "lbvserver_servicegroup_binding": ("name", "servicegroupname"),
            "servicegroup_lbmonitor_binding": ("servicegroupname", "monitor_name"),
            "servicegroup_servicegroupmember_binding": ("servicegroupname", "servername", "port")}
    out = {}
    for rtype, recs in (doc.get("objects") or {}).items():
        for rec in recs:
            key = "/".join(str(rec.get(k)) for k in keys.get(rtype, ("name",)))
            out[f"{rtype}/{key}"] = json.dumps(rec, sort_keys=True)
    out["nsmode"] = json.dumps(doc.get("nsmode"))
    return out


def _condition(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (body.get("status") or {}).get("conditions") or ():
        if c.get("type") == ctype:
            return dict(c)
    return {}


def _ready(body: dict[str, Any] | None) -> bool:
    if not body:
        return False
    return (_condition(body, "Ready").get("status") == "True"
            and (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"])


def _valid_spec(vip: str, hosts: list[str]) -> dict[str, Any]:
    return {"vip": vip, "ports": [80, 443], "lbMethod": "ROUNDROBIN", "drainSeconds": 0,
            "backends": {"static": [{"name": f"h{i}", "address": h} for i, h in enumerate(hosts)]},
            "healthCheck": {"type": "TCP", "intervalSeconds": 5, "timeoutSeconds": 2, "port": 80}}


@pytest.fixture(scope="module")
def world(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cp = controlplane
    with rig.staged(cp, tmp_path_factory.mktemp("hostile"), "hostile") as stage:
        namespace, sim = stage.namespace, stage.sim
        operator = stage.operator("operator", OPERATOR_ID, resync_seconds="30", default_drain_seconds="0")
        operator.start()
        operator.wait_live()
        valid: dict[str, dict[str, Any]] = {}
        for i, vip in enumerate(VALID_VIPS):
            hosts = [f"198.51.100.{10 * i + 1}", f"198.51.100.{10 * i + 2}"]
            body = {"apiVersion": f"{rig.GROUP}/{rig.VERSION}", "kind": "DsrService",
                    "metadata": {"name": f"valid-{i}", "namespace": namespace}, "spec": _valid_spec(vip, hosts)}
            status, answer = cp.request("POST", f"{rig.DSR_PATH}/namespaces/{namespace}/dsrservices", body)
            assert status == 201, answer
        world = World(cp, namespace, sim, operator, valid, {}, frozenset(), 0)
        for i in range(len(VALID_VIPS)):
            name = f"valid-{i}"
            world.wait(functools.partial(lambda n: _ready(world.get(n)), name), 120, f"{name} to be Ready")
            valid[name] = world.get(name) or {}
        # Saved, so that nothing is pending when the baseline is taken.
        world.wait(lambda: sim.config()["nsconfig"]["configchanged"] is False, 60, "the configuration saved")
        doc = sim.config()
        world.baseline = _records(doc)
        uids = {b["metadata"]["uid"] for b in valid.values()}
        names: set[str] = set()
        for recs in (doc.get("objects") or {}).values():
            for rec in recs:
                comment = str(rec.get("comment") or "")
                if comment.startswith(f"dsr-operator:{OPERATOR_ID}:"):
                    names.add(str(rec.get("name") or rec.get("monitorname")))
        assert uids, "no valid DsrService"
        world.valid_names = frozenset(names)
        world.journal_seq = max((e["seq"] for e in sim.journal()), default=0)
        yield world


# --------------------------------------------------------------------------------- hostile specs


#: Optional spec fields with a default: a null there is pruned by the API server and then defaulted.
DEFAULTED = ("lbMethod", "drainSeconds", "healthCheck", "maxUnbindPercent")


@dataclasses.dataclass(frozen=True)
class Mutation:
    path: str  # "spec.ports", "metadata.name", ...
    value: Any

    def apply(self, body: dict[str, Any]) -> None:
        node = body
        *parents, leaf = self.path.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if self.value is DELETE:
            node.pop(leaf, None)
        else:
            node[leaf] = copy.deepcopy(self.value)

    def show(self) -> str:
        return f"{self.path}={'<removed>' if self.value is DELETE else json.dumps(self.value)[:120]}"


def _m(path: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Mutation]:
    return values.map(lambda v: Mutation(path, v))


ANY_JSON = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40),
                     st.floats(allow_nan=False, allow_infinity=False),  # JSON has no NaN or Infinity
                     st.text(max_size=12), st.lists(st.integers(), max_size=3), st.just({"a": 1}))
BAD_PORTS = st.one_of(st.sampled_from([0, -1, 65536, 99999, 2**31, 2**63 - 1]),
                      st.sampled_from(["80", "http", "", "**", "80-90"]),
                      st.floats(min_value=1.5, max_value=100.5), st.booleans(), st.none())
HOSTILE_HOSTS = [f"198.51.100.{i}" for i in range(128, 160)]


def _static(names: list[str], addresses: list[str]) -> dict[str, Any]:
    return {"static": [{"name": n, "address": a} for n, a in zip(names, addresses, strict=True)]}


MUTATIONS: st.SearchStrategy[Mutation] = st.one_of(
    # wrong types
    _m("spec.vip", ANY_JSON.filter(lambda v: not isinstance(v, str))),
    _m("spec.ports", ANY_JSON.filter(lambda v: not isinstance(v, list))),
    _m("spec.backends", ANY_JSON.filter(lambda v: not isinstance(v, dict))),
    _m("spec.lbMethod", st.one_of(ANY_JSON.filter(lambda v: not isinstance(v, str)),
                                  st.sampled_from(["roundrobin", "FASTEST", "", "ROUNDROBIN "]))),
    _m("spec.healthCheck", ANY_JSON.filter(lambda v: not isinstance(v, dict))),
    _m("spec.drainSeconds", st.one_of(st.sampled_from([-1, 3601, 2**40, "30", 1.5]), st.none())),
    _m("spec.maxUnbindPercent", st.sampled_from([0, -5, 101, 1000, "50", 50.5])),
    # out-of-range ports
    _m("spec.ports", st.lists(BAD_PORTS, min_size=1, max_size=3)),
    _m("spec.ports", st.lists(st.integers(1, 65535), min_size=1, max_size=2).map(lambda p: [*p, 0])),
    _m("spec.healthCheck.port", st.sampled_from([0, 65536, -80, "80"])),
    # strange VIPs
    _m("spec.vip", st.sampled_from(STRANGE_VIPS)),
    _m("spec.backends", st.sampled_from(STRANGE_VIPS).map(lambda a: _static(["h0"], [a]))),
    # huge lists and strings
    _m("spec.ports", st.just(list(range(1000, 1065)))),
    _m("spec.backends", st.just(_static([f"h{i}" for i in range(257)],
                                        [f"10.{i // 250}.{i % 250}.1" for i in range(257)]))),
    _m("spec.backends", st.just({"service": "s" * 5000})),
    _m("spec.vip", st.just("1" * 10000)),
    # unicode and malformed names
    _m("metadata.name", st.sampled_from(["wéb", "服务", "Web", "web_1", "-web", "web-", "", "a" * 254,
                                         "web\u200b", "😀"])),
    _m("spec.backends", st.sampled_from(["pï-1", "PI", "a_b", "", "x" * 64, "-a"]).map(
        lambda n: _static([n], [HOSTILE_HOSTS[0]]))),
    _m("spec.backends", st.sampled_from(["wéb", "服务", "web svc"]).map(lambda n: {"service": n})),
    # missing fields
    _m("spec.vip", st.just(DELETE)),
    _m("spec.ports", st.just(DELETE)),
    _m("spec.backends", st.just(DELETE)),
    _m("spec.backends", st.just({"static": [{"name": "h0"}]})),
    _m("spec.backends", st.just({"static": [{"address": HOSTILE_HOSTS[0]}]})),
    # both or no backend kinds, empty things
    _m("spec.backends", st.just({"service": "web", **_static(["h0"], [HOSTILE_HOSTS[0]])})),
    _m("spec.backends", st.sampled_from([{}, {"static": []}, {"service": ""}, {"service": None, "static": None}])),
    _m("spec.ports", st.just([])),
    _m("spec", st.sampled_from([{}, None, [], "spec"])),
    # repeats
    _m("spec.ports", st.integers(1, 65535).map(lambda p: [p, p])),
    _m("spec.ports", st.just(["*", "*"])),
    _m("spec.ports", st.just(["*", 80])),
    _m("spec.backends", st.just(_static(["h0", "h0"], HOSTILE_HOSTS[:2]))),
    _m("spec.backends", st.just(_static(["h0", "h1"], [HOSTILE_HOSTS[0], HOSTILE_HOSTS[0]]))),
    # unknown fields
    _m("spec.weight", st.integers()),
    _m("spec.healthCheck.path", st.just("/healthz")),
    _m("spec.backends.static", st.just([{"name": "h0", "address": HOSTILE_HOSTS[0], "port": 8080}])),
    # checks the rules forbid
    _m("spec.healthCheck", st.sampled_from([{"type": "HTTP"}, {"intervalSeconds": 5, "timeoutSeconds": 5},
                                            {"intervalSeconds": 1}, {"retries": 0}, {"timeoutSeconds": 0},
                                            {"intervalSeconds": 20941}])),
    _m("spec.ports", st.just(["*"])),  # with a TCP check and no probe port
    # a VIP:port a valid DsrService holds
    _m("spec.vip", st.sampled_from(VALID_VIPS)),
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> tuple[dict[str, Any], list[Mutation]]:
    vip = f"192.0.2.{draw(st.integers(200, 250))}"
    hosts = draw(st.lists(st.sampled_from(HOSTILE_HOSTS), min_size=1, max_size=3, unique=True))
    body: dict[str, Any] = {"apiVersion": f"{rig.GROUP}/{rig.VERSION}", "kind": "DsrService",
                            "metadata": {"name": f"h-{uuid.uuid4().hex[:8]}"}, "spec": _valid_spec(vip, hosts)}
    body["spec"]["healthCheck"].pop("port")
    applied = []
    for mutation in draw(st.lists(MUTATIONS, min_size=1, max_size=3)):
        if isinstance(body.get("spec"), dict) or not mutation.path.startswith("spec."):
            mutation.apply(body)
            applied.append(mutation)
    return body, applied


# --------------------------------------------------------------------------------- one example


def _names_a_field(message: str, mutations: list[Mutation]) -> bool:
    text = message.lower()
    for mutation in mutations:
        parts = [p for p in mutation.path.split(".") if p not in ("spec", "metadata")] or [mutation.path]
        for part in parts:
            part = part.lower()
            if part in text or part.rstrip("s") in text:
                return True
    return False


def _try(world: World, body: dict[str, Any], mutations: list[Mutation]) -> tuple[str, str | None]:
    """Apply one hostile DsrService: (outcome, finding or None)."""
    cp = world.cp
    shown = "; ".join(m.show() for m in mutations)
    spec_text = json.dumps(body.get("spec"), sort_keys=True)
    status, answer = cp.request("POST", world.path() + "?fieldValidation=Strict", body)
    if status in (400, 422):
        message = answer.get("message", "") if isinstance(answer, dict) else str(answer)
        if not _names_a_field(message, mutations):
            return "refused", f"refused without naming the field [{shown}]: {message[:300]} -- spec: {spec_text}"
        return "refused", None
    if status != 201:
        return "error", f"unexpected answer {status} [{shown}]: {str(answer)[:300]} -- spec: {spec_text}"
    name = answer["metadata"]["name"]
    try:
        def settled() -> dict[str, Any] | None:
            got = world.get(name)
            if not got or (got.get("status") or {}).get("observedGeneration") != got["metadata"]["generation"]:
                return None
            stalled, ready, busy = _condition(got, "Stalled"), _condition(got, "Ready"), _condition(got, "Reconciling")
            waiting = busy.get("status") == "True" and busy.get("reason") in WAITING_REASONS
            return got if stalled.get("status") == "True" or ready.get("status") == "True" or waiting else None

        try:
            got = world.wait(settled, 60, f"the operator's verdict on {name}")
        except ControlPlaneError:
            got = world.get(name) or {}
            return "accepted", (f"accepted, no verdict within 60s (status {got.get('status')}) [{shown}] -- "
                                f"spec: {spec_text}")
        stalled = _condition(got, "Stalled")
        reason = stalled.get("reason")
        busy = _condition(got, "Reconciling")
        if stalled.get("status") != "True" and busy.get("status") == "True" and busy.get("reason") in WAITING_REASONS:
            stalled, reason = busy | {"status": "True"}, busy.get("reason")  # judged like a stall: nothing sent
        after = _records(world.sim.config())
        changed = sorted(k for k in set(after) | set(world.baseline)
                         if after.get(k) != world.baseline.get(k) and not k.startswith("nsconfig"))
        effective = _effective(mutations)
        defaulted = [m for m in effective if m.value is None and m.path.startswith("spec.")
                     and m.path.count(".") == 1 and m.path.split(".")[1] in DEFAULTED]
        if len(defaulted) == len(effective) and _condition(got, "Ready").get("status") == "True":
            # The API server drops a null for a field that is not nullable, then defaults it: what
            # is stored is the valid spec, and serving it is right.
            return "defaulted", None
        if stalled.get("status") != "True" or reason not in STALLED_REASONS | WAITING_REASONS:
            ready = _condition(got, "Ready")
            return "accepted", (f"accepted and not Stalled: Ready={ready.get('status')}/{ready.get('reason')} "
                                f"({ready.get('message')}); {len(changed)} NetScaler records new or changed, e.g. "
                                f"{changed[:2]} [{shown}] -- spec: {spec_text}")
        if changed:
            return f"stalled:{reason}", (f"Stalled ({reason}) but {len(changed)} NetScaler records new or changed, "
                                         f"e.g. {changed[:2]} [{shown}] -- spec: {spec_text}")
        return f"stalled:{reason}", None
    finally:
        cp.request("DELETE", world.path(name))
        with contextlib.suppress(ControlPlaneError):
            world.wait(lambda: world.get(name) is None, 60, f"{name} to be deleted")
        with contextlib.suppress(ControlPlaneError):
            world.wait(lambda: {k: v for k, v in _records(world.sim.config()).items() if not k.startswith("nsconfig")}
                       == {k: v for k, v in world.baseline.items() if not k.startswith("nsconfig")}, 30,
                       "NetScaler back to its baseline")


def test_hostile_specs_are_refused_or_stalled_and_the_valid_ones_stay_untouched(world: World) -> None:
    outcomes: dict[str, int] = {}
    findings: list[str] = []
    started = time.monotonic()

    def record(body: dict[str, Any], mutations: list[Mutation]) -> None:
        outcome, finding = _try(world, body, mutations)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if finding:
            findings.append(finding)
        for name, before in world.valid.items():  # throughout, not only at the end
            now = world.get(name)
            if not (_ready(now) and now and now["metadata"]["generation"] == before["metadata"]["generation"]):
                findings.append(f"valid DsrService {name} is not Ready at its generation after "
                                f"{'; '.join(m.show() for m in mutations)}: {(now or {}).get('status')}")

    @hypothesis.settings(max_examples=40, deadline=None, database=None, phases=[hypothesis.Phase.explicit,
                         hypothesis.Phase.generate], suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(hostile_bodies())
    def generated(example: tuple[dict[str, Any], list[Mutation]]) -> None:
        record(*example)

    for explicit in EXPLICIT:  # the cases a reader expects, whatever hypothesis draws
        record(*explicit())
    generated()

    # The valid DsrServices' NetScaler objects untouched.
    touched = [e for e in world.sim.journal(world.journal_seq)
               if {str(e.get("name")), *map(str, (e.get("key") or {}).values())} & world.valid_names]
    if touched:
        findings.append(f"writes named the valid DsrServices' objects: {touched[:5]}")
    after = _records(world.sim.config())
    changed = sorted(k for k in world.baseline if not k.startswith("nsconfig") and after.get(k) != world.baseline[k])
    if changed:
        findings.append(f"the valid DsrServices' NetScaler records changed: {changed}")
    tracebacks = [ln for ln in world.operator.log().splitlines() if "Traceback" in ln]
    if tracebacks:
        findings.append(f"the operator logged {len(tracebacks)} tracebacks")
    summary = (f"{sum(outcomes.values())} hostile specs in {time.monotonic() - started:.0f}s: "
               + ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
    print(summary)
    assert not findings, summary + "\n" + "\n".join(f"- {f}" for f in findings)


def _explicit(*mutations: Mutation) -> Callable[[], tuple[dict[str, Any], list[Mutation]]]:
    def build() -> tuple[dict[str, Any], list[Mutation]]:
        body: dict[str, Any] = {"apiVersion": f"{rig.GROUP}/{rig.VERSION}", "kind": "DsrService",
                                "metadata": {"name": f"x-{uuid.uuid4().hex[:8]}"},
                                "spec": _valid_spec("192.0.2.199", HOSTILE_HOSTS[:2])}
        for mutation in mutations:
            mutation.apply(body)
        return body, list(mutations)

    return build


EXPLICIT = [
    _explicit(Mutation("spec.ports", [80, 80])),
    _explicit(Mutation("spec.backends", _static(["h0", "h0"], HOSTILE_HOSTS[:2]))),
    _explicit(Mutation("spec.backends", _static(["h0", "h1"], [HOSTILE_HOSTS[0], HOSTILE_HOSTS[0]]))),
    _explicit(Mutation("spec.vip", "0.0.0.0")),
    _explicit(Mutation("spec.vip", "255.255.255.255")),
    _explicit(Mutation("spec.vip", "224.0.0.1")),
    _explicit(Mutation("spec.vip", "127.0.0.1")),
    _explicit(Mutation("spec.vip", "::")),
    _explicit(Mutation("spec.vip", VALID_VIPS[0])),
    _explicit(Mutation("spec.backends", {"service": "wéb"})),
    _explicit(Mutation("spec.backends", _static(["h0"], ["0.0.0.0"]))),
    _explicit(Mutation("metadata.name", "wéb")),
    _explicit(Mutation("spec.weight", 5)),
    _explicit(Mutation("spec", {})),
]

