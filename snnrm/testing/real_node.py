"""A real node brought up by ``scripts/cluster.sh`` (``make cluster``): kubectl against it and the daemon's HTTP
API on its pod IP, for the real-node test tier (tests/node) and the benchmarks that run on it
(``benchmarks/node_failover.py``). Nothing here is a fake: every call reaches the real apiserver or the daemon pod.

Works from a checkout of the repository (the node's state lives in ``.cluster/`` beside the sources).
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
"""The checkout (snnrm/testing/real_node.py is two levels below it)."""
CLUSTER = REPO / ".cluster"
SCRIPT = REPO / "scripts" / "cluster.sh"
NAMESPACE = "snnrm"
NODE = os.environ.get("SNNRM_CLUSTER_NODE", "snnrm-node")
FAULT_TOKEN = "snnrm-cluster-fault-token"  # noqa: S105 (a test node's token: scripts/cluster.sh installs the chart with it)
NEURON_CORE = "snnrm.io/neuron-core"
EVENT_THROUGHPUT = "snnrm.io/event-throughput"

T = TypeVar("T")


class Node:
    """kubectl against the cluster, and the daemon's HTTP API on its pod IP."""

    def __init__(self) -> None:
        self.kubectl_bin = str(CLUSTER / "bin" / "kubectl")
        self.kubeconfig = str(CLUSTER / "kubeconfig")

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(  # noqa: S603 (our kubectl, arguments from our own code)
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
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (http:// to the daemon pod)
            raw = resp.read()
        return json.loads(raw) if raw else None

    def cluster(self, *args: str) -> None:
        subprocess.run(["bash", str(SCRIPT), *args], check=True, timeout=600)  # noqa: S603, S607 (our script)


def _ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def cluster_running() -> bool:
    """Whether every process of the node that ``scripts/cluster.sh up`` starts is running now."""
    pids = CLUSTER / "pids"
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet"]
    for name in names:
        f = pids / f"{name}.pid"
        if not f.is_file():
            return False
        try:
            os.kill(int(f.read_text()), 0)
        except (OSError, ValueError):
            return False
    return True


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


__all__ = [
    "CLUSTER",
    "EVENT_THROUGHPUT",
    "FAULT_TOKEN",
    "NAMESPACE",
    "NEURON_CORE",
    "NODE",
    "REPO",
    "SCRIPT",
    "Node",
    "cluster_running",
    "wait_for",
]
