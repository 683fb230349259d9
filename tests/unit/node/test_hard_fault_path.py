"""The hard-fault path of the node service: cores published per event at once, capacity once per burst after."""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from snnrm import node as node_module
from snnrm.backends.sim import SimBackend
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.monitor import HealthPlan, NodeMonitor
from snnrm.core.telemetry import TelemetryFrame
from snnrm.node import BURST_SETTLE_S, FAULT_SEND_S, NodeService


async def _node() -> tuple[SimBackend, NodeService]:
    backend = SimBackend(chips=2, cores_per_chip=16, seed=1)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.1)
    return backend, node


Prepare = Callable[[NodeMonitor, TelemetryFrame, Callable[[], None]], HealthPlan | None]


def _hold_prepare(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event, Prepare]:
    """Hold each frame's prepare in its worker thread: it sets ``planned`` when computed, then waits for ``go``
    (while the test applies a fault on the loop). Returns (planned, go, the real prepare)."""
    planned, go = threading.Event(), threading.Event()
    real_prepare = NodeMonitor.prepare

    def held(self: NodeMonitor, frame: TelemetryFrame, pause: Callable[[], None]) -> HealthPlan | None:
        plan = real_prepare(self, frame, pause)
        planned.set()
        go.wait(10)
        return plan

    monkeypatch.setattr(NodeMonitor, "prepare", held)
    return planned, go, real_prepare


async def test_a_burst_publishes_cores_per_event_and_capacity_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed chip's 16 cores reach the neuron-core feed before any capacity work; capacity runs once."""
    backend, node = await _node()
    order: list[str] = []
    real_capacity = NodeMonitor.fault_capacity

    def capacity(self: NodeMonitor, now: float) -> bool:
        order.append("capacity")
        return real_capacity(self, now)

    monkeypatch.setattr(NodeMonitor, "fault_capacity", capacity)
    cores_feed, blocks_feed = node.feeds[NEURON_CORE], node.feeds[EVENT_THROUGHPUT]
    real_publish = cores_feed.publish

    def publish(devices: object) -> bool:
        order.append("cores")
        return real_publish(devices)  # type: ignore[arg-type]

    monkeypatch.setattr(cores_feed, "publish", publish)
    blocks_before = blocks_feed.version
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(node.watch_hard_faults())
        await asyncio.sleep(0)  # subscribed
        injected_at = time.monotonic()
        backend.inject({"kind": "core_failure", "cores": list(range(16))})
        for _ in range(100):
            await asyncio.sleep(0)
        # Every core is Unhealthy before the burst settles: nothing waited for the capacity update.
        current = cores_feed.current
        assert current is not None
        assert not current.healthy[:16].any()
        assert current.healthy[16:].all()
        assert node.fault_published >= injected_at  # what the reallocator's pass stands back for
        await asyncio.sleep(BURST_SETTLE_S * 3)
        watch.cancel()
    # 16 core publishes, then the one capacity update (whose publish of every resource follows it).
    assert order[:17] == ["cores"] * 16 + ["capacity"]
    assert order.count("capacity") == 1
    assert blocks_feed.version > blocks_before  # chip 0's event throughput is gone
    assert not np.any(node.monitor.capacity.healthy_per_chip[0])


async def test_shutdown_mid_burst_still_applies_the_capacity() -> None:
    """Cancelled before the burst settles: the faults already applied still reach the capacity (not lost)."""
    backend, node = await _node()
    blocks_feed = node.feeds[EVENT_THROUGHPUT]
    before = blocks_feed.version
    watch = asyncio.create_task(node.watch_hard_faults())
    await asyncio.sleep(0)
    backend.inject({"kind": "core_failure", "cores": list(range(16))})
    for _ in range(50):
        await asyncio.sleep(0)
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch
    assert blocks_feed.version > before


async def test_a_fault_while_a_frames_health_is_computed_off_the_loop_is_not_undone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame's health is computed in a worker thread; a core failing meanwhile is published at once, and the
    frame, sampled before the failure, does not bring the core back when it is applied (it is folded again)."""
    backend, node = await _node()
    planned, go, real_prepare = _hold_prepare(monkeypatch)
    cores = node.feeds[NEURON_CORE]
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(node.watch_hard_faults())
        sampler = tg.create_task(node.sample_forever())
        assert await asyncio.to_thread(planned.wait, 10)
        frames = node.frames
        backend.inject({"kind": "core_failure", "cores": [5]})
        for _ in range(50):
            await asyncio.sleep(0)
        current = cores.current
        assert current is not None
        assert not current.healthy[5]  # published while the frame's plan was still being computed
        monkeypatch.setattr(NodeMonitor, "prepare", real_prepare)
        go.set()
        async with asyncio.timeout(10):
            while node.frames == frames:  # noqa: ASYNC110 - the frame counter has no event of its own here
                await asyncio.sleep(0.005)
        watch.cancel()
        sampler.cancel()
    assert node.stale_health_plans == 1
    assert not node.monitor.core_healthy[5]
    current = cores.current
    assert current is not None
    assert not current.healthy[5]


async def test_a_frames_worker_stands_back_while_a_pushed_fault_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The frame's rates and health run in a worker thread; right after a pushed hard fault was published, the
    worker sleeps out the rest of FAULT_SEND_S before its work (it would share the CPU and the GIL with the
    fault's ListAndWatch send), and with no fault just now it does not sleep at all."""
    backend, node = await _node()
    sleeps: list[tuple[str, float]] = []
    real_sleep = time.sleep

    def recorded(seconds: float) -> None:
        sleeps.append((threading.current_thread().name, seconds))
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", recorded)

    async def one_frame() -> None:
        frames = node.frames
        async with asyncio.TaskGroup() as tg:
            sampler = tg.create_task(node.sample_forever())
            async with asyncio.timeout(10):
                await node.next_frame(frames)
            sampler.cancel()

    await one_frame()
    assert sleeps == []
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(node.watch_hard_faults())
        await asyncio.sleep(0)  # subscribed
        backend.inject({"kind": "core_failure", "cores": [3]})
        async with asyncio.timeout(10):
            while node.fault_published == -math.inf:  # noqa: ASYNC110 - the publication has no event of its own
                await asyncio.sleep(0)
        await one_frame()
        watch.cancel()
    assert sleeps, "the worker did not stand back for the fault"
    assert all(name != threading.main_thread().name for name, _ in sleeps)  # in the worker, not on the loop
    assert 0 < sleeps[0][1] <= FAULT_SEND_S
    assert not node.monitor.core_healthy[3]  # the frame after it did not undo the fault


async def test_a_frames_loop_work_waits_for_a_fault_published_while_it_was_computed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fault published while the frame's rates and health were computed in the worker: the frame's work on the
    loop (applying the plan, capacity, publishing both resources) waits until the fault's send window has passed.
    (The window is widened so the check does not depend on this machine's speed.)"""
    monkeypatch.setattr(node_module, "FAULT_SEND_S", 2.0)
    backend, node = await _node()
    planned, go, _ = _hold_prepare(monkeypatch)
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded(delay: float) -> None:
        if sys._getframe(1).f_code.co_name == "sample_forever":
            waits.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", recorded)
    async with asyncio.TaskGroup() as tg:
        watch = tg.create_task(node.watch_hard_faults())
        sampler = tg.create_task(node.sample_forever())
        assert await asyncio.to_thread(planned.wait, 10)
        backend.inject({"kind": "core_failure", "cores": [7]})
        async with asyncio.timeout(10):
            while node.fault_published == -math.inf:
                await real_sleep(0)
        frames = node.frames
        go.set()
        async with asyncio.timeout(10):
            await node.next_frame(frames)
        watch.cancel()
        sampler.cancel()
    assert waits
    assert 0 < waits[0] <= 2.0  # the first await after the worker: the stand-back, not a bare yield
    assert not node.monitor.core_healthy[7]
