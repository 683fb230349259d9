"""The placement tier's rig on the real control plane: ``snnrm controller`` and a second, extender-configured
kube-scheduler as subprocesses, plus fake snnrm nodes (a Node with capacity and a published summary).

The second scheduler runs its own profile (``schedulerName`` :data:`SCHEDULER`), so only pods that ask for it go
through our extender; the session's default scheduler keeps the other tests' pods. Nodes and pods made through
the rig are deleted when the test ends (pods force-deleted: no kubelet is there to confirm a graceful delete).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_controlplane import ControlPlane, KubeClient, KubeError, _http_ok
from e2e_support import free_port, snnrm_command, tail

from snnrm.core.summary import ANNOTATION
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.testing.fake_cluster import SMALL_TOPOLOGY, node_summary, stage_pod

SCHEDULER = "snnrm-e2e"
NEURON_CORE = "snnrm.io/neuron-core"


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log, 60)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(name: str, argv: list[str], workdir: Path, *, env: dict[str, str] | None = None) -> Proc:
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, env=env
        )
    return Proc(name, proc, log)


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_until(what: str, probe: Callable[[], Any], *, within: float = 60, procs: list[Proc] | None = None) -> Any:
    """Call ``probe`` until it returns something truthy; fail with the processes' logs otherwise."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        for p in procs or []:
            p.check()
        with contextlib.suppress(OSError, KubeError, urllib.error.URLError, ValueError):
            last = probe()
            if last:
                return last
        time.sleep(0.25)
    logs = "\n".join(f"--- {p.name}\n{tail(p.log, 40)}" for p in procs or [])
    raise AssertionError(f"{what} not reached within {within}s (last: {str(last)[:1500]})\n{logs}")


def start_controller(
    cp: ControlPlane, workdir: Path, *, identity: str, extra: list[str] | None = None
) -> tuple[Proc, str]:
    port = free_port()
    argv = [
        *snnrm_command(),
        "controller",
        "--kubeconfig",
        str(cp.kubeconfig),
        "--http",
        f"127.0.0.1:{port}",
        "--namespace",
        "default",
        "--identity",
        identity,
        "--reservation-ttl",
        "60",
        "--summary-stale-after",
        "3600",
        *(extra or []),
    ]
    proc = spawn(f"controller-{identity}", argv, workdir)
    base = f"http://127.0.0.1:{port}"
    wait_until("snnrm controller /readyz", lambda: _http_ok(base + "/readyz"), within=60, procs=[proc])
    return proc, base


def start_scheduler(
    cp: ControlPlane, workdir: Path, extender: str, *, weight: int = 10, extra: list[str] | None = None
) -> Proc:
    """kube-scheduler with a profile of its own and our extender (KubeSchedulerConfiguration ``extenders:``)."""
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(cp.kubeconfig)},
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": SCHEDULER}],
        "extenders": [
            {
                "urlPrefix": f"{extender}/extender",
                "filterVerb": "filter",
                "prioritizeVerb": "prioritize",
                "weight": weight,
                "nodeCacheCapable": True,
                "httpTimeout": "5s",
                "ignorable": False,
                "managedResources": [{"name": NEURON_CORE, "ignoredByScheduler": False}],
            }
        ],
    }
    path = workdir / "scheduler-extender.json"
    path.write_text(json.dumps(config, indent=2))
    port = free_port()
    proc = spawn(
        "kube-scheduler-extender",
        [
            str(cp.scheduler_bin),
            f"--config={path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={workdir / 'scheduler-extender-certs'}",
            "--v=2",
            *(extra or []),
        ],
        workdir,
    )
    import ssl

    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    wait_until(
        "extender-configured kube-scheduler /readyz",
        lambda: _http_ok(f"https://127.0.0.1:{port}/readyz", insecure),
        within=60,
        procs=[proc],
    )
    return proc


@dataclass
class Rig:
    """Nodes and pods of one test; everything made here is deleted by :meth:`cleanup`."""

    cp: ControlPlane
    controller: str
    procs: list[Proc]
    k: KubeClient = field(init=False)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    nodes: list[str] = field(default_factory=list)
    pods: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.k = self.cp.client()

    def name(self, base: str) -> str:
        return f"{base}-{self.tag}"

    # -- nodes ---------------------------------------------------------------------------------------------------

    def node(
        self,
        base: str,
        *,
        topology: Topology = SMALL_TOPOLOGY,
        free: int | None = None,
        healthy: int | None = None,
        capacity: int | None = None,
    ) -> str:
        """A Node as a kubelet + snnrm daemon would leave it: capacity in status, a summary annotation."""
        name = self.name(base)
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "snnrm.io/e2e": self.tag}
        self.k.create(
            "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
        )
        self.nodes.append(name)
        cores = str(topology.n_cores if capacity is None else capacity)
        res = {"cpu": "16", "memory": "32Gi", "pods": "110", NEURON_CORE: cores}
        self.k.merge_patch(
            f"/api/v1/nodes/{name}/status",
            {
                "status": {
                    "capacity": res,
                    "allocatable": res,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "E2E", "message": "fake"}],
                }
            },
        )
        self.k.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})
        self.publish(name, topology=topology, free=free, healthy=healthy)
        return name

    def publish(
        self, node: str, *, topology: Topology = SMALL_TOPOLOGY, free: int | None = None, healthy: int | None = None
    ) -> None:
        """What the node's daemon publishes (on a real node: snnrm/cluster/node_agent.py via snnrm/core/summary)."""
        s = node_summary(time.time(), free=free, topology=topology, healthy=healthy)
        self.k.merge_patch(f"/api/v1/nodes/{node}", {"metadata": {"annotations": {ANNOTATION: s.encode()}}})

    # -- pods ----------------------------------------------------------------------------------------------------

    def job(self, base: str, cores: list[int], *, keps: float = 500.0, gated: bool = True) -> tuple[str, list[str]]:
        job = self.name(base)
        names = []
        for i, c in enumerate(cores):
            pod = stage_pod(job, i, len(cores), c, keps=keps, gated=gated, scheduler=SCHEDULER)
            for key in ("uid", "creationTimestamp"):
                pod["metadata"].pop(key)
            self.create_pod(pod)
            names.append(pod["metadata"]["name"])
        return job, names

    def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        out = self.k.create("/api/v1/namespaces/default/pods", pod)
        self.pods.append(pod["metadata"]["name"])
        return dict(out)

    def pod(self, name: str) -> dict[str, Any]:
        return dict(self.k.get(f"/api/v1/namespaces/default/pods/{name}"))

    def delete_pod(self, name: str) -> None:
        with contextlib.suppress(KubeError):
            self.k.request("DELETE", f"/api/v1/namespaces/default/pods/{name}?gracePeriodSeconds=0")

    def events(self, pod: str) -> list[dict[str, Any]]:
        items = self.k.get("/apis/events.k8s.io/v1/namespaces/default/events")["items"]
        return [e for e in items if (e.get("regarding") or {}).get("name") == pod]

    def placement(self) -> dict[str, Any]:
        return dict(get_json(self.controller + "/api/v1/placement"))

    def wait(self, what: str, probe: Callable[[], Any], *, within: float = 60) -> Any:
        return wait_until(what, probe, within=within, procs=self.procs)

    def cleanup(self) -> None:
        for name in self.pods:
            self.delete_pod(name)
        for path in self.other:
            with contextlib.suppress(KubeError):
                self.k.request("DELETE", path)
        for name in self.nodes:
            with contextlib.suppress(KubeError):
                self.k.delete(f"/api/v1/nodes/{name}")


def big_topology(chips: int = 4) -> Topology:
    return Topology.grid(chips=chips, geometry=ChipGeometry(cols=4, rows=4))
