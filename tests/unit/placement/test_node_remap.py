"""The node side: live remap of a stage under a hot spot on the simulator, the remap ledger's recovery after a
restart, and matching admissions to plans (GetPreferredAllocation has no pod identity)."""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

import sim_hw
from snnrm.backends.sim import SimBackend
from snnrm.cluster import remap
from snnrm.cluster.hints import PlanHints, PlannedPod
from snnrm.cluster.remap import LocalStage, NodeReallocator, RemapLedger, read_allocation
from snnrm.core.devices import NEURON_CORE
from snnrm.core.health import HealthReason
from snnrm.core.jobs import StageHealth
from snnrm.core.placement import PlacementView, StageDemand, plan_cost, plan_job
from snnrm.core.reallocation import MoveOption, ReallocationSettings, evaluate_remap, hot_neighbourhood
from snnrm.kubelet.allocation_file import CoreAllocationFile
from snnrm.kubelet.allocator import AllocationFiles
from snnrm.node import FAULT_SEND_S, NodeService

DEMANDS = (StageDemand(4, out_keps=2000), StageDemand(4, out_keps=2000), StageDemand(4))
JOB = sim_hw.networks.Job(
    name="j",
    stages=(
        sim_hw.networks.Stage("s0", 1024, 4, spike_rate=2e6),
        sim_hw.networks.Stage("s1", 1024, 4, spike_rate=2e6),
        sim_hw.networks.Stage("s2", 1024, 4, spike_rate=0.0),
    ),
    input_rate=2e6,
)


@dataclass
class Recorded:
    reports: list[tuple[str, StageHealth, list[str] | None]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        self.reports.append((stage.pod, health, cores))

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        self.events.append((stage.pod, reason, note))


@dataclass
class Stages:
    node: NodeService
    placement: list[np.ndarray]
    admitted: list[tuple[str, ...]]
    live_remap: bool = True

    def stages(self) -> list[LocalStage]:
        return [
            LocalStage(
                "default", f"j-{i}", f"uid-{i}", "j", i, DEMANDS, self.admitted[i], self.placement[i], self.live_remap
            )
            for i in range(3)
        ]


async def _rig(
    tmp_path: Path, *, live_remap: bool = True
) -> tuple[SimBackend, NodeService, Stages, NodeReallocator, Recorded, list[float]]:
    backend = SimBackend(chips=2, cores_per_chip=16, seed=1)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.1)
    topo = node.topology
    plan = plan_job(PlacementView.idle(topo), DEMANDS)
    assert plan is not None
    placement = [p.copy() for p in plan.stages]
    admitted = [tuple(topo.ids[i] for i in p.tolist()) for p in placement]
    files = AllocationFiles(tmp_path)
    for ids in admitted:  # what Allocate wrote at admission
        # a stub body (only the file's name and resource matter here), not a full CoreAllocationFile
        files.ensure(sorted(ids), lambda: cast(CoreAllocationFile, {"resource": NEURON_CORE, "cores": []}))
    backend.sim.add_job(JOB, placement)
    source = Stages(node, placement, admitted, live_remap)
    clock = [0.0]

    def follow(stage: LocalStage, cores: np.ndarray) -> None:  # the runtime follows the remap
        backend.sim.move_stage("j", stage.index, cores)
        source.placement[stage.index] = cores

    reporter = Recorded()
    allocated = np.zeros(topo.n_cores, dtype=bool)
    allocated[np.concatenate(placement)] = True
    realloc = NodeReallocator(
        node,
        source,
        reporter,
        RemapLedger(tmp_path, topo),
        lambda: allocated,
        settings=ReallocationSettings(dwell=1.0, cooldown=30.0, min_age=0.0),
        inter_chip_weight=backend.inter_chip_weight,
        clock=lambda: clock[0],
        on_remap=follow,
    )
    return backend, node, source, realloc, reporter, clock


async def _run(
    backend: SimBackend, node: NodeService, realloc: NodeReallocator, clock: list[float], seconds: float
) -> None:
    for _ in range(round(seconds / 0.1)):
        backend.sim.advance(10)
        node.monitor.observe(await backend.read_frame())
        clock[0] = backend.sim.time
        await realloc.step()


async def test_a_stage_under_a_hot_spot_is_live_remapped(tmp_path: Path) -> None:
    """Queues saturate under stage 1; after the dwell it moves to cool cores: record, file rewritten in place
    (same inode), target cores withheld from the kubelet, report and Event; latency recovers."""
    backend, node, source, realloc, reporter, clock = await _rig(tmp_path)
    await _run(backend, node, realloc, clock, 1.0)
    before = sum(m.latency_s for m in backend.sim.stage_metrics("j"))
    old = source.placement[1].copy()
    path = realloc.ledger.allocation_file(source.admitted[1])
    inode = os.stat(path).st_ino
    backend.sim.inject(sim_hw.faults.HotSpot(cores=tuple(old.tolist()), service_divisor=8.0))
    await _run(backend, node, realloc, clock, 0.1)
    during = sum(m.latency_s for m in backend.sim.stage_metrics("j"))
    assert realloc.remaps == 0  # one full reading is not enough (full_dwell: two in a row)
    await _run(backend, node, realloc, clock, 4.0)
    # Stage 1 moves; stage 0, whose queue filled behind it, may follow if it stays saturated for a whole dwell
    # after the job settled (it does here, draining at a quarter of its rate), never stage 1 again.
    assert 1 <= realloc.remaps <= 2
    new = source.placement[1]
    assert not np.isin(new, old).any()
    rec = realloc.ledger.records[("default", "j-1")]
    assert rec.admitted == source.admitted[1]
    assert os.stat(path).st_ino == inode
    body = read_allocation(path)
    assert body is not None
    assert body["generation"] == 1
    assert [c["index"] for c in body["cores"]] == sorted(new.tolist())
    devices = node.feeds[NEURON_CORE].current
    assert devices is not None
    assert not devices.healthy[new].any()
    assert ("j-1", "Remapped") in [(p, r) for p, r, _ in reporter.events]
    moved = [r for r in reporter.reports if r[0] == "j-1" and r[2] is not None]
    assert moved
    assert moved[-1][1].remap == "done"
    await _run(backend, node, realloc, clock, 2.0)
    after = sum(m.latency_s for m in backend.sim.stage_metrics("j"))
    print(f"e2e latency: before {before * 1e6:.2f} us, during {during * 1e6:.2f} us, after {after * 1e6:.2f} us")
    assert during > before
    assert after < during


async def test_a_stage_leaves_a_hot_region_not_only_its_hot_cores(tmp_path: Path) -> None:
    """A hot spot throttles a region: stage 1's cores and every core one hop around them (here 12 of the chip's 16,
    under every stage, and idle ones). Idle throttled cores show no symptom, so a stage that moves goes beyond one
    router hop around the saturated cores and keeps up there; without that it took the nearest free cores, inside
    the region. Each stage in the region leaves it once, as its own queue saturates: the job's cooldown does not
    hold a saturated stage back because another stage of the job moved (it waits only for the job to settle)."""
    backend, node, source, realloc, _reporter, clock = await _rig(tmp_path)
    topo = node.topology
    await _run(backend, node, realloc, clock, 1.0)
    before = [p.copy() for p in source.placement]
    region = np.flatnonzero(hot_neighbourhood(topo, before[1]))
    free = np.setdiff1d(region, np.concatenate(before))
    assert len(free) > 0  # idle cores inside the region, the nearest ones: the trap is set
    backend.sim.inject(sim_hw.faults.HotSpot(cores=tuple(region.tolist()), service_divisor=8.0))
    await _run(backend, node, realloc, clock, 8.0)  # the first move, then the job settles `dwell` s, then the rest
    inside = [i for i in range(3) if np.isin(before[i], region).any()]
    assert inside == [0, 1, 2]
    assert realloc.remaps == len(inside)  # each stage once
    for i in inside:
        new = source.placement[i]
        assert not np.isin(new, region).any(), (i, sorted(new.tolist()), sorted(region.tolist()))
    assert not np.isin(source.placement[0], source.placement[1]).any()
    assert not np.isin(source.placement[1], source.placement[2]).any()
    await _run(backend, node, realloc, clock, 2.0)
    assert realloc.remaps == len(inside)
    fill = backend.sim.counters().queue_depth[np.concatenate(source.placement)] / backend.sim.spec.core_queue_capacity
    assert fill.max() < 0.5


async def test_a_stage_that_did_not_opt_in_is_reported_not_moved(tmp_path: Path) -> None:
    """Reported "not-opted-in" while the hot spot lasts (the cluster's eviction path may act on it); once the spot
    is gone and the queue drained, "none" until the condition clears (nothing to do, for the cluster either)."""
    backend, node, source, realloc, reporter, clock = await _rig(tmp_path, live_remap=False)
    await _run(backend, node, realloc, clock, 0.5)
    spot = sim_hw.faults.HotSpot(cores=tuple(source.placement[1].tolist()), service_divisor=8.0)
    backend.sim.inject(spot, duration=4.0)
    await _run(backend, node, realloc, clock, 4.0)
    assert realloc.remaps == 0
    degraded = [h for p, h, _ in reporter.reports if p == "j-1" and h.degraded]
    assert degraded
    assert degraded[-1].remap == "not-opted-in"
    assert "queue-saturated" in degraded[-1].reasons
    await _run(backend, node, realloc, clock, 3.0)  # drained, and less than `clear` (5 s) of good readings
    last = [h for p, h, _ in reporter.reports if p == "j-1"][-1]
    assert (last.state, last.remap, last.reasons) == ("degraded", "none", ("queue-saturated",))


async def _fail_a_core_of_stage_2(tmp_path: Path, *, seconds: float, patch: Callable[[NodeService], None]) -> None:
    """The rig runs 0.5 s, a core of stage 2 fails, the rig runs ``seconds`` more: the stage has moved off it, in
    one remap. ``patch`` is called with the node before anything runs."""
    backend, node, source, realloc, _, clock = await _rig(tmp_path)
    patch(node)
    await _run(backend, node, realloc, clock, 0.5)
    victim = int(source.placement[2][0])
    backend.sim.inject(sim_hw.faults.CoreFailure(cores=(victim,)))
    await _run(backend, node, realloc, clock, seconds)
    assert realloc.remaps == 1
    assert victim not in source.placement[2].tolist()


async def test_a_failed_core_moves_the_stage_without_dwell(tmp_path: Path) -> None:
    await _fail_a_core_of_stage_2(tmp_path, seconds=0.5, patch=lambda node: None)


async def test_a_failed_stage_moves_before_a_merely_saturated_one_of_the_same_job(tmp_path: Path) -> None:
    """Both stages are degraded in the same pass; the job may move once per cooldown. The stage on a failed core
    (it runs nothing) goes first; in index order, a saturated stage 0 would take the move and the cooldown would
    leave stage 2 on its dead core for 30 s."""
    backend, node, source, realloc, reporter, clock = await _rig(tmp_path)
    await _run(backend, node, realloc, clock, 0.5)
    realloc.remap_allowed = False  # stage 0 goes past its dwell while moves are paused (as with a dry run)
    backend.sim.inject(sim_hw.faults.HotSpot(cores=tuple(source.placement[0].tolist()), service_divisor=8.0))
    await _run(backend, node, realloc, clock, 3.0)
    assert any(p == "j-0" and h.degraded and "queue-saturated" in h.reasons for p, h, _ in reporter.reports)
    realloc.remap_allowed = True
    victim = int(source.placement[2][0])
    backend.sim.inject(sim_hw.faults.CoreFailure(cores=(victim,)))
    await _run(backend, node, realloc, clock, 0.5)
    assert realloc.remaps == 1
    assert victim not in source.placement[2].tolist()
    assert [p for p, r, _ in reporter.events if r == "Remapped"] == ["j-2"]


def test_the_ledger_recovers_only_remaps_whose_pod_still_holds_its_cores(tmp_path: Path) -> None:
    """After a restart: a record whose pod still holds its admitted cores (PodResources) is kept, the file
    re-pointed and its cores lent again; a record of a pod that is gone is deleted."""
    from snnrm.core.topology import ChipGeometry, Topology

    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=4, rows=2))
    ledger = RemapLedger(tmp_path, topo)
    s = LocalStage("ns", "p", "u", "j", 0, (StageDemand(2),), ("chip0-core0", "chip0-core1"), np.array([0, 1]))
    ledger.record(s, np.array([4, 5]), 1.0)
    gone = replace(s, pod="q", admitted=("chip0-core2", "chip0-core3"))
    ledger.record(gone, np.array([6, 7]), 1.0)

    fresh = RemapLedger(tmp_path, topo)
    holders = {"chip0-core0": ("ns", "p"), "chip0-core1": ("ns", "p")}
    kept = fresh.recover(holders)
    assert [(r.pod, r.cores) for r in kept] == [("p", ("chip0-core4", "chip0-core5"))]
    assert fresh.lent().nonzero()[0].tolist() == [4, 5]
    assert not (tmp_path / "remaps" / "ns_q.json").exists()
    body = json.loads(fresh.allocation_file(s.admitted).read_text())
    assert [c["id"] for c in body["cores"]] == ["chip0-core4", "chip0-core5"]
    # Without PodResources every record is kept (nothing proves the pod gone).
    assert len(RemapLedger(tmp_path, topo).recover(None)) == 1


def test_hints_match_the_earliest_pending_plan_of_the_right_size() -> None:
    t = [0.0]
    hints = PlanHints(clock=lambda: t[0])
    a = PlannedPod("ns", "a", "2026-01-01T00:00:01Z", np.array([0, 1, 2]))
    b = PlannedPod("ns", "b", "2026-01-01T00:00:02Z", np.array([4, 5, 6]))
    c = PlannedPod("ns", "c", "2026-01-01T00:00:00Z", np.array([8, 9]))
    hints.set_plans([b, a, c])
    avail = np.arange(16)
    got = hints.planned(avail, 3)
    assert got is not None
    assert got.tolist() == [0, 1, 2]  # a: earliest of size 3
    got = hints.planned(avail, 3)  # a is claimed: the next admission gets b
    assert got is not None
    assert got.tolist() == [4, 5, 6]
    assert hints.planned(avail, 5) is None
    assert hints.planned(np.arange(8, 9), 2) is None  # c's cores are not all available
    hints.admitted(np.array([0, 1, 2]))
    assert hints.matched == 1
    t[0] += 60  # claims expire; a is admitted, b is not
    got = hints.planned(avail, 3)
    assert got is not None
    assert got.tolist() == [4, 5, 6]


@pytest.mark.parametrize("size", [0, 3])
def test_hints_without_plans_say_nothing(size: int) -> None:
    assert PlanHints().planned(np.arange(4), size) is None


async def test_one_saturated_core_is_not_averaged_away(tmp_path: Path) -> None:
    """Issue 14: a hot spot under one core of a four-core stage saturates that core's queue; the stage is judged by
    its worst core, so it moves (a mean over the stage's cores stayed below the threshold)."""
    backend, node, source, realloc, _, clock = await _rig(tmp_path)
    await _run(backend, node, realloc, clock, 1.0)
    hot = int(source.placement[1][0])
    backend.sim.inject(sim_hw.faults.HotSpot(cores=(hot,), service_divisor=50.0))
    await _run(backend, node, realloc, clock, 5.0)
    assert realloc.remaps >= 1
    assert hot not in source.placement[1].tolist()


async def test_stale_telemetry_is_not_a_failed_core(tmp_path: Path) -> None:
    """Issue 14: counters that freeze for a few seconds (a telemetry glitch) make the core Unhealthy (stale) for
    the kubelet, but do not move the healthy stage running on it."""
    backend, node, source, realloc, reporter, clock = await _rig(tmp_path)
    await _run(backend, node, realloc, clock, 1.0)
    core = int(source.placement[2][0])
    before = source.placement[2].copy()
    backend.sim.inject(sim_hw.faults.TelemetryGlitch(cores=(core,), mode="nan"), duration=5.0)
    await _run(backend, node, realloc, clock, 4.0)
    assert node.monitor.health.reasons[core] & int(HealthReason.STALE)  # the kubelet is told, the stage stays
    await _run(backend, node, realloc, clock, 3.0)
    assert realloc.remaps == 0
    assert np.array_equal(source.placement[2], before)
    assert not [e for e in reporter.events if e[1] == "Remapped"]


async def test_the_move_budget_is_checked_before_any_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14: while a stage may not move (its cooldown after its last move), its degradation costs no replan."""
    import snnrm.cluster.remap as remap_module

    backend, node, source, realloc, reporter, clock = await _rig(tmp_path)
    await _run(backend, node, realloc, clock, 1.0)
    backend.sim.inject(sim_hw.faults.HotSpot(cores=tuple(source.placement[1].tolist()), service_divisor=8.0))
    await _run(backend, node, realloc, clock, 4.0)
    assert ("default", "j-1") in realloc.ledger.records
    moved = realloc.remaps
    calls: list[int] = []

    def counting(*a: Any, **k: Any) -> MoveOption | None:
        calls.append(1)
        return evaluate_remap(*a, **k)

    def pricing(*a: Any, **k: Any) -> Any:
        calls.append(2)
        return plan_cost(*a, **k)

    monkeypatch.setattr(remap_module, "evaluate_remap", counting)  # the name remap.py calls
    # Nor does it price the job's placement on the degraded node (at 16,384 cores that was ~0.7 ms a stage per pass,
    # on the loop that sends ListAndWatch: fault -> ListAndWatch p99 11 ms with 300 stages placed, 6 ms without it).
    monkeypatch.setattr(remap_module, "plan_cost", pricing)
    backend.sim.inject(sim_hw.faults.HotSpot(cores=tuple(source.placement[1].tolist()), service_divisor=8.0))
    await _run(backend, node, realloc, clock, 4.0)  # its new home heats up inside its 30 s cooldown
    assert realloc.remaps == moved
    assert calls == []
    assert any(r == "RemapDeferred" for _, r, _ in reporter.events)


def test_the_ledger_rewrites_the_very_file_allocate_mounted(tmp_path: Path) -> None:
    """A live remap must rewrite the file the container mounted: Allocate names it from IDs in core order, the
    ledger from IDs as PodResources lists them; "chip0-core10" sorts before "chip0-core2" as a string."""
    from snnrm.core.devices import ThroughputBlocks
    from snnrm.core.topology import ChipGeometry, Topology
    from snnrm.kubelet.allocator import CoreAllocator
    from snnrm.kubelet.cdi import CdiSpecWriter
    from snnrm.kubelet.state import StaticAllocationState

    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=16, rows=1))
    state = StaticAllocationState(topology=topo, blocks=ThroughputBlocks.plan(topo, block_keps=1000.0))
    alloc = CoreAllocator(state=state, files=AllocationFiles(tmp_path), cdi=CdiSpecWriter(tmp_path / "cdi", 1))
    ids = [topo.ids[i] for i in (2, 9, 10)]
    mounted = Path(alloc.allocate(ids, np.ones(topo.n_cores, dtype=bool)).mounts[0].host_path)
    ledger = RemapLedger(tmp_path, topo)
    for order in (ids, sorted(ids), list(reversed(ids))):
        assert ledger.allocation_file(order) == mounted


def test_a_new_pod_on_cores_a_remap_once_rewrote_gets_a_fresh_file(tmp_path: Path) -> None:
    """A remapped pod goes, and the next pod is admitted to the very same IDs (lowest-k plans make that the common
    case): its Allocate must write the admitted cores, not leave the earlier pod's remapped file in place (that
    file names cores lent elsewhere, so the new container would run on cores another pod holds)."""
    from snnrm.cluster.remap import remap_fields
    from snnrm.core.devices import ThroughputBlocks
    from snnrm.core.topology import ChipGeometry, Topology
    from snnrm.kubelet.allocation_file import core_allocation, write_allocation
    from snnrm.kubelet.allocator import CoreAllocator
    from snnrm.kubelet.cdi import CdiSpecWriter
    from snnrm.kubelet.state import StaticAllocationState

    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=16, rows=1))
    state = StaticAllocationState(topology=topo, blocks=ThroughputBlocks.plan(topo, block_keps=1000.0))
    alloc = CoreAllocator(state=state, files=AllocationFiles(tmp_path), cdi=CdiSpecWriter(tmp_path / "cdi", 1))
    ids = [topo.ids[i] for i in (0, 1, 2)]
    healthy = np.ones(topo.n_cores, dtype=bool)
    mounted = Path(alloc.allocate(ids, healthy).mounts[0].host_path)
    first = read_allocation(mounted)

    ledger = RemapLedger(tmp_path, topo)
    moved = np.array([8, 9, 10])
    stage = LocalStage("ns", "old", "uid-old", "job", 0, (StageDemand(3),), tuple(ids), np.array([0, 1, 2]))
    ledger.record(stage, moved, now=1.0)
    write_allocation(
        ledger.allocation_file(ids), core_allocation(topo, moved, remap_fields(ids, 1, 1.0)), in_place=True
    )
    assert read_allocation(mounted) != first  # what a live remap does to the mounted file
    ledger.forget("ns", "old")  # the pod is gone

    again = Path(alloc.allocate(ids, healthy).mounts[0].host_path)
    assert again == mounted
    assert read_allocation(again) == first


async def test_the_reallocator_passes_once_per_folded_frame_and_never_without_one(tmp_path: Path) -> None:
    """run() is driven by the node's telemetry: a pass per frame folded in (what a pass reads changes only then),
    none while no frame comes, and at most one per ``period``."""
    _, node, _, realloc, _, _ = await _rig(tmp_path)
    node.sample_period = 0.01
    passes: list[int] = []
    five = asyncio.Event()
    step = realloc.step

    async def counted() -> None:
        passes.append(node.frames)
        if len(passes) == 5:
            five.set()
        await step()

    realloc.step = counted  # type: ignore[method-assign]
    realloc.period = 0.0
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(node.sample_forever())
        runner = tg.create_task(realloc.run())
        await five.wait()
        sampler.cancel()
        await asyncio.sleep(0)
        quiet = len(passes)
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert len(passes) <= quiet + 1  # the pass for a frame folded just before the sampler stopped
        runner.cancel()
    assert passes == sorted(set(passes))  # never two passes on one frame

    realloc.period = 3600.0  # frames keep coming, passes may not
    passes.clear()
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(node.sample_forever())
        runner = tg.create_task(realloc.run())
        seen = start = node.frames
        while seen < start + 5:
            seen = await node.next_frame(seen)
        sampler.cancel()
        runner.cancel()
    assert len(passes) == 1


async def test_a_long_pass_yields_to_the_loop_between_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass longer than PASS_SLICE_S lets the loop run (a pushed hard fault must not wait for all stages);
    a short one does not."""
    backend, node, _, realloc, _, _ = await _rig(tmp_path)
    node.monitor.observe(await backend.read_frame())
    ran: list[str] = []
    monkeypatch.setattr(remap, "PASS_SLICE_S", 3600.0)
    asyncio.get_running_loop().call_soon(ran.append, "waiting")
    await realloc.step()
    assert ran == []  # the pass never gave the loop a turn
    monkeypatch.setattr(remap, "PASS_SLICE_S", -1.0)
    await realloc.step()
    assert ran == ["waiting"]


async def test_a_move_whose_target_was_handed_out_while_it_was_evaluated_is_not_made(tmp_path: Path) -> None:
    """The evaluation runs off the event loop (remap.in_thread); what the kubelet or a fault changed meanwhile
    wins: the stage stays where it was, the decision is counted as superseded, and the next pass tries again."""
    from prometheus_client import CollectorRegistry

    from snnrm.cluster.reallocation import ReallocationMetrics

    backend, node, source, realloc, _, clock = await _rig(tmp_path)
    realloc.metrics = ReallocationMetrics(CollectorRegistry())
    taken = realloc.allocated()  # the rig's mask of cores the kubelet has handed out (the same array every call)
    raced: list[MoveOption] = []

    async def racing(work: Callable[[], Any]) -> Any:
        option = await remap.in_thread(work)  # the product's offload (evaluations, then the remap's writes)
        if isinstance(option, MoveOption) and not raced:
            for target in option.targets:
                taken[target] = True  # a new pod is admitted to exactly those cores while the move is evaluated
            raced.append(option)
        return option

    realloc.offload = racing
    await _run(backend, node, realloc, clock, 0.5)
    victim = int(source.placement[2][0])
    own = np.concatenate(source.placement)
    backend.sim.inject(sim_hw.faults.CoreFailure(cores=(victim,)))
    await _run(backend, node, realloc, clock, 0.1)
    assert raced
    assert realloc.remaps == 0
    assert victim in source.placement[2].tolist()
    assert realloc.metrics.value("failed-core", "superseded") == 1
    await _run(backend, node, realloc, clock, 0.2)  # the next pass moves it elsewhere, off the cores handed out
    assert realloc.remaps == 1
    assert victim not in source.placement[2].tolist()
    handed_out = np.setdiff1d(np.concatenate(raced[0].targets), own)  # a target may keep some of the job's cores
    assert handed_out.size
    assert not np.isin(source.placement[2], handed_out).any()


async def test_a_remaps_writes_run_off_the_event_loop_after_its_cores_are_lent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remap's allocation file is fsynced (a disk may take milliseconds): it is written through the
    reallocator's offload, in a worker thread in the daemon, not on the loop that sends ListAndWatch; and the
    target cores are lent (withheld from the kubelet) before it is written, so nothing hands them out meanwhile."""
    import threading

    from snnrm.kubelet.allocation_file import write_allocation as write

    writes: list[tuple[int, bool]] = []

    def watch_writes(node: NodeService) -> None:
        def recorded(path: Path, body: Any, *, in_place: bool) -> None:
            cores = [c["index"] for c in body["cores"]]
            lent = node.withheld is not None and bool(node.withheld[cores].any())
            writes.append((threading.get_ident(), lent))
            write(path, body, in_place=in_place)

        monkeypatch.setattr(remap, "write_allocation", recorded)

    await _fail_a_core_of_stage_2(tmp_path, seconds=0.2, patch=watch_writes)
    ((thread, lent),) = writes
    assert thread != threading.get_ident()
    assert lent


async def test_a_pod_that_ends_while_its_remap_is_written_leaves_no_record_and_lends_nothing(tmp_path: Path) -> None:
    """The remap's files are written off the loop; if the node agent forgets the pod's record meanwhile (the pod
    ended and its cores came back), the written record is removed again, no core stays lent, and the decision is
    counted as superseded, not as a remap."""
    from prometheus_client import CollectorRegistry

    from snnrm.cluster.reallocation import ReallocationMetrics

    backend, node, source, realloc, _, clock = await _rig(tmp_path)
    realloc.metrics = ReallocationMetrics(CollectorRegistry())
    pod = source.stages()[2].pod

    async def pod_ends_meanwhile(work: Callable[[], Any]) -> Any:
        if getattr(work, "__name__", "") == "write":  # the remap's durable writes, after the evaluation
            realloc.ledger.forget(
                "default", pod
            )  # what NodeAgent.sync_once does for a pod that no longer holds its cores
            node.withhold(realloc.ledger.lent())
        return await remap.in_thread(work)

    realloc.offload = pod_ends_meanwhile
    await _run(backend, node, realloc, clock, 0.5)
    victim = int(source.placement[2][0])
    backend.sim.inject(sim_hw.faults.CoreFailure(cores=(victim,)))
    await _run(backend, node, realloc, clock, 0.1)
    assert realloc.remaps == 0
    assert realloc.metrics.value("failed-core", "superseded") == 1
    assert realloc.ledger.records == {}
    assert list(realloc.ledger.dir.glob("*.json")) == []
    assert node.withheld is None or not node.withheld.any()


async def test_a_pass_stands_back_while_a_just_published_hard_fault_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard fault's ListAndWatch message takes a few loop turns to go out; a pass that starts (or reaches a slice
    boundary) within FAULT_SEND_S of the fault's publication sleeps out the rest of that time first, and one that
    does not, does not wait. Slices are pinned (never / always over) so the count of waits does not depend on how
    fast this machine runs a pass (a loaded CI host crossed a 0.5 ms slice and yielded once more)."""
    import time

    backend, node, _, realloc, _, _ = await _rig(tmp_path)
    node.monitor.observe(await backend.read_frame())
    waits: list[float] = []
    sleep = asyncio.sleep
    publish_at_first_yield = False

    async def recorded(delay: float) -> None:
        nonlocal publish_at_first_yield
        waits.append(delay)
        if publish_at_first_yield:  # a fault pushed while the pass yields at a slice boundary
            publish_at_first_yield = False
            node.fault_published = time.monotonic()
        await sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", recorded)  # what the pass awaits
    monkeypatch.setattr(remap, "PASS_SLICE_S", 3600.0)  # one slice: only the stand-back at the start can wait
    await realloc.step()
    assert waits == []
    node.fault_published = time.monotonic()
    await realloc.step()
    assert len(waits) == 1
    assert 0 < waits[0] <= FAULT_SEND_S

    # Every boundary yields; the fault lands at the first yield, so the next boundary stands back for it.
    monkeypatch.setattr(remap, "PASS_SLICE_S", -1.0)
    node.fault_published = -math.inf
    waits.clear()
    publish_at_first_yield = True
    await realloc.step()
    assert len(waits) >= 2
    assert waits[0] == 0.0  # no fault yet: a plain yield
    assert 0 < waits[1] <= FAULT_SEND_S
