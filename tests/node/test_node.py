"""snnrm on a real node: the chart's DaemonSet under a real kubelet, containerd with CDI, and runc.

What a platform engineer does first, proven end to end: the node advertises cores, a pod gets cores, files and
CDI devices, a kubelet restart and a daemon restart lose and double-book nothing, a failed core leaves
allocatable and comes back, and a request nobody can satisfy stays Pending with the scheduler's reason.
"""

from __future__ import annotations

import json
import time
from typing import Any

from node_support import core_pod, parse_printout, run_core_pod, stage_deployment

from sim_hw.spec import load_preset
from snnrm.testing.real_node import EVENT_THROUGHPUT, NAMESPACE, NEURON_CORE, Node, wait_for


def _expected_cores() -> int:
    # The chart's defaults for backend sim: the loihi2 preset, 4 chips (charts/snnrm/values.yaml).
    spec = load_preset("loihi2", chips=4)
    return spec.chips * spec.cores_per_chip


def test_daemonset_ready_and_node_advertises_what_the_sim_config_implies(node: Node) -> None:
    pod = node.daemon_pod()
    assert pod["spec"]["nodeName"]
    total = _expected_cores()
    alloc = wait_for("allocatable neuron cores", lambda: node.allocatable().get(NEURON_CORE) == str(total) or None)
    assert alloc
    daemon = node.daemon("GET", "/api/v1/node")
    assert daemon["cores"] == total
    blocks = daemon["resources"][EVENT_THROUGHPUT]["healthy"]
    assert blocks > 0
    assert node.allocatable()[EVENT_THROUGHPUT] == str(blocks)


def test_pod_gets_four_cores_a_read_only_file_and_cdi_devices(node: Node, ns: str) -> None:
    got = run_core_pod(node, ns, "four", 4)
    cores = got["cores"]
    assert len(cores) == 4, got["raw"]
    assert len(set(cores)) == 4
    # The allocation file is mounted read-only at the documented path and describes exactly these cores.
    assert sorted(c["id"] for c in got["file"]["cores"]) == sorted(cores)
    assert got["mounts"], got["raw"]
    assert " ro," in got["mounts"][0] or " ro " in got["mounts"][0], got["mounts"]
    assert got["writable"] is False
    # The CDI devices reached the container: the runtime applied the spec's edits for every chip of the cores.
    chips = {c["chip"] for c in got["file"]["cores"]}
    assert sorted(got["cdi"]) == sorted(f"SNNRM_CDI_CHIP_{c}=chip{c}" for c in chips), got["raw"]


def test_kubelet_restart_keeps_running_pods_cores_and_never_double_books(node: Node, ns: str) -> None:
    total = str(_expected_cores())
    first = run_core_pod(node, ns, "before", 4)
    uid = node.get("pod", "-n", ns, "before")["metadata"]["uid"]
    node.cluster("restart-kubelet")
    # The plugin re-registers with the new kubelet: the resource comes back in full.
    wait_for("neuron cores after the kubelet restart", lambda: node.allocatable().get(NEURON_CORE) == total, 90)
    pod = node.get("pod", "-n", ns, "before")
    assert pod["metadata"]["uid"] == uid
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    second = run_core_pod(node, ns, "after", 4)
    assert not set(first["cores"]) & set(second["cores"]), (first["cores"], second["cores"])


def test_daemon_pod_recreated_keeps_allocations(node: Node, ns: str) -> None:
    total = str(_expected_cores())
    first = run_core_pod(node, ns, "held", 8)
    old: str = node.daemon_pod()["metadata"]["name"]
    node.kubectl("delete", "pod", "-n", NAMESPACE, old, "--wait=true")

    def replaced() -> bool:
        name: str = node.daemon_pod()["metadata"]["name"]
        return name != old

    wait_for("a new daemon pod Ready", replaced, 120)
    wait_for("neuron cores after the daemon restart", lambda: node.allocatable().get(NEURON_CORE) == total, 60)
    second = run_core_pod(node, ns, "later", 8)
    assert not set(first["cores"]) & set(second["cores"]), (first["cores"], second["cores"])
    assert node.get("pod", "-n", ns, "held")["status"]["containerStatuses"][0]["restartCount"] == 0


def test_failed_cores_leave_allocatable_and_come_back(node: Node) -> None:
    total = _expected_cores()
    wait_for("all cores allocatable", lambda: node.allocatable().get(NEURON_CORE) == str(total), 60)
    victims = list(range(total - 8, total))  # the far corner of the last chip
    fault = node.daemon("POST", "/sim/faults", {"kind": "core_failure", "cores": victims})
    started = time.monotonic()
    try:
        wait_for(
            "the failed cores to leave allocatable",
            lambda: node.allocatable().get(NEURON_CORE) == str(total - len(victims)),
            30,
            every=0.05,
        )
        took = time.monotonic() - started
        print(f"core failure -> node allocatable: {took:.2f} s")  # recorded in the issue note, not asserted
    finally:
        node.daemon("DELETE", f"/sim/faults/{fault['id']}")
    wait_for("the cores back in allocatable", lambda: node.allocatable().get(NEURON_CORE) == str(total), 60)


def test_more_cores_than_exist_stays_pending_with_the_schedulers_reason(node: Node, ns: str) -> None:
    too_many = _expected_cores() + 1
    node.apply(core_pod("greedy", ns, node.image(), too_many))

    def reason() -> str | None:
        events: list[dict[str, Any]] = node.get("events", "-n", ns)["items"]
        msgs = [e["message"] for e in events if e.get("reason") == "FailedScheduling"]
        return msgs[0] if msgs else None

    msg = wait_for("a FailedScheduling event", reason, 60)
    assert f"Insufficient {NEURON_CORE}" in msg
    assert node.get("pod", "-n", ns, "greedy")["status"]["phase"] == "Pending"


def _stage_pods(node: Node, ns: str, job: str) -> dict[int, dict[str, Any]]:
    pods = node.get("pods", "-n", ns, "-l", f"snnrm.io/job={job}")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return {int(p["metadata"]["labels"]["snnrm.io/stage"]): p for p in live}


def _start_job(node: Node, ns: str, job: str) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Create a 4-stage job behind the gate; wait until the controller planned it, the real scheduler bound it
    (through our extender) and the real kubelet admitted every stage on its planned cores."""
    stages, image = 4, node.image()
    # Stage sizes differ: the device plugin API names no pod, so equal-sized stages admitted in one kubelet batch
    # may swap plans (snnrm/cluster/hints.py); the node then tracks each stage by PodResources, not by its plan.
    sizes = (16, 12, 10, 8)
    for i, keps in enumerate((800.0, 400.0, 400.0, 200.0)):
        node.apply(stage_deployment(ns, job, i, stages, cores=sizes[i], keps=keps, image=image))

    def all_running() -> dict[int, dict[str, Any]] | None:
        pods = _stage_pods(node, ns, job)
        ok = len(pods) == stages and all(p["status"].get("phase") == "Running" for p in pods.values())
        return pods if ok else None

    pods = wait_for("all four stages Running", all_running, 120)
    printed = {}
    for i, pod in pods.items():
        name = pod["metadata"]["name"]
        assert not pod["spec"].get("schedulingGates"), name
        planned = pod["metadata"]["annotations"]["snnrm.io/planned-cores"].split(",")

        def prints(n: str = name) -> bool | None:
            return "READONLY" in node.kubectl("logs", "-n", ns, n) or None

        out = wait_for(f"{name} prints", prints)
        assert out
        printed[i] = parse_printout(node.kubectl("logs", "-n", ns, name))
        assert sorted(printed[i]["cores"]) == sorted(planned), (name, printed[i]["cores"], planned)
    cores = [c for got in printed.values() for c in got["cores"]]
    assert len(cores) == len(set(cores)) == sum(sizes)
    return pods, printed


def _moved(node: Node, ns: str, pod: str, printed: dict[str, Any], avoid: set[str]) -> dict[str, Any]:
    """Wait for the stage in ``pod`` to move (live remap, or eviction and re-admission); check it left ``avoid``
    and, for a remap, that the container's mounted allocation file shows the new cores. Returns the Event."""

    def moved() -> list[dict[str, Any]] | None:
        events = node.get("events", "-n", ns, "--field-selector", f"involvedObject.name={pod}")["items"]
        return [e for e in events if e["reason"] in ("Remapped", "Evicted")] or None

    event = wait_for(f"{pod} to move", moved, 60)[0]
    if event["reason"] == "Remapped":
        annotations = node.get("pod", "-n", ns, pod)["metadata"]["annotations"]
        now = set(annotations["snnrm.io/cores"].split(","))
        assert now != set(printed["cores"])
        assert not now & avoid
        # The container sees the move: its mounted allocation file was rewritten in place.
        seen = json.loads(node.kubectl("exec", "-n", ns, pod, "--", "cat", "/var/run/snnrm/allocation.json"))
        assert {c["id"] for c in seen["cores"]} == now, (seen, annotations)
        assert seen["generation"] >= 1
    return dict(event)


def test_split_job_is_planned_bound_admitted_on_its_plan_and_moves_off_a_hot_spot(node: Node, ns: str) -> None:
    pods, printed = _start_job(node, ns, "gesture")
    # The daemon runs the admitted stages' declared traffic on the simulated chips: wait until it does.
    wait_for("the job's traffic on the chips", lambda: node.daemon("GET", "/api/v1/node")["telemetry_time"] > 0, 10)
    victim = pods[1]["metadata"]["name"]
    under = [c["index"] for c in printed[1]["file"]["cores"]]
    hot = {"kind": "hot_spot", "cores": under, "load_factor": 4.0, "service_divisor": 16.0}
    fault = node.daemon("POST", "/sim/faults", hot)
    try:
        event = _moved(node, ns, victim, printed[1], set(printed[1]["cores"]))
        reason = event["message"].lower()
        assert any(word in reason for word in ("queue", "efficiency", "congest")), event["message"]
    finally:
        node.daemon("DELETE", f"/sim/faults/{fault['id']}")


def test_a_stage_on_failed_cores_moves_at_once(node: Node, ns: str) -> None:
    pods, printed = _start_job(node, ns, "shd")
    victim = pods[2]["metadata"]["name"]
    failed = [c["index"] for c in printed[2]["file"]["cores"]][:2]
    ids = {c["id"] for c in printed[2]["file"]["cores"] if c["index"] in failed}
    fault = node.daemon("POST", "/sim/faults", {"kind": "core_failure", "cores": failed})
    try:
        event = _moved(node, ns, victim, printed[2], ids)
        assert "failed" in event["message"].lower(), event["message"]
    finally:
        node.daemon("DELETE", f"/sim/faults/{fault['id']}")


def test_with_every_core_failed_a_core_pod_is_not_admitted(node: Node, ns: str) -> None:
    total = _expected_cores()
    fault = node.daemon("POST", "/sim/faults", {"kind": "core_failure", "cores": list(range(total))})
    try:
        wait_for("no neuron core allocatable", lambda: node.allocatable().get(NEURON_CORE) == "0", 30, every=0.1)
        node.apply(core_pod("starved", ns, node.image(), 1))

        def reason() -> str | None:
            events: list[dict[str, Any]] = node.get("events", "-n", ns)["items"]
            msgs = [e["message"] for e in events if e.get("reason") == "FailedScheduling"]
            return msgs[0] if msgs else None

        assert f"Insufficient {NEURON_CORE}" in wait_for("a FailedScheduling event", reason, 60)
        assert node.get("pod", "-n", ns, "starved")["status"]["phase"] == "Pending"
    finally:
        node.daemon("DELETE", f"/sim/faults/{fault['id']}")
    # Healthy again, the same pod is admitted: nothing was lost or booked while every core was down.
    wait_for("all cores back", lambda: node.allocatable().get(NEURON_CORE) == str(total), 60)
    wait_for("the pod Running", lambda: node.get("pod", "-n", ns, "starved")["status"].get("phase") == "Running", 60)
