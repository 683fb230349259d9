"""The ablations: each switches off one claim through the product's own code, and a tiny real run reports them."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments import ablations
from benchmarks.experiments.config import DEFAULT
from benchmarks.experiments.policies import DEFAULT_POLICIES, POLICIES, place, whole_chips
from benchmarks.experiments.runner import Run
from benchmarks.experiments.suite import policy_names, run_suite
from benchmarks.experiments.workloads import stage_utilisation, throughput_devices
from snnrm.core.placement import PlacementView, StageDemand, plan_cost
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.job.plan import MAX_CORE_LOAD


def test_whole_chip_reporting_hands_out_whole_free_chips() -> None:
    topo = Topology.grid(chips=4, geometry=ChipGeometry(cols=2, rows=2))  # 4 chips of 4 cores
    free = np.ones(topo.n_cores, dtype=bool)
    free[1] = False  # chip 0 holds some other stage: not a free chip
    view = PlacementView.idle(topo, free)
    out = whole_chips(view, (StageDemand(1), StageDemand(5)))
    assert out is not None
    assert out[0].tolist() == [4]  # one core's worth of neurons: all of chip 1 is granted, one core runs
    assert out[1].tolist() == list(range(8, 13))  # five cores take chips 2 and 3
    assert whole_chips(view, (StageDemand(1), StageDemand(1), StageDemand(1), StageDemand(1))) is None


def test_without_unit_awareness_stages_share_a_core_group() -> None:
    """Four cores per router: snnrm's planner keeps a job's two stages on separate routers; with the shared-unit
    price at zero (the ablation) the shortest layout puts them behind one router."""
    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=4, rows=4, cores_per_router=4))
    view = PlacementView.idle(topo)
    demands = (StageDemand(2, out_keps=100.0, in_keps=100.0), StageDemand(2))
    rng = np.random.default_rng(0)
    aware = place(POLICIES["snnrm"], view, demands, rng)
    blind = place(POLICIES["snnrm-no-units"], view, demands, rng)
    assert aware is not None
    assert blind is not None
    assert not set(topo.router[aware[0]]) & set(topo.router[aware[1]])
    assert set(topo.router[blind[0]]) & set(topo.router[blind[1]])
    assert plan_cost(view, demands, aware).shared_units == 0.0


def test_ablation_policies_are_not_in_the_default_set() -> None:
    assert policy_names(DEFAULT) == list(DEFAULT_POLICIES)
    for ab in ablations.ABLATIONS:
        assert ab.policy in POLICIES
        assert ab.policy not in DEFAULT_POLICIES


@pytest.mark.parametrize("index", range(len(ablations.ABLATIONS)))
def test_a_tiny_ablation_run_reports_every_metric(index: int) -> None:
    ab = ablations.ABLATIONS[index]
    base = DEFAULT.with_(seeds=(0,), duration=4.0, max_jobs=12)
    suite = run_suite(ablations.config_for(ab, base), workers=1, measure_memory=False)
    md = ablations.markdown([ablations.Result(ab, suite)])
    rows = [line for line in md if line.startswith(tuple(f"| {sc} |" for sc in ab.scenarios))]
    assert len(rows) == len(ab.scenarios) * len(ab.metrics)
    assert any("Event-driven scheduling on Loihi 2" in line for line in md)
    if ab.policy == "snnrm-whole-chips":  # 8 chips hold at most 8 stages: jobs are refused
        assert suite.values("none", ab.policy, "rejected")[0] > suite.values("none", "snnrm", "rejected")[0]


def test_event_driven_scheduling_is_measured_where_events_outrun_a_core_and_said_to_be_moot_elsewhere() -> None:
    # Loihi 2: no stage of any network passes the planner's share of a core, so both arms would run the same jobs
    # (the report says so with the loads); Akida: stages do, so the ablation measures something.
    loihi, akida = (ablations.busiest_core_load(p) for p in ablations.KEPS_PRESETS)
    assert 0.0 < loihi < MAX_CORE_LOAD < akida < 1.0
    note = ablations.keps_note()
    assert f"{loihi:.0%}" in note
    assert f"{akida:.0%}" in note
    measured = [ab for ab in ablations.ABLATIONS if ab.policy == "snnrm-count"]
    assert measured
    assert {ab.preset for ab in measured} == {"akida"}


def test_snnrm_sizes_the_same_arrivals_by_their_events_and_the_count_arm_by_neurons() -> None:
    cfg = DEFAULT.with_(preset="akida", chips=8, seeds=(1,), duration=4.0)
    ours = Run(cfg, "none", "snnrm", 1, trace_memory=False)  # seed 1 draws a 3-stage DVS-Gesture job (93 %)
    count = Run(cfg, "none", "snnrm-count", 1, trace_memory=False)
    assert [j.name for j in ours.specs] == [j.name for j in count.specs]  # the same arrivals
    rate = ours.spec.core_service_rate
    grown = 0
    for a, b in zip(ours.specs, count.specs, strict=True):
        assert stage_utilisation(a.job, rate).max() <= MAX_CORE_LOAD + 1e-9
        assert [d.cores for d in a.demands] == [s.cores for s in a.job.stages]  # what the placement asks for
        grown += a.job.cores_needed > b.job.cores_needed
        assert a.job.cores_needed >= b.job.cores_needed
    assert grown > 0
    assert max(stage_utilisation(b.job, rate).max() for b in count.specs) > MAX_CORE_LOAD


def test_keps_admission_refuses_a_job_the_event_throughput_devices_do_not_cover() -> None:
    cfg = DEFAULT.with_(preset="akida", chips=1, seeds=(0,), max_jobs=8)
    run = Run(cfg, "none", "snnrm", 0, trace_memory=False)
    assert run.monitor is not None
    first, second = list(run.tracks.values())[:2]
    run._arrive(first)
    assert first.running is not None
    assert first.blocks == throughput_devices(first.spec.job)
    # The node's measured capacity drops to what the first job holds: the next job's pods find no devices.
    run.monitor.capacity.healthy_per_chip[:] = 0
    run.monitor.capacity.healthy_per_chip[0] = first.blocks
    run._arrive(second)
    assert second.rejected
    assert second.running is None
    assert run.refused_keps == 1
    # The count arm does not look at event throughput.
    count = Run(cfg, "none", "snnrm-count", 0, trace_memory=False)
    assert count.monitor is not None
    count.monitor.capacity.healthy_per_chip[:] = 0
    a, b = list(count.tracks.values())[:2]
    count._arrive(a)
    count._arrive(b)
    assert a.running is not None
    assert b.running is not None
    assert count.refused_keps == 0


class _Values:
    """What ablations._cell reads of a suite: its policies and per-seed values."""

    policies = ("snnrm", "snnrm-count")

    def __init__(self, ours: list[float], theirs: list[float]) -> None:
        self._v = {"snnrm": ours, "snnrm-count": theirs}

    def values(self, scenario: str, policy: str, metric: str) -> list[float]:
        return self._v[policy]


def test_a_difference_below_the_reported_precision_gets_no_verdict() -> None:
    from typing import cast

    from benchmarks.experiments.suite import SuiteResult

    def reading(ours: list[float], theirs: list[float]) -> str:
        return ablations._cell(cast(SuiteResult, _Values(ours, theirs)), "none", "dropped_pct", ".3f")[3]

    assert reading([0.0] * 5, [1e-6, 2e-6, 1e-6, 3e-6, 1e-6]) == "no difference at this precision"
    assert reading([0.0] * 5, [0.2, 0.3, 0.25, 0.2, 0.3]) == "the claim helps"
    assert reading([0.2, 0.3, 0.25, 0.2, 0.3], [0.0] * 5) == "the claim hurts"
