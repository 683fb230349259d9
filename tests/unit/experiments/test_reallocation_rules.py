"""The reallocation rules the experiments found broken (issue 14, point 7), each on the product's pure decision
code (:mod:`snnrm.core.reallocation`) and the daemon's reallocator (:class:`snnrm.cluster.remap.NodeReallocator`).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from benchmarks.experiments.policies import DaemonReallocator, Move, RunningJob, RunningStage
from snnrm.cluster.reallocation import ReallocationMetrics
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import PlacementView, StageDemand
from snnrm.core.reallocation import (
    MoveBudget,
    MoveReason,
    ReallocationSettings,
    StageSignals,
    StageWatch,
    evaluate_remap,
    hot_neighbourhood,
    links_to_avoid,
    routes_crossing,
    signals_of,
    standing,
)
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
    sig = signals_of(
        place[1], failed=none, queue_fill=fill, efficiency=np.ones(topo.n_cores), link_util=np.zeros(topo.n_cores)
    )
    assert sig.queue_fill == 1.0


def _frame(t: float, *, nan_cores: tuple[int, ...] = ()) -> TelemetryFrame:
    n = TOPO.n_cores
    c = np.full(n, 100.0 * t)
    q = np.zeros(n)
    c2 = c.copy()
    for k in nan_cores:
        c2[k] = np.nan
        q[k] = np.nan
    return TelemetryFrame(
        t,
        q,
        c2,
        c2.copy(),
        np.zeros(n),
        c2.copy(),
        c2.copy(),
        np.zeros(TOPO.n_links),
        np.zeros(n, dtype=bool),
        np.zeros(TOPO.n_links, dtype=bool),
    )


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
    job.stages[1].last_move = 90.0  # the stage on core 6 moved 10 s ago: inside its 60 s cooldown
    m.hard_fault(HardFault(FaultKind.CORE, 6, failed=True, timestamp=100.0))
    assert node.step({"a": job}, _booked(job)) == []
    assert calls == []
    assert node.outcomes[-1][2] == "blocked"
    node.close()


def test_one_pass_never_gives_two_stages_the_same_cores() -> None:
    """Two jobs lose a core each in the same pass and only a few free cores fit both: disjoint targets."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    a = _job()
    b = RunningJob(
        "b", DEMANDS, [RunningStage("b", i, p + 16, p + 16, 10 + i, 0.0) for i, p in enumerate(_placement())]
    )
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
    """A full queue drops events now: two readings a sample period apart, not two seconds. A queue at 85 %
    (saturated, not full) and a queue that was saturated for long but full only just now wait as before."""
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
    periodic = StageWatch()  # readings a float period apart: 0.3 - 0.2 < 0.1, still the second reading
    assert s.full_dwell > 0.3 - 0.2
    assert not periodic.observe(StageSignals(0, 1.0, 1.0, 0.0), 0.2, s)
    assert periodic.observe(StageSignals(0, 1.0, 1.0, 0.0), 0.3, s)
    once = StageWatch()  # one full reading between normal ones never moves a stage
    for k, fill in enumerate((0.2, 1.0, 0.2, 1.0, 0.2)):
        assert not once.observe(StageSignals(0, fill, 1.0, 0.0), 20.0 + 0.1 * k, s)
    glitch = StageWatch()  # an unknown reading is no fill at all
    assert not glitch.observe(StageSignals(0, float("nan"), 1.0, 0.0), 10.0, s)
    assert not glitch.observe(StageSignals(0, float("nan"), 1.0, 0.0), 10.0 + s.dwell, s)


def _lossy_frame(t: float, *, lossy: tuple[int, ...], failed: tuple[int, ...]) -> TelemetryFrame:
    """Every core busy, ``failed`` ones failed, and what ``lossy`` cores send never arrives."""
    n = TOPO.n_cores
    c = np.full(n, 100.0 * t)
    delivered = c.copy()
    delivered[list(lossy)] = 0.0
    dead = np.zeros(n, dtype=bool)
    dead[list(failed)] = True
    links = np.zeros(TOPO.n_links)
    return TelemetryFrame(t, np.zeros(n), c, c.copy(), np.zeros(n), c.copy(), delivered, links, dead, links > 0)


def test_lost_spikes_are_blamed_on_the_stage_where_they_are_lost() -> None:
    """Stage 1's cores all fail and no home fits it; stage 0 keeps sending into them, so its own counters show
    every spike lost. The loss is stage 1's: stage 0 (which has room to move) stays where it is."""
    demands = (StageDemand(2, out_keps=400.0, in_keps=400.0), StageDemand(4, out_keps=400.0), StageDemand(4))
    place = [np.array([0, 1]), np.array([2, 3, 6, 7]), np.array([8, 9, 12, 13])]
    job = RunningJob("a", demands, [RunningStage("a", i, p, p.copy(), i + 1, 0.0) for i, p in enumerate(place)])
    booked = np.ones(TOPO.n_cores, dtype=bool)
    booked[[29, 30, 31]] = False  # room for stage 0 (2 cores), none for stage 1 (4)
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    clock = [0.0]
    node = DaemonReallocator(TOPO, m, ReallocationSettings(min_age=0.0), WEIGHT, lambda: clock[0])
    for c in (2, 3, 6, 7):
        m.hard_fault(HardFault(FaultKind.CORE, c, failed=True, timestamp=1.0))
    moves = []
    for k in range(1, 101):  # 10 s, well past every dwell
        clock[0] = 0.1 * k
        late = clock[0] > 1.0
        m.observe(_lossy_frame(clock[0], lossy=(0, 1) if late else (), failed=(2, 3, 6, 7) if late else ()))
        if k % 5 == 0:
            moves += node.step({"a": job}, booked)
    assert not m.core_healthy[0]  # the health machine sees stage 0's losses
    assert moves == []
    assert any(o == "unavailable" for _, _, o in node.outcomes)  # stage 1 is reported: no home for it
    node.close()


def test_a_remap_that_cannot_be_written_leaves_the_stage_where_it_was_and_is_counted() -> None:
    """The stage's allocation file cannot be rewritten: no record, no lent cores, the stage stays, and the
    failure is counted with its reason; once the file is writable again the move goes through."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    node = DaemonReallocator(TOPO, m, ReallocationSettings(), WEIGHT, lambda: 1.0)
    metrics = ReallocationMetrics(CollectorRegistry())
    node.realloc.metrics = metrics
    job = _job()
    admitted = tuple(TOPO.ids[i] for i in job.stages[1].admitted.tolist())
    path = node.realloc.ledger.allocation_file(admitted)
    path.mkdir(parents=True)  # a directory where the file should be: every write fails
    m.hard_fault(HardFault(FaultKind.CORE, 6, failed=True, timestamp=1.0))
    assert node.step({"a": job}, _booked(job)) == []
    assert node.realloc.ledger.records == {}
    assert node.service.withheld is None
    assert metrics.value("failed-core", "failed") == 1
    path.rmdir()
    moves = node.step({"a": job}, _booked(job))
    assert [mv.stage for mv in moves] == [1]
    assert metrics.value("failed-core", "remap") == 1
    node.close()


def test_a_deferred_or_impossible_move_is_counted_with_its_reason() -> None:
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    node = DaemonReallocator(TOPO, m, ReallocationSettings(), WEIGHT, lambda: 100.0)
    metrics = ReallocationMetrics(CollectorRegistry())
    node.realloc.metrics = metrics
    job = _job()
    job.stages[1].last_move = 90.0  # the stage on core 6, inside its cooldown
    m.hard_fault(HardFault(FaultKind.CORE, 6, failed=True, timestamp=100.0))
    node.step({"a": job}, _booked(job))
    assert metrics.value("failed-core", "blocked") == 1
    job.stages[1].last_move = None
    node.step({"a": job}, np.ones(TOPO.n_cores, dtype=bool))  # every core taken: nowhere to go
    assert metrics.value("failed-core", "no-target") == 1
    node.close()


def _slow_frame(
    t: float, *, core: int | tuple[int, ...], fill: float, rate_share: float, topo: Topology = TOPO
) -> TelemetryFrame:
    """Every core idle but ``core``: its queue ``fill`` full while it processes ``rate_share`` of its nominal rate."""
    slow = list(core) if isinstance(core, tuple) else [core]
    n = topo.n_cores
    c = np.full(n, 100.0 * t)
    processed = c.copy()
    processed[slow] = rate_share * topo.core_nominal_keps[slow] * 1e3 * t
    depth = np.zeros(n)
    depth[slow] = fill * topo.core_queue_capacity[slow]
    links = np.zeros(topo.n_links)
    ok = np.zeros(n, dtype=bool)
    return TelemetryFrame(t, depth, processed.copy(), processed, np.zeros(n), c.copy(), c.copy(), links, ok, links > 1)


@pytest.mark.parametrize(("rate_share", "moves"), [(0.25, True), (1.0, False)])
def test_a_short_queue_that_drains_slowly_is_a_saturated_one(rate_share: float, moves: bool) -> None:
    """A hot spot throttles a core: its queue stays a third full, below every fill threshold, but it drains at a
    quarter of the nominal rate, so each spike waits longer than behind a full queue at full speed. That stage
    moves; the same queue on a core that processes at its nominal rate is only busy, and stays."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    clock = [0.0]
    node = DaemonReallocator(TOPO, m, ReallocationSettings(min_age=0.0), WEIGHT, lambda: clock[0])
    job = _job()
    done = []
    for k in range(1, 101):
        clock[0] = 0.1 * k
        m.observe(_slow_frame(clock[0], core=2, fill=0.3, rate_share=rate_share))
        if k % 5 == 0:
            done += node.step({"a": job}, _booked(job))
    assert m.core_healthy[2]  # the health machine's fill threshold never fires
    assert [mv.stage for mv in done] == ([1] if moves else [])
    if moves:
        assert 2 not in done[0].target
    node.close()


def test_a_stage_moved_off_a_congested_link_routes_around_it() -> None:
    """Stage 0 sits on router (1,0), whose east link is congested, and sends to stage 1 on (3,0). The nearest free
    core, (0,0), would still send every spike over that link; the move goes to (0,1), one hop further, whose XY
    route runs along row 1."""
    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=8, rows=4))
    link = int(np.flatnonzero((topo.link_src == 1) & (topo.link_dst == 2))[0])
    util = np.zeros(topo.n_links)
    util[link] = 1.0
    free = np.zeros(topo.n_cores, dtype=bool)
    free[[0, 8]] = True
    view = PlacementView.measured(
        topo, free=free, queue_fill=np.zeros(topo.n_cores), link_utilization=util, inter_chip_weight=WEIGHT
    )
    demands = (StageDemand(1, out_keps=100.0, in_keps=100.0), StageDemand(1))
    place = [np.array([1]), np.array([3])]
    degraded = np.zeros(topo.n_cores, dtype=bool)
    degraded[1] = True  # Unhealthy: its router's link is congested
    none = np.zeros(topo.n_cores, dtype=bool)
    s = ReallocationSettings()
    opt = evaluate_remap(view, demands, place, 0, failed=none, degraded=degraded, settings=s, congested=util > 0.9)
    assert opt is not None
    assert opt.worth_it(s.margin)
    assert opt.target.tolist() == [8]
    # the closed-form route test agrees with the path: (0,0) -> (3,0) uses the link, (0,1) -> (3,0) does not
    hit = routes_crossing(topo, np.array([0, 8]), np.array([3]), np.array([link]))
    assert hit[:, 0].tolist() == [True, False]
    assert not routes_crossing(topo, np.array([3]), np.array([0]), np.array([link])).any()  # westward: other link


def test_a_stage_whose_neighbour_sits_in_the_region_too_moves_with_it() -> None:
    """A hot region under stages 1 and 2: stage 2 alone buys little (the pipeline still pays for stage 1's bad
    cores), so it is not worth its margin; with stage 1 re-planned in the same decision it is, and neither stage
    lands on a bad core or on the other's new cores (the experiments' hot-spot scenario, seed 9: a bystander job
    kept dropping events for the whole run)."""
    demands = (StageDemand(4, out_keps=2000.0, in_keps=400.0), StageDemand(4, out_keps=400.0), StageDemand(4))
    free = np.zeros(TOPO.n_cores, dtype=bool)
    free[16:32] = True
    view = PlacementView.idle(TOPO, free, inter_chip_weight=WEIGHT)
    place = _placement()
    bad = np.zeros(TOPO.n_cores, dtype=bool)
    bad[[2, 3, 6, 7, 8, 9, 12, 13]] = True  # stages 1 and 2; stage 1 carries the heavy edge
    none = np.zeros(TOPO.n_cores, dtype=bool)
    s = ReallocationSettings()
    alone = evaluate_remap(view, demands, place, 2, failed=none, degraded=bad, settings=s)
    assert alone is not None
    assert alone.stages == (2,)
    assert not alone.worth_it(s.margin), alone.gain
    gang = evaluate_remap(view, demands, place, 2, failed=none, degraded=bad, settings=s, with_stages=[1, 0])
    assert gang is not None
    assert gang.stages == (2, 1)  # stage 0 has no bad core: it stays
    assert gang.worth_it(s.margin), gang.gain
    t2, t1 = gang.targets
    assert not bad[t2].any()
    assert not bad[t1].any()
    assert not np.isin(t1, t2).any()
    assert free[t1].all()
    assert free[t2].all()
    assert gang.migration_cost > alone.migration_cost  # both moves are paid for


def test_an_urgent_move_waits_for_its_own_stage_cooldown_not_the_jobs() -> None:
    """The cooldown stops a job from flapping: after stage 2 moved, the job may not move for a minute for a soft
    reason, and stage 2 may not move again, but stage 1, saturated now, may once the job has settled for `dwell`
    seconds; the window's cap holds throughout."""
    s = ReallocationSettings(cooldown=60.0, window=600.0, max_moves_per_window=3)
    b = MoveBudget(s)
    job = ("default", "j")
    assert b.blocked(job, 0.0) is None
    b.record(job, 0.0, stages=[2])
    assert b.blocked(job, 10.0) is not None  # soft reason: the job's cooldown
    assert b.blocked(job, 10.0, urgent_stage=2) is not None  # the moved stage itself
    assert b.blocked(job, 1.0, urgent_stage=1) is not None  # the job settles for `dwell` seconds first
    assert b.blocked(job, 10.0, urgent_stage=1) is None
    assert b.blocked(job, 10.0, urgent_stage=1, stage_last_move=5.0) is not None  # its own move, from its pod
    assert b.blocked(job, 10.0, urgent_stage=1, last_move=9.0) is not None  # the job's, from another pod
    b.record(job, 10.0, stages=[1, 0])
    assert b.allowance(20.0) == 0
    assert b.blocked(("default", "other"), 20.0, urgent_stage=0) is not None  # three moves in the window
    assert b.allowance(601.0) == 1  # the first move has left the window


def _moves_of_the_first_pass_that_moves(demands: tuple[StageDemand, ...], *, core: int | tuple[int, ...]) -> list[Move]:
    """The daemon's reallocator over job "a" on :func:`_placement` while ``core`` runs at a quarter of its rate:
    frames every 0.1 s, a pass every 0.5 s for 6 s; exactly one pass moves, and its moves are returned."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    clock = [0.0]
    node = DaemonReallocator(TOPO, m, ReallocationSettings(min_age=0.0), WEIGHT, lambda: clock[0])
    job = RunningJob("a", demands, [RunningStage("a", i, p, p.copy(), i + 1, 0.0) for i, p in enumerate(_placement())])
    passes: list[list[Move]] = []
    try:
        for k in range(1, 61):
            clock[0] = 0.1 * k
            m.observe(_slow_frame(clock[0], core=core, fill=0.3, rate_share=0.25))
            if k % 5 == 0 and not passes:
                done = node.step({"a": job}, _booked(job))
                if done:
                    passes.append(done)
    finally:
        node.close()
    assert len(passes) == 1
    return passes[0]


def test_the_daemon_moves_a_jobs_stages_in_a_hot_region_together() -> None:
    """Throttled cores under stages 1 and 2 (a hot region), stage 1 carrying the job's heavy edge: the daemon's
    reallocator moves both in one pass, to disjoint cores outside the region, and leaves stage 0 where it is."""
    demands = (StageDemand(4, out_keps=2000.0, in_keps=400.0), StageDemand(4, out_keps=400.0), StageDemand(4))
    moves = _moves_of_the_first_pass_that_moves(demands, core=(2, 8))
    assert sorted(mv.stage for mv in moves) == [1, 2]
    t = {mv.stage: mv.target for mv in moves}
    assert not np.isin(t[1], t[2]).any()
    for mv in moves:
        assert 2 not in mv.target
        assert 8 not in mv.target


@pytest.mark.parametrize(
    ("chips", "geometry"),
    [
        (2, ChipGeometry(cols=4, rows=4)),
        (6, ChipGeometry(cols=3, rows=5)),
        (4, ChipGeometry(cols=2, rows=3, cores_per_router=4)),  # shared routers (SpiNNaker 2 quad-PEs)
    ],
)
def test_the_hot_neighbourhood_is_every_core_one_router_hop_away_on_the_same_chip(
    chips: int, geometry: ChipGeometry
) -> None:
    """The grid computation gives exactly the definition (router-grid distance <= 1, same chip), never a core
    across a chip boundary, for random hot sets."""
    topo = Topology.grid(chips=chips, geometry=geometry)
    rng = np.random.default_rng(3)
    for k in (0, 1, 3, topo.n_cores // 4):
        hot = rng.choice(topo.n_cores, size=k, replace=False)
        hops = np.abs(topo.gx[:, None] - topo.gx[hot][None, :]) + np.abs(topo.gy[:, None] - topo.gy[hot][None, :])
        expected = ((hops <= 1) & (topo.chip_of[:, None] == topo.chip_of[hot][None, :])).any(axis=1)
        np.testing.assert_array_equal(hot_neighbourhood(topo, hot), expected)
    corner = hot_neighbourhood(topo, np.array([geometry.cores - 1]))  # chip 0's last core: its chip only
    assert set(topo.chip_of[corner].tolist()) == {0}


def test_a_move_avoids_links_past_the_exit_threshold_not_only_past_the_entry_one() -> None:
    """A saturated link reads around the entry threshold (0.95 +- noise): a target's routes avoid it whichever
    side of 0.95 this frame fell; unknown and failed links are avoided, a quiet one is not."""
    s = ReallocationSettings()
    util = np.array([0.94, 0.96, s.link_exit + 0.01, s.link_exit - 0.01, np.nan, 0.0])
    failed = np.array([False, False, False, False, False, True])
    assert links_to_avoid(util, failed, s).tolist() == [True, True, True, False, True, True]


def test_a_stage_on_idle_cores_of_the_hot_region_comes_along_when_the_lone_move_is_not_worth_it() -> None:
    """Only stage 2's core 8 is throttled; stage 0's core 4, one hop from it, is idle and healthy but inside the
    region the evaluation prices as degraded, and stage 0 carries the job's heavy edge. Moving stage 2 alone buys
    too little, and no other stage shows trouble of its own: the pass moves stage 0 with it, out of the region, and
    leaves stage 1 (two hops away) where it is. Without the second tier the stage was reported unavailable."""
    demands = (StageDemand(4, out_keps=2000.0, in_keps=400.0), StageDemand(4, out_keps=50.0), StageDemand(4))
    moves = _moves_of_the_first_pass_that_moves(demands, core=8)
    assert sorted(mv.stage for mv in moves) == [0, 2]
    region = hot_neighbourhood(TOPO, np.array([8]))
    for mv in moves:
        assert not region[mv.target].any()
    assert not np.intersect1d(moves[0].target, moves[1].target).size


def test_one_pass_spends_at_most_half_of_the_move_window_and_leaves_the_rest_for_later_passes() -> None:
    """Two jobs' stages throttle at the same moment, each with room to move on its own chip, and the window allows
    two moves: the first pass moves one of them and defers the other, which moves on the next pass. A stage that
    degrades a moment after its neighbours (the victim of a hot spot, whose neighbours read its spill-over first)
    must find some of the window left; one pass spending it all on the neighbours kept the victim blocked for
    120 s (the full hot-spot set, seed 10)."""
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=8, rows=4))  # 32 cores a chip; columns 4..7 free
    m = NodeMonitor(topo, ThroughputBlocks.plan(topo, block_keps=1000.0))
    clock = [0.0]
    node = DaemonReallocator(
        topo, m, ReallocationSettings(min_age=0.0, max_moves_per_window=2), WEIGHT, lambda: clock[0]
    )
    blocks = [np.array([0, 1, 8, 9]), np.array([2, 3, 10, 11]), np.array([16, 17, 24, 25])]
    jobs = {
        name: RunningJob(
            name, DEMANDS, [RunningStage(name, i, p + shift, p + shift, i + 1, 0.0) for i, p in enumerate(blocks)]
        )
        for name, shift in (("a", 0), ("b", 32))  # the same pipeline on chip 0 and on chip 1
    }
    passes: list[tuple[float, list[Move]]] = []
    for k in range(1, 101):
        clock[0] = 0.1 * k
        m.observe(_slow_frame(clock[0], core=(2, 34), fill=0.3, rate_share=0.25, topo=topo))  # each job's stage 1
        if k % 5 == 0:
            booked = np.zeros(topo.n_cores, dtype=bool)
            for job in jobs.values():
                for s in job.stages:
                    booked[s.cores] = True
            done = node.step(jobs, booked)
            for mv in done:
                jobs[mv.job].stages[mv.stage].cores = mv.target
            if done:
                passes.append((clock[0], done))
    assert [[(mv.job, mv.stage) for mv in moves] for _, moves in passes] == [[("a", 1)], [("b", 1)]]
    first, second = (t for t, _ in passes)
    assert second == first + 0.5  # the next pass, not the next window
    assert (first, "b", "blocked") in node.recorder.outcomes
    for _, (mv,) in passes:
        assert not np.isin(mv.target, [2, 34]).any()
        assert len(set(topo.chip_of[mv.target].tolist())) == 1  # each stays on its own chip
    node.close()


def _moves_after_a_full_queue(*, drains: bool) -> tuple[list[Move], DaemonReallocator]:
    """Job "a" whose stage 0 moved at t=0: stage 1's core 2 is full for a second, then (``drains``) empty; four
    seconds of frames every 0.1 s and a pass every 0.5 s."""
    m = NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))
    clock = [0.0]
    node = DaemonReallocator(TOPO, m, ReallocationSettings(min_age=0.0), WEIGHT, lambda: clock[0])
    job = RunningJob(
        "a",
        DEMANDS,
        [RunningStage("a", i, p, p.copy(), i + 1, 0.0, 0.0 if i == 0 else None) for i, p in enumerate(_placement())],
    )
    done: list[Move] = []
    for k in range(1, 41):
        clock[0] = 0.1 * k
        full = clock[0] <= 1.0 or not drains
        m.observe(_slow_frame(clock[0], core=2, fill=0.99 if full else 0.0, rate_share=0.25 if full else 1.0))
        if k % 5 == 0:
            done += node.step({"a": job}, _booked(job))
    return done, node


def test_a_move_answers_trouble_that_is_there_now_not_a_condition_held_by_hysteresis() -> None:
    """Stage 1's queue is full for a second, while the job may not move (stage 0 moved at t=0: the job settles for
    `dwell`), then drains. Once the job may move, the condition is still active (it clears after `clear` seconds
    of good readings) and the stage is still reported degraded, but it is not moved: its queue reads empty.
    Moving it gained nothing and made the job's truly slow stage wait out another settling time (the full hot-spot
    set, seed 19). The same queue still full at that moment does move the stage."""
    s = ReallocationSettings()
    assert s.clear > 4.0 - 1.0  # the condition is still held when the job may move again
    done, node = _moves_after_a_full_queue(drains=True)
    assert done == []
    assert any(j == "a" and what == "blocked" for _, j, what in node.recorder.outcomes)  # it settled first
    report = node.recorder.last[("a", 1)]
    assert (report.state, report.reasons, report.remap) == ("degraded", ("queue-saturated",), "none")
    node.close()
    done, node = _moves_after_a_full_queue(drains=False)
    assert [mv.stage for mv in done] == [1]
    assert done[0].at >= s.dwell  # after the settling time
    node.close()


Q, L, F = MoveReason.QUEUE_SATURATED, MoveReason.LINK_CONGESTED, MoveReason.FAILED_CORE


@pytest.mark.parametrize(
    ("held", "signals", "expected"),
    [
        ({Q, L}, StageSignals(0, 0.9, 1.0, 0.0), {Q}),  # the link reads quiet again
        ({Q, L}, StageSignals(0, 0.1, 1.0, 0.0), set()),  # every signal back under its exit threshold
        ({Q}, StageSignals(0, 0.6, 1.0, 0.0), {Q}),  # under the entry threshold, over the exit one: still there
        ({F, L}, StageSignals(1, 0.1, 1.0, 0.99), {F, L}),
        ({F}, StageSignals(0, 0.1, 1.0, 0.0), set()),  # the core is back
        ({Q, L}, StageSignals(0, math.nan, 1.0, math.nan), {Q, L}),  # an unknown reading does not clear anything
    ],
)
def test_standing_keeps_the_held_reasons_whose_signal_is_still_past_its_exit_threshold(
    held: set[MoveReason], signals: StageSignals, expected: set[MoveReason]
) -> None:
    assert standing(frozenset(held), signals, ReallocationSettings()) == expected


def test_a_quiet_stage_skips_the_fold_without_changing_any_decision() -> None:
    """The pass's fast path (`StageWatch.quiet`) against the full fold on random signal streams: wherever it says
    quiet, observing would have returned nothing and changed nothing, so the two watches never differ."""
    rng = np.random.default_rng(11)
    s = ReallocationSettings(dwell=0.3, full_dwell=0.1, clear=0.5)
    for _ in range(200):
        fast, full = StageWatch(), StageWatch()
        skipped = 0
        for k in range(60):
            bad = rng.random() < 0.15  # mostly quiet streams, with bursts of every kind of trouble
            sig = StageSignals(
                int(bad and rng.random() < 0.2),
                float(rng.uniform(0.0, 1.0) if bad else rng.uniform(0.0, s.queue_exit)),
                float(rng.uniform(0.0, 1.0) if bad else 1.0),
                float(rng.uniform(0.0, 1.0) if bad else rng.uniform(0.0, s.link_exit)),
            )
            now = 0.1 * k
            if fast.quiet(sig, s):
                got: frozenset[MoveReason] = frozenset()
                skipped += 1
            else:
                got = fast.observe(sig, now, s)
            assert got == full.observe(sig, now, s)
            assert (fast.active, fast.bad_since, fast.good_since, fast.since, fast.full_since) == (
                full.active,
                full.bad_since,
                full.good_since,
                full.since,
                full.full_since,
            )
        assert skipped  # the fast path is taken
