"""The daemon on the sysfs backend: a driver's device tree (faked on disk) to the kubelet stand-in."""

from __future__ import annotations

import asyncio
from pathlib import Path

from snnrm.app import Daemon
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.fake_sysfs import FakeSysfsTree


async def test_pushed_fault_and_garbled_counters_reach_the_kubelet(tmp_path: Path) -> None:
    """A failure appended to the events file is pushed to ListAndWatch; a core whose counters turn to garbage
    goes stale and is withdrawn too, while the daemon keeps serving."""
    tree = FakeSysfsTree(tmp_path / "sys", chips=2, cols=4, rows=2)
    tree.write_counters(events_in=0.0, events_processed=0.0)
    config = Config(
        backend="sysfs",
        sysfs_root=tree.root,
        kubelet_dir=tmp_path / "dp",
        http="127.0.0.1:0",
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
        sample_period=0.05,
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        try:
            await kubelet.wait_capacity(NEURON_CORE, 16, within=10)
            await asyncio.wait_for(daemon.backend.watching.wait(), 10)  # type: ignore[attr-defined]
            tree.fail_core(3)
            await kubelet.wait_until(lambda: kubelet.allocatable(NEURON_CORE) == 15, within=5)
            assert kubelet.devices(NEURON_CORE)["chip0-core3"] is False

            # chip1's snapshot table and core 9's own counter file turn to garbage: the backend falls back to
            # the per-core files, core 9 reads NaN, its samples are rejected and it is withdrawn; the rest of
            # chip1 stays healthy.
            tree.corrupt(tree.core_dir(9).relative_to(tree.root) / "events_processed", "garbage")
            tree.corrupt(Path("chip1") / "counters", "garbage")
            await kubelet.wait_until(lambda: kubelet.allocatable(NEURON_CORE) == 14, within=10)
            assert kubelet.devices(NEURON_CORE)["chip1-core1"] is False
            assert daemon.node.monitor.rates.rejected_samples[9] > 0
            # It stays that way: once the daemon has taken in more garbled frames, its device list has not moved.
            feed, monitor = daemon.node.feeds[NEURON_CORE], daemon.node.monitor
            version, frames = feed.version, monitor.frames
            async with asyncio.timeout(10):
                while monitor.frames < frames + 5:  # noqa: ASYNC110 - the monitor counts frames; it has no event
                    await asyncio.sleep(0.02)
            assert feed.version == version
            assert kubelet.allocatable(NEURON_CORE) == 14
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
