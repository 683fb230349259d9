"""Device lists and effective capacity."""

import numpy as np
import pytest

from snnrm.core.capacity import CapacityTracker, effective_core_keps
from snnrm.core.devices import (
    EVENT_THROUGHPUT,
    NEURON_CORE,
    ThroughputBlocks,
    event_throughput_devices,
    neuron_core_devices,
)
from snnrm.core.topology import ChipGeometry, Topology


@pytest.fixture
def topo() -> Topology:
    return Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=2), nominal_keps=1000.0, numa_nodes=2)


def test_neuron_core_devices_follow_health_and_numa(topo: Topology) -> None:
    healthy = np.ones(topo.n_cores, dtype=bool)
    healthy[3] = False
    d = neuron_core_devices(topo, healthy)
    assert d.resource == NEURON_CORE
    assert d.ids == topo.ids
    assert d.healthy_count == topo.n_cores - 1
    assert d.numa.tolist() == [0] * 8 + [1] * 8


def test_same_as_detects_only_real_changes(topo: Topology) -> None:
    a = neuron_core_devices(topo, np.ones(topo.n_cores, dtype=bool))
    b = neuron_core_devices(topo, np.ones(topo.n_cores, dtype=bool))
    assert a.same_as(b)
    assert not a.same_as(None)
    c = neuron_core_devices(topo, np.arange(topo.n_cores) != 0)
    assert not a.same_as(c)


def test_blocks_cut_each_chip_and_respect_the_cap(topo: Topology) -> None:
    b = ThroughputBlocks.plan(topo, block_keps=500.0)
    assert len(b.ids) == 2 * 16  # 8 cores x 1000 KEPS / 500 per chip
    assert b.ids[0] == "chip0-ev0"
    assert b.ids[-1] == "chip1-ev15"
    capped = ThroughputBlocks.plan(topo, block_keps=1.0, max_devices=100)
    assert len(capped.ids) <= 100
    with pytest.raises(ValueError, match="positive"):
        ThroughputBlocks.plan(topo, block_keps=0.0)
    # A tiny block grows to the cap instead of counting more blocks than int64 holds (it raised from np.repeat).
    assert 0 < len(ThroughputBlocks.plan(topo, block_keps=1e-300).ids) <= 16384
    with pytest.raises(ValueError, match="finite"):
        ThroughputBlocks.plan(topo, block_keps=float("inf"))
    with pytest.raises(ValueError, match="more than any chip's throughput"):
        ThroughputBlocks.plan(topo, block_keps=8001.0)  # a chip is 8 x 1000 KEPS: no device at all


def test_event_throughput_devices_take_low_ranks_first(topo: Topology) -> None:
    b = ThroughputBlocks.plan(topo, block_keps=1000.0)
    d = event_throughput_devices(b, topo, np.array([3, 8]))
    assert d.resource == EVENT_THROUGHPUT
    assert d.healthy.tolist() == [True] * 3 + [False] * 5 + [True] * 8


def test_effective_capacity_shrinks_with_efficiency_queue_and_health() -> None:
    nominal = np.full(4, 1000.0)
    keps = effective_core_keps(
        nominal,
        np.array([True, True, True, False]),
        np.array([1.0, 0.5, 1.0, 1.0]),
        np.array([0.0, 0.0, 0.75, 0.0]),
    )
    np.testing.assert_allclose(keps, [1000.0, 500.0, 500.0, 0.0])
    assert effective_core_keps(nominal[:1], np.array([True]), np.array([np.nan]), np.array([0.0]))[0] == 0.0


def test_capacity_tracker_shrinks_after_dwell_and_grows_with_margin(topo: Topology) -> None:
    b = ThroughputBlocks.plan(topo, block_keps=1000.0)
    cap = CapacityTracker(topo, b, shrink_dwell=0.5, grow_dwell=2.0)
    per_core = np.full(topo.n_cores, 1000.0)
    assert not cap.update(per_core, now=0.0)
    per_core[:8] = 700.0  # chip 0 now 5,600 KEPS -> 5 blocks, but only after the dwell
    assert not cap.update(per_core, now=1.0)
    assert not cap.update(per_core, now=1.4)
    assert cap.update(per_core, now=1.5)
    assert cap.healthy_per_chip.tolist() == [5, 8]
    per_core[:8] = 770.0  # 6,160: covers 6 blocks but not 6 + margin -> stays 5 however long it lasts
    assert not any(cap.update(per_core, now=t) for t in (2.0, 5.0, 9.0))
    per_core[:8] = 820.0  # 6,560 >= 6.5 blocks -> grows to 6 after the grow dwell
    assert not cap.update(per_core, now=10.0)
    assert cap.update(per_core, now=12.0)
    assert cap.healthy_per_chip.tolist() == [6, 8]


def test_a_single_noisy_sample_changes_nothing(topo: Topology) -> None:
    cap = CapacityTracker(topo, ThroughputBlocks.plan(topo, block_keps=1000.0))
    full = np.full(topo.n_cores, 1000.0)
    dip = full.copy()
    dip[:8] = 100.0
    assert not cap.update(full, now=0.0)
    assert not cap.update(dip, now=0.1)
    assert not cap.update(full, now=0.2)
    assert not cap.update(full, now=5.0)


def test_hard_faults_shrink_at_once(topo: Topology) -> None:
    cap = CapacityTracker(topo, ThroughputBlocks.plan(topo, block_keps=1000.0))
    per_core = np.full(topo.n_cores, 1000.0)
    per_core[0] = 0.0
    assert cap.update(per_core, now=0.0, immediate=True)
    assert cap.healthy_per_chip.tolist() == [7, 8]


def test_core_counts_add_up_with_cores_lent_to_a_remap() -> None:
    """Issue 17: healthy = allocatable + withheld_for_remap, unhealthy = total - healthy; a withheld core that
    also failed counts once, as unhealthy."""
    from snnrm.core.devices import core_counts

    healthy = np.ones(512, dtype=bool)
    healthy[:1] = False
    withheld = np.zeros(512, dtype=bool)
    withheld[:16] = True  # 16 lent cores, one of which has also failed
    counts = core_counts(healthy, withheld)
    assert counts == {"total": 512, "healthy": 511, "unhealthy": 1, "withheld_for_remap": 15, "allocatable": 496}
    assert counts["healthy"] == counts["allocatable"] + counts["withheld_for_remap"]
    assert core_counts(healthy, None)["allocatable"] == 511
