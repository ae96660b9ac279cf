"""Table tests of `decide()`: a snapshot in, a decision out (no I/O), and the planner's `relevant()`."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsr_operator.controller import decide, world
from dsr_operator.model import state as ns
from dsr_operator.netscaler import executor
from dsr_operator.planner import desired as d
from dsr_operator.planner import effects
from dsr_operator.planner import plan as planner
from tests.unit.test_planner import EMPTY, FREE, OP_ID, converge, intent_sets

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
DEFAULTS = decide.Defaults(OP_ID, drain_seconds=0, guard_percent=100)


def entry(name: str, spec: dict[str, Any], created: str = "2026-01-01T00:00:00Z", namespace: str = "shop",
          **status: Any) -> decide.Entry:
    return decide.Entry.of({"metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "generation": 1,
                                         "creationTimestamp": created}, "spec": spec, "status": status})


def static(vip: str, *hosts: str) -> dict[str, Any]:
    return {"vip": vip, "ports": [80],
            "backends": {"static": [{"name": f"h{i}", "address": h} for i, h in enumerate(hosts)]}}


def snapshot(entries: list[decide.Entry], keys: list[str] | None = None, actual: ns.NetScalerState = EMPTY,
             **kw: Any) -> decide.Snapshot:
    all_entries = {(e.ref.namespace, e.ref.name): e for e in entries}
    batch = frozenset(("shop", k) for k in keys) if keys is not None else frozenset(all_entries)
    fields: dict[str, Any] = {"slices": {}, "nodes": {}, "nodeconfigs": {}, "services": {}, "needs": {}}
    fields.update(kw)
    return decide.Snapshot(keys=batch, entries=all_entries, actual=actual, defaults=DEFAULTS, **fields)


def reasons(decision: decide.Decision) -> dict[str, str | None]:
    return {k[1]: (j.stalled.reason if j.stalled else None) for k, j in decision.judgements.items()}


def test_one_plan_for_the_whole_batch_one_bulk_stage_per_kind() -> None:
    entries = [entry(f"s{i}", static(f"192.0.2.{i}", f"10.0.{i}.1", f"10.0.{i}.2")) for i in range(1, 4)]
    decision = decide.decide(snapshot(entries))
    assert reasons(decision) == {"s1": None, "s2": None, "s3": None}
    steps = [(s.verb, s.kind, len(s.ops)) for s in decision.plan.stages]
    assert steps == [
        ("enable", "nsmode", 1), ("add", "server", 6), ("add", "lbmonitor", 3), ("add", "servicegroup", 3),
        ("bind", "servicegroup_lbmonitor_binding", 3), ("bind", "servicegroup_servicegroupmember_binding", 6),
        ("add", "lbvserver", 3), ("bind", "lbvserver_servicegroup_binding", 3),
    ]
    assert decision.scope == {"uid-s1", "uid-s2", "uid-s3"}


def test_invalid_conflicting_and_waiting_dsrservices_are_judged_and_nothing_is_planned_for_them() -> None:
    entries = [
        entry("good", static("192.0.2.1", "10.0.0.1")),
        entry("bad", {"vip": "nope", "ports": [80], "backends": {"static": []}}),
        entry("late", static("192.0.2.1", "10.0.0.2"), created="2026-02-01T00:00:00Z"),
        entry("lost", {"vip": "192.0.2.3", "ports": [80], "backends": {"service": "missing"}}),
    ]
    decision = decide.decide(snapshot(entries))
    assert reasons(decision) == {"bad": "InvalidSpec", "good": None, "late": "VipConflict", "lost": "ServiceNotFound"}
    assert {op.owner for op in decision.plan.ops} <= {"uid-good", ns.SHARED_OWNER}
    late = decision.judgements[("shop", "late")].stalled
    assert late is not None and "192.0.2.1:80 is already served by DsrService shop/good" in late.message


def test_a_new_node_backend_is_announced_before_it_is_bound() -> None:
    spec = {"vip": "192.0.2.9", "ports": [80], "backends": {"service": "web"}}
    e = entry("web", spec)
    snap = snapshot(
        [e],
        slices={("shop", "web"): [(world.Endpoint("n1", True, True, False),)]},
        nodes={"n1": world.NodeInfo("n1", "uid-n1", (("InternalIP", "198.51.100.1"),))},
        services={("shop", "web"): ("192.0.2.9",)},
    )
    decision = decide.decide(snap)
    assert decision.needs == {("shop", "web"): {"n1": "192.0.2.9"}}
    assert not [op for op in decision.plan.ops if op.kind == ns.VSERVER_BINDING], "bound before the VIP is on n1"
    report = decide.report(decision, effects.after(EMPTY, decision.plan.ops, OP_ID), executor.Outcome((), ()),
                           snap, NOW)
    assert [r.verdict.reason for r in report] == ["WaitingForLoopback"]


def test_a_node_that_refuses_the_vip_is_never_bound_and_the_dsrservice_says_why() -> None:
    spec = {"vip": "198.51.100.2", "ports": [80], "backends": {"service": "web"}}
    why = "refused: 198.51.100.2 is node n2's InternalIP; holding it would cut this node off"
    snap = snapshot(
        [entry("web", spec)],
        slices={("shop", "web"): [(world.Endpoint("n1", True, True, False),)]},
        nodes={"n1": world.NodeInfo("n1", "uid-n1", (("InternalIP", "198.51.100.1"),))},
        nodeconfigs={"n1": world.nodeconfig_info({
            "metadata": {"name": "n1", "generation": 2}, "spec": {"vips": ["198.51.100.2"]},
            "status": {"observedGeneration": 2, "failedVips": [{"address": "198.51.100.2", "error": why}]}})},
        services={("shop", "web"): ("198.51.100.2",)},
    )
    decision = decide.decide(snap)
    assert not [op for op in decision.plan.ops if op.kind == ns.VSERVER_BINDING]
    report = decide.report(decision, effects.after(EMPTY, decision.plan.ops, OP_ID), executor.Outcome((), ()),
                           snap, NOW)
    [row] = report
    assert (row.verdict.reason, row.verdict.stalled) == ("VipRefusedByNode", True)
    assert row.verdict.message == f"node n1 will not hold the VIP: {why}"


def test_the_plan_reads_only_the_part_of_netscaler_the_batch_touches() -> None:
    others = [entry(f"o{i}", static(f"198.18.{i // 250}.{i % 250}", f"10.9.{i // 250}.{i % 250}"))
              for i in range(500)]
    mine = entry("mine", static("192.0.2.1", "10.0.0.1"))
    box = converge(EMPTY, [d.Intent(e.ref, e.spec, d.static_backends(e.spec)) for e in others], FREE)  # type: ignore[arg-type]
    snap = snapshot([*others, mine], keys=["mine"], actual=box)
    decision = decide.decide(snap)
    assert {op.owner for op in decision.plan.ops} <= {"uid-mine", ns.SHARED_OWNER}
    want = d.desired([decision.judgements[("shop", "mine")].intent])  # type: ignore[list-item]
    part = planner.relevant(box, want, {"uid-mine"})
    assert len(box.objects) > 1000 and len(part.objects) == 0 and not part.bindings


def test_a_failure_on_a_shared_object_is_reported_to_the_dsrservices_that_use_it() -> None:
    entries = [entry("a", static("192.0.2.1", "10.0.0.1")), entry("b", static("192.0.2.2", "10.0.0.1"))]
    snap = snapshot(entries)
    decision = decide.decide(snap)
    server_add = next(op for op in decision.plan.ops if op.kind == "server")
    from dsr_operator.netscaler import errors

    outcome = executor.Outcome(
        tuple(op for op in decision.plan.ops if op is not server_add),
        (executor.Failure(server_add, errors.NitroError("refused")),),
    )
    reports = {r.key[1]: r for r in decide.report(decision, EMPTY, outcome, snap, NOW)}
    assert reports["a"].failures and reports["b"].failures
    assert reports["a"].verdict.reason == reports["b"].verdict.reason == "NetScalerRejected"


PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(before=intent_sets(), after=intent_sets(), keep=st.sets(st.sampled_from(["uid-0", "uid-1", "uid-2"])))
def test_a_plan_against_the_relevant_part_equals_the_plan_against_the_whole_box(
    before: list[d.Intent], after: list[d.Intent], keep: set[str]
) -> None:
    """Same scope, same plan; the whole-box plan may only add the sweep of unused shared objects."""
    actual = converge(EMPTY, before, FREE)
    wanted = [i for i in after if i.ref.uid not in keep]
    scope = frozenset({i.ref.uid for i in [*before, *after]} - keep)
    want = d.desired(wanted)
    narrow = planner.diff(want, planner.relevant(actual, want, scope), FREE, scope)
    whole = planner.diff(want, actual, FREE, scope)
    assert set(narrow.ops) <= set(whole.ops)
    extra = set(whole.ops) - set(narrow.ops)
    assert all(op.verb == "delete" and op.owner == ns.SHARED_OWNER for op in extra), extra


def test_vips_are_compared_in_canonical_form() -> None:
    """`2001:db8::a` and `2001:0DB8:0000::000A` are one VIP: a conflict, not two vservers NITRO would refuse."""
    entries = [entry("first", static("2001:db8::a", "2001:db8::1")),
               entry("second", static("2001:0DB8:0000::000A", "2001:db8::2"), created="2026-02-01T00:00:00Z")]
    decision = decide.decide(snapshot(entries))
    assert reasons(decision) == {"first": None, "second": "VipConflict"}
    vservers = [op for op in decision.plan.ops if op.kind == "lbvserver"]
    assert [op.owner for op in vservers] == ["uid-first"]


def test_a_vip_that_is_a_host_s_address_is_not_allowed() -> None:
    """NetScaler answers ARP for a VIP: on a backend's or a node's own address it would take its traffic."""
    entries = [entry("victim", static("192.0.2.1", "10.0.0.5")),
               entry("thief", static("10.0.0.5", "10.0.0.6")),
               entry("node", static("198.51.100.1", "10.0.0.7"))]
    snap = snapshot(entries, nodes={"n1": world.NodeInfo("n1", "uid-n1", (("InternalIP", "198.51.100.1"),))})
    decision = decide.decide(snap)
    assert reasons(decision) == {"victim": None, "thief": "VipNotAllowed", "node": "VipNotAllowed"}
    thief = decision.judgements[("shop", "thief")].stalled
    assert thief is not None and thief.message.startswith(
        "10.0.0.5 is a backend of DsrService shop/victim: NetScaler would answer for it")
    assert {op.owner for op in decision.plan.ops} <= {"uid-victim", ns.SHARED_OWNER}


def test_a_huge_dsrservice_goes_in_steps_and_never_holds_back_a_small_one() -> None:
    """At most `step_ops` changes of one DsrService per batch; the small one's change is whole in the first."""
    import dataclasses

    big = entry("big", {"vip": "192.0.2.50", "ports": list(range(8000, 8010)),
                        "backends": {"static": [{"name": f"h{i}", "address": f"10.5.0.{i}"} for i in range(1, 31)]}})
    small = entry("small", static("192.0.2.51", "10.6.0.1"))
    defaults = dataclasses.replace(DEFAULTS, step_ops=50)
    box, steps = EMPTY, 0
    while True:
        snap = dataclasses.replace(snapshot([big, small], actual=box), defaults=defaults)
        decision = decide.decide(snap)
        per_owner: dict[str, int] = {}
        for op in decision.plan.ops:
            for uid in decide.owner_of(op, decision.users):
                per_owner[uid] = per_owner.get(uid, 0) + 1
        assert per_owner.get("uid-big", 0) <= 50, per_owner
        if steps == 0:  # the small one is not behind the big one: all of it is in the first batch
            alone = decide.decide(snapshot([small])).plan.ops
            assert {(o.verb, o.kind, o.name) for o in alone} <= {(o.verb, o.kind, o.name) for o in decision.plan.ops}
        applying = [h for h in decision.plan.holds if h.reason == "Applying"]
        box = effects.after(box, decision.plan.ops, OP_ID, strict=True)  # strict: each step is a valid state
        steps += 1
        if not applying:
            break
        assert [h.owner for h in applying] == ["uid-big"] and applying[0].retry_after == 0.0
        assert steps < 50
    whole = effects.after(EMPTY, decide.decide(snapshot([big, small])).plan.ops, OP_ID)
    assert steps > 5 and box.objects == whole.objects and box.bindings == whole.bindings


def _stopped_between_stages(box: ns.NetScalerState, plan: planner.Plan, stop_before: tuple[str, str]
                            ) -> ns.NetScalerState:
    """The box after `plan` ran up to (not including) the stage `stop_before`: a killed operator, a 5xx."""
    from tests.unit import nsmodel

    kept = []
    for stage in plan.stages:
        if (stage.verb, stage.kind) == stop_before:
            break
        kept.append(stage)
    return nsmodel.apply(box, planner.Plan(tuple(kept)), OP_ID)


def test_a_removal_stopped_between_unbind_and_delete_leaves_nothing_behind_after_the_next_batch() -> None:
    """A backend removed, its member unbound, then the operator stopped before deleting its server: no owner
    refers to it any more, and the next batch, even one for another DsrService, deletes it."""
    web = entry("web", static("192.0.2.1", "10.0.0.1"))
    other = entry("other", static("192.0.2.2", "10.0.0.2"))
    box = decide_until_converged([web, other])
    moved = entry("web", {**static("192.0.2.1", "10.0.0.9")})
    plan = decide.decide(snapshot([moved, other], keys=["web"], actual=box)).plan
    box = _stopped_between_stages(box, plan, ("delete", "server"))
    assert {o.name for o in box.unused_shared()} == {"dsr-10.0.0.1"}
    # The next batch is for the other DsrService only: the leftover server goes.
    changed = entry("other", {**static("192.0.2.2", "10.0.0.2"), "lbMethod": "LEASTCONNECTION"})
    ops = decide.decide(snapshot([moved, changed], keys=["other"], actual=box)).plan.ops
    assert [(op.verb, op.name) for op in ops if op.kind == "server"] == [("delete", "dsr-10.0.0.1")]


def test_a_shared_service_of_an_earlier_version_left_unbound_is_swept() -> None:
    web = entry("web", static("192.0.2.1", "10.0.0.1"))
    box = decide_until_converged([web])
    loose = ns.NsObject.make("service", "dsr-10.0.0.8_80", ns.SHARED_OWNER, servername="dsr-10.0.0.8",
                             servicetype="ANY", port=80, usip="YES", healthmonitor="YES")
    server = ns.NsObject.make("server", "dsr-10.0.0.8", ns.SHARED_OWNER, ipaddress="10.0.0.8")
    box = ns.NetScalerState.build([*box.objects.values(), loose, server], box.bindings, mbf=True)
    changed = entry("web", {**static("192.0.2.1", "10.0.0.1"), "lbMethod": "LEASTCONNECTION"})
    ops = {(op.verb, op.kind, op.name) for op in decide.decide(snapshot([changed], actual=box)).plan.ops}
    assert {("delete", "service", "dsr-10.0.0.8_80"), ("delete", "server", "dsr-10.0.0.8")} <= ops


def test_an_unused_service_another_dsrservice_may_still_want_is_left_to_it() -> None:
    """Unbound services that a DsrService outside the batch could want (its port on one of its hosts, or on a
    node for a Service-backed one) are not swept: that one binds them itself."""
    web = entry("web", static("192.0.2.1", "10.0.0.1"))
    box = decide_until_converged([web])
    loose = ns.NsObject.make("service", "dsr-10.0.0.7_80", ns.SHARED_OWNER, servername="dsr-10.0.0.7",
                             servicetype="ANY", port=80, usip="YES", healthmonitor="YES")
    node_loose = ns.NsObject.make("service", "dsr-10.0.5.1_443", ns.SHARED_OWNER, servername="dsr-10.0.5.1",
                                  servicetype="ANY", port=443, usip="YES", healthmonitor="YES")
    servers = [ns.NsObject.make("server", f"dsr-{a}", ns.SHARED_OWNER, ipaddress=a) for a in ("10.0.0.7", "10.0.5.1")]
    box = ns.NetScalerState.build([*box.objects.values(), loose, node_loose, *servers], box.bindings, mbf=True)
    wants_it = entry("later", static("192.0.2.3", "10.0.0.7"))
    by_service = entry("svc", {"vip": "192.0.2.4", "ports": [443], "backends": {"service": "web"}})
    node = world.NodeInfo("n1", "uid-n1", (("InternalIP", "10.0.5.1"),))
    snap = snapshot([web, wants_it, by_service], keys=["web"], actual=box, nodes={"n1": node})
    assert decide.unwanted_leftovers(snap, EMPTY) == ()
    # Without them, both go (and their servers with them).
    snap = snapshot([web], keys=["web"], actual=box, nodes={"n1": node})
    assert {o.name for o in decide.unwanted_leftovers(snap, EMPTY)} == {
        "dsr-10.0.0.7_80", "dsr-10.0.5.1_443"}
    ops = {(op.verb, op.kind, op.name) for op in decide.decide(snap).plan.ops}
    assert {("delete", "service", "dsr-10.0.0.7_80"), ("delete", "server", "dsr-10.0.0.7"),
            ("delete", "service", "dsr-10.0.5.1_443"), ("delete", "server", "dsr-10.0.5.1")} <= ops


def decide_until_converged(entries: list[decide.Entry]) -> ns.NetScalerState:
    from tests.unit import nsmodel

    box = EMPTY
    for _ in range(6):
        plan = decide.decide(snapshot(entries, actual=box)).plan
        if plan.empty:
            return box
        box = nsmodel.elapse(nsmodel.apply(box, plan, OP_ID))
    raise AssertionError("did not converge in 6 rounds")


def test_with_netscaler_unreachable_a_vip_conflict_is_not_judged() -> None:
    """Who holds a VIP:port is on NetScaler: decided without it, the older DsrService that moved onto the
    younger's VIP would win and the younger, which serves it, would read VipConflict until the next resync.
    Unreachable, both say so (and come back when NetScaler answers); what needs no NetScaler is reported."""
    older = entry("older", static("192.0.2.8", "10.0.0.3"), created="2026-01-01T00:00:00Z")
    younger = entry("younger", static("192.0.2.9", "10.0.0.6"), created="2026-01-01T00:00:01Z")
    box = decide_until_converged([older, younger])
    moved = entry("older", static("192.0.2.9", "10.0.0.3"), created="2026-01-01T00:00:00Z")
    broken = entry("broken", {"vip": "192.0.2.10", "ports": [80, 80], "backends": {"static": []}})
    reachable = decide.decide(snapshot([moved, younger, broken], actual=box))
    assert reasons(reachable) == {"older": "VipConflict", "younger": None, "broken": "InvalidSpec"}
    blind = decide.decide(snapshot([moved, younger, broken], actual=EMPTY))  # what the unreachable path has
    reports = {r.key[1]: r.verdict.reason
               for r in decide.unreachable(blind, "NetScalerUnreachable", "connection refused", NOW)}
    assert reports == {"older": "NetScalerUnreachable", "younger": "NetScalerUnreachable", "broken": "InvalidSpec"}


def test_with_pools_required_a_vip_outside_every_pool_that_admits_the_namespace_is_refused() -> None:
    from dsr_operator.api import vippool

    def pool(name: str, *addresses: str, **fields: Any) -> vippool.Pool:
        return vippool.Pool(name, vippool.DsrVipPoolSpec.model_validate({"addresses": list(addresses), **fields}))

    pools = [pool("shop", "192.0.2.0/28", avoidAddresses=["192.0.2.9"],
                  namespaceSelector={"matchLabels": {"team": "shop"}}),
             pool("other", "192.0.2.64/28", namespaceSelector={"matchLabels": {"team": "other"}})]
    entries = [entry("inside", static("192.0.2.5", "10.0.0.5")), entry("avoided", static("192.0.2.9", "10.0.0.6")),
               entry("theirs", static("192.0.2.70", "10.0.0.7")), entry("nowhere", static("203.0.113.1", "10.0.0.8"))]
    decision = decide.decide(snapshot(entries, vip_pools=pools, namespace_labels={"shop": {"team": "shop"}}))
    assert reasons(decision) == {"inside": None, "avoided": "VipNotAllowed", "theirs": "VipNotAllowed",
                                 "nowhere": "VipNotAllowed"}
    messages = {k[1]: j.stalled.message for k, j in decision.judgements.items() if j.stalled is not None}
    assert messages["theirs"].startswith("192.0.2.70 is in DsrVipPool other, whose namespaceSelector excludes")
    assert messages["nowhere"].startswith("203.0.113.1 is in no usable DsrVipPool: this operator serves a VIP")
    assert {op.owner for op in decision.plan.ops} <= {"uid-inside", ns.SHARED_OWNER}
    # Without the requirement (the operator's default), the same VIPs are served.
    assert set(reasons(decide.decide(snapshot(entries))).values()) == {None}


def test_a_static_backend_address_belongs_to_one_namespace_at_a_time() -> None:
    """A tenant listing another namespace's backend with a failing health check would take it down
    (one NetScaler service per address and port): the one holding the address on NetScaler keeps it."""
    victim = entry("web", static("192.0.2.1", "10.0.0.5", "10.0.0.6"), created="2026-03-01T00:00:00Z",
                   namespace="team-b")
    box = converge(EMPTY, [d.Intent(victim.ref, victim.spec, d.static_backends(victim.spec))], FREE)  # type: ignore[arg-type]
    thief = entry("thief", {**static("192.0.2.2", "10.0.0.5"), "healthCheck": {"type": "TCP", "port": 9}},
                  created="2026-01-01T00:00:00Z", namespace="team-a")  # older, but team-b holds the address
    neighbour = entry("api", static("192.0.2.3", "10.0.0.6"), namespace="team-b")  # same namespace: shared
    snap = snapshot([victim, thief, neighbour], actual=box)
    snap = dataclasses.replace(snap, keys=frozenset(snap.entries))
    decision = decide.decide(snap)
    assert reasons(decision) == {"web": None, "thief": "BackendNotAllowed", "api": None}
    stalled = decision.judgements[("team-a", "thief")].stalled
    assert stalled is not None and stalled.message.startswith(
        "10.0.0.5 is a backend of DsrService team-b/web: a backend address belongs to one namespace at a time")
    assert "uid-thief" not in {op.owner for op in decision.plan.ops}
    # Nobody holds it yet: the older claim wins.
    fresh = decide.decide(dataclasses.replace(snap, actual=EMPTY))
    assert reasons(fresh) == {"web": "BackendNotAllowed", "thief": None, "api": None}


def test_a_spec_is_parsed_once_per_generation_and_again_when_it_changes() -> None:
    specs = decide.Specs()

    def body(generation: int, spec: dict[str, Any], **status: Any) -> dict[str, Any]:
        return {"metadata": {"namespace": "shop", "name": "web", "uid": "uid-web", "generation": generation},
                "spec": spec, "status": status}

    first = decide.Entry.of(body(1, static("10.0.0.1", "10.1.0.1")), specs)
    # A status write (same generation) keeps the parsed spec; the status is read afresh.
    again = decide.Entry.of(body(1, static("10.0.0.1", "10.1.0.1"), observedGeneration=1), specs)
    assert again.spec is first.spec
    assert again.status == {"observedGeneration": 1}
    changed = decide.Entry.of(body(2, static("10.0.0.2", "10.1.0.1")), specs)
    assert changed.spec is not None and changed.spec.vip == "10.0.0.2"
    broken = decide.Entry.of(body(3, {"vip": "10.0.0.2", "ports": [65535]}), specs)
    assert broken.spec is None and broken.error and "65534" in broken.error
    specs.forget("uid-web")
    assert decide.Entry.of(body(3, static("10.0.0.3", "10.1.0.1")), specs).spec is not None
