"""NITRO statistics of the simulator: `/nitro/v1/stat/lbvserver`, `/stat/service`, `/stat/hanode` (pure).

Field names are those of the NITRO stat reference, the ones monitoring tools read (check_netscaler's
`state` and `hastatus`, Prometheus exporters). As on the appliance, counters are JSON strings and
rates numbers. What a simulator cannot know (bytes,
requests, response times) is 0; what it can is real: state, health, active services, client
connections (`Store.clients`), and, when the dataplane runs, packets and flows (`Traffic`).
"""

from __future__ import annotations

import time
from typing import Any

from dsr_operator.simulator import nitro
from dsr_operator.simulator.nitro.queries import Traffic as Traffic

Record = dict[str, Any]

STAT_TYPES = ("lbvserver", "service", "hanode")


def _zeros(*names: str) -> Record:
    return dict.fromkeys(names, "0")


def service(model: nitro.Store, obj: Record, traffic: Traffic) -> Record:
    name = obj["name"]
    clients = model.clients.get(name, 0)
    return {
        "name": name,
        "state": model.svrstate(obj),
        "servicetype": obj["servicetype"],
        "primaryipaddress": obj["ipaddress"],
        "primaryport": obj["port"],
        "curclntconnections": str(clients),
        "cursrvrconnections": str(clients),  # DSR: one server-side flow per client flow
        "svrestablishedconn": str(clients),
        "vsvrservicehits": str(traffic.new_flows.get(name, 0)),
        "totalrequests": "0", "requestsrate": 0, "totalresponses": "0", "responsesrate": 0,
        "throughputrate": 0,
        "maxclients": str(int(obj.get("maxclient", 0) or 0)),
        **_zeros("throughput", "avgsvrttfb", "totalrequestbytes", "totalresponsebytes", "curload", "surgecount",
                 "activetransactions"),
    }  # fmt: skip


def lbvserver(model: nitro.Store, obj: Record, traffic: Traffic) -> Record:
    name = obj["name"]
    runtime = model.render("lbvserver", obj)
    bound = [model.objects["service"][(b["servicename"],)]
             for k, b in model.objects["lbvserver_service_binding"].items() if k[0] == name]
    clients = sum(model.clients.get(s["name"], 0) for s in bound)
    hits = sum(traffic.new_flows.get(s["name"], 0) for s in bound)
    forwarded = sum(traffic.forwarded_packets.get(s["name"], 0) for s in bound)
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


def records(
    model: nitro.Store, resource: str, name: str | None, traffic: Traffic, ha_since: float | None = None
) -> list[Record] | Record:
    """`GET /nitro/v1/stat/<resource>[/<name>]`: the records, or the hanode object; 404/258 for a missing name."""
    if resource == "hanode":
        return hanode(model, ha_since)
    render = {"service": service, "lbvserver": lbvserver}.get(resource)
    if render is None:
        raise nitro.NitroError(599, 1232, f"Invalid object name [{resource}]")
    objects = model.objects[resource]
    if name is not None:
        obj = objects.get((name,))
        if obj is None:
            raise nitro.not_found("name", name)
        return [render(model, obj, traffic)]
    return [render(model, obj, traffic) for _, obj in sorted(objects.items())]
