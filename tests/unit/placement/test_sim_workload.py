"""Simulated chips run the admitted stages: the pure mapping from stages to simulator jobs, and the reconcile loop
against the real simulator (add, follow a remap, remove)."""

from __future__ import annotations

import numpy as np

from snnrm.backends.sim import SimBackend
from snnrm.cluster.remap import LocalStage
from snnrm.cluster.sim_workload import KEPS, SimWorkloads, desired
from snnrm.core.placement import StageDemand

DEMANDS = (StageDemand(4, out_keps=300.0, in_keps=900.0), StageDemand(4, out_keps=100.0), StageDemand(2))


def stage(i: int, cores: list[int], job: str = "gesture") -> LocalStage:
    ids = tuple(f"c{c}" for c in cores)
    return LocalStage("ns", f"{job}-{i}", f"uid-{i}", job, i, DEMANDS, ids, np.array(cores, dtype=np.int64))


def test_a_job_entirely_here_is_one_chain_at_its_declared_rates() -> None:
    jobs = desired([stage(0, [0, 1, 2, 3]), stage(1, [4, 5, 6, 7]), stage(2, [8, 9])], neurons_per_core=256)
    assert list(jobs) == ["ns/gesture"]
    job = jobs["ns/gesture"].job
    assert job.input_rate == 900.0 * KEPS
    assert [s.spike_rate for s in job.stages] == [300.0 * KEPS, 100.0 * KEPS, 0.0]
    assert [s.cores for s in job.stages] == [4, 4, 2]
    assert [c.tolist() for c in jobs["ns/gesture"].cores] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_stages_split_across_nodes_are_fed_by_their_predecessors_rate() -> None:
    jobs = desired([stage(1, [4, 5, 6, 7])], neurons_per_core=256)
    assert list(jobs) == ["ns/gesture/1"]
    assert jobs["ns/gesture/1"].job.input_rate == 300.0 * KEPS
    assert jobs["ns/gesture/1"].job.stages[0].spike_rate == 100.0 * KEPS


def test_reconcile_places_follows_a_remap_and_removes() -> None:
    backend = SimBackend(chips=1, cores_per_chip=16, seed=0)
    now = [stage(0, [0, 1, 2, 3]), stage(1, [4, 5, 6, 7]), stage(2, [8, 9])]
    loads = SimWorkloads(backend.sim, lambda: now)
    loads.reconcile()
    assert [c.tolist() for c in backend.sim.jobs()["ns/gesture"]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    backend.sim.advance(20)
    assert np.nansum(backend.sim.counters().events_in) > 0  # the stages' traffic reaches the cores
    now[1] = stage(1, [12, 13, 14, 15])  # a live remap
    loads.reconcile()
    assert backend.sim.jobs()["ns/gesture"][1].tolist() == [12, 13, 14, 15]
    now.clear()  # the pods ended
    loads.reconcile()
    assert backend.sim.jobs() == {}


def test_reconcile_measures_each_stages_spike_latency_and_forgets_ended_stages() -> None:
    """What the node exports per stage: latency keyed by (namespace, job, stage index), for chains and for lone
    stages alike, grows when a stage's cores saturate, and goes with the stage."""
    backend = SimBackend(chips=1, cores_per_chip=16, seed=0)
    now = [stage(0, [0, 1, 2, 3]), stage(1, [4, 5, 6, 7]), stage(2, [8, 9]), stage(1, [12, 13], job="lone")]
    loads = SimWorkloads(backend.sim, lambda: now)
    loads.reconcile()
    backend.sim.advance(20)
    loads.reconcile()
    calm = loads.latencies()
    assert set(calm) == {("ns", "gesture", 0), ("ns", "gesture", 1), ("ns", "gesture", 2), ("ns", "lone", 1)}
    assert all(v > 0 and np.isfinite(v) for v in calm.values())
    backend.inject({"kind": "hot_spot", "cores": [4, 5, 6, 7], "load_factor": 4.0, "service_divisor": 16.0})
    backend.sim.advance(50)
    loads.reconcile()
    assert loads.latencies()[("ns", "gesture", 1)] > 10 * calm[("ns", "gesture", 1)]
    del now[3]
    loads.reconcile()
    assert ("ns", "lone", 1) not in loads.latencies()
