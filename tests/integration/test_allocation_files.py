"""Allocation files are verified at daemon start: a corrupt or missing one is rewritten from what the kubelet holds.

The whole daemon against the kubelet stand-in (device plugin over real unix sockets) and a fake PodResources
server (the kubelet's persisted admissions, real gRPC); the daemon is stopped, a file corrupted and another
deleted, the daemon started again, and both files read back as Allocate wrote them.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from snnrm.app import Daemon
from snnrm.cluster.remap import RemapRecord
from snnrm.config import Config
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.fake_podresources import FakePodResourcesLister


def _config(tmp: Path) -> Config:
    return Config(
        backend="sim",
        kubelet_dir=tmp / "dp",
        http="127.0.0.1:0",
        sim_chips=2,
        sim_cores=16,
        state_dir=tmp / "state",
        cdi_dir=tmp / "cdi",
        sample_period=0.05,
        pod_resources_socket=tmp / "pr" / "kubelet.sock",
    )


def _contents(*paths: Path) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() if p.exists() else None for p in paths}


def _inode(path: Path) -> int:
    return path.stat().st_ino


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _damage(*, torn: Path, wrong: Path, gone: Path) -> int:
    """Tear one file (a crash mid-write, a bad disk), replace one with valid JSON of the wrong content, delete one;
    returns the torn file's inode."""
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    wrong.write_text("{}\n")
    gone.unlink()
    return _inode(torn)


async def _run_until_registered(config: Config, kubelet: KubeletStandIn) -> tuple[asyncio.Event, asyncio.Task[None]]:
    daemon = await Daemon.create(config)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop=stop))
    # This daemon's own registrations (the stand-in keeps a stopped plugin's capacity, so capacity proves nothing).
    await asyncio.wait_for(asyncio.gather(*(p.registered.wait() for p in daemon.plugins)), 10)
    await kubelet.wait_capacity(NEURON_CORE, 32, allocatable=32, within=10)
    return stop, task


async def test_a_corrupt_or_missing_allocation_file_is_rewritten_at_start(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with KubeletStandIn(config.kubelet_dir) as kubelet, FakePodResourcesLister(config.pod_resources_socket) as pr:
        stop, task = await _run_until_registered(config, kubelet)
        a = await kubelet.admit("uid-a", "main", {NEURON_CORE: 4, EVENT_THROUGHPUT: 2})
        b = await kubelet.admit("uid-b", "main", {NEURON_CORE: 3})
        for (uid, container, resource), ids in kubelet.assigned().items():
            pr.assign("default", uid, container, resource, ids)  # what the kubelet's checkpoint says
        stop.set()
        await asyncio.wait_for(task, 10)

        cores_a = Path(a[NEURON_CORE].mounts[0].host_path)
        blocks_a = Path(a[EVENT_THROUGHPUT].mounts[0].host_path)
        cores_b = Path(b[NEURON_CORE].mounts[0].host_path)
        written = _contents(cores_a, blocks_a, cores_b)
        inode_a = _damage(torn=cores_a, wrong=blocks_a, gone=cores_b)

        stop, task = await _run_until_registered(config, kubelet)
        try:
            # Repaired before the plugins registered, so no Allocate (and no container start) saw the damage.
            assert _contents(*written) == written
            assert _inode(cores_a) == inode_a  # in place: a container's bind mount still sees it
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_a_remapped_allocation_file_is_left_to_the_remap_ledger(tmp_path: Path) -> None:
    """A file a live remap rewrote describes other cores than its IDs: verification must not undo the remap."""
    config = _config(tmp_path)
    async with KubeletStandIn(config.kubelet_dir) as kubelet, FakePodResourcesLister(config.pod_resources_socket) as pr:
        stop, task = await _run_until_registered(config, kubelet)
        a = await kubelet.admit("uid-a", "main", {NEURON_CORE: 2})
        for (uid, container, resource), ids in kubelet.assigned().items():
            pr.assign("default", uid, container, resource, ids)
        stop.set()
        await asyncio.wait_for(task, 10)

        path = Path(a[NEURON_CORE].mounts[0].host_path)
        admitted = tuple(a[NEURON_CORE].envs["SNNRM_CORES"].split(","))
        record = RemapRecord("default", "uid-a", "uid-a", admitted, ("chip1-core0", "chip1-core1"), 1, 5.0)
        _write(config.state_dir / "remaps" / "default_uid-a.json", json.dumps(record.as_json()))
        _write(path, '{"resource": "snnrm.io/neuron-core", "generation": 1}\n')  # stands for the remap's body
        remapped = _contents(path)

        stop, task = await _run_until_registered(config, kubelet)
        try:
            assert _contents(path) == remapped
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
