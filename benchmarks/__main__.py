"""``make bench`` / ``python -m benchmarks``: every benchmark in turn, printing numbers against the targets, and at
the end every line that states a target with its measured ratio, in one place.

``python -m benchmarks NAME...`` runs only the named ones (``kube-client`` or ``kube_client``).
"""

from __future__ import annotations

import importlib
import io
import re
import sys
import time
from typing import TextIO

_TARGET_LINE = re.compile(r"\bratio\b|\btarget\b.*x the\b|x the\b.*\btarget\b", re.IGNORECASE)
_VERDICT = re.compile(r"\b(?:OK|MISSED)\b")

BENCHMARKS = {
    "sim_speed": "simulator speed vs real time at 16,384 cores",
    "rpc_latency": "Allocate / GetPreferredAllocation round trips at 4,096 cores beside a trivial-server floor",
    "fault_latency": "hard fault -> ListAndWatch at 16,384 cores",
    "pipeline": "telemetry ingest, /metrics scrape time and RSS",
    "placement": "stage placement vs count-based first-fit on the simulator (hops, e2e spike latency)",
    "extender": "scheduler extender prioritize/filter over 5,000 nodes",
    "kube_client": "the product's Kubernetes calls (controller sync, summary patches, DRA publish) on a real apiserver",
    "node_failover": "failed core -> a stage's runtime reads its new cores on a real node (kubelet, containerd)",
    "fleet": "1,000 and 5,000 kwok nodes, real apiserver/scheduler/controller and node agents, Poisson split jobs",
    "restarts": "device plugin re-registration after clean, killed, back-to-back and burst upstream kubelet restarts",
    "experiments": "snnrm vs first-fit, random and static placement under faults (results in benchmarks/results)",
}


class _Tee(io.TextIOBase):
    """Passes output through and keeps the lines that state a target with its ratio (for the summary)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.kept: list[str] = []
        self._buf = ""

    def write(self, s: str) -> int:
        self.out.write(s)
        *lines, self._buf = (self._buf + s).split("\n")
        self.kept += [line.strip() for line in lines if _TARGET_LINE.search(line)]
        return len(s)

    def flush(self) -> None:
        self.out.flush()


def main(argv: list[str]) -> int:
    names = [n.replace("-", "_") for n in argv] or list(BENCHMARKS)  # kube-client and kube_client both work
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    summary: list[tuple[str, list[str]]] = []
    real = sys.stdout
    for name in names:
        print(f"\n=== {name}: {BENCHMARKS[name]}", flush=True)
        start = time.perf_counter()
        tee = _Tee(real)
        sys.stdout = tee
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        finally:
            sys.stdout = real
        summary.append((name, tee.kept))
        print(f"=== {name} took {time.perf_counter() - start:.1f} s", flush=True)
    print("\n=== summary: each target against what was measured (ratio = measured / target)")
    for name, lines in summary:
        for line in summary_lines(lines):
            print(f"{name:>14}: {line}")
    return 0


def summary_lines(kept: list[str]) -> list[str]:
    """A benchmark's target lines as the summary shows them: one that states no verdict is marked, so a benchmark
    that forgets :func:`benchmarks.verdict.verdict` shows here instead of passing silently."""
    if not kept:
        return ["(no target line printed)"]
    return [line if _VERDICT.search(line) else f"{line}  [no OK/MISSED verdict on this line]" for line in kept]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
