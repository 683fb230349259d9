"""Helpers of the real-node tier (tests/node): kubectl, the daemon's API, pods that print their cores.

The real-node tier: a kubelet, containerd and runc on this machine, snnrm installed by its chart.

``scripts/cluster.sh up`` (``make cluster``) brings the node up; this session fixture runs it, and takes the node
down again at the end unless it was already up when the session started (then it is left as it was). Every test
works in its own namespace, through ``kubectl`` as an operator would, and talks to the daemon on its pod IP.

Needs root; without it the tier skips, or fails under ``SNNRM_E2E_REQUIRE=1`` (what ``make test`` sets).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / ".cluster"
SCRIPT = REPO / "scripts" / "cluster.sh"
NAMESPACE = "snnrm"
NODE = os.environ.get("SNNRM_CLUSTER_NODE", "snnrm-node")
FAULT_TOKEN = "snnrm-cluster-fault-token"  # scripts/cluster.sh installs the chart with it
NEURON_CORE = "snnrm.io/neuron-core"
EVENT_THROUGHPUT = "snnrm.io/event-throughput"

T = TypeVar("T")


class Node:
    """kubectl against the cluster, and the daemon's HTTP API on its pod IP."""

    def __init__(self) -> None:
        self.kubectl_bin = str(CLUSTER / "bin" / "kubectl")
        self.kubeconfig = str(CLUSTER / "kubeconfig")

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=json.dumps(obj))

    def allocatable(self) -> dict[str, str]:
        return dict(self.get("node", NODE)["status"]["allocatable"])

    def daemon_pod(self) -> dict[str, Any]:
        pods = self.get("pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=daemon")["items"]
        ready = [p for p in pods if _ready(p) and not p["metadata"].get("deletionTimestamp")]
        assert ready, f"no ready daemon pod: {[p['metadata']['name'] for p in pods]}"
        return dict(ready[0])

    def image(self) -> str:
        ds = self.get("daemonset", "-n", NAMESPACE, "snnrm-daemon")
        return str(ds["spec"]["template"]["spec"]["containers"][0]["image"])

    def daemon(self, method: str, path: str, body: Any = None) -> Any:
        ip = self.daemon_pod()["status"]["podIP"]
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{ip}:9400{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {FAULT_TOKEN}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def cluster(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args], check=True, timeout=600)


def _ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def wait_for(what: str, probe: Callable[[], T | None], within: float = 60.0, every: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (AssertionError, OSError, ValueError, KeyError) as e:
            last = e
        else:
            if value:
                return value
            last = value
        time.sleep(every)
    raise AssertionError(f"timed out after {within:g}s waiting for {what}; last: {last!r}")


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
