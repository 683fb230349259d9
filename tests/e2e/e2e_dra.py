"""Helpers of the DRA e2e tests: the upstream kubelet DRA manager harness (tests/e2e/dra), ``snnrm run --dra``,
fake Nodes, and the DRA objects (DeviceClasses, ResourceClaims, Pods) the real scheduler allocates from."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from e2e_controlplane import ControlPlane, KubeClient, KubeError
from e2e_support import Daemon, HarnessError, tail, tool

DRIVER = "snnrm.io"
RESOURCE = "/apis/resource.k8s.io/v1"
CHIPS, CORES = 4, 16  # loihi2 preset: a 4x4 mesh per chip, one core per router -> 16 core groups per chip
CLASSES = {
    "snnrm-core-group": 'device.driver == "snnrm.io" && device.attributes["snnrm.io"].type == "core-group"',
    "snnrm-chip": 'device.driver == "snnrm.io" && device.attributes["snnrm.io"].type == "chip"',
    "snnrm-event-throughput": (
        'device.driver == "snnrm.io" && device.attributes["snnrm.io"].type == "event-throughput"'
    ),
}


class DraHarness:
    """The upstream kubelet DRA manager + plugin manager in a subprocess; see tests/e2e/dra/main.go."""

    def __init__(self, binary: Path, *, kubeconfig: Path, node: str, registry_dir: Path, state_dir: Path, log: Path):
        self.argv = [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--node-name={node}",
            f"--registry-dir={registry_dir}",
            f"--state-dir={state_dir}",
            "-v=4",
        ]
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        ready = await self._line(30)
        if ready.get("event") != "ready":
            raise HarnessError(f"dra harness did not start: {ready}\n{tail(self.log)}")

    async def _line(self, within: float) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise HarnessError(f"dra harness said nothing for {within}s:\n{tail(self.log)}") from None
        if not raw:
            rc = await self.proc.wait()
            raise HarnessError(f"dra harness exited (rc={rc}):\n{tail(self.log)}")
        msg: dict[str, Any] = json.loads(raw)
        return msg

    async def cmd(self, line: str, *, check: bool = True, within: float = 120) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        reply = await self._line(within)
        if check and not reply.get("ok"):
            raise HarnessError(f"`{line}` failed: {reply.get('error')}\nreply: {reply}\nlog:\n{tail(self.log, 60)}")
        return reply

    async def close(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def dra_daemon(workdir: Path, *, kubeconfig: Path, node: str, registry_dir: Path, plugin_dir: Path) -> Daemon:
    """``snnrm run --backend sim --dra only`` publishing for ``node`` (flags given twice: the last one wins)."""
    d = Daemon(workdir / "unused-device-plugins", workdir)
    d.argv += [
        "--sim-chips",
        str(CHIPS),
        "--sim-cores",
        str(CORES),
        "--dra",
        "only",
        "--dra-kubeconfig",
        str(kubeconfig),
        "--dra-node-name",
        node,
        "--dra-registry-dir",
        str(registry_dir),
        "--dra-plugin-dir",
        str(plugin_dir),
    ]
    return d


def make_node(k: KubeClient, prefix: str = "dra-node") -> str:
    """A Ready Node created through the API (no kubelet runs it; the DRA harness stands in for its DRA part)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    k.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    resources = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    k.merge_patch(
        f"/api/v1/nodes/{name}/status",
        {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True", "reason": "E2E", "message": "fake node"}],
            }
        },
    )
    k.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})  # what the node lifecycle controller does
    return name


def ensure_classes(k: KubeClient) -> None:
    for name, cel in CLASSES.items():
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": cel}}]},
        }
        try:
            k.create(f"{RESOURCE}/deviceclasses", body)
        except KubeError as e:
            if e.status != 409:
                raise


def node_slices(k: KubeClient, node: str) -> list[dict[str, Any]]:
    sel = f"spec.nodeName={node},spec.driver={DRIVER}"
    items: list[dict[str, Any]] = k.get(f"{RESOURCE}/resourceslices?fieldSelector={sel}")["items"]
    return items


def devices(k: KubeClient, node: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in node_slices(k, node) for d in s["spec"].get("devices") or []}


def request(
    name: str, device_class: str, *, cel: str | None = None, tolerate: bool = False, keps: str | None = None
) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": device_class, "allocationMode": "ExactCount", "count": 1}
    if cel:
        exactly["selectors"] = [{"cel": {"expression": cel}}]
    if tolerate:
        exactly["tolerations"] = [{"key": "snnrm.io/unhealthy", "operator": "Exists"}]
    if keps:
        exactly["capacity"] = {"requests": {"snnrm.io/keps": keps}}
    return {"name": name, "exactly": exactly}


def claim_with_pod(
    k: KubeClient,
    node: str,
    requests: list[dict[str, Any]],
    *,
    constraints: list[dict[str, Any]] | None = None,
    ns: str = "default",
) -> tuple[str, str]:
    """A ResourceClaim and a Pod using it, pinned to ``node``; returns (claim, pod) names."""
    suffix = uuid.uuid4().hex[:6]
    claim, pod = f"claim-{suffix}", f"pod-{suffix}"
    spec: dict[str, Any] = {"devices": {"requests": requests}}
    if constraints:
        spec["devices"]["constraints"] = constraints
    k.create(
        f"{RESOURCE}/namespaces/{ns}/resourceclaims",
        {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": claim}, "spec": spec},
    )
    k.create(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "resourceClaims": [{"name": "snn", "resourceClaimName": claim}],
                "containers": [
                    {"name": "stage", "image": "registry.invalid/none", "resources": {"claims": [{"name": "snn"}]}}
                ],
            },
        },
    )
    return claim, pod


def bound(k: KubeClient, pod: str, node: str, *, ns: str = "default", within: float = 60) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{ns}/pods/{pod}"
    try:
        p: dict[str, Any] = k.wait_for(path, lambda p: p["spec"].get("nodeName") == node, within=within, what="bound")
    except TimeoutError:
        conditions = k.get(path).get("status", {}).get("conditions")
        raise TimeoutError(f"pod {pod} not bound to {node} within {within}s; conditions: {conditions}") from None
    return p


async def first_bound(k: KubeClient, pods: list[str], node: str, *, ns: str = "default", within: float = 60) -> str:
    """The first of ``pods`` the scheduler binds to ``node`` (they compete for the same devices)."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        for pod in pods:
            if k.get(f"/api/v1/namespaces/{ns}/pods/{pod}")["spec"].get("nodeName") == node:
                return pod
        await asyncio.sleep(0.2)
    raise TimeoutError(f"none of {pods} bound to {node} within {within}s")


def unschedulable(k: KubeClient, pod: str, *, ns: str = "default", within: float = 60) -> dict[str, Any]:
    def pred(p: dict[str, Any]) -> bool:
        return not p["spec"].get("nodeName") and any(
            c["type"] == "PodScheduled" and c["status"] == "False" for c in p.get("status", {}).get("conditions", [])
        )

    p: dict[str, Any] = k.wait_for(f"/api/v1/namespaces/{ns}/pods/{pod}", pred, within=within, what="Unschedulable")
    return p


def allocation(k: KubeClient, claim: str, *, ns: str = "default") -> list[dict[str, Any]]:
    c = k.get(f"{RESOURCE}/namespaces/{ns}/resourceclaims/{claim}")
    results: list[dict[str, Any]] = ((c.get("status") or {}).get("allocation") or {}).get("devices", {}).get(
        "results"
    ) or []
    return results


def release(k: KubeClient, claim: str, pod: str, *, ns: str = "default") -> None:
    """Delete the pod and free the claim's devices, as the kubelet and the resourceclaim controller (neither runs
    here) would: force-delete the pod, clear reservedFor and the allocation, drop the finalizer, delete."""
    with contextlib.suppress(KubeError):
        k.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{pod}?gracePeriodSeconds=0")
    path = f"{RESOURCE}/namespaces/{ns}/resourceclaims/{claim}"
    with contextlib.suppress(KubeError):
        k.merge_patch(path + "/status", {"status": {"reservedFor": None}})
        k.merge_patch(path + "/status", {"status": {"allocation": None}})
    with contextlib.suppress(KubeError):
        k.merge_patch(path, {"metadata": {"finalizers": None}})
    with contextlib.suppress(KubeError):
        k.delete(path)


async def wait_until(pred: Any, *, within: float = 30, what: str = "condition", last: Any = None) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what} not reached within {within}s" + (f"; last: {last()}" if last else ""))
        await asyncio.sleep(0.2)


@dataclass
class DraNode:
    """A Node of the control plane with the upstream kubelet DRA manager and ``snnrm run --dra only`` for it."""

    name: str
    k: KubeClient
    harness: DraHarness
    daemon: Daemon
    cdi_dir: Path

    def devices(self) -> dict[str, dict[str, Any]]:
        return devices(self.k, self.name)

    async def fault(self, chip: int, core: int) -> int:
        reply = await self.daemon.post("/sim/faults", {"kind": "core-failure", "chip": chip, "core": core})
        return int(reply["id"])

    async def clear(self, fault_id: int) -> None:
        async with aiohttp.ClientSession() as http, http.delete(f"{self.daemon.base}/sim/faults/{fault_id}") as r:
            assert r.status < 300, await r.text()


@contextlib.asynccontextmanager
async def running_dra_node(cp: ControlPlane, short_tmp: Path, tmp_path: Path, *, expect: int) -> AsyncIterator[DraNode]:
    """A fresh Node, the upstream kubelet DRA manager for it (whose start wipes the node's slices, as a kubelet's
    does) and ``snnrm run --dra only``; yields once the kubelet registered the driver and
    ``expect`` devices are published."""
    k = cp.client()
    ensure_classes(k)
    node = make_node(k)
    registry, plugins = short_tmp / "plugins_registry", short_tmp / "plugins" / DRIVER
    harness = DraHarness(
        tool("SNNRM_DRA_HARNESS", "dra-harness"),
        kubeconfig=cp.kubeconfig,
        node=node,
        registry_dir=registry,
        state_dir=tmp_path / "kubelet-state",
        log=tmp_path / "dra-harness.log",
    )
    daemon = dra_daemon(tmp_path, kubeconfig=cp.kubeconfig, node=node, registry_dir=registry, plugin_dir=plugins)
    try:
        await harness.start()
        await daemon.start()
        await harness.cmd(f"registered {DRIVER} 30")
        n = DraNode(node, k, harness, daemon, tmp_path / "cdi")
        await wait_until(lambda: len(n.devices()) == expect, what="pool published", last=n.devices)
        yield n
    finally:
        await daemon.stop()
        await harness.close()


@dataclass
class GatedControlPlane(ControlPlane):
    """The same control plane with ``--feature-gates`` on kube-apiserver and kube-scheduler (the shared fixture's
    defaults stay untouched)."""

    feature_gates: str = ""

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        if self.feature_gates and name in ("kube-apiserver", "kube-scheduler"):
            argv = [*argv, f"--feature-gates={self.feature_gates}"]
        return super()._spawn(name, argv)
