"""NodeMonitor: frames and pushed faults become device lists."""

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import ChipGeometry, Topology


@pytest.fixture
def monitor() -> NodeMonitor:
    t = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=2), nominal_keps=1000.0, queue_capacity=100.0)
    return NodeMonitor(t, ThroughputBlocks.plan(t, block_keps=1000.0))


def frame(
    m: NodeMonitor, t: float, *, depth: float = 0.0, failed: Sequence[int] = (), link: float = 0.0, count: float = 0.0
) -> TelemetryFrame:
    n, links = m.topology.n_cores, m.topology.n_links
    c = np.full(n, count)
    f = np.zeros(n, dtype=bool)
    f[list(failed)] = True
    return TelemetryFrame(
        t, np.full(n, depth), c, c, np.zeros(n), c, c, np.full(links, link), f, np.zeros(links, dtype=bool)
    )


def test_healthy_node_advertises_everything(monitor: NodeMonitor) -> None:
    assert not monitor.observe(frame(monitor, 0.0))
    d = monitor.devices()
    assert d[NEURON_CORE].healthy_count == 16
    assert d[EVENT_THROUGHPUT].healthy_count == 16


def test_pushed_core_failure_changes_both_resources_at_once(monitor: NodeMonitor) -> None:
    monitor.observe(frame(monitor, 0.0))
    assert monitor.hard_fault(HardFault(FaultKind.CORE, 3, failed=True, timestamp=0.05))
    d = monitor.devices()
    assert not d[NEURON_CORE].healthy[3]
    assert d[NEURON_CORE].healthy_count == 15
    assert d[EVENT_THROUGHPUT].healthy_count == 15  # chip 0 lost one core's worth of throughput


def test_link_failure_takes_the_routers_cores(monitor: NodeMonitor) -> None:
    monitor.observe(frame(monitor, 0.0))
    assert monitor.hard_fault(HardFault(FaultKind.LINK, 0, failed=True, timestamp=0.05))
    src = monitor.topology.link_src[0]
    assert not monitor.core_healthy[monitor.topology.router == src].any()


def test_out_of_range_faults_are_ignored(monitor: NodeMonitor) -> None:
    assert not monitor.hard_fault(HardFault(FaultKind.CORE, 999, failed=True, timestamp=0.0))
    assert not monitor.hard_fault(HardFault(FaultKind.LINK, -1, failed=True, timestamp=0.0))
    assert monitor.devices()[NEURON_CORE].healthy_count == 16


def test_saturated_queues_shrink_capacity_after_the_dwell(monitor: NodeMonitor) -> None:
    changed = [monitor.observe(frame(monitor, t / 10, depth=95.0, count=t * 10)) for t in range(10)]
    assert any(changed)
    assert monitor.devices()[NEURON_CORE].healthy_count == 0
    assert monitor.devices()[EVENT_THROUGHPUT].healthy_count == 0


def test_a_frame_of_the_wrong_shape_is_rejected(monitor: NodeMonitor) -> None:
    f = frame(monitor, 0.0)
    bad = TelemetryFrame(
        0.0,
        f.queue_depth[:3],
        *(
            getattr(f, x)
            for x in (
                "events_in",
                "events_processed",
                "events_dropped",
                "spikes_sent",
                "spikes_delivered",
                "link_utilization",
                "core_failed",
                "link_failed",
            )
        ),
    )
    assert not monitor.observe(bad)
    assert monitor.rejected_frames == 1


def test_a_health_plan_made_before_a_pushed_fault_is_not_applied_over_it(monitor: NodeMonitor) -> None:
    """The shell computes a frame's health off the event loop while hard faults are applied on it: a plan that
    predates a fault is refused (applied, it would restore the core the fault took away), and the frame folded
    again keeps the fault (it was sampled before it)."""
    monitor.observe(frame(monitor, 0.0))
    plan = monitor.prepare(frame(monitor, 0.1))
    assert plan is not None
    assert monitor.hard_fault(HardFault(FaultKind.CORE, 3, failed=True, timestamp=0.15))
    assert monitor.apply_health(plan) is None
    assert not monitor.core_healthy[3]
    monitor.fold_health(frame(monitor, 0.1))
    assert not monitor.core_healthy[3]
    assert monitor.devices()[NEURON_CORE].healthy_count == 15


def test_a_link_recovery_pushed_meanwhile_makes_a_plan_stale_too(monitor: NodeMonitor) -> None:
    monitor.observe(frame(monitor, 0.0))
    plan = monitor.prepare(frame(monitor, 0.1))
    assert plan is not None
    monitor.hard_fault(HardFault(FaultKind.LINK, 2, failed=False, timestamp=0.15))  # changes no core at once
    assert monitor.apply_health(plan) is None


def test_plans_applied_in_turn_decide_exactly_as_observe() -> None:
    """Off the loop or on it, a frame makes the same decisions (queues saturating and recovering, a core the
    frames report failed, a link congested, telemetry going stale)."""
    t = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=2), nominal_keps=1000.0, queue_capacity=100.0)
    on_loop, off_loop = (NodeMonitor(t, ThroughputBlocks.plan(t, block_keps=1000.0)) for _ in range(2))
    rng = np.random.default_rng(5)
    for k in range(60):
        depth = 95.0 if 10 <= k < 30 else float(rng.uniform(0, 40))
        f = frame(on_loop, 0.1 * k, depth=depth, failed=[2] if 20 <= k < 25 else (), link=0.99 * (k % 7 == 0))
        if 40 <= k < 50:
            f = frame(on_loop, 0.1 * k, count=float(k))  # counters that stop moving: the rates go stale
        expected = on_loop.observe(f)
        plan = off_loop.prepare(f)
        assert plan is not None
        changed = off_loop.apply_health(plan)
        assert changed is not None
        assert (off_loop.fold_capacity(f) or changed) == expected
        assert np.array_equal(on_loop.health.state, off_loop.health.state)
        assert np.array_equal(on_loop.health.reasons, off_loop.health.reasons)
        assert np.array_equal(on_loop.link_utilization, off_loop.link_utilization)


def test_prepare_pauses_before_each_step(monitor: NodeMonitor) -> None:
    """The shell's pause hook runs before the rates and again before the health plan (where its worker waits
    while a pushed fault's message is sent), and not at all for a frame of the wrong shape past the first."""
    f = frame(monitor, 0.1)
    seen: list[float] = []
    monitor.prepare(f, lambda: seen.append(float(monitor.rates.rates.last_valid.max())))
    assert seen == [-np.inf, 0.1]  # before the rates were folded, then after
    bad = replace(f, queue_depth=f.queue_depth[:-1])
    seen.clear()
    assert monitor.prepare(bad, lambda: seen.append(0.0)) is None
    assert seen == [0.0]
