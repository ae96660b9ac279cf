"""CustomResourceDefinitions generated from the pydantic models (`dsr-operator crd`).

Pydantic's JSON Schema is turned into a Kubernetes structural schema: references inlined,
optional fields made plain, `*`-or-port as int-or-string, and CEL rules (`x-kubernetes-validations`)
for what spans fields or what OpenAPI cannot say (an IPv4-or-IPv6 address, exactly one backend kind).
The committed files in crds/ must equal this output; a test checks it.
"""

from __future__ import annotations

import copy
from typing import Any

import pydantic
import yaml

from dsr_operator.api import models, vippool

_CEL: dict[str, list[dict[str, str]]] = {
    "Backends": [
        {
            "rule": "(has(self.service) ? 1 : 0) + (has(self.static) ? 1 : 0) + (has(self.registry) ? 1 : 0) == 1",
            "message": "exactly one of backends.service, backends.static and backends.registry must be set",
        },
        {
            # Textual comparison: the operator compares canonical forms too (InvalidSpec for `::a` vs `::0a`).
            "rule": "!has(self.static) || self.static.all(b, self.static.exists_one(c, c.address == b.address))",
            "message": "backends.static lists an address more than once",
        },
    ],
    "HealthCheck": [
        {
            "rule": "!has(self.timeoutSeconds) || !has(self.intervalSeconds) || "
            "self.timeoutSeconds < self.intervalSeconds",
            "message": "healthCheck.timeoutSeconds must be less than healthCheck.intervalSeconds",
        },
    ],
    "DsrServiceSpec": [
        {
            "rule": "size(self.ports) != 1 || type(self.ports[0]) == int || (has(self.healthCheck) && "
            "((has(self.healthCheck.type) && self.healthCheck.type == 'PING') || "
            "has(self.healthCheck.port)))",
            "message": 'healthCheck.port is required when ports is ["*"] and healthCheck.type is TCP',
        },
        {
            "rule": "size(self.ports) == 1 || self.ports.all(p, type(p) == int)",
            "message": '"*" already covers every port; list it alone',
        },
        {
            "rule": "!has(self.backends.static) || !isIP(self.vip) || self.backends.static.all(b, "
            "!isIP(b.address) || ip(b.address).family() == ip(self.vip).family())",
            "message": "backends.static addresses must be in the VIP's address family",
        },
    ],
    "SelectorRequirement": [
        {
            "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : "
            "(!has(self.values) || size(self.values) == 0)",
            "message": "In and NotIn need values; Exists and DoesNotExist take none",
        },
    ],
}
_IP_RULE = [{"rule": "isIP(self)", "message": "must be an IPv4 or IPv6 address"}]
_UNICAST_RULE = [
    *_IP_RULE,
    {
        # What a host can hold and NetScaler can send to (models.unicast says the same in Python): IPv4
        # global unicast (not 0.0.0.0, 127/8, 169.254/16, 224/4, 240/4 or the broadcast), IPv6 global unicast
        # or unique local (2000::/3, fc00::/7).
        "rule": "!isIP(self) || (ip(self).isGlobalUnicast() && (ip(self).family() == 4 ? "
        "!cidr('240.0.0.0/4').containsIP(self) : "
        "(cidr('2000::/3').containsIP(self) || cidr('fc00::/7').containsIP(self))))",
        "message": "must be a unicast address a host can hold "
        "(not unspecified, loopback, link-local, multicast, broadcast or reserved)",
    },
]
_POOL_ENTRY_RULE = [
    {
        # The shape only; which addresses a VIP can be, and overlaps, are checked by the operator (Ready=False).
        "rule": "isIP(self) || isCIDR(self) || (size(self.split('-')) == 2 && "
        "self.split('-').all(p, isIP(p)) && ip(self.split('-')[0]).family() == ip(self.split('-')[1]).family())",
        "message": "must be an IP address, a CIDR (192.0.2.0/28) or a range first-last (192.0.2.10-192.0.2.20)",
    }
]
_PORT_RULE = [
    {
        "rule": "type(self) == string ? self == '*' : (self >= 1 && self <= 65534)",
        "message": 'a port is 1-65534, or "*" for every port (on NetScaler 65535 would mean every port)',
    }
]


def _structural(node: Any, defs: dict[str, Any], name: str | None = None) -> Any:
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[ref]), **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs, ref)
    options = node.get("anyOf")
    if options is not None:
        non_null = [o for o in options if o.get("type") != "null"]
        kinds = {o.get("type") for o in non_null if "$ref" not in o}
        if len(non_null) == 2 and kinds == {"integer", "string"}:
            # maxLength bounds the cost of the CEL rule (it only applies to the string form, "*"). It is
            # a port name's limit (15) so that a name such as "http" gets the rule's message, not "Too long".
            out: dict[str, Any] = {"x-kubernetes-int-or-string": True, "maxLength": 15,
                                   "x-kubernetes-validations": _PORT_RULE}
            if "description" in node:
                out["description"] = " ".join(str(node["description"]).split())
            return out
        if len(non_null) == 1:
            rest = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
            return _structural({**non_null[0], **rest}, defs, name)
        raise ValueError(f"cannot express anyOf {options} structurally")
    out = {}
    for key, value in node.items():
        if key in ("title", "$defs", "additionalProperties") and not (
            key == "additionalProperties" and value
        ):
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            out[key] = _structural(value, defs) if isinstance(value, dict) else value
        elif key == "default" and value is None:
            continue
        elif key == "default" and isinstance(value, dict):
            out[key] = _without_none(value)
        elif key == "const":
            out["enum"] = [value]
            out.setdefault("type", "string")
        elif key == "description":
            out[key] = " ".join(str(value).split())
        else:
            out[key] = value
    if name in _CEL:
        out["x-kubernetes-validations"] = _CEL[name]
    return out


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs, model.__name__)
    return schema


def _mark_ips(schema: dict[str, Any], paths: list[list[str]]) -> None:
    for path in paths:
        node = schema
        for part in path:
            node = node["items"] if part == "[]" else node["properties"][part]
        node["x-kubernetes-validations"] = _UNICAST_RULE
        node["maxLength"] = 45


def _status_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
    """The status as documentation for `kubectl explain` and a type check of what is written.

    Unknown fields are kept (never pruned), nothing is defaulted and no CEL rule runs: the writer's
    document is what is stored (and status lists carry no maxItems that a CEL cost estimate would need).
    """
    status: dict[str, Any] = _without(_schema(model), {"default", "x-kubernetes-validations"})
    status["x-kubernetes-preserve-unknown-fields"] = True
    return status


def _without(node: Any, keys: set[str]) -> Any:
    if isinstance(node, dict):
        return {k: _without(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [_without(v, keys) for v in node]
    return node


def dsrservice_crd() -> dict[str, Any]:
    spec = _schema(models.DsrServiceSpec)
    _mark_ips(spec, [["vip"], ["backends", "static", "[]", "address"]])
    status = _status_schema(models.DsrServiceStatus)
    # A DsrService the operator has not acted on yet reads `observedGeneration: 0` < generation, so kstatus
    # (kubectl wait, Flux, Argo CD, cli-utils) calls it InProgress, not Current (no conditions at all).
    status["default"] = {"observedGeneration": 0}
    return _crd(
        kind=models.SERVICE_KIND,
        plural=models.SERVICE_PLURAL,
        scope="Namespaced",
        short=["dsrsvc"],
        spec=spec,
        status=status,
        description="A VIP load-balanced by NetScaler with Direct Server Return to its backends.",
        columns=[
            {"name": "VIP", "type": "string", "jsonPath": ".spec.vip"},
            # A JSONPath cannot join a list, so the operator writes the ports as one string: status.portsText =
            # spec.ports_text (to be written with the rest of the status by the batched reconcile loop).
            {"name": "Ports", "type": "string", "jsonPath": ".status.portsText"},
            {"name": "Bound", "type": "integer", "jsonPath": ".status.backends.bound"},
            {"name": "Desired", "type": "integer", "jsonPath": ".status.backends.desired"},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def dsrnodeconfig_crd() -> dict[str, Any]:
    spec = _schema(models.NodeConfigSpec)
    spec["properties"]["vips"]["items"]["x-kubernetes-validations"] = _IP_RULE
    spec["properties"]["vips"]["items"]["maxLength"] = 45
    spec["properties"]["vips"]["x-kubernetes-list-type"] = "set"
    return _crd(
        kind=models.NODECONFIG_KIND,
        plural=models.NODECONFIG_PLURAL,
        scope="Cluster",
        short=["dsrnode"],
        spec=spec,
        status=_status_schema(models.NodeConfigStatus),
        description="The VIPs one node must hold on its loopback; its status is written by the node agent.",
        columns=[
            {"name": "VIPs", "type": "string", "jsonPath": ".spec.vips"},
            {"name": "Applied", "type": "integer", "jsonPath": ".status.appliedCount"},
            {"name": "Failed", "type": "integer", "jsonPath": ".status.failedCount"},
            {"name": "Mode", "type": "string", "jsonPath": ".status.mode"},
            {"name": "RP-Filter", "type": "integer", "jsonPath": ".status.rpFilterMax",
             "description": "the strictest rp_filter on the node (1 = strict, may drop VIP traffic)"},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def dsrvippool_crd() -> dict[str, Any]:
    spec = _schema(vippool.DsrVipPoolSpec)
    for field in ("addresses", "avoidAddresses"):
        spec["properties"][field]["items"]["x-kubernetes-validations"] = _POOL_ENTRY_RULE
    spec["properties"]["addresses"]["x-kubernetes-list-type"] = "set"
    status = _status_schema(vippool.DsrVipPoolStatus)
    status["default"] = {"observedGeneration": 0}
    return _crd(
        kind=vippool.POOL_KIND,
        plural=vippool.POOL_PLURAL,
        scope="Cluster",
        short=["dsrpool"],
        spec=spec,
        status=status,
        description="Addresses Services of type LoadBalancer get their VIP from.",
        columns=[
            {"name": "Addresses", "type": "string", "jsonPath": ".spec.addresses"},
            # A decimal string: an IPv6 pool can hold more than an int64 counts.
            {"name": "Total", "type": "string", "jsonPath": ".status.addressesTotal"},
            {"name": "Used", "type": "integer", "jsonPath": ".status.addressesUsed"},
            {"name": "Auto-Assign", "type": "boolean", "jsonPath": ".spec.autoAssign", "priority": 1},
            {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def _crd(
    *,
    kind: str,
    plural: str,
    scope: str,
    short: list[str],
    spec: dict[str, Any],
    status: dict[str, Any],
    description: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": scope,
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
                "shortNames": short,
                "categories": ["dsr"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> dict[str, str]:
    """File name → YAML text of each CRD."""
    header = "# Generated by `dsr-operator crd` from operator/dsr_operator/api/{}.py; do not edit.\n"
    return {
        "dsrservice.yaml": header.format("models") + yaml.dump(dsrservice_crd(), Dumper=_Dumper, sort_keys=False),
        "dsrnodeconfig.yaml": header.format("models")
        + yaml.dump(dsrnodeconfig_crd(), Dumper=_Dumper, sort_keys=False),
        "dsrvippool.yaml": header.format("vippool") + yaml.dump(dsrvippool_crd(), Dumper=_Dumper, sort_keys=False),
    }
