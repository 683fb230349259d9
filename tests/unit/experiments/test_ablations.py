"""The ablations: each switches off one claim through the product's own code, and a tiny real run reports them."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments import ablations
from benchmarks.experiments.config import DEFAULT
from benchmarks.experiments.policies import DEFAULT_POLICIES, POLICIES, place, whole_chips
from benchmarks.experiments.suite import policy_names, run_suite
from snnrm.core.placement import PlacementView, StageDemand, plan_cost
from snnrm.core.topology import ChipGeometry, Topology


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
    assert any("KEPS-based admission" in line for line in md)
    if ab.policy == "snnrm-whole-chips":  # 8 chips hold at most 8 stages: jobs are refused
        assert suite.values("none", ab.policy, "rejected")[0] > suite.values("none", "snnrm", "rejected")[0]


@pytest.mark.parametrize("preset", ablations.KEPS_PRESETS)
def test_the_keps_ablation_is_skipped_only_while_no_stage_outruns_its_cores(preset: str) -> None:
    # The report skips the KEPS-admission ablation because event throughput never binds before cores: once a
    # network's measured rates push a stage's cores past their event rate, the ablation has a scenario and must run.
    load = ablations.busiest_core_load(preset)
    assert 0.0 < load < 1.0
    assert f"{load:.0%}" in ablations.not_run_note()
