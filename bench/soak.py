"""Soak: the chaos soak of tests/soak/chaos.py for longer, with the same code, and its figures.

A real control plane (etcd, kube-apiserver, kube-controller-manager from `make controlplane`, or
$DSR_CONTROLPLANE_BIN), the operator and the NITRO simulator as processes; `--minutes` of chaos
(spec changes, NITRO faults, simulator and operator restarts, two replicas every 5 minutes, the
stand-by taking over once the SIGKILLed leader's Lease has run out), then the final
changes, the settle, and every invariant's verdict with its evidence. No root needed.

Usage: python bench/soak.py [--minutes 10] [--seed N] [--keep]   (also DSR_SOAK_SEED)
Exit code 0 when every invariant holds, 1 on a violation, 2 when the binaries are missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# The soak's code lives in the test tree; the repository root is on the path from here on.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from tests.controlplane import conftest
from tests.soak import chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of chaos (default %(default)s)")
    parser.add_argument("--seed", type=int, help=f"RNG seed (default ${chaos.SEED_ENV} or random)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir with every process's log")
    args = parser.parse_args()
    missing = conftest.missing_binaries()
    if missing:
        print(f"control-plane binaries missing from {conftest.BIN_DIR}: {', '.join(missing)}; "
              "run `make controlplane` or set DSR_CONTROLPLANE_BIN", file=sys.stderr)
        return 2
    config = chaos.Config(chaos_seconds=args.minutes * 60, seed=args.seed or chaos.seed_from_env(),
                          settle_seconds=300.0, two_replica_every_seconds=300.0, standby_takeover=True)
    started = time.monotonic()
    with conftest.started() as cp:
        report = chaos.run(cp, config, out=lambda line: print(line, flush=True), keep=args.keep)
    print(report.text())
    print(f"wall time {time.monotonic() - started:.0f}s (control plane included)")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
