"""Helpers of the real-node tier (tests/node): pods that print their cores and split-job stages.

The real-node tier: a kubelet, containerd and runc on this machine, snnrm installed by its chart. The node itself
(kubectl, the daemon's API, ``wait_for``) is :mod:`snnrm.testing.real_node`, shared with the benchmarks.

``scripts/cluster.sh up`` (``make cluster``) brings the node up; the session fixture runs it, and takes the node
down again at the end unless it was already up when the session started (then it is left as it was). Every test
works in its own namespace, through ``kubectl`` as an operator would, and talks to the daemon on its pod IP.

Needs root; without it the tier skips, or fails under ``SNNRM_E2E_REQUIRE=1`` (what ``make test`` sets).
"""

from __future__ import annotations

import json
from typing import Any

from snnrm.testing.real_node import NEURON_CORE, Node, wait_for


def core_pod(name: str, namespace: str, image: str, cores: int) -> dict[str, Any]:
    """A pod that asks for ``cores`` neuron cores and prints what it was given, then waits."""
    script = (
        'echo "CORES=$SNNRM_CORES"; env | grep "^SNNRM_CDI_CHIP_" | sed "s/^/CDI /"; '
        'echo "FILE=$(cat /var/run/snnrm/allocation.json | tr -d "\\n")"; '
        'grep "/snnrm/allocation.json " /proc/mounts | sed "s/^/MOUNT /"; '
        "(: > /var/run/snnrm/allocation.json) 2>/dev/null && echo WRITABLE || echo READONLY; "
        "exec sleep 3600"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "stage",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "resources": {"limits": {NEURON_CORE: str(cores)}},
                }
            ],
        },
    }


def run_core_pod(node: Node, namespace: str, name: str, cores: int) -> dict[str, Any]:
    """Create a core pod, wait until it runs and has printed its allocation; return what it printed."""
    node.apply(core_pod(name, namespace, node.image(), cores))
    wait_for(f"pod {name} Running", lambda: node.get("pod", "-n", namespace, name)["status"].get("phase") == "Running")

    def printed() -> dict[str, Any] | None:
        out = node.kubectl("logs", "-n", namespace, name)
        return parse_printout(out) if ("READONLY" in out or "WRITABLE" in out) else None

    return wait_for(f"pod {name} to print its allocation", printed, within=30)


def parse_printout(out: str) -> dict[str, Any]:
    info: dict[str, Any] = {"cdi": [], "mounts": [], "raw": out}
    for line in out.splitlines():
        if line.startswith("CORES="):
            info["cores"] = [c for c in line.removeprefix("CORES=").split(",") if c]
        elif line.startswith("CDI "):
            info["cdi"].append(line.removeprefix("CDI "))
        elif line.startswith("FILE="):
            info["file"] = json.loads(line.removeprefix("FILE="))
        elif line.startswith("MOUNT "):
            info["mounts"].append(line.removeprefix("MOUNT "))
        elif line in ("READONLY", "WRITABLE"):
            info["writable"] = line == "WRITABLE"
    return info


def stage_deployment(
    namespace: str, job: str, index: int, stages: int, *, cores: int, keps: float, image: str
) -> dict[str, Any]:
    """One stage of a split job as docs/split-learning.md writes it: a Deployment behind the placement gate,
    scheduled by the snnrm-scheduler profile, opted in to live remap; the container prints its allocation."""
    labels = {"snnrm.io/job": job, "snnrm.io/stage": str(index)}
    annotations = {
        "snnrm.io/stages": str(stages),
        "snnrm.io/spike-rate-keps": str(keps),
        "snnrm.io/live-remap": "true",
    }
    if index == 0:
        annotations["snnrm.io/input-rate-keps"] = str(keps)
    pod = core_pod(f"{job}-stage{index}", namespace, image, cores)
    spec = pod["spec"]
    spec["schedulerName"] = "snnrm-scheduler"
    spec["schedulingGates"] = [{"name": "snnrm.io/placement"}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{job}-stage{index}", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec},
        },
    }
