"""``python -m benchmarks.kube_client``: the product's Kubernetes calls against a real kube-apiserver.

Two paths that depend on the client layer, timed on the e2e rig's control plane (real etcd + kube-apiserver,
tests/e2e/e2e_controlplane.py), nothing else running:

* controller sync: a fresh :class:`~snnrm.cluster.cache.ClusterCache` lists and decodes ``NODES`` annotated Nodes
  and ``PODS`` stage pods until ``synced`` (what a controller replica does at start and after every 410), repeated;
  and ``NODES`` summary merge patches on the Nodes (what the node agents write), their p50/p99 per call.
* DRA publish: :meth:`~snnrm.dra.publisher.SlicePublisher.sync_once` of a ``DRA_CHIPS`` x 256-core pool: the first
  publish (creates), a health change (updates with taints), and a re-list pass that finds nothing to write.

Prints wall-clock figures (median of the repeats); the machine is shared, so ``uptime`` load is printed too.
``SNNRM_KUBE_BENCH`` (default ``500:200:5:8``) is nodes:pods:repeats:dra_chips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from snnrm.cluster.cache import ClusterCache
from snnrm.core.cluster import ClusterIndex
from snnrm.core.dra import DRIVER, DraLayout, HardwareInfo
from snnrm.core.summary import ANNOTATION
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.dra.publisher import SlicePublisher
from snnrm.dra.view import DraView
from snnrm.kube.api import NODES, PODS, ClusterApi
from snnrm.kube.client import KubeAsyncApi
from snnrm.kube.dra import DRA_TIMEOUT, DraApi
from snnrm.testing.fake_cluster import node_summary, stage_pod
from snnrm.testing.fake_telemetry import StaticTelemetry
from snnrm.testing.tools import REPO, built_tool

sys.path.insert(0, str(REPO / "tests" / "e2e"))
from e2e_controlplane import ControlPlane


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def controller_sync(api: ClusterApi, nodes: int, pods: int, repeats: int) -> None:
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4))
    names = [f"bench-{i:05d}" for i in range(nodes)]
    sem = asyncio.Semaphore(32)

    async def node(name: str) -> None:
        async with sem:
            s = node_summary(time.time(), topology=topo)
            await api.create(NODES, {"metadata": {"name": name, "annotations": {ANNOTATION: s.encode()}}})

    async def pod(i: int) -> None:
        async with sem:
            p = stage_pod(f"job{i // 4}", i % 4, 4, 2, gated=True)
            for key in ("uid", "creationTimestamp"):
                p["metadata"].pop(key)
            await api.create(PODS, p, namespace="default")

    t = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for n in names:
            tg.create_task(node(n))
        for i in range(pods):
            tg.create_task(pod(i))
    print(f"  setup: {nodes} Nodes + {pods} pods in {time.perf_counter() - t:.1f} s")
    syncs, sync_cpu = [], []
    for _ in range(repeats):
        cache = ClusterCache(api, ClusterIndex(stale_after=1e9))
        t, c = time.perf_counter(), time.process_time()
        task = asyncio.create_task(cache.run())
        await cache.synced.wait()
        syncs.append(time.perf_counter() - t)
        sync_cpu.append(time.process_time() - c)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, BaseExceptionGroup):
            await task
    print(
        f"  controller cache sync ({nodes} nodes, {pods} pods): median {statistics.median(syncs) * 1e3:.0f} ms"
        f" (runs: {', '.join(f'{s * 1e3:.0f}' for s in syncs)}); client CPU median"
        f" {statistics.median(sync_cpu) * 1e3:.0f} ms [{load()}]"
    )
    lat = []
    c = time.process_time()
    for name in names:
        s = node_summary(time.time(), topology=topo, fill=0.1)
        t = time.perf_counter()
        await api.merge_patch(NODES, name, {"metadata": {"annotations": {ANNOTATION: s.encode()}}})
        lat.append(time.perf_counter() - t)
    print(
        f"  summary merge patch x{nodes}: p50 {pct(lat, 0.5) * 1e3:.2f} ms p99 {pct(lat, 0.99) * 1e3:.2f} ms"
        f" total {sum(lat):.2f} s; client CPU {(time.process_time() - c) / len(names) * 1e3:.2f} ms per patch"
        f" (summary encoding included) [{load()}]"
    )


async def dra_publish(api: KubeAsyncApi, chips: int, repeats: int) -> None:
    topo = Topology.grid(chips=chips, geometry=ChipGeometry(cols=16, rows=16), nominal_keps=1000.0)
    layout = DraLayout.build(topo)
    first, health, relist = [], [], []
    cpu: dict[str, list[float]] = {"first publish": [], "health change": [], "re-list, no writes": []}
    for r in range(repeats):
        node = f"dra-bench-{r}"
        await api.create(NODES, {"metadata": {"name": node}})
        tel = StaticTelemetry(topo)
        tel.time = 1.0
        view = DraView(layout, tel)
        view.fold()
        pub = SlicePublisher(
            DraApi(api.with_timeout(DRA_TIMEOUT)), view, driver=DRIVER, node=node, info=HardwareInfo(model="loihi2")
        )
        pub.features = await pub._probe()
        pub._owner = await pub._owner_ref()
        t, c = time.perf_counter(), time.process_time()
        await pub.sync_once()
        first.append(time.perf_counter() - t)
        cpu["first publish"].append(time.process_time() - c)
        tel.fail(5)
        tel.time = 2.0
        view.fold()
        t, c = time.perf_counter(), time.process_time()
        await pub.sync_once()
        health.append(time.perf_counter() - t)
        cpu["health change"].append(time.process_time() - c)
        pub._cache = None
        t, c = time.perf_counter(), time.process_time()
        wrote = await pub.sync_once()
        relist.append(time.perf_counter() - t)
        cpu["re-list, no writes"].append(time.process_time() - c)
        assert not wrote
    devices = sum(len(s["spec"].get("devices") or []) for s in pub._cache.values()) if pub._cache else 0
    print(f"  DRA pool: {topo.n_cores} cores, {len(pub._cache or {})} slices, {devices} devices")
    for what, xs in (("first publish", first), ("health change", health), ("re-list, no writes", relist)):
        print(
            f"  DRA sync_once {what}: median {statistics.median(xs) * 1e3:.0f} ms"
            f" (runs: {', '.join(f'{x * 1e3:.0f}' for x in xs)}); client CPU median"
            f" {statistics.median(cpu[what]) * 1e3:.0f} ms [{load()}]"
        )


async def run(workdir: Path) -> None:
    nodes, pods, repeats, chips = (int(x) for x in os.environ.get("SNNRM_KUBE_BENCH", "500:200:5:8").split(":"))
    cp = ControlPlane(
        workdir, built_tool("SNNRM_ETCD"), built_tool("SNNRM_KUBE_APISERVER"), built_tool("SNNRM_KUBE_SCHEDULER")
    )
    try:
        cp.start()
        for name, proc in cp.procs:  # only the apiserver and etcd are measured
            if name == "kube-scheduler":
                proc.terminate()
                proc.wait(15)
        async with await KubeAsyncApi.connect(cp.kubeconfig) as api:
            await controller_sync(api, nodes, pods, repeats)
            await dra_publish(api, chips, repeats)
    finally:
        cp.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="snnrm-kube-bench-") as d:
        asyncio.run(run(Path(d)))


if __name__ == "__main__":
    main()
