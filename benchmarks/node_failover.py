"""Failed core -> the stage's runtime sees its new cores, on a real node, through the product where users meet it.

The simulated experiments (:mod:`benchmarks.experiments`) decide with the daemon's own ``NodeReallocator`` but feed
it from the simulator in process; this runs one of their scenarios end to end instead, on ``scripts/cluster.sh up``
(``make cluster``: etcd, kube-apiserver, kube-scheduler with our extender, the real kubelet and containerd, snnrm
installed by its chart). Two jobs run: SLAYER's DVS128-Gesture and N-MNIST networks, each written as a NIR graph
and planned into four stage pods by ``snnrm job plan`` on its sample events (the measured rates the experiments
use), with ``--scheduler-name snnrm-scheduler --live-remap``. The manifests are applied as ``snnrm job plan``
wrote them, with the stand-in runtime as their container. The controller plans each job, the real
scheduler binds it through the extender, the real kubelet admits every stage through our device plugin, and the
daemon runs the stages' declared traffic on its simulated chips. Each stage's "runtime" is a small Python loop in
the container that timestamps every change of its mounted allocation file (the container shares this clock).

Per trial, another stage (the jobs' stages in turn) loses up to two of its cores (``POST /sim/faults``,
core_failure). From the container's log and the rewritten file the benchmark reads fault -> the daemon's remap
(the file's ``remapped_at``) and fault -> the runtime sees its new cores (its first read of the new generation).
The experiments' headline "failed core -> victim back within SLO" adds the moved stage's weight reload from their
cost model (synapses x bytes per synapse / host bandwidth); that cost is printed beside the measured times, not
measured, since no weights load on simulated chips.

The daemon's move budget allows 6 moves per 10 minutes (``ReallocationSettings.max_moves_per_window``): the daemon
pod is restarted first so earlier moves on this node do not count against these, and the benchmark runs 6 trials,
each on a stage that has not moved (a stage that moved may move again only after its 60 s cooldown). The node is
taken down again afterwards unless it was up before. Needs root (a kubelet and containerd run here); without it it
prints why and measures nothing.

    python -m benchmarks node_failover
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks.experiments.config import DEFAULT as EXPERIMENTS
from benchmarks.verdict import verdict
from sim_hw import load_preset
from snnrm.core.reallocation import ReallocationSettings
from snnrm.job.workloads import write_graphs
from snnrm.testing.real_node import NAMESPACE, SCRIPT, Node, cluster_running, wait_for

NETWORKS = ("dvs-gesture", "nmnist")
STAGES = 4
TRIALS = ReallocationSettings().max_moves_per_window
"""One move per trial, each of another stage: a stage that moved may move again only after its cooldown (60 s)."""
MOVE_WITHIN_S = 30.0
"""A stage not moved this long after its cores failed counts as not back (and the trial ends)."""
TARGET_S = 1.0
"""The experiments' target for failed core -> victim back within SLO (issue 14)."""
ALLOCATION = "/var/run/snnrm/allocation.json"


def runtime(path: str = ALLOCATION) -> str:
    """The stand-in runtime: prints ``SEEN <time.time()> <generation>`` when it first reads a new generation in its
    allocation file (checked every 2 ms; a rewrite in place changes its mtime or size, possibly twice: one write
    and one truncate; a read caught mid-write is retried, not reported)."""
    return f"""
import json, os, time
last = shown = None
while True:
    try:
        st = os.stat({path!r})
        key = (st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key != last:
        last = key
        try:
            with open({path!r}) as f:
                gen = json.load(f).get("generation", 0)
        except (OSError, ValueError):
            last = gen = None
        if gen is not None and gen != shown:
            shown = gen
            print("SEEN", repr(time.time()), gen, flush=True)
    time.sleep(0.002)
"""


def seen_at(log: str, generation: int) -> float | None:
    """When the runtime's ``log`` says it first read ``generation`` (None if it has not)."""
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "SEEN" and parts[2] == str(generation):
            return float(parts[1])
    return None


def _manifests(network: str, ns: str, image: str, workdir: Path) -> list[dict[str, Any]]:
    """The job's stage pods as ``snnrm job plan`` writes them, with the stand-in runtime as their container."""
    graph, events = write_graphs(workdir / "graphs", only=(network,))
    out = workdir / network
    cmd = [sys.executable, "-m", "snnrm", "job", "plan", str(graph), "--stages", str(STAGES), "--input", str(events)]
    cmd += ["--job", network, "--namespace", ns, "--image", image, "-o", str(out)]
    cmd += ["--scheduler-name", "snnrm-scheduler", "--live-remap"]  # the chart's profile; the runtime follows remaps
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    pods = []
    for path in sorted(out.glob("*.yaml")):
        pod = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = pod["spec"]
        spec["terminationGracePeriodSeconds"] = 0
        container = spec["containers"][0]
        container["imagePullPolicy"] = "Never"
        container["command"] = ["python3", "-c", runtime()]
        pods.append(pod)
    return pods


def _file(node: Node, ns: str, pod: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(node.kubectl("exec", "-n", ns, pod, "--", "cat", ALLOCATION))
    return out


def _restart_daemon(node: Node) -> None:
    old = node.daemon_pod()["metadata"]["name"]
    node.kubectl("delete", "pod", "-n", NAMESPACE, old, "--wait=true", "--timeout=120s")
    wait_for("the daemon pod back", lambda: node.daemon_pod()["metadata"]["name"] != old or None, 120)
    wait_for("the daemon answering", lambda: node.daemon("GET", "/api/v1/node"), 60)


def _unhealthy(node: Node) -> int:
    """Cores the daemon reports unhealthy (cores a remap left behind are withheld, not unhealthy)."""
    return int(node.daemon("GET", "/api/v1/node")["core_counts"]["unhealthy"])


def _trial(node: Node, ns: str, pod: str) -> dict[str, Any]:
    """Fail up to two of ``pod``'s cores; times from the fault to the daemon's remap and to the runtime seeing it
    (None for both when the stage did not move within :data:`MOVE_WITHIN_S`)."""
    before = _file(node, ns, pod)
    failed = [c["index"] for c in before["cores"]][:2]
    generation = int(before.get("generation", 0)) + 1
    t0 = time.time()
    fault = node.daemon("POST", "/sim/faults", {"kind": "core_failure", "cores": failed})
    try:
        seen = wait_for(
            f"{pod} to see generation {generation}",
            lambda: seen_at(node.kubectl("logs", "-n", ns, pod), generation),
            MOVE_WITHIN_S,
            0.1,
        )
    except AssertionError:
        seen = None
    finally:
        node.daemon("DELETE", f"/sim/faults/{fault['id']}")
    result: dict[str, Any] = {"pod": pod, "cores": len(before["cores"]), "failed": len(failed)}
    result["remap_s"] = result["seen_s"] = None
    if seen is not None:
        after = _file(node, ns, pod)
        if {c["index"] for c in after["cores"]} & set(failed):
            raise AssertionError(f"{pod}: the file after the move still names a failed core: {after}")
        result["remap_s"], result["seen_s"] = float(after["remapped_at"]) - t0, seen - t0
    wait_for("the failed cores healthy again", lambda: _unhealthy(node) == 0 or None, 60)
    return result


def _reload_s(cores: int) -> float:
    """The experiments' cost of moving a stage of ``cores`` cores: its weights over the host link."""
    spec = load_preset(EXPERIMENTS.preset)
    return cores * spec.synapses_per_core * EXPERIMENTS.weight_bytes_per_synapse / EXPERIMENTS.weight_load_bandwidth


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def _start(node: Node, ns: str, workdir: Path) -> list[str]:
    """Apply every network's planned stage pods; wait until all run. Returns the pods, stages of the jobs
    interleaved (each job's moves a trial apart: longer than the dwell a job waits after a move)."""
    by_job = []
    for network in NETWORKS:
        pods = _manifests(network, ns, node.image(), workdir)
        for pod in pods:
            node.apply(pod)
        by_job.append([p["metadata"]["name"] for p in pods])

    def running() -> bool | None:
        got = node.get("pods", "-n", ns)["items"]
        return (len(got) == STAGES * len(NETWORKS) and all(p["status"].get("phase") == "Running" for p in got)) or None

    wait_for("every stage Running", running, 240)
    for network, names in zip(NETWORKS, by_job, strict=True):
        cores = [len(_file(node, ns, n)["cores"]) for n in names]
        print(f"{network}: {STAGES} stages planned by `snnrm job plan`, admitted on {cores} cores, all Running")
    return [name for stage in zip(*by_job, strict=True) for name in stage]


def main() -> None:
    """Bring the node up (and down again after, unless it was up), run the jobs, fail one stage's cores per trial,
    print the times."""
    if os.geteuid() != 0:
        print(
            "node_failover: skipped, needs root (a kubelet and containerd run here): run as root, as `make test` does"
        )
        return
    was_up = cluster_running()
    subprocess.run(["bash", str(SCRIPT), "up"], check=True, timeout=2400)  # idempotent; rebuilds what changed
    try:
        _measure(Node())
    finally:
        if not was_up:  # as the real-node tests do: leave the machine as it was
            subprocess.run(["bash", str(SCRIPT), "down"], check=False, timeout=600)


def _measure(node: Node) -> None:
    """Run the jobs on ``node``, fail one stage's cores per trial, print each trial and the summary."""
    _restart_daemon(node)
    ns = f"bench-failover-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", ns)
    settings = ReallocationSettings()
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pods = _start(node, ns, Path(tmp))
        time.sleep(settings.min_age + 1.0)  # a stage moves only after min_age at its place
        for k, pod in enumerate(pods[:TRIALS]):
            time.sleep(settings.dwell + 0.5)
            r = _trial(node, ns, pod)
            results.append(r)
            if r["seen_s"] is None:
                print(
                    f"trial {k + 1}: {pod} ({r['cores']} cores, {r['failed']} failed): not moved in {MOVE_WITHIN_S:g} s"
                )
                continue
            print(
                f"trial {k + 1}: {pod} ({r['cores']} cores, {r['failed']} failed): fault -> remap "
                f"{r['remap_s'] * 1e3:.0f} ms, -> runtime sees new cores {r['seen_s'] * 1e3:.0f} ms"
            )
    finally:
        node.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
    moved = [r for r in results if r["seen_s"] is not None]
    n = len(results)
    if not moved:
        print(
            f"failed core -> victim back: 0 of {n} stages moved within {MOVE_WITHIN_S:g} s; "
            f"target {TARGET_S:g} s, ratio inf ({verdict(False)})"
        )
        return
    remap = [r["remap_s"] * 1e3 for r in moved]
    seen = [r["seen_s"] * 1e3 for r in moved]
    back = [r["seen_s"] + _reload_s(r["cores"]) for r in moved]
    print(f"fault -> remap (daemon)                median {statistics.median(remap):.0f} ms, max {max(remap):.0f} ms")
    print(
        f"fault -> runtime sees its new cores    median {statistics.median(seen):.0f} ms, "
        f"p90 {_pct(seen, 90):.0f} ms, max {max(seen):.0f} ms ({len(moved)} of {n} moved)"
    )
    reload_ms = sorted({round(_reload_s(r["cores"]) * 1e3) for r in moved})
    within = sum(b < TARGET_S for b in back)
    worst = max(back) if len(moved) == n else math.inf
    print(
        f"failed core -> victim back (seen + the experiments' weight reload, {reload_ms} ms): {within} of {n} "
        f"under {TARGET_S:g} s, max {worst:.2f} s; ratio max/target {worst / TARGET_S:.2f}x ({verdict(within == n)})"
    )


if __name__ == "__main__":
    main()
