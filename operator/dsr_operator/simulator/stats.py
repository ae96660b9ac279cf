"""NITRO statistics of the simulator: `/nitro/v1/stat/lbvserver`, `/stat/service`, `/stat/servicegroup`,
`/stat/servicegroupmember`, `/stat/hanode` (pure).

`servicegroupmember` takes its member in `args` (`servicegroupname`, `servername` or `ip`, `port`) and
answers the fields of a service's stat; a vserver's figures count the members of its bound groups
as they count its services.

Field names are those of the NITRO stat reference, the ones monitoring tools read (check_netscaler's
`state` and `hastatus`, Prometheus exporters). As on the appliance, counters are JSON strings and
rates numbers. What a simulator cannot know (bytes,
requests, response times) is 0; what it can is real: state, health, active services, client
connections (`Store.clients`), and, when the dataplane runs, packets and flows (`Traffic`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dsr_operator.simulator import nitro
from dsr_operator.simulator.nitro.queries import Traffic as Traffic

Record = dict[str, Any]

STAT_TYPES = ("lbvserver", "service", "servicegroup", "servicegroupmember", "hanode")


def _zeros(*names: str) -> Record:
    return dict.fromkeys(names, "0")


def _backend(name: str, ip: str, port: Any, clients: int, traffic: Traffic) -> Record:
    """The figures a service and a service-group member share: address, connections, hits."""
    return {
        "primaryipaddress": ip,
        "primaryport": port,
        "curclntconnections": str(clients),
        "cursrvrconnections": str(clients),  # DSR: one server-side flow per client flow
        "svrestablishedconn": str(clients),
        "vsvrservicehits": str(traffic.new_flows.get(name, 0)),
        "totalrequests": "0", "requestsrate": 0, "totalresponses": "0", "responsesrate": 0,
        "throughputrate": 0,
    }  # fmt: skip


def service(model: nitro.Store, obj: Record, traffic: Traffic) -> Record:
    name = obj["name"]
    clients = model.clients.get(name, 0)
    return {
        "name": name,
        "state": model.svrstate(obj),
        "servicetype": obj["servicetype"],
        **_backend(name, obj["ipaddress"], obj["port"], clients, traffic),
        "maxclients": str(int(obj.get("maxclient", 0) or 0)),
        **_zeros("throughput", "avgsvrttfb", "totalrequestbytes", "totalresponsebytes", "curload", "surgecount",
                 "activetransactions"),
    }  # fmt: skip


def servicegroupmember(model: nitro.Store, obj: Record, traffic: Traffic) -> Record:
    name = nitro.member_name(obj)
    group = model.objects["servicegroup"][(obj["servicegroupname"],)]
    clients = model.clients.get(name, 0)
    return {
        "servicegroupname": obj["servicegroupname"],
        "servername": obj["servername"],
        "port": obj["port"],
        "state": model.member_state(obj),
        "servicetype": group["servicetype"],
        **_backend(name, obj["ip"], obj["port"], clients, traffic),
        **_zeros("throughput", "avgsvrttfb", "totalrequestbytes", "totalresponsebytes", "surgecount"),
    }  # fmt: skip


def servicegroup(model: nitro.Store, obj: Record, traffic: Traffic) -> Record:
    return {
        "servicegroupname": obj["servicegroupname"],
        "state": model.group_state(obj),
        "servicetype": obj["servicetype"],
        **_zeros("totalrequests", "totalresponses", "totalrequestbytes", "totalresponsebytes", "surgecount"),
    }


def lbvserver(model: nitro.Store, obj: Record, traffic: Traffic) -> Record:
    name = obj["name"]
    runtime = model.render("lbvserver", obj)
    bound = [backend for backend, _, _, _ in model.vserver_backends(name)]
    clients = sum(model.clients.get(b, 0) for b in bound)
    hits = sum(traffic.new_flows.get(b, 0) for b in bound)
    forwarded = sum(traffic.forwarded_packets.get(b, 0) for b in bound)
    active = int(runtime["activeservices"])
    return {
        "name": name,
        "state": runtime["curstate"],
        "type": obj["servicetype"],
        "primaryipaddress": obj.get("ipv46", "0.0.0.0"),
        "primaryport": obj.get("port", 0),
        "vslbhealth": runtime["health"],
        "actsvcs": str(active),
        "inactsvcs": str(len(bound) - active),
        "curclntconnections": str(clients),
        "cursrvrconnections": str(clients),
        "establishedconn": str(clients),
        "tothits": str(hits),
        "hitsrate": 0, "requestsrate": 0, "responsesrate": 0,
        "totalpktsrecvd": str(traffic.vserver_packets.get(name, 0)),
        "totalpktssent": str(forwarded),  # DSR: the box forwards the client's packets, never the replies
        **_zeros("totalrequests", "totalresponses", "totalrequestbytes", "totalresponsebytes", "surgecount",
                 "svcsurgecount", "vsvrsurgecount", "curpersistencesessions", "totspillovers", "sothreshold"),
    }  # fmt: skip


def hanode(model: nitro.Store, since: float | None) -> Record:
    paired = model.ha_peer is not None
    return {
        "hacurstatus": "YES" if paired else "NO",
        "hacurstate": "UP" if paired else "DISABLED",
        "hacurmasterstate": model.ha_state,
        "transtime": time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(since)) if since else "",
        "hatotpktrx": "0", "hatotpkttx": "0", "hapktrxrate": 0, "hapkttxrate": 0,
        "haerrsyncfailure": "0", "haerrproptimeout": "0",
    }  # fmt: skip


def _members(model: nitro.Store, args: Mapping[str, str]) -> list[Record]:
    """The member `args` name: `servicegroupname`, `servername` or `ip`, and `port` (all required)."""
    for field in ("servicegroupname", "port"):
        if field not in args:
            raise nitro.argument_missing(field)
    if "servername" not in args and "ip" not in args:
        raise nitro.argument_missing("servername")
    group = args["servicegroupname"]
    if (group,) not in model.objects["servicegroup"]:
        raise nitro.not_found("servicegroupname", group)
    found = [m for k, m in sorted(model.objects["servicegroup_servicegroupmember_binding"].items())
             if k[0] == group and k[2] == args["port"]
             and ("servername" not in args or k[1] == args["servername"])
             and ("ip" not in args or m["ip"] == args["ip"])]  # fmt: skip
    if not found:
        raise nitro.not_found("servername", args.get("servername", args.get("ip")))
    return found


def records(
    model: nitro.Store, resource: str, name: str | None, traffic: Traffic, ha_since: float | None = None,
    args: Mapping[str, str] | None = None,
) -> list[Record] | Record:  # fmt: skip
    """`GET /nitro/v1/stat/<resource>[/<name>]`: the records, or the hanode object; 404/258 for a missing name."""
    if resource == "hanode":
        return hanode(model, ha_since)
    if resource == "servicegroupmember":
        return [servicegroupmember(model, m, traffic) for m in _members(model, args or {})]
    render = {"service": service, "lbvserver": lbvserver, "servicegroup": servicegroup}.get(resource)
    if render is None:
        raise nitro.NitroError(599, 1232, f"Invalid object name [{resource}]")
    objects = model.objects[resource]
    if name is not None:
        obj = objects.get((name,))
        if obj is None:
            raise nitro.not_found("servicegroupname" if resource == "servicegroup" else "name", name)
        return [render(model, obj, traffic)]
    return [render(model, obj, traffic) for _, obj in sorted(objects.items())]
