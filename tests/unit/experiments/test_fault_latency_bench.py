"""The fault benchmark's stages-placed mode: whole jobs run on the simulator's cores, and faults still reach
ListAndWatch while the product's reallocator makes its pass over them on the same loop."""

from __future__ import annotations

import numpy as np

from benchmarks.fault_latency import _measure, _place_stages
from snnrm.backends.sim import SimBackend


def test_stages_are_placed_on_the_simulator_on_disjoint_cores() -> None:
    backend = SimBackend(chips=4, cores_per_chip=128)
    placed = _place_stages(backend, 6)
    assert 6 <= len(placed) <= 6 + 3  # whole jobs (4, 3 and 2 stages)
    used = np.concatenate([s.cores for s in placed])
    assert len(np.unique(used)) == len(used)
    assert set(backend.sim.jobs()) == {s.job for s in placed}


async def test_faults_reach_list_and_watch_with_the_reallocator_running() -> None:
    latencies, _, message = await _measure(2, 64, 3, stages=4)
    assert len(latencies) == 3
    assert all(0 < t < 5.0 for t in latencies)
    assert message
