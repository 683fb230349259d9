"""``make bench`` / ``python -m benchmarks``: every benchmark in turn, printing numbers against the targets.

``python -m benchmarks NAME...`` runs only the named ones.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = {
    "sim_speed": "simulator speed vs real time at 16,384 cores",
    "rpc_latency": "Allocate / GetPreferredAllocation round trips at 4,096 cores beside a trivial-server floor",
    "fault_latency": "hard fault -> ListAndWatch at 16,384 cores",
    "pipeline": "telemetry ingest, /metrics scrape time and RSS",
    "placement": "stage placement vs count-based first-fit on the simulator (hops, e2e spike latency)",
    "extender": "scheduler extender prioritize/filter over 5,000 nodes",
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    for name in names:
        print(f"\n=== {name}: {BENCHMARKS[name]}", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main()
        print(f"=== {name} took {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
