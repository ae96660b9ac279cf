"""What a Service of type LoadBalancer asks for (`lbservices.plan`), as table tests without I/O."""

from __future__ import annotations

from typing import Any

import pytest

from dsr_operator.api import vippool
from dsr_operator.controller import lbservices

CLASS = "dsr.operators.dev/netscaler"
POOL = lbservices.PoolEntry("lab", 1, vippool.Pool("lab", vippool.DsrVipPoolSpec(addresses=["192.0.2.0/29"])), None, {})


def service(**spec: Any) -> lbservices.LbService:
    meta = spec.pop("metadata", {})
    body = {"metadata": {"name": "web", "namespace": "shop", "uid": "u1", **meta},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS, "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80}], **spec}}
    found = lbservices.LbService.of(body)
    assert found is not None
    return found


def context(vips: dict[str, tuple[str, str]] | None = None, dsrservices: tuple[tuple[str, str], ...] = (),
            default: bool = False) -> lbservices.Context:
    return lbservices.Context(CLASS, default, [POOL], {}, vips or {}, frozenset(dsrservices))


def owned(vip: str, *, ready: bool = True, uid: str = "u1", deleting: bool = False,
          why: tuple[str, str] | None = None) -> lbservices.Owned:
    spec = {"vip": vip, "ports": [80], "backends": {"service": "web"}}
    return lbservices.Owned("web", uid, spec, ready, deleting, why)


@pytest.mark.parametrize(("cls", "default", "served"), [
    (CLASS, False, True), ("example.com/other", True, False), (None, False, False), (None, True, True),
])
def test_which_services_are_ours(cls: str | None, default: bool, served: bool) -> None:
    svc = service(loadBalancerClass=cls)
    assert lbservices.serves(svc, CLASS, default) is served
    assert lbservices.serves(svc, "", default) is (served and cls is None)


def test_a_new_service_gets_the_lowest_free_address_and_no_ingress_yet() -> None:
    plan = lbservices.plan(service(), None, context({"192.0.2.1": ("other", "x")}))
    assert plan.allocated == vippool.Allocation("192.0.2.2", "lab")
    assert plan.manifest is not None and plan.manifest["spec"]["vip"] == "192.0.2.2"
    assert plan.ingress == ()


def test_an_owned_dsrservice_keeps_its_vip_and_ingress_follows_ready() -> None:
    ready = lbservices.plan(service(), owned("192.0.2.5"), context())
    assert ready.allocated is None and ready.manifest is not None and ready.manifest["spec"]["vip"] == "192.0.2.5"
    assert ready.ingress == ("192.0.2.5",)
    assert lbservices.plan(service(), owned("192.0.2.5", ready=False), context()).ingress == ()


def test_a_requested_address_someone_else_has_is_refused_and_the_old_one_kept() -> None:
    plan = lbservices.plan(service(loadBalancerIP="192.0.2.3"), owned("192.0.2.5"),
                           context({"192.0.2.3": ("shop", "db")}))
    assert plan.refusal == lbservices.Refusal("AddressInUse", "192.0.2.3 is the VIP of DsrService shop/db")
    assert plan.manifest is None and plan.ingress == ("192.0.2.5",) and not plan.delete


def test_ports_as_one_dsrservice_port_each_and_the_probe_on_a_tcp_port() -> None:
    udp_tcp = service(ports=[{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"},
                             {"port": 5353, "protocol": "UDP"}])
    spec = lbservices.plan(udp_tcp, None, context()).manifest["spec"]  # type: ignore[index]
    assert spec["ports"] == [53, 5353] and spec["healthCheck"] == {"port": 53}
    udp = service(ports=[{"port": 514, "protocol": "UDP"}])
    assert lbservices.plan(udp, None, context()).manifest["spec"]["healthCheck"] == {"type": "PING"}  # type: ignore[index]


@pytest.mark.parametrize(("svc", "existing", "expected"), [
    (None, owned("192.0.2.5"), lbservices.Plan(delete=True)),
    (service(loadBalancerClass="example.com/other"), owned("192.0.2.5"), lbservices.Plan(delete=True)),
    (service(), owned("192.0.2.5", uid="old"), lbservices.Plan(delete=True, condition=lbservices.Condition(
        "False", "Replacing", "DsrService shop/web was made from an earlier Service of this name: replaced"))),
    (service(), owned("192.0.2.5", deleting=True), lbservices.Plan(ingress=(), condition=lbservices.Condition(
        "False", "Deleting", "DsrService shop/web is being deleted: its NetScaler objects go first"))),
    (None, None, lbservices.Plan()),
])
def test_when_the_dsrservice_goes(svc: lbservices.LbService | None, existing: lbservices.Owned | None,
                                  expected: lbservices.Plan) -> None:
    assert lbservices.plan(svc, existing, context()) == expected


def test_a_dsrservice_of_that_name_not_made_from_the_service_is_left_alone() -> None:
    plan = lbservices.plan(service(), None, context(dsrservices=(("shop", "web"),)))
    assert plan.refusal is not None and plan.refusal.reason == "DsrServiceExists" and plan.manifest is None


def test_a_spec_patch_removes_what_the_service_no_longer_asks_for() -> None:
    current = {"vip": "192.0.2.5", "ports": [80], "lbMethod": "ROUNDROBIN", "healthCheck": {"port": 80, "type": "TCP"}}
    wanted = {"vip": "192.0.2.5", "ports": [80, 443], "healthCheck": {"type": "TCP"}}
    patch = lbservices.spec_patch(current, wanted)
    assert patch == {"ports": [80, 443], "lbMethod": None, "healthCheck": {"port": None}}
    assert lbservices.spec_patch(wanted, wanted) is None


FULL = lbservices.PoolEntry("one", 1, vippool.Pool("one", vippool.DsrVipPoolSpec(addresses=["192.0.2.9"])), None, {})


@pytest.mark.parametrize(("svc", "existing", "ctx", "expected"), [
    (service(), None, context(),
     ("False", "Pending", "DsrService shop/web on 192.0.2.1: waiting for the operator to bind it on NetScaler")),
    (service(), owned("192.0.2.5", ready=False, why=("WaitingForLoopback", "0 of 1 nodes hold the VIP")), context(),
     ("False", "WaitingForLoopback", "DsrService shop/web: 0 of 1 nodes hold the VIP")),
    (service(), owned("192.0.2.5"), context(),
     ("True", "Serving", "192.0.2.5 is served through NetScaler (DsrService shop/web)")),
    (service(externalTrafficPolicy="Cluster"), None, context(), ("False", "ExternalTrafficPolicyNotLocal", None)),
    (service(), None, lbservices.Context(CLASS, False, [FULL], {}, {"192.0.2.9": ("other", "x")}, frozenset()),
     ("False", "PoolExhausted", None)),
    (service(loadBalancerClass="example.com/other"), None, context(), None),
])
def test_the_services_condition_says_whether_its_vip_is_served_and_why_not(
        svc: lbservices.LbService, existing: lbservices.Owned | None, ctx: lbservices.Context,
        expected: tuple[str, str, str | None] | None) -> None:
    condition = lbservices.plan(svc, existing, ctx).condition
    if expected is None:
        assert condition is None
        return
    assert condition is not None and (condition.status, condition.reason) == expected[:2]
    if expected[2] is not None:
        assert condition.message == expected[2]
    else:
        assert condition.message  # the refusal's message, as in the event


OTHER = {"type": "example.com/Healthy", "status": "True", "reason": "Fine", "message": "",
         "lastTransitionTime": "2026-01-01T00:00:00Z"}
NOW = "2026-12-03T07:00:00Z"


def with_conditions(*conditions: dict[str, Any]) -> lbservices.LbService:
    body = {"metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS, "ports": [{"port": 80}]},
            "status": {"conditions": list(conditions)}}
    found = lbservices.LbService.of(body)
    assert found is not None
    return found


def test_the_condition_patch_leaves_other_conditions_and_keeps_the_transition_time() -> None:
    pending = lbservices.Condition("False", "Pending", "waiting")
    first = lbservices.condition_patch(with_conditions(), pending, NOW)
    assert first == {"status": {"conditions": [
        {"type": lbservices.CONDITION, "status": "False", "reason": "Pending", "message": "waiting",
         "lastTransitionTime": NOW}]}}
    beside = lbservices.condition_patch(with_conditions(OTHER), pending, NOW)
    assert isinstance(beside, list) and beside[0] == {"op": "test", "path": "/status/conditions", "value": [OTHER]}
    assert beside[1]["op"] == "add" and beside[1]["path"] == "/status/conditions/-"
    ours = {"type": lbservices.CONDITION, "status": "False", "reason": "Pending", "message": "waiting",
            "lastTransitionTime": "2026-12-01T00:00:00Z"}
    assert lbservices.condition_patch(with_conditions(OTHER, ours), pending, NOW) is None  # unchanged: no write
    exhausted = lbservices.condition_patch(with_conditions(OTHER, ours),
                                           lbservices.Condition("False", "PoolExhausted", "no address"), NOW)
    assert isinstance(exhausted, list) and exhausted[0] == {"op": "test", "path": "/status/conditions/1/type",
                                                      "value": lbservices.CONDITION}
    assert exhausted[1]["value"]["lastTransitionTime"] == "2026-12-01T00:00:00Z"  # still False: same transition
    serving = lbservices.condition_patch(with_conditions(OTHER, ours), lbservices.Condition("True", "Serving", "x"),
                                         NOW)
    assert isinstance(serving, list) and serving[1]["value"]["lastTransitionTime"] == NOW
    assert lbservices.condition_patch(with_conditions(OTHER, ours), None, NOW) == [
        {"op": "test", "path": "/status/conditions/1/type", "value": lbservices.CONDITION},
        {"op": "remove", "path": "/status/conditions/1"}]
    assert lbservices.condition_patch(with_conditions(OTHER), None, NOW) is None


def test_a_message_over_the_api_limit_is_cut_once_and_not_written_again() -> None:
    long = lbservices.Condition("False", "PoolExhausted", "x" * 40_000)
    patch = lbservices.condition_patch(with_conditions(), long, NOW)
    assert isinstance(patch, dict)
    stored = patch["status"]["conditions"][0]
    assert len(stored["message"]) == lbservices.MAX_CONDITION_MESSAGE
    assert lbservices.condition_patch(with_conditions(stored), long, NOW) is None
