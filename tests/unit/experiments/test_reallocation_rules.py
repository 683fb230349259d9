"""The reallocation rules the experiments found broken (issue 14, point 7), each on the product's pure decision
code (:mod:`snnrm.core.reallocation`) and the daemon's reallocator (:class:`snnrm.cluster.remap.NodeReallocator`).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments.policies import DaemonReallocator, RunningJob, RunningStage
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import PlacementView, StageDemand
from snnrm.core.reallocation import ReallocationSettings, StageSignals, StageWatch, evaluate_remap, signals_of
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import ChipGeometry, Topology

TOPO = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4))  # 32 cores; chip 1 is cores 16..31
DEMANDS = (StageDemand(4, out_keps=400.0, in_keps=400.0), StageDemand(4, out_keps=400.0), StageDemand(4))
WEIGHT = 18.9  # the loihi2 preset's inter-chip / on-chip hop latency ratio


def _placement() -> list[np.ndarray]:
    return [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7]), np.array([8, 9, 12, 13])]


@pytest.mark.parametrize("chips", [2, 4, 8])
def test_one_saturated_core_outweighs_the_hops_of_the_only_free_home_on_another_chip(chips: int) -> None:
    """Every free core is on the last chip: crossing costs hops on both edges of the stage, but a core that stalls
    every spike (a saturated queue, Unhealthy) costs the pipeline more than any detour on the board."""
    big = (StageDemand(4, out_keps=400.0, in_keps=400.0), StageDemand(16, out_keps=400.0), StageDemand(4))
    topo = Topology.grid(chips=chips, geometry=ChipGeometry(cols=8, rows=16))
    place = [np.arange(0, 4), np.arange(8, 24), np.arange(32, 36)]
    free = np.zeros(topo.n_cores, dtype=bool)
    free[-24:] = True
    view = PlacementView.idle(topo, free, inter_chip_weight=WEIGHT)
    degraded = np.zeros(topo.n_cores, dtype=bool)
    degraded[10] = True  # one of stage 1's sixteen cores
    no_fail = np.zeros(topo.n_cores, dtype=bool)
    s = ReallocationSettings()
    opt = evaluate_remap(view, big, place, 1, failed=no_fail, degraded=degraded, settings=s)
    assert opt is not None
    assert not opt.must_move
    assert opt.worth_it(s.margin), (opt.cost_before, opt.cost_after, opt.migration_cost)
    assert 10 not in opt.target
    # A healthy stage is not moved for the sake of it: with nothing degraded there is no gain to take.
    calm = evaluate_remap(view, big, place, 1, failed=no_fail, degraded=no_fail, settings=s)
    assert calm is None or not calm.worth_it(s.margin)


def test_one_saturated_core_weighs_as_much_as_a_whole_saturated_stage() -> None:
    """A pipeline runs at its slowest core: a stage priced by the mean over its cores would hide one bad core of
    sixteen; the move's gain must not shrink with the stage's size."""
    big = (StageDemand(4, out_keps=400.0, in_keps=400.0), StageDemand(16, out_keps=400.0), StageDemand(4))
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=8, rows=8))
    place = [np.arange(0, 4), np.arange(8, 24), np.arange(32, 36)]
    free = np.zeros(topo.n_cores, dtype=bool)
    free[40:64] = True
    view = PlacementView.idle(topo, free, inter_chip_weight=WEIGHT)
    one = np.zeros(topo.n_cores, dtype=bool)
    one[10] = True
    every = np.zeros(topo.n_cores, dtype=bool)
    every[8:24] = True
    none = np.zeros(topo.n_cores, dtype=bool)
    s = ReallocationSettings()
    a = evaluate_remap(view, big, place, 1, failed=none, degraded=one, settings=s)
    b = evaluate_remap(view, big, place, 1, failed=none, degraded=every, settings=s)
    assert a is not None
    assert b is not None
    assert a.cost_before == pytest.approx(b.cost_before)
    # and the stage's signals speak for its worst core too
    fill = np.zeros(topo.n_cores)
    fill[10] = 1.0
    sig = signals_of(place[1], failed=none, queue_fill=fill, efficiency=np.ones(topo.n_cores),
                     link_util=np.zeros(topo.n_cores))  # fmt: skip
    assert sig.queue_fill == 1.0


def _frame(t: float, *, nan_cores: tuple[int, ...] = ()) -> TelemetryFrame:
    n = TOPO.n_cores
    c = np.full(n, 100.0 * t)
    q = np.zeros(n)
    c2 = c.copy()
    for k in nan_cores:
        c2[k] = np.nan
        q[k] = np.nan
    return TelemetryFrame(t, q, c2, c2.copy(), np.zeros(n), c2.copy(), c2.copy(), np.zeros(TOPO.n_links),
                          np.zeros(n, dtype=bool), np.zeros(TOPO.n_links, dtype=bool))  # fmt: skip


def _job() -> RunningJob:
    return RunningJob("a", DEMANDS, [RunningStage("a", i, p, p.copy(), i + 1, 0.0) for i, p in enumerate(_placement())])


def _booked(job: RunningJob) -> np.ndarray:
    b = np.zeros(TOPO.n_cores, dtype=bool)
    for s in job.stages:
        b[s.cores] = True
    return b


def test_stale_telemetry_is_not_a_failed_core() -> None:
    """A stage core whose counters read NaN for seconds goes Unhealthy (stale) but the stage does not move: an
    unknown reading is not evidence, and only a hard failure forces a move."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    clock = [0.0]
    node = DaemonReallocator(TOPO, m, ReallocationSettings(min_age=0.0), WEIGHT, lambda: clock[0])
    job = _job()
    for k in range(1, 101):  # 10 s, the last 8 s with core 2 (stage 1) silent
        clock[0] = 0.1 * k
        m.observe(_frame(clock[0], nan_cores=(2,) if clock[0] > 2.0 else ()))
        if k % 5 == 0:
            assert node.step({"a": job}, _booked(job)) == []
    assert not m.core_healthy[2]  # the health machine did flag it
    node.close()


def test_the_move_budget_is_checked_before_any_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job in its cooldown costs no replan: the budget answers first."""
    calls = []
    real = evaluate_remap

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("snnrm.cluster.remap.evaluate_remap", counting)
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    clock = [100.0]
    node = DaemonReallocator(TOPO, m, ReallocationSettings(), WEIGHT, lambda: clock[0])
    job = _job()
    job.stages[0].last_move = 90.0  # moved 10 s ago: inside the 60 s cooldown
    m.hard_fault(HardFault(FaultKind.CORE, 6, failed=True, timestamp=100.0))
    assert node.step({"a": job}, _booked(job)) == []
    assert calls == []
    assert node.outcomes[-1][2] == "blocked"
    node.close()


def test_one_pass_never_gives_two_stages_the_same_cores() -> None:
    """Two jobs lose a core each in the same pass and only a few free cores fit both: disjoint targets."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    a = _job()
    b = RunningJob("b", DEMANDS, [RunningStage("b", i, p + 16, p + 16, 10 + i, 0.0)
                                  for i, p in enumerate(_placement())])  # fmt: skip
    m.hard_fault(HardFault(FaultKind.CORE, 6, failed=True, timestamp=1.0))
    m.hard_fault(HardFault(FaultKind.CORE, 22, failed=True, timestamp=1.0))
    node = DaemonReallocator(TOPO, m, ReallocationSettings(), WEIGHT, lambda: 1.0)
    booked = _booked(a) | _booked(b)
    moves = node.step({"a": a, "b": b}, booked)
    assert len(moves) == 2
    assert not np.isin(moves[0].target, moves[1].target).any()
    assert not booked[np.setdiff1d(moves[0].target, a.stages[1].cores)].any()
    node.close()


def test_a_stage_watch_needs_the_dwell_for_soft_reasons_and_not_for_a_failed_core() -> None:
    s = ReallocationSettings()
    w = StageWatch()
    assert not w.observe(StageSignals(0, 1.0, 1.0, 0.0), 0.0, s)
    assert w.observe(StageSignals(0, 1.0, 1.0, 0.0), s.dwell, s)
    w2 = StageWatch()
    assert w2.observe(StageSignals(1, 0.0, 1.0, 0.0), 0.0, s)


def test_a_full_queue_moves_after_the_short_dwell_and_a_merely_saturated_one_after_the_long() -> None:
    """A full queue drops events now: it needs half a second, not two. A queue at 85 % (saturated, not full) and a
    queue that was saturated for long but full only just now wait as before."""
    s = ReallocationSettings()
    full = StageWatch()
    assert not full.observe(StageSignals(0, 1.0, 1.0, 0.0), 10.0, s)
    assert full.observe(StageSignals(0, 1.0, 1.0, 0.0), 10.0 + s.full_dwell, s)
    half = StageWatch()
    assert not half.observe(StageSignals(0, 0.85, 1.0, 0.0), 10.0, s)
    assert not half.observe(StageSignals(0, 0.85, 1.0, 0.0), 10.0 + s.full_dwell, s)
    assert half.observe(StageSignals(0, 0.85, 1.0, 0.0), 10.0 + s.dwell, s)
    late = StageWatch()
    assert not late.observe(StageSignals(0, 0.85, 1.0, 0.0), 10.0, s)
    assert not late.observe(StageSignals(0, 1.0, 1.0, 0.0), 11.0, s)
    assert late.observe(StageSignals(0, 1.0, 1.0, 0.0), 11.0 + s.full_dwell, s)
    glitch = StageWatch()  # an unknown reading is no fill at all
    assert not glitch.observe(StageSignals(0, float("nan"), 1.0, 0.0), 10.0, s)
    assert not glitch.observe(StageSignals(0, float("nan"), 1.0, 0.0), 10.0 + s.dwell, s)
