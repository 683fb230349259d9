"""The policies on a tiny mesh: where each places a job, and snnrm's reallocation loop (the daemon's decisions)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.experiments.policies import (
    POLICIES,
    DaemonReallocator,
    RunningJob,
    RunningStage,
    health_settings,
    place,
    reactive_moves,
    realloc_settings,
)
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import PlacementView, StageDemand
from snnrm.core.reallocation import ReallocationSettings
from snnrm.core.telemetry import FaultKind, HardFault
from snnrm.core.topology import ChipGeometry, Topology

TOPO = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4))  # 32 cores, 2 chips
DEMANDS = (StageDemand(3, out_keps=50.0, in_keps=80.0), StageDemand(3, out_keps=40.0), StageDemand(2))


def _monitor() -> NodeMonitor:
    return NodeMonitor(TOPO, ThroughputBlocks.plan(TOPO, block_keps=1000.0))


def _job(name: str, placement: list[list[int]], demands: tuple[StageDemand, ...] = DEMANDS) -> RunningJob:
    stages = []
    for i, c in enumerate(placement):
        cores = np.array(c, dtype=np.int64)
        stages.append(RunningStage(name, i, cores, cores.copy(), uid=len(name) * 100 + i, created=0.0))
    return RunningJob(name, demands, stages)


def _booked(*jobs: RunningJob) -> np.ndarray:
    b = np.zeros(TOPO.n_cores, dtype=bool)
    for j in jobs:
        for s in j.stages:
            b[s.cores] = True
            b[s.admitted] = True
    return b


def test_first_fit_takes_the_lowest_free_cores_stage_after_stage() -> None:
    free = np.ones(TOPO.n_cores, dtype=bool)
    free[[0, 5]] = False
    out = place(POLICIES["first-fit"], PlacementView.idle(TOPO, free), DEMANDS, np.random.default_rng(0))
    assert out is not None
    assert [s.tolist() for s in out] == [[1, 2, 3], [4, 6, 7], [8, 9]]


@pytest.mark.parametrize("policy", ["first-fit", "random", "static"])
def test_every_placer_uses_only_free_cores_once(policy: str) -> None:
    free = np.random.default_rng(1).random(TOPO.n_cores) < 0.6
    out = place(POLICIES[policy], PlacementView.idle(TOPO, free), DEMANDS, np.random.default_rng(2))
    assert out is not None
    flat = np.concatenate(out)
    assert len(np.unique(flat)) == len(flat) == sum(d.cores for d in DEMANDS)
    assert free[flat].all()
    assert [len(s) for s in out] == [d.cores for d in DEMANDS]


def test_random_placement_is_reproducible_and_placers_refuse_what_does_not_fit() -> None:
    view = PlacementView.idle(TOPO)
    a = place(POLICIES["random"], view, DEMANDS, np.random.default_rng(5))
    b = place(POLICIES["random"], view, DEMANDS, np.random.default_rng(5))
    assert a is not None
    assert b is not None
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    tight = np.zeros(TOPO.n_cores, dtype=bool)
    tight[:7] = True  # 8 cores needed
    for name in ("first-fit", "random", "static"):
        assert place(POLICIES[name], PlacementView.idle(TOPO, tight), DEMANDS, np.random.default_rng(0)) is None


def test_the_ablation_settings_remove_every_hysteresis_and_keep_the_defaults_otherwise() -> None:
    assert health_settings(POLICIES["snnrm"]).enter_dwell > 0
    assert realloc_settings(POLICIES["snnrm"]) == ReallocationSettings()
    h = health_settings(POLICIES["snnrm-no-hysteresis"])
    assert (h.enter_dwell, h.recover_dwell) == (0.0, 0.0)
    assert (h.queue_exit, h.efficiency_exit, h.link_exit) == (h.queue_enter, h.efficiency_enter, h.link_enter)
    r = realloc_settings(POLICIES["snnrm-no-hysteresis"])
    assert (r.dwell, r.clear, r.cooldown) == (0.0, 0.0, 0.0)
    assert r.queue_exit == r.queue_enter
    assert r.margin == ReallocationSettings().margin  # the price test is not hysteresis
    assert not POLICIES["first-fit"].uses_monitor
    assert POLICIES["static"].uses_monitor
    assert POLICIES["reactive"].uses_monitor
    assert POLICIES["reactive"].restarts
    assert POLICIES["reactive"].placer == "first-fit"


def _daemon(m: NodeMonitor, clock: list[float], settings: ReallocationSettings | None = None) -> DaemonReallocator:
    return DaemonReallocator(TOPO, m, settings or ReallocationSettings(), 4.0, lambda: clock[0])


def test_a_failed_core_moves_its_stage_at_the_next_pass_and_the_cooldown_holds_it() -> None:
    m = _monitor()
    clock = [1.0]
    job = _job("a", [[0, 1, 2], [4, 5, 6], [8, 9]])
    node = _daemon(m, clock)
    assert node.step({"a": job}, _booked(job)) == []
    m.hard_fault(HardFault(FaultKind.CORE, 5, failed=True, timestamp=1.2))
    clock[0] = 1.5
    moves = node.step({"a": job}, _booked(job))
    assert len(moves) == 1
    mv = moves[0]
    assert (mv.job, mv.stage, mv.action, mv.reasons) == ("a", 1, "remap", ("failed-core",))
    assert 5 not in mv.target
    assert len(mv.target) == 3
    others = np.concatenate([job.stages[0].cores, job.stages[2].cores])
    assert not np.isin(mv.target, others).any()
    assert node.activations == [(1.5, "a")]
    # The daemon lends the cores beyond the admitted ones: withheld from the kubelet until the pod ends.
    lent = np.setdiff1d(mv.target, [4, 5, 6])
    assert node.service.withheld is not None
    assert np.flatnonzero(node.service.withheld).tolist() == lent.tolist()
    # A second failure under the stage that just moved: its 60 s cooldown blocks a second move.
    job.stages[1].cores = mv.target
    job.stages[1].last_move = 1.5
    m.hard_fault(HardFault(FaultKind.CORE, int(mv.target[0]), failed=True, timestamp=2.0))
    clock[0] = 2.5
    assert node.step({"a": job}, _booked(job)) == []
    assert node.outcomes[-1][2] == "blocked"
    # A failure under another stage of the job: that stage runs nothing and has not moved, so it moves now.
    m.hard_fault(HardFault(FaultKind.CORE, 0, failed=True, timestamp=2.6))
    clock[0] = 3.0
    (again,) = node.step({"a": job}, _booked(job))
    assert (again.stage, again.reasons) == (0, ("failed-core",))
    assert not np.isin(again.target, [0, *mv.target]).any()
    node.forget("a", 0)
    node.forget("a", 1)
    assert not node.realloc.ledger.lent().any()
    node.close()


def test_two_moves_in_one_pass_never_share_cores() -> None:
    m = _monitor()
    a = _job("a", [[0, 1, 2], [4, 5, 6], [8, 9]])
    b = _job("b", [[16, 17, 18], [20, 21, 22], [24, 25]])
    m.hard_fault(HardFault(FaultKind.CORE, 5, failed=True, timestamp=1.0))
    m.hard_fault(HardFault(FaultKind.CORE, 21, failed=True, timestamp=1.0))
    node = _daemon(m, [1.5])
    moves = node.step({"a": a, "b": b}, _booked(a, b))
    assert {mv.job for mv in moves} == {"a", "b"}
    assert not np.isin(moves[0].target, moves[1].target).any()
    node.close()


def test_reactive_reschedules_a_stage_on_an_unhealthy_core_to_the_lowest_free_cores() -> None:
    a = _job("a", [[0, 1, 2], [4, 5, 6], [8, 9]])
    b = _job("b", [[16, 17, 18], [20, 21, 22], [24, 25]])
    healthy = np.ones(TOPO.n_cores, dtype=bool)
    assert reactive_moves(healthy, {"a": a, "b": b}, _booked(a, b), 1.0) == ([], [])
    healthy[[5, 21]] = False
    moves, failed = reactive_moves(healthy, {"a": a, "b": b}, _booked(a, b), 1.0)
    assert failed == []
    assert [(mv.job, mv.stage, mv.action) for mv in moves] == [("a", 1, "reschedule"), ("b", 1, "reschedule")]
    assert moves[0].target.tolist() == [3, 7, 10]  # first fit over free healthy cores
    assert moves[1].target.tolist() == [11, 12, 13]  # never the cores just given to "a"
    tight = np.zeros(TOPO.n_cores, dtype=bool)
    tight[[0, 1, 2, 8, 9]] = True
    moves, failed = reactive_moves(tight, {"a": a}, _booked(a), 2.0)
    assert moves == []
    assert failed == [(2.0, "a", "no-room")]
