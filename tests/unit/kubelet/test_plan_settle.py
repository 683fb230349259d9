"""GetPreferredAllocation for a pod the daemon has not read yet: the kubelet hears of a bound pod as soon as the
daemon's watch does, and may ask first. The allocator waits (briefly) for the next plan refresh, then follows the
plan; with nothing to wait for it answers at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from snnrm.cluster.hints import PlanHints, PlannedPod
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.kubelet.allocator import PLAN_SETTLE_S, AllocationFiles, CoreAllocator
from snnrm.kubelet.cdi import CdiSpecWriter
from snnrm.kubelet.state import StaticAllocationState

TOPOLOGY = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=2))
N = TOPOLOGY.n_cores
ALL = np.arange(N, dtype=np.int64)  # every core available, as indices (what the servicer decodes the IDs into)
NONE = np.zeros(0, dtype=np.int64)


def allocator(tmp: Path, hints: PlanHints) -> CoreAllocator:
    state = StaticAllocationState(topology=TOPOLOGY, blocks=ThroughputBlocks.plan(TOPOLOGY, block_keps=1000.0))
    return CoreAllocator(
        state=state, files=AllocationFiles(tmp / "state"), cdi=CdiSpecWriter(tmp / "cdi", TOPOLOGY.n_chips), hints=hints
    )


async def test_an_admission_ahead_of_the_watch_waits_for_the_plan_and_follows_it(tmp_path: Path) -> None:
    hints = PlanHints()
    alloc = allocator(tmp_path, hints)
    plan = np.array([9, 10, 13, 14], dtype=np.int64)  # a 2x2 block on chip 1, not what a fresh choice takes
    ids = list(TOPOLOGY.ids)

    async def watch_catches_up() -> None:
        await asyncio.sleep(PLAN_SETTLE_S / 6)
        hints.set_plans([PlannedPod("ns", "stage-0", "2026-01-01T00:00:00Z", plan)])

    late = asyncio.create_task(watch_catches_up())
    await alloc.settle(ALL, 4)
    got = alloc.preferred(ALL, NONE, 4, np.ones(N, dtype=bool))
    await late
    assert sorted(got) == sorted(ids[i] for i in plan)


async def test_a_refresh_without_the_plan_does_not_end_the_wait(tmp_path: Path) -> None:
    """Another pod's change refreshes the plans first (one kubelet batch admitting a 4-stage job): the admission
    keeps waiting for the refresh that brings its own plan (a CI run on a real kubelet took the ordinary choice)."""
    hints = PlanHints()
    alloc = allocator(tmp_path, hints)
    other = PlannedPod("ns", "stage-1", "2026-01-01T00:00:00Z", np.array([0, 1], dtype=np.int64))
    plan = np.array([9, 10, 13, 14], dtype=np.int64)
    ids = list(TOPOLOGY.ids)

    async def watch_catches_up() -> None:
        await asyncio.sleep(PLAN_SETTLE_S / 8)
        hints.set_plans([other])
        await asyncio.sleep(PLAN_SETTLE_S / 8)
        hints.set_plans([other, PlannedPod("ns", "stage-0", "2026-01-01T00:00:00Z", plan)])

    late = asyncio.create_task(watch_catches_up())
    await alloc.settle(ALL, 4)
    got = alloc.preferred(ALL, NONE, 4, np.ones(N, dtype=bool))
    await late
    assert sorted(got) == sorted(ids[i] for i in plan)


async def test_without_any_refresh_the_wait_ends_and_the_choice_is_the_ordinary_one(tmp_path: Path) -> None:
    hints = PlanHints()
    alloc = allocator(tmp_path, hints)
    await asyncio.wait_for(alloc.settle(ALL, 4), timeout=PLAN_SETTLE_S * 20)  # bounded: no refresh ever comes
    assert len(alloc.preferred(ALL, NONE, 4, np.ones(N, dtype=bool))) == 4


async def test_a_known_plan_needs_no_wait(tmp_path: Path) -> None:
    hints = PlanHints()
    hints.set_plans([PlannedPod("ns", "stage-0", "2026-01-01T00:00:00Z", np.array([0, 1], dtype=np.int64))])
    alloc = allocator(tmp_path, hints)
    # Would raise TimeoutError if settle waited for a refresh.
    await asyncio.wait_for(alloc.settle(ALL, 2), timeout=PLAN_SETTLE_S / 3)
