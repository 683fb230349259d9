"""Workloads and fault targets: the same for every policy, shaped as the config says."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments.config import DEFAULT, ExperimentConfig
from benchmarks.experiments.scenarios import SCENARIOS, busiest_stage, flaky_glitches, pick_victims
from benchmarks.experiments.workloads import (
    NETWORKS,
    demands_of,
    make_workload,
    stage_utilisation,
)
from sim_hw import load_preset, networks

SPEC = load_preset("loihi2", chips=8)


def test_same_seed_same_workload_other_seed_other_workload() -> None:
    a = make_workload(3, DEFAULT, SPEC)
    b = make_workload(3, DEFAULT, SPEC)
    c = make_workload(4, DEFAULT, SPEC)
    assert [(j.name, j.arrival, j.departure, j.job) for j in a] == [(j.name, j.arrival, j.departure, j.job) for j in b]
    assert [j.job for j in a] != [j.job for j in c]


@pytest.mark.parametrize("seed", range(5))
def test_workload_respects_the_config(seed: int) -> None:
    cfg = DEFAULT
    jobs = make_workload(seed, cfg, SPEC)
    assert jobs
    assert len(jobs) <= cfg.max_jobs
    arrivals = [j.arrival for j in jobs]
    assert arrivals == sorted(arrivals)
    assert max(arrivals) <= cfg.arrival_window * cfg.duration
    for j in jobs:
        assert 2 <= len(j.job.stages) <= 6
        if j.departure is not None:
            assert j.arrival < j.departure < cfg.fault_time
        # every job runs at its network's measured rates: nothing is rescaled to a target load
        maker = NETWORKS[j.network][0]
        measured = maker(len(j.job.stages), name=j.name, neurons_per_core=SPEC.neurons_per_core, seed=0)
        assert j.job.input_rate == pytest.approx(measured.input_rate)
        assert [s.spike_rate for s in j.job.stages] == pytest.approx([s.spike_rate for s in measured.stages])
        assert [s.cores for s in j.job.stages] == [s.cores for s in measured.stages]
    long_cores = sum(j.job.cores_needed for j in jobs if j.long_running)
    assert long_cores <= cfg.occupancy * SPEC.n_cores
    # a count-based check admits every job at its arrival
    for j in jobs:
        live = [k for k in jobs if k.arrival <= j.arrival and (k.departure is None or k.departure > j.arrival)]
        assert sum(k.job.cores_needed for k in live) <= SPEC.n_cores


def test_demands_follow_the_measured_rates() -> None:
    job = networks.nmnist_classifier(3, seed=1, neurons_per_core=SPEC.neurons_per_core)
    rho = stage_utilisation(job, SPEC.core_service_rate)
    assert 0 < rho.max() < 1  # a real network at its measured activity fits its cores
    d = demands_of(job)
    assert [x.cores for x in d] == [s.cores for s in job.stages]
    assert d[-1].out_keps == 0.0
    assert d[0].in_keps == pytest.approx(job.input_rate / 1e3)
    assert d[0].out_keps == pytest.approx(job.stages[0].spike_rate / 1e3)


def test_more_jobs_make_more_load() -> None:
    """The node's load comes from how many jobs run (and how big they are), not from rescaled rates."""
    few = make_workload(0, DEFAULT.with_(max_jobs=5), SPEC)
    many = make_workload(0, DEFAULT.with_(max_jobs=30), SPEC)
    assert [j.job for j in few] == [j.job for j in many[: len(few)]]
    assert sum(j.job.cores_needed for j in many) > sum(j.job.cores_needed for j in few)


def test_victims_depend_on_the_seed_only() -> None:
    jobs = ["a", "b", "c", "d", "e"]
    assert pick_victims(jobs, 4, 7) == pick_victims(jobs, 4, 7)
    assert len(set(pick_victims(jobs, 4, 7))) == 4
    assert pick_victims(jobs, 1, 7) == pick_victims(jobs, 4, 7)[:1]
    assert pick_victims(["x"], 3, 0) == ["x", "x", "x"]
    assert pick_victims([], 2, 0) == []
    assert busiest_stage(np.array([0.1, 0.4, 0.4])) == 1


def test_flaky_glitches_cover_the_window_with_fresh_cores() -> None:
    cfg = ExperimentConfig()
    out = flaky_glitches(1024, 20.0, 25.0, cfg, seed=1)
    assert len(out) == 10
    assert all(len(g.cores) == round(cfg.flaky_share * 1024) for g, _, _ in out)
    assert [at for _, at, _ in out] == pytest.approx([20.0 + 0.5 * k for k in range(10)])
    assert out[0][0].cores != out[1][0].cores
    assert out == flaky_glitches(1024, 20.0, 25.0, cfg, seed=1)


def test_every_scenario_is_described() -> None:
    for name, sc in SCENARIOS.items():
        assert sc.name == name
        assert sc.description
    assert SCENARIOS["none"].faults == ()
    assert len(set(SCENARIOS["combined"].faults)) == 4
