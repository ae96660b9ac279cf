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


def owned(vip: str, *, ready: bool = True, uid: str = "u1", deleting: bool = False) -> lbservices.Owned:
    spec = {"vip": vip, "ports": [80], "backends": {"service": "web"}}
    return lbservices.Owned("web", uid, spec, ready, deleting)


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
    (service(), owned("192.0.2.5", uid="old"), lbservices.Plan(delete=True)),
    (service(), owned("192.0.2.5", deleting=True), lbservices.Plan(ingress=())),
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
