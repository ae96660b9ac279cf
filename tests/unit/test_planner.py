"""Planner behaviour: transitions from actual + intent to a plan, and properties over many inputs."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsr_operator.api import models
from dsr_operator.model import names
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import render
from dsr_operator.planner import desired as d
from dsr_operator.planner import effects
from dsr_operator.planner import plan as planner

from . import nsmodel

OP_ID = "test"
EMPTY = ns.NetScalerState()


def spec(vip: str = "192.0.2.10", ports: list[int | str] | None = None, **kw: object) -> models.DsrServiceSpec:
    body = {"vip": vip, "ports": ports or [80], "backends": {"service": "web"}, **kw}
    return models.DsrServiceSpec.model_validate(body)


def intent(name: str = "web", backends: tuple[d.Backend, ...] = (), **kw: object) -> d.Intent:
    ref = models.ObjectRef(namespace="shop", name=name, uid=f"uid-{name}")
    return d.Intent(ref, spec(**kw), backends)


def hosts(*octets: int, ready: bool = True) -> tuple[d.Backend, ...]:
    return tuple(d.Backend(f"n{o}", f"198.51.100.{o}", loopback_ready=ready) for o in octets)


def converge(
    actual: ns.NetScalerState,
    intents: list[d.Intent],
    policy: planner.Policy,
    scope: frozenset[str] | None = None,
) -> ns.NetScalerState:
    want = d.desired(intents)
    for _ in range(6):
        plan = planner.diff(want, actual, policy, scope)
        if plan.empty:
            return actual
        actual = nsmodel.elapse(nsmodel.apply(actual, plan, policy.operator_id))
    raise AssertionError("did not converge in 6 rounds")


def commands(plan: planner.Plan) -> list[str]:
    return [render.command(op.verb, op.kind, op.body) for op in plan.ops]


def test_from_scratch_follows_the_seed_procedure_in_dependency_order() -> None:
    plan = planner.diff(d.desired([intent(backends=hosts(21))]), EMPTY, planner.Policy(OP_ID))
    assert [(s.verb, s.kind) for s in plan.stages] == [
        ("enable", "nsmode"),
        ("add", "server"),
        ("add", "lbmonitor"),
        ("add", "servicegroup"),
        ("bind", ns.GROUP_MONITOR_BINDING),
        ("bind", ns.MEMBER_BINDING),
        ("add", "lbvserver"),
        ("bind", ns.GROUP_BINDING),
    ]
    cmds = commands(plan)
    assert cmds[0] == "enable ns mode MBF"
    add_group = (
        "add servicegroup dsr-shop_web_80_sg ANY -healthMonitor YES -usip YES -comment dsr-operator:test:uid-web"
    )
    assert add_group in cmds
    assert "bind servicegroup dsr-shop_web_80_sg -monitorName dsr-shop_web_tcp" in cmds
    assert "bind servicegroup dsr-shop_web_80_sg dsr-198.51.100.21 80" in cmds
    assert "bind lb vserver dsr-shop_web_80 dsr-shop_web_80_sg" in cmds
    assert any(
        c.startswith("add lb vserver dsr-shop_web_80 ANY 192.0.2.10 80 -lbMethod LEASTCONNECTION -m MAC") for c in cmds
    )
    assert any(
        c.startswith("add lb monitor dsr-shop_web_tcp TCP -destIP 192.0.2.10") and "-transparent YES" in c for c in cmds
    )


def test_a_binding_operation_names_its_parent_and_child_as_fields() -> None:
    plan = planner.diff(d.desired([intent(backends=hosts(21, 22))]), EMPTY, planner.Policy(OP_ID))
    binds = [(op.kind, op.name, op.child) for op in plan.ops if op.verb == "bind"]
    assert binds == [
        (ns.GROUP_MONITOR_BINDING, "dsr-shop_web_80_sg", "dsr-shop_web_tcp"),
        (ns.MEMBER_BINDING, "dsr-shop_web_80_sg", "dsr-198.51.100.21"),
        (ns.MEMBER_BINDING, "dsr-shop_web_80_sg", "dsr-198.51.100.22"),
        (ns.GROUP_BINDING, "dsr-shop_web_80", "dsr-shop_web_80_sg"),
    ]
    objects = [op for op in plan.ops if op.verb != "bind"]
    assert all(op.child == "" and " " not in op.name for op in objects)


def test_two_dsrservices_on_one_host_and_port_have_their_own_members_judged_by_their_own_monitors() -> None:
    """The tenant isolation: a host both use is a member of each one's servicegroup, and each servicegroup
    has only its own DsrService's monitor (a shared service would carry both monitors: either one failing
    would take the host out for both)."""
    a = models.ObjectRef(namespace="team-a", name="web", uid="uid-a")
    b = models.ObjectRef(namespace="team-b", name="web", uid="uid-b")
    want = d.desired([d.Intent(a, spec(vip="192.0.2.1"), hosts(21)), d.Intent(b, spec(vip="192.0.2.2"), hosts(21))])
    assert want.of_kind("service") == []
    monitors = {(x.parent, x.child) for x in want.bindings if x.kind == ns.GROUP_MONITOR_BINDING}
    assert monitors == {("dsr-team-a_web_80_sg", "dsr-team-a_web_tcp"), ("dsr-team-b_web_80_sg", "dsr-team-b_web_tcp")}
    members = {(x.parent, x.child, x.owner) for x in want.bindings if x.kind == ns.MEMBER_BINDING}
    assert members == {("dsr-team-a_web_80_sg", "dsr-198.51.100.21", "uid-a"),
                       ("dsr-team-b_web_80_sg", "dsr-198.51.100.21", "uid-b")}
    assert [s.name for s in want.of_kind("server")] == ["dsr-198.51.100.21"]  # the server alone is shared


def test_wildcard_port_is_65535_and_rendered_as_star() -> None:
    plan = planner.diff(
        d.desired([intent(backends=hosts(21), ports=["*"], healthCheck={"port": 22})]),
        EMPTY,
        planner.Policy(OP_ID),
    )
    vs = next(op for op in plan.ops if op.kind == "lbvserver")
    assert vs.body["port"] == 65535 and vs.name == "dsr-shop_web_any"
    assert "add lb vserver dsr-shop_web_any ANY 192.0.2.10 * " in render.command(vs.verb, vs.kind, vs.body)


def test_backend_without_loopback_gets_a_server_but_is_no_member() -> None:
    plan = planner.diff(d.desired([intent(backends=hosts(21, ready=False))]), EMPTY, planner.Policy(OP_ID))
    assert [op.name for op in plan.ops if op.kind == "server"] == ["dsr-198.51.100.21"]
    assert not [op for op in plan.ops if op.kind == ns.MEMBER_BINDING]


def test_converged_state_plans_nothing() -> None:
    intents = [intent(backends=hosts(21, 22))]
    actual = converge(EMPTY, intents, planner.Policy(OP_ID))
    assert planner.diff(d.desired(intents), actual, planner.Policy(OP_ID)).empty


def test_removed_backend_is_drained_then_unbound_then_deleted() -> None:
    policy = planner.Policy(OP_ID, default_guard_percent=100)
    actual = converge(EMPTY, [intent(backends=hosts(21, 22), drainSeconds=30)], policy)
    smaller = d.desired([intent(backends=hosts(21), drainSeconds=30)])
    first = planner.diff(
        smaller, actual, planner.Policy(OP_ID, drain_seconds={"uid-web": 30}, default_guard_percent=100)
    )
    assert commands(first) == ["disable servicegroup dsr-shop_web_80_sg dsr-198.51.100.22 80 -delay 30 -graceful YES"]
    assert [h.reason for h in first.holds] == ["Draining"] and first.retry_after == 30
    draining = nsmodel.apply(actual, first, OP_ID)
    assert planner.diff(smaller, draining, policy).ops == []  # still draining: nothing else moves
    done = nsmodel.elapse(draining)
    assert commands(planner.diff(smaller, done, policy)) == [
        "unbind servicegroup dsr-shop_web_80_sg dsr-198.51.100.22 80",
        "rm server dsr-198.51.100.22",
    ]


def test_a_draining_member_wanted_again_is_enabled() -> None:
    policy = planner.Policy(OP_ID, default_guard_percent=100, default_drain_seconds=30)
    actual = converge(EMPTY, [intent(backends=hosts(21, 22))], policy)
    draining = nsmodel.apply(actual, planner.diff(d.desired([intent(backends=hosts(21))]), actual, policy), OP_ID)
    assert commands(planner.diff(d.desired([intent(backends=hosts(21, 22))]), draining, policy)) == [
        "enable servicegroup dsr-shop_web_80_sg dsr-198.51.100.22 80"
    ]


def test_blast_radius_guard_keeps_half_of_the_bound_backends() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=0)
    actual = converge(EMPTY, [intent(backends=hosts(1, 2, 3, 4))], policy)
    plan = planner.diff(d.desired([intent(backends=())]), actual, policy)
    assert len(member_unbinds(plan, "dsr-shop_web_80_sg")) == 2
    assert [h.reason for h in plan.holds] == ["BlastRadiusGuard"]


def member_id(address: str, group: str = "dsr-shop_web_80_sg", port: int = 80) -> str:
    return ns.member_key(group, names.server(address), port)


def test_backends_that_asked_to_leave_are_not_held_by_the_guard_but_others_still_are() -> None:
    """A registry host's `drain: true` is its own request: even the last one leaves (it drops its VIP next)."""
    actual = converge(EMPTY, [intent(backends=hosts(1, 2, 3, 4))], planner.Policy(OP_ID, default_drain_seconds=0))
    leaving = frozenset(member_id(b.address) for b in hosts(1, 2, 3))
    policy = planner.Policy(OP_ID, default_drain_seconds=0, leaving=leaving)
    plan = planner.diff(d.desired([intent(backends=hosts(4))]), actual, policy)
    assert len(member_unbinds(plan, "dsr-shop_web_80_sg")) == 3
    assert plan.holds == ()
    alone = converge(EMPTY, [intent(backends=hosts(1))], policy)
    plan = planner.diff(d.desired([intent(backends=())]), alone, dataclasses.replace(
        policy, leaving=frozenset({member_id(hosts(1)[0].address)})))
    assert len(member_unbinds(plan, "dsr-shop_web_80_sg")) == 1 and plan.holds == ()
    # Without the request, the last backend stays (the guard), and a crowd leaving goes by half.
    assert member_unbinds(planner.diff(d.desired([intent(backends=())]), alone,
                                       planner.Policy(OP_ID, default_drain_seconds=0)), "dsr-shop_web_80_sg") == []
    one_asked = dataclasses.replace(policy, leaving=frozenset({member_id(hosts(1)[0].address)}))
    plan = planner.diff(d.desired([intent(backends=())]), actual, one_asked)
    assert len(member_unbinds(plan, "dsr-shop_web_80_sg")) == 1 + 2  # the one that asked, and half the others
    assert [h.reason for h in plan.holds] == ["BlastRadiusGuard"]


def member_unbinds(plan: planner.Plan, group: str) -> list[nsops.Op]:
    return [op for op in plan.ops if op.verb == "unbind" and op.kind == ns.MEMBER_BINDING and op.name == group]


@pytest.mark.parametrize("percent", [30, 50, 100])
@pytest.mark.parametrize("count", [1, 2, 4])
def test_a_port_removed_from_the_spec_loses_its_vserver_and_every_binding_at_once(percent: int, count: int) -> None:
    # The vserver of the removed port is no longer wanted: the guard does not apply to it.
    policy = planner.Policy(OP_ID, default_drain_seconds=0, default_guard_percent=percent)
    before = intent(backends=hosts(*range(1, count + 1)), ports=[80, 443])
    after = intent(backends=hosts(*range(1, count + 1)), ports=[80])
    actual = converge(EMPTY, [before], policy)
    plan = planner.diff(d.desired([after]), actual, policy)
    assert len(member_unbinds(plan, "dsr-shop_web_443_sg")) == count
    assert "rm lb vserver dsr-shop_web_443" in commands(plan)
    assert "rm servicegroup dsr-shop_web_443_sg" in commands(plan)
    assert not member_unbinds(plan, "dsr-shop_web_80_sg")
    assert [h.reason for h in plan.holds] == []
    done = nsmodel.apply(actual, plan, OP_ID)
    assert nsmodel.ours(done) == nsmodel.ours(d.desired([after]))


def test_a_removed_port_is_drained_before_its_vserver_goes() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=30)
    actual = converge(EMPTY, [intent(backends=hosts(21), ports=[80, 443])], policy)
    want = d.desired([intent(backends=hosts(21), ports=[80])])
    first = planner.diff(want, actual, policy)
    assert commands(first) == ["disable servicegroup dsr-shop_web_443_sg dsr-198.51.100.21 443 -delay 30 -graceful YES"]
    assert [h.reason for h in first.holds] == ["Draining"]
    done = nsmodel.elapse(nsmodel.apply(actual, first, OP_ID))
    assert commands(planner.diff(want, done, policy)) == [
        "unbind servicegroup dsr-shop_web_443_sg dsr-198.51.100.21 443",
        "unbind lb vserver dsr-shop_web_443 dsr-shop_web_443_sg",
        "unbind servicegroup dsr-shop_web_443_sg -monitorName dsr-shop_web_tcp",
        "rm servicegroup dsr-shop_web_443_sg",
        "rm lb vserver dsr-shop_web_443",
    ]


@pytest.mark.parametrize(
    ("bound", "removing", "percent", "removed_now"),
    [
        (2, 1, 30, 1),  # floor(2 x 30 %) = 0: at least one may go
        (2, 2, 30, 1),
        (3, 1, 30, 1),
        (3, 2, 30, 1),
        (3, 2, 49, 1),
        (10, 5, 30, 3),  # floor(10 x 30 %) = 3
        (2, 2, 50, 1),
        (4, 4, 50, 2),
        (4, 1, 1, 1),
        (1, 1, 30, 0),  # the last binding of a wanted vserver: the minimum of one does not apply
        (1, 1, 50, 0),
        (1, 1, 99, 0),
        (1, 1, 100, 1),  # 100 % lets everything go
        (2, 2, 100, 2),
    ],
)
def test_blast_radius_guard_removals_per_pass(bound: int, removing: int, percent: int, removed_now: int) -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=0, default_guard_percent=percent)
    actual = converge(EMPTY, [intent(backends=hosts(*range(1, bound + 1)))], policy)
    want = d.desired([intent(backends=hosts(*range(removing + 1, bound + 1)))])
    plan = planner.diff(want, actual, policy)
    assert len(member_unbinds(plan, "dsr-shop_web_80_sg")) == removed_now
    held = removing - removed_now
    assert [h.reason for h in plan.holds] == (["BlastRadiusGuard"] if held else [])


def test_guard_below_half_with_few_backends_removes_them_over_several_passes() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=0, default_guard_percent=30)
    actual = converge(EMPTY, [intent(backends=hosts(1, 2, 3))], policy)
    want = d.desired([intent(backends=hosts(3))])
    passes = 0
    while not (plan := planner.diff(want, actual, policy)).empty:
        assert len(member_unbinds(plan, "dsr-shop_web_80_sg")) == 1
        actual = nsmodel.apply(actual, plan, OP_ID)
        passes += 1
    assert passes == 2
    assert nsmodel.ours(actual) == nsmodel.ours(want)


def test_deleting_the_dsrservice_is_not_limited_by_the_guard() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=0)
    actual = converge(EMPTY, [intent(backends=hosts(1, 2, 3, 4))], policy)
    after = converge(actual, [], policy, scope=frozenset({"uid-web"}))
    assert after.objects == {} and after.bindings == frozenset()


def test_a_shared_server_stays_while_another_dsrservice_uses_it() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=30, default_guard_percent=100)
    both = [intent("web", hosts(21)), intent("api", hosts(21), vip="192.0.2.11")]
    actual = converge(EMPTY, both, policy)
    assert [s.name for s in actual.of_kind("server")] == ["dsr-198.51.100.21"]
    # web drops the host: its own member drains (api's member of the same host is not touched) ...
    plan = planner.diff(d.desired([intent("web", ()), both[1]]), actual, policy, scope=frozenset({"uid-web"}))
    assert commands(plan) == ["disable servicegroup dsr-shop_web_80_sg dsr-198.51.100.21 80 -delay 30 -graceful YES"]
    # ... and goes; the server stays for api.
    after = converge(actual, [intent("web", ()), both[1]], policy, scope=frozenset({"uid-web"}))
    assert [s.name for s in after.of_kind("server")] == ["dsr-198.51.100.21"]
    assert {(b.parent, b.child) for b in after.bindings if b.kind == ns.MEMBER_BINDING} == {
        ("dsr-shop_api_80_sg", "dsr-198.51.100.21")}
    gone = converge(after, [intent("web", ())], policy, scope=frozenset({"uid-api"}))
    assert gone.of_kind("server") == []


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (
            {"port": 8080},
            {"port": 8080, "throughVip": False},
            [
                "set lb monitor dsr-shop_web_tcp TCP -transparent NO -comment dsr-operator:test:uid-web",
                "unset lb monitor dsr-shop_web_tcp TCP -destIP",
            ],
        ),
        ({"port": 8080}, {}, ["unset lb monitor dsr-shop_web_tcp TCP -destPort"]),
        (
            {"port": 8080},
            {"throughVip": False},
            [
                "set lb monitor dsr-shop_web_tcp TCP -transparent NO -comment dsr-operator:test:uid-web",
                "unset lb monitor dsr-shop_web_tcp TCP -destIP -destPort",
            ],
        ),
        (
            {"throughVip": False},
            {"port": 8080},
            [
                "set lb monitor dsr-shop_web_tcp TCP -destIP 192.0.2.10 -destPort 8080 -transparent YES"
                " -comment dsr-operator:test:uid-web",
            ],
        ),
    ],
)
def test_monitor_fields_no_longer_wanted_are_unset(
    before: dict[str, object], after: dict[str, object], expected: list[str]
) -> None:
    policy = planner.Policy(OP_ID)
    actual = converge(EMPTY, [intent(backends=hosts(21), healthCheck=before)], policy)
    want = d.desired([intent(backends=hosts(21), healthCheck=after)])
    plan = planner.diff(want, actual, policy)
    assert commands(plan) == expected
    done = nsmodel.apply(actual, plan, OP_ID)
    assert nsmodel.ours(done) == nsmodel.ours(want)
    assert planner.diff(want, done, policy).empty


def test_netscaler_reporting_an_unset_monitor_field_as_zero_is_no_change() -> None:
    want = d.desired([intent(backends=(), healthCheck={"throughVip": False})])
    monitor = want.of_kind("lbmonitor")[0]
    record = {**monitor.payload(OP_ID), "destip": "0.0.0.0", "destport": "0"}
    actual = ns.parse_actual({"lbmonitor": [record]}, operator_id=OP_ID, mbf=True)
    assert [op for op in planner.diff(want, actual, planner.Policy(OP_ID)).ops if op.kind == "lbmonitor"] == []


def test_hand_made_object_with_our_name_is_never_touched() -> None:
    foreign = ns.NetScalerState(foreign=frozenset({("lbvserver", "dsr-shop_web_80")}))
    plan = planner.diff(d.desired([intent(backends=hosts(21))]), foreign, planner.Policy(OP_ID))
    assert all(op.name != "dsr-shop_web_80" for op in plan.ops)
    assert [h.reason for h in plan.holds] == ["NameConflict"]


def test_names_stay_valid_and_unique_when_too_long() -> None:
    long_ref = models.ObjectRef(namespace="n" * 63, name="x" * 63, uid="u")
    name = names.vserver(long_ref, 443)
    assert name == f"dsr-{'n' * 63}_{'x' * 63}_443"[:116] + name[-11:]
    assert len(name) == names.MAX_LENGTH and name.startswith("dsr-")
    assert name != names.vserver(long_ref, 8443)
    assert names.service(443, "2001:db8::1") == "dsr-2001:db8::1_443"  # colons are valid in names


def test_vip_conflict_younger_loses() -> None:
    a = models.ObjectRef(namespace="a", name="one", uid="1")
    b = models.ObjectRef(namespace="b", name="two", uid="2")
    conflicts = d.vip_conflicts(
        [
            (b, spec(ports=[80, 443]), "2026-01-02"),
            (a, spec(ports=["*"], healthCheck={"port": 80}), "2026-01-01"),
        ]
    )
    assert [(c.loser.name, c.winner.name) for c in conflicts] == [("two", "one")]


# One namespace: there a VIP's ports may belong to different DsrServices (across namespaces, see below).
ONE = models.ObjectRef(namespace="shop", name="one", uid="1")
TWO = models.ObjectRef(namespace="shop", name="two", uid="2")
THREE = models.ObjectRef(namespace="shop", name="three", uid="3")


def test_vip_conflict_across_namespaces_is_on_the_whole_vip() -> None:
    """A tenant cannot put its vserver on another tenant's VIP, not even on a port that one does not use."""
    mine = models.ObjectRef(namespace="team-b", name="web", uid="b")
    theirs = models.ObjectRef(namespace="team-a", name="squat", uid="a")
    neighbour = models.ObjectRef(namespace="team-b", name="mail", uid="m")
    conflicts = d.vip_conflicts(
        [(mine, spec(ports=[80]), "2026-01-01"), (theirs, spec(ports=[443]), "2026-01-01"),
         (neighbour, spec(ports=[25]), "2026-01-02")],
        holders={"b": [("192.0.2.10", 80)]},
    )
    assert [(c.loser.name, c.winner.name, c.endpoint) for c in conflicts] == [("squat", "web", "192.0.2.10:443")]


def test_vip_conflict_the_holder_on_netscaler_keeps_it_against_an_older_newcomer() -> None:
    # `one` is older but moved onto the VIP:port `two` already serves: `two` keeps it.
    conflicts = d.vip_conflicts(
        [(ONE, spec(ports=[80]), "2026-01-01"), (TWO, spec(ports=[80]), "2026-01-02")],
        holders={"1": [("192.0.2.99", 80)], "2": [("192.0.2.10", 80)]},
    )
    assert [(c.loser.name, c.winner.name, c.endpoint, c.release) for c in conflicts] == [
        ("one", "two", "192.0.2.10:80", ())
    ]


def test_vip_conflict_between_two_holders_the_older_keeps_it_and_the_younger_releases_it() -> None:
    conflicts = d.vip_conflicts(
        [(TWO, spec(ports=[80, 443]), "2026-01-02"), (ONE, spec(ports=[80]), "2026-01-01")],
        holders={"1": [("192.0.2.10", 80)], "2": [("192.0.2.10", 80), ("192.0.2.10", 443)]},
    )
    assert [(c.loser.name, c.winner.name, c.release) for c in conflicts] == [("two", "one", (("192.0.2.10", 80),))]


def test_vip_conflict_a_loser_still_protects_what_it_holds() -> None:
    # `one` holds :443 and adds :80, which `two` holds: `one` loses, keeps :443, and `three` can't take it.
    conflicts = d.vip_conflicts(
        [
            (ONE, spec(ports=[80, 443]), "2026-01-01"),
            (TWO, spec(ports=[80]), "2026-01-02"),
            (THREE, spec(ports=[443]), "2026-01-03"),
        ],
        holders={"1": [("192.0.2.10", 443)], "2": [("192.0.2.10", 80)]},
    )
    assert [(c.loser.name, c.winner.name, c.release) for c in conflicts] == [("one", "two", ()), ("three", "one", ())]


def test_vip_holdings_come_from_the_vservers_on_netscaler() -> None:
    policy = planner.Policy(OP_ID)
    intents = [intent(backends=hosts(21), ports=[80, 443]), intent("any", vip="192.0.2.11", ports=["*"],
                                                                     healthCheck={"port": 80})]
    actual = converge(EMPTY, intents, policy)
    assert d.holdings(actual) == {
        "uid-web": {("192.0.2.10", 80), ("192.0.2.10", 443)},
        "uid-any": {("192.0.2.11", "*")},
    }


def moved(state: ns.NetScalerState, vserver: str, vip: str) -> ns.NetScalerState:
    """NetScaler with a vserver moved onto another VIP (as an unguarded operator once did)."""
    obj = state.get("lbvserver", vserver)
    assert obj is not None
    op = nsops.Op("update", "lbvserver", vserver, obj.owner, {"name": vserver, "ipv46": vip})
    return effects.after(state, [op], OP_ID)


def test_a_vserver_waits_until_another_vserver_has_left_its_vip_port() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=0)
    web, web2 = intent("web", hosts(21)), intent("web2", hosts(21), vip="192.0.2.11")
    actual = converge(EMPTY, [web, web2], policy)
    web_moved = intent("web", hosts(21), vip="192.0.2.11")
    plan = planner.diff(d.desired([web_moved]), actual, policy, frozenset({"uid-web"}))
    assert [op for op in plan.ops if op.kind == "lbvserver"] == []
    assert [(h.owner, h.reason) for h in plan.holds] == [("uid-web", "VipConflict")]
    assert plan.holds[0].message == (
        "192.0.2.11:80 is still held on NetScaler by vserver dsr-shop_web2_80; dsr-shop_web_80 waits for it to leave"
    )
    # web2 goes (its DsrService is deleted): then, and only then, web moves.
    actual = nsmodel.apply(actual, plan, OP_ID)
    actual = nsmodel.apply(actual, planner.diff(EMPTY, actual, policy, frozenset({"uid-web2"})), OP_ID)
    assert commands(planner.diff(d.desired([web_moved]), actual, policy, frozenset({"uid-web"}))) == [
        "set lb vserver dsr-shop_web_80 -IPAddress 192.0.2.11 -comment dsr-operator:test:uid-web"
    ]


def test_a_conflict_loser_drains_and_removes_only_its_vserver_on_the_contested_vip_port() -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=30)
    web = intent("web", hosts(21), ports=[80, 443])
    web2 = intent("web2", hosts(22), vip="192.0.2.11")
    actual = moved(converge(EMPTY, [web, web2], policy), "dsr-shop_web2_80", "192.0.2.10")
    # The winner, already there, goes on as usual; the loser releases the VIP:port.
    assert planner.diff(d.desired([web]), actual, policy, frozenset({"uid-web"})) == planner.Plan(stages=())
    keep = d.released(actual, "uid-web2", {("192.0.2.10", 80)})
    first = planner.diff(keep, actual, policy, frozenset({"uid-web2"}))
    assert commands(first) == ["disable servicegroup dsr-shop_web2_80_sg dsr-198.51.100.22 80 -delay 30 -graceful YES"]
    done = nsmodel.elapse(nsmodel.apply(actual, first, OP_ID))
    assert commands(planner.diff(keep, done, policy, frozenset({"uid-web2"}))) == [
        "unbind servicegroup dsr-shop_web2_80_sg dsr-198.51.100.22 80",
        "unbind lb vserver dsr-shop_web2_80 dsr-shop_web2_80_sg",
        "unbind servicegroup dsr-shop_web2_80_sg -monitorName dsr-shop_web2_tcp",
        "rm servicegroup dsr-shop_web2_80_sg",
        "rm lb vserver dsr-shop_web2_80",
        "rm server dsr-198.51.100.22",
    ]
    # The loser of a port keeps everything else.
    keep_web = d.released(actual, "uid-web", {("192.0.2.10", 80)})
    plan = planner.diff(keep_web, actual, policy, frozenset({"uid-web"}))
    done = nsmodel.elapse(nsmodel.apply(actual, plan, OP_ID))
    done = nsmodel.apply(done, planner.diff(keep_web, done, policy, frozenset({"uid-web"})), OP_ID)
    assert [v.name for v in done.of_kind("lbvserver")] == ["dsr-shop_web2_80", "dsr-shop_web_443"]
    assert planner.diff(keep_web, done, policy, frozenset({"uid-web"})).empty


# --- properties -----------------------------------------------------------------------------------

addresses = st.sampled_from([f"198.51.100.{i}" for i in range(1, 6)])
backend_sets = st.lists(
    st.builds(lambda a, r: d.Backend(a, a, loopback_ready=r), addresses, st.booleans()),
    max_size=4,
    unique_by=lambda b: b.address,
)
port_sets = st.lists(st.sampled_from([80, 443, 8080]), min_size=1, max_size=2, unique=True)


@st.composite
def intent_sets(draw: st.DrawFn) -> list[d.Intent]:
    count = draw(st.integers(min_value=0, max_value=3))
    result = []
    for i in range(count):
        ref = models.ObjectRef(namespace="ns", name=f"svc{i}", uid=f"uid-{i}")
        s = spec(
            vip=f"192.0.2.{i + 1}",
            ports=draw(port_sets),
            lbMethod=draw(st.sampled_from(["ROUNDROBIN", "LEASTCONNECTION"])),
            healthCheck={"type": draw(st.sampled_from(["TCP", "PING"]))},
        )
        result.append(d.Intent(ref, s, tuple(draw(backend_sets))))
    return result


foreign_names = st.lists(
    st.tuples(
        st.sampled_from(["lbvserver", "service", "servicegroup", "server", "lbmonitor"]),
        st.sampled_from(
            [
                "dsr-ns_svc0_80",
                "dsr-ns_svc0_80_sg",
                "dsr-198.51.100.1",
                "dsr-ns_svc1_tcp",
                "dsr-hand-made",
                "dsr-ns_svc0_80_198.51.100.2",
            ]
        ),
    ),
    max_size=3,
)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FREE = planner.Policy(OP_ID, default_guard_percent=100)


@PROPS
@given(before=intent_sets(), after=intent_sets())
def test_plans_converge_to_desired_and_then_plan_nothing(before: list[d.Intent], after: list[d.Intent]) -> None:
    actual = converge(EMPTY, before, FREE)
    final = converge(actual, after, FREE)
    assert nsmodel.ours(final) == nsmodel.ours(d.desired(after)) if after else final.objects == {}
    assert planner.diff(d.desired(after), final, FREE).empty


@PROPS
@given(before=intent_sets(), after=intent_sets())
def test_one_plan_reaches_desired_when_nothing_must_drain(before: list[d.Intent], after: list[d.Intent]) -> None:
    policy = planner.Policy(OP_ID, default_guard_percent=100, default_drain_seconds=0)
    actual = converge(EMPTY, before, policy)
    once = nsmodel.apply(actual, planner.diff(d.desired(after), actual, policy), OP_ID)
    want = d.desired(after)
    assert nsmodel.ours(once) == nsmodel.ours(want) if after else once.objects == {}


@PROPS
@given(intents=intent_sets(), foreign=foreign_names)
def test_no_operation_names_an_object_without_our_marker(intents: list[d.Intent], foreign: list) -> None:
    actual = ns.NetScalerState(foreign=frozenset(foreign))
    plan = planner.diff(d.desired(intents), actual, FREE)
    touched: set[tuple[str, str]] = set()
    for op in plan.ops:
        if op.kind == ns.VSERVER_BINDING:
            touched |= {("lbvserver", op.name), ("service", op.child)}
        elif op.kind == ns.MONITOR_BINDING:
            touched |= {("service", op.name), ("lbmonitor", op.child)}
        elif op.kind == ns.GROUP_BINDING:
            touched |= {("lbvserver", op.name), ("servicegroup", op.child)}
        elif op.kind == ns.GROUP_MONITOR_BINDING:
            touched |= {("servicegroup", op.name), ("lbmonitor", op.child)}
        elif op.kind == ns.MEMBER_BINDING or (op.kind == "servicegroup" and op.child):
            touched |= {("servicegroup", op.name), ("server", op.child)}
        elif op.kind == "service":
            touched |= {("service", op.name), ("server", op.body.get("servername", ""))}
        else:
            touched.add((op.kind, op.name))
    assert not touched & set(foreign)


@PROPS
@given(before=intent_sets(), after=intent_sets())
def test_guard_never_removes_more_than_half_of_a_wanted_vserver(before: list[d.Intent], after: list[d.Intent]) -> None:
    policy = planner.Policy(OP_ID, default_drain_seconds=0)
    actual = converge(EMPTY, before, FREE)
    plan = planner.diff(d.desired(after), actual, policy)
    want = d.desired(after)
    for group in actual.of_kind("servicegroup"):
        if want.get("servicegroup", group.name) is None:
            continue  # no longer wanted (its DsrService or its port is gone): no guard
        bound = [b for b in actual.bindings if b.kind == ns.MEMBER_BINDING and b.parent == group.name]
        gone = [op for op in plan.ops if op.kind == ns.MEMBER_BINDING and op.verb == "unbind" and op.name == group.name]
        assert len(gone) <= max(len(bound) // 2, 1 if len(bound) > 1 else 0)


@PROPS
@given(before=intent_sets(), after=intent_sets())
def test_owners_outside_scope_are_untouched(before: list[d.Intent], after: list[d.Intent]) -> None:
    actual = converge(EMPTY, before, FREE)
    scope = frozenset(i.ref.uid for i in after)
    plan = planner.diff(d.desired(after), actual, FREE, scope)
    for op in plan.ops:
        if op.verb in ("delete", "unbind", "disable") and op.owner != ns.SHARED_OWNER:
            assert op.owner in scope


def legacy(intents: list[d.Intent]) -> ns.NetScalerState:
    """NetScaler as earlier versions left it: one shared service per host and port, bound to each vserver,
    carrying every DsrService's monitor; everything UP."""
    want = d.desired(intents)
    objects = [o for o in want.objects.values() if o.kind != "servicegroup"]
    bindings: set[ns.Binding] = set()
    for i in intents:
        monitor = names.monitor(i.ref, i.spec.health_check.type.value)
        for port in i.spec.ports:
            for b in i.backends:
                service = names.service(port, b.address)
                objects.append(ns.NsObject.make(
                    "service", service, ns.SHARED_OWNER, state="UP", servername=names.server(b.address),
                    servicetype="ANY", port=nsops.nitro_port(port), usip="YES", healthmonitor="YES"))
                bindings.add(ns.Binding(ns.MONITOR_BINDING, service, monitor, i.ref.uid))
                if b.loopback_ready:
                    bindings.add(ns.Binding(ns.VSERVER_BINDING, names.vserver(i.ref, port), service, i.ref.uid, "UP"))
    return ns.NetScalerState.build({(o.kind, o.name): o for o in objects}.values(), bindings, mbf=True)


def test_shared_services_of_earlier_versions_give_way_to_servicegroups_without_losing_a_backend() -> None:
    """An upgrade: the box has two DsrServices sharing a service per host. Each gets its servicegroup with its
    members first; a vserver's binding to a shared service goes only once the same host is UP in its group,
    then the service drains and goes with its monitors. No step leaves a vserver without an UP backend."""
    a = intent("a", hosts(1, 2), vip="192.0.2.1")
    b = intent("b", hosts(1, 2), vip="192.0.2.2", healthCheck={"type": "PING"})
    policy = planner.Policy(OP_ID, default_drain_seconds=5)
    box = legacy([a, b])
    want = d.desired([a, b])
    first = planner.diff(want, box, policy)
    assert not [op for op in first.ops if op.verb in ("unbind", "disable", "delete")]
    assert {(h.owner, h.reason) for h in first.holds} == {("uid-a", "Applying"), ("uid-b", "Applying")}
    box = nsmodel.apply(box, first, OP_ID)
    rounds = 0

    def serving(state: ns.NetScalerState, vserver: str, group: str) -> set[str]:
        old = {x.child for x in state.bindings if x.kind == ns.VSERVER_BINDING and x.parent == vserver
               and (svc := state.get("service", x.child)) is not None and svc.state == "UP"}
        new = {names.service(80, x.child.removeprefix("dsr-")) for x in state.bindings
               if x.kind == ns.MEMBER_BINDING and x.parent == group and x.state == "UP"}
        return old | new

    box = nsmodel.elapse(box)  # the members' first probes
    while not (plan := planner.diff(want, box, policy)).empty:
        box = nsmodel.apply(box, plan, OP_ID)
        for ref in ("a", "b"):
            assert len(serving(box, f"dsr-shop_{ref}_80", f"dsr-shop_{ref}_80_sg")) == 2
        box = nsmodel.elapse(box)
        rounds += 1
        assert rounds < 6
    assert box.of_kind("service") == []
    assert nsmodel.ours(box) == nsmodel.ours(want)


def test_a_shared_service_that_is_down_goes_without_waiting_for_its_member() -> None:
    a = intent("a", hosts(1))
    box = legacy([a])
    service = names.service(80, "198.51.100.1")
    obj = box.get("service", service)
    assert obj is not None
    box = ns.NetScalerState.build([*(o for o in box.objects.values() if o.name != service),
                                   dataclasses.replace(obj, state="DOWN")], box.bindings, mbf=True)
    plan = planner.diff(d.desired([a]), box, planner.Policy(OP_ID, default_drain_seconds=0))
    assert f"unbind lb vserver dsr-shop_a_80 {service}" in commands(plan)
    assert [h.reason for h in plan.holds] == []
