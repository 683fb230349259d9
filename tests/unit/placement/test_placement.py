"""Properties of the pure stage placement: validity, must-include, never worse than first-fit, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnrm.core.placement import (
    PlacementView,
    StageDemand,
    _Coords,
    _hops_to_set,
    _mean_pair_hops,
    first_fit_plan,
    follow_plan,
    plan_cost,
    plan_job,
    replan_stage,
)
from snnrm.core.topology import ChipGeometry, Topology

TOPOS = {
    "loihi-like": Topology.grid(chips=4, geometry=ChipGeometry(cols=6, rows=4)),
    "quad-pe": Topology.grid(chips=3, geometry=ChipGeometry(cols=4, rows=2, cores_per_router=4)),
}
# the view, the stages, and the cores some stages must keep
Scenario = tuple[PlacementView, list[StageDemand], dict[int, np.ndarray]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    topo = TOPOS[draw(st.sampled_from(sorted(TOPOS)))]
    n = topo.n_cores
    free = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    fill = np.array(draw(st.lists(st.floats(0, 1) | st.just(float("nan")), min_size=n, max_size=n)))
    link = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    k = draw(st.integers(1, 5))
    stages = [
        StageDemand(cores=draw(st.integers(1, max(1, n // (2 * k)))), out_keps=draw(st.floats(0, 5000)))
        for _ in range(k)
    ]
    # Must-include: a few cores per stage, possibly busy (a running stage's own), never shared between stages.
    fixed: dict[int, np.ndarray] = {}
    used: set[int] = set()
    for i in draw(st.lists(st.integers(0, k - 1), max_size=3, unique=True)):
        cores = [c for c in draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True)) if c not in used]
        used.update(cores)
        fixed[i] = np.array(cores, dtype=np.int64)
    return PlacementView(topo, free, fill, link), stages, fixed


def _check_valid(
    view: PlacementView, stages: list[StageDemand], fixed: dict[int, np.ndarray], plan_stages: tuple[np.ndarray, ...]
) -> None:
    seen: set[int] = set()
    for i, (s, cores) in enumerate(zip(stages, plan_stages, strict=True)):
        ids = cores.tolist()
        must = {int(c) for c in fixed.get(i, ())}
        assert len(ids) == max(s.cores, len(must)), f"stage {i} got {len(ids)} cores, needs {s.cores}"
        assert len(set(ids)) == len(ids), "duplicate core within a stage"
        assert not (set(ids) & seen), "core shared between stages"
        seen.update(ids)
        assert must <= set(ids), "must-include core dropped"
        for c in set(ids) - must:
            assert view.free[c], f"stage {i} got busy or unhealthy core {c}"


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_plan_is_valid_keeps_must_include_and_beats_first_fit(s: Scenario) -> None:
    """Never a busy/unhealthy/duplicate core, must-include kept, cost <= first-fit, same answer twice."""
    view, stages, fixed = s
    plan = plan_job(view, stages, fixed=fixed)
    ff = first_fit_plan(view, stages, fixed=fixed)
    assert (plan is None) == (ff is None)
    if plan is None:
        assert ff is None
        return
    assert ff is not None
    _check_valid(view, stages, fixed, plan.stages)
    assert plan.total_cost <= ff.total_cost + 1e-6 * max(1.0, ff.total_cost)
    again = plan_job(view, stages, fixed=fixed)
    assert again is not None
    assert all(np.array_equal(a, b) for a, b in zip(plan.stages, again.stages, strict=True))
    assert plan.total_cost == pytest.approx(plan_cost(view, stages, plan.stages).total)


def test_plan_is_none_only_when_free_cores_are_too_few() -> None:
    """A demand one core beyond the free cores is refused; exactly the free cores is placed."""
    topo = TOPOS["loihi-like"]
    free = np.zeros(topo.n_cores, dtype=bool)
    free[:10] = True
    view = PlacementView.idle(topo, free)
    assert plan_job(view, [StageDemand(4), StageDemand(7)]) is None
    plan = plan_job(view, [StageDemand(4), StageDemand(6)])
    assert plan is not None
    assert sorted(np.concatenate(plan.stages).tolist()) == list(range(10))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(TOPOS)), st.data())
def test_mean_hops_are_exact(name: str, data: st.DataObject) -> None:
    """The histogram hop means equal the brute-force mean of Topology.hops over all pairs."""
    topo = TOPOS[name]
    n = topo.n_cores
    a = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=20)), dtype=np.int64)
    b = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=20)), dtype=np.int64)
    coords = _Coords.of(topo)
    brute = topo.hops(a[:, None], b[None, :])
    assert _mean_pair_hops(coords, a, b) == pytest.approx(float(brute.mean()))
    assert np.allclose(_hops_to_set(coords, b)[a], brute.mean(axis=1))


def test_consecutive_stages_end_up_closer_than_first_fit_on_a_fragmented_node() -> None:
    """With a scattered free-core pattern, the heaviest edge gets fewer hops than first-fit gives it."""
    topo = Topology.grid(chips=4, geometry=ChipGeometry(cols=16, rows=8))
    rng = np.random.default_rng(7)
    view = PlacementView.idle(topo, rng.random(topo.n_cores) > 0.5)
    stages = [StageDemand(40, out_keps=1000), StageDemand(16, out_keps=100), StageDemand(24, out_keps=10)]
    plan, ff = plan_job(view, stages), first_fit_plan(view, stages)
    assert plan is not None
    assert ff is not None
    assert plan.cost.mean_hops[0] < ff.cost.mean_hops[0]
    assert plan.total_cost < ff.total_cost


def test_stages_avoid_a_hot_region() -> None:
    """Cores with full queues are left alone when cool cores are as close."""
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=8, rows=4))
    fill = np.zeros(topo.n_cores)
    fill[topo.chip_of == 0] = 1.0  # chip 0 is saturated
    view = PlacementView(topo, np.ones(topo.n_cores, dtype=bool), fill, np.zeros(topo.n_cores))
    plan = plan_job(view, [StageDemand(8, out_keps=500), StageDemand(8, out_keps=500), StageDemand(8)])
    assert plan is not None
    assert all((topo.chip_of[s] == 1).all() for s in plan.stages)


def test_stages_take_separate_router_domains_when_there_is_room() -> None:
    """On a 4-cores-per-router chip, two 2-core stages do not share a router."""
    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=4, rows=2, cores_per_router=4))
    plan = plan_job(PlacementView.idle(topo), [StageDemand(2, out_keps=10), StageDemand(2)])
    assert plan is not None
    a, b = (set(topo.router[s].tolist()) for s in plan.stages)
    assert not (a & b)


def test_replan_stage_keeps_the_other_stages_and_leaves_degraded_cores() -> None:
    """Moving one stage keeps its neighbours in place and never reuses the cores it leaves."""
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=8, rows=4))
    stages = [StageDemand(6, out_keps=300), StageDemand(6, out_keps=300), StageDemand(6)]
    view = PlacementView.idle(topo)
    plan = plan_job(view, stages)
    assert plan is not None
    held = np.concatenate(plan.stages)
    bad = plan.stages[1][:2]
    free = np.ones(topo.n_cores, dtype=bool)
    free[held] = False
    moved = replan_stage(PlacementView.idle(topo, free), stages, plan.stages, 1, keep=np.setdiff1d(plan.stages[1], bad))
    assert moved is not None
    assert np.array_equal(moved.stages[0], plan.stages[0])
    assert np.array_equal(moved.stages[2], plan.stages[2])
    assert not np.isin(bad, moved.stages[1]).any()
    assert len(moved.stages[1]) == 6


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_follow_plan_prefers_planned_cores(data: st.DataObject) -> None:
    """Must-include kept; planned cores used when available and healthy; nothing unavailable or duplicate."""
    topo = TOPOS["loihi-like"]
    n = topo.n_cores
    available = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=n)), dtype=np.int64)
    healthy = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    must = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=3)), dtype=np.int64)
    planned = np.array(data.draw(st.lists(st.integers(0, n - 1), max_size=12)), dtype=np.int64)
    size = data.draw(st.integers(0, 16))
    out = follow_plan(topo, available, must, size, planned, np.zeros(n), healthy)
    got = out.tolist()
    assert len(got) == len(set(got))
    assert set(must.tolist()) <= set(got)
    ok = {int(c) for c in available if healthy[c]}
    assert set(got) - set(must.tolist()) <= ok
    usable_planned = sorted(set(planned.tolist()) & ok - set(must.tolist()))
    room = max(size - len(set(must.tolist())), 0)
    assert len(set(got) & set(usable_planned)) == min(room, len(usable_planned))
    assert np.array_equal(out, follow_plan(topo, available, must, size, planned, np.zeros(n), healthy))
