"""Benchmark: converge N DsrServices x M static backends from scratch against the NITRO simulator.

Compares, in the same run and against the same simulator settings (5 ms latency per request):
- baseline: what a script of the manual procedure does, one NITRO request per object, in order;
- dsr-operator: read once, plan, send each stage as bulk requests;
- a no-change re-run of dsr-operator (must be reads only, one GET per object type).

Usage: python bench/converge.py [--services 200] [--backends 10] [--latency-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from dsr_lab import simctl
from dsr_operator.api import models
from dsr_operator.model import ops as nsops
from dsr_operator.model import state as ns
from dsr_operator.netscaler import client as nitro
from dsr_operator.netscaler import executor
from dsr_operator.planner import desired as desired_mod
from dsr_operator.planner import plan as planner

USER, PASSWORD = "nsroot", "bench-password"
OPERATOR_ID = "bench"


def intents(services: int, backends: int) -> list[desired_mod.Intent]:
    result = []
    for i in range(services):
        spec = models.DsrServiceSpec.model_validate(
            {
                "vip": f"192.0.{2 + i // 250}.{1 + i % 250}",
                "ports": [80],
                "backends": {
                    "static": [
                        {"name": f"h{j}", "address": f"10.{i // 250}.{i % 250}.{j + 1}"}
                        for j in range(backends)
                    ]
                },
                "drainSeconds": 0,
            }
        )
        ref = models.ObjectRef(namespace="bench", name=f"svc{i}", uid=f"uid-{i}")
        result.append(desired_mod.Intent(ref, spec, desired_mod.static_backends(spec)))
    return result


async def baseline(url: str, work: list[desired_mod.Intent]) -> int:
    """One request per object, in the order an admin types them."""
    plan = planner.diff(desired_mod.desired(work), ns.NetScalerState(), planner.Policy(OPERATOR_ID))
    async with nitro.NitroClient(url, username=USER, password=PASSWORD, max_concurrency=1) as client:
        start = client.stats.requests
        for op in plan.ops:
            outcome = await executor.execute(client, (nsops.Stage(op.verb, op.kind, (op,)),))
            assert not outcome.failures, outcome.failures
        return client.stats.requests - start


async def operator_path(url: str, work: list[desired_mod.Intent]) -> tuple[int, int]:
    async with nitro.NitroClient(url, username=USER, password=PASSWORD) as client:
        start = client.stats.requests
        actual = await executor.read_actual(client, OPERATOR_ID)
        plan = planner.diff(desired_mod.desired(work), actual, planner.Policy(OPERATOR_ID))
        outcome = await executor.execute(client, plan.stages)
        assert not outcome.failures, outcome.failures[:3]
        return client.stats.requests - start, len(plan.ops)


async def rerun(url: str, work: list[desired_mod.Intent]) -> tuple[int, bool]:
    async with nitro.NitroClient(url, username=USER, password=PASSWORD) as client:
        start = client.stats.requests
        actual = await executor.read_actual(client, OPERATOR_ID)
        plan = planner.diff(desired_mod.desired(work), actual, planner.Policy(OPERATOR_ID))
        return client.stats.requests - start, plan.empty


async def main(services: int, backends: int, latency_ms: float) -> None:
    work = intents(services, backends)
    rows = []
    for label in ("baseline", "dsr-operator"):
        async with simctl.running(users={USER: PASSWORD}) as sim:
            await sim.faults(latencyMs=latency_ms)
            t0 = time.perf_counter()
            if label == "baseline":
                requests = await baseline(sim.url, work)
                objects = requests
            else:
                requests, objects = await operator_path(sim.url, work)
            wall = time.perf_counter() - t0
            # login/logout are part of both runs and counted by the simulator, not the client
            rows.append((label, requests, wall, objects))
            if label == "dsr-operator":
                await sim.reset_stats()
                t1 = time.perf_counter()
                again, empty = await rerun(sim.url, work)
                rerun_wall = time.perf_counter() - t1
                stats = await sim.stats()
    (_, base_req, base_wall, _), (_, op_req, op_wall, op_objects) = rows
    print(
        f"Converge {services} DsrServices x {backends} static backends from scratch, "
        f"simulator latency {latency_ms:g} ms/request"
    )
    print(f"{'path':<14}{'NITRO requests':>16}{'wall time (s)':>16}")
    print(f"{'baseline':<14}{base_req:>16}{base_wall:>16.2f}")
    print(f"{'dsr-operator':<14}{op_req:>16}{op_wall:>16.2f}")
    print(
        f"ratio: {base_req / op_req:.0f}x fewer requests, {base_wall / op_wall:.1f}x less wall time "
        f"({op_objects} object operations)"
    )
    print(
        f"no-change re-run: {again} requests ({stats['byMethod']}), {stats['writes']} writes, "
        f"plan empty: {empty}, {rerun_wall:.2f}s"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=200)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(main(args.services, args.backends, args.latency_ms))
