"""The status page's history: a fixed-size ring of node-level series, sampled by a root task."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from snnrm.backends.sim import SimBackend
from snnrm.core.telemetry import FaultKind, HardFault
from snnrm.http.history import SERIES, HeatHistory, HeatMetric, StatusHistory, node_sample
from snnrm.node import NodeService


@pytest.fixture
async def node() -> NodeService:
    return await NodeService.start(SimBackend(chips=2, cores_per_chip=8), block_keps=1000.0, sample_period=0.1)


def _column(v: float) -> np.ndarray:
    return np.full(len(SERIES), v)


async def test_ring_keeps_the_newest_window_oldest_first(node: NodeService) -> None:
    """Past ``window`` samples the oldest are overwritten; the snapshot is always in time order."""
    h = StatusHistory(node, window=3)
    assert h.snapshot().t.shape == (0,)
    assert h.snapshot().values.shape == (len(SERIES), 0)
    for i in range(5):
        h.append(float(i), _column(i))
    w = h.snapshot()
    assert len(h) == 3
    assert w.t.tolist() == [2.0, 3.0, 4.0]
    assert w.values[0].tolist() == [2.0, 3.0, 4.0]
    w.values[0, 0] = -1  # a snapshot is a copy: serialising it later never sees the ring move
    assert h.snapshot().values[0, 0] == 2.0


async def test_rejects_an_empty_window(node: NodeService) -> None:
    with pytest.raises(ValueError, match="window"):
        StatusHistory(node, window=0)


async def test_sample_reduces_the_node_to_its_series(node: NodeService) -> None:
    """Healthy cores and blocks follow the device lists; efficiency is 1 and rates 0 before any traffic."""
    node.monitor.observe(await node.backend.read_frame())
    values = dict(zip(SERIES, node_sample(node).tolist(), strict=True))
    assert values["healthy_cores"] == 16
    assert values["healthy_blocks"] == len(node.blocks.ids)
    assert values["efficiency_mean"] == 1.0
    assert values["spike_transfer_ratio"] == 1.0
    assert values["events_dropped_per_s"] == 0.0

    node.monitor.hard_fault(HardFault(kind=FaultKind.CORE, index=3, failed=True, timestamp=1.0))
    node._publish()
    values = dict(zip(SERIES, node_sample(node).tolist(), strict=True))
    assert values["healthy_cores"] == 15
    assert values["effective_keps"] < float(np.sum(node.topology.core_nominal_keps))


async def test_run_waits_for_the_first_frame_then_samples_each_period(node: NodeService) -> None:
    """No sample before telemetry flows (the defaults would be a fake "all healthy"); then one per period."""
    ticks = iter(range(1000))
    h = StatusHistory(node, period=0.01, clock=lambda: float(next(ticks)))
    task = asyncio.create_task(h.run())
    try:
        # A bare yield lets the new task run up to its first wait (the loop runs ready callbacks in order): had it
        # not waited for ``ready``, it would have sampled by now, since a sample is taken before any await.
        await asyncio.sleep(0)
        assert not task.done()
        assert len(h) == 0
        node.ready.set()
        async with asyncio.timeout(5):
            while len(h) < 3:  # noqa: ASYNC110 - the ring has no event; poll it with a deadline
                await asyncio.sleep(0.01)
        assert h.snapshot().t.tolist()[:3] == [0.0, 1.0, 2.0]  # one clock reading per sample, in order
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _heat(fill: list[float], load: list[float], eff: list[float]) -> dict[HeatMetric, np.ndarray]:
    return {"queue_fill": np.array(fill), "load": np.array(load), "efficiency": np.array(eff)}


def test_the_heat_history_keeps_the_worst_per_core_per_bucket() -> None:
    """Each bucket keeps the fullest queue, the highest load and the lowest efficiency per core; the peak covers
    every kept bucket; past ``buckets`` the oldest goes; an unknown reading never hides a known one."""
    heat = HeatHistory(2, bucket=10.0, buckets=2)
    assert heat.window("queue_fill").frames.shape == (0, 2)
    assert np.isnan(heat.window("queue_fill").peak).all()
    heat.add(100.0, _heat([0.1, 0.2], [0.5, 0.5], [1.0, 0.9]))
    heat.add(105.0, _heat([0.9, np.nan], [0.1, 0.6], [0.8, np.nan]))  # the hot spot: 5 s of saturation
    heat.add(111.0, _heat([0.0, 0.3], [0.2, 0.2], [1.0, 1.0]))  # the stage moved: calm again
    w = heat.window("queue_fill")
    assert w.t.tolist() == [100.0, 110.0]
    np.testing.assert_allclose(w.frames, [[0.9, 0.2], [0.0, 0.3]], rtol=1e-6)
    assert w.peak.tolist() == pytest.approx([0.9, 0.3])
    assert heat.window("load").frames[0].tolist() == pytest.approx([0.5, 0.6])
    assert heat.window("efficiency").peak.tolist() == pytest.approx([0.8, 0.9])
    heat.add(125.0, _heat([0.0, 0.0], [0.0, 0.0], [1.0, 1.0]))  # two buckets kept: the hot spot's is gone
    assert heat.window("queue_fill").t.tolist() == [110.0, 120.0]
    assert heat.window("queue_fill").peak.tolist() == pytest.approx([0.0, 0.3])


async def test_sampling_fills_the_heat_history(node: NodeService) -> None:
    node.monitor.observe(await node.backend.read_frame())
    h = StatusHistory(node, clock=lambda: 1000.0)
    h.sample()
    assert len(h.heat) == 1
    assert h.heat.window("load").frames.shape == (1, node.topology.n_cores)
