"""The policies compared, and snnrm's reallocation loop as the daemon runs it, minus the I/O.

Baselines:

* ``first-fit``: count-based first-fit, the lowest-numbered free cores stage after stage. That is what a classic
  device plugin gets from the kubelet (any N healthy devices); device health changes never move a running pod.
* ``random``: any N free cores, drawn at random (seeded).
* ``static``: snnrm's planner (:func:`snnrm.core.placement.plan_job`) at admission, on the measured node view,
  and nothing afterwards (static topology-aware placement in the style of SNEAP/SpiNeMap).

snnrm and its ablations place like ``static`` and then watch every stage:

* ``snnrm``: :class:`NodeReallocatorMirror` is :class:`snnrm.cluster.remap.NodeReallocator`'s decision path
  (signals from :class:`~snnrm.core.monitor.NodeMonitor`, :class:`~snnrm.core.reallocation.StageWatch` dwell and
  hysteresis, :func:`~snnrm.core.reallocation.evaluate_remap`, :class:`~snnrm.core.reallocation.MoveBudget`)
  with the daemon's default settings, executed as a live remap (:meth:`sim_hw.Simulator.move_stage`);
* ``snnrm-no-hysteresis``: the same with every dwell, exit threshold and cooldown removed, in the health
  machine and in the stage watch (the margin on cost stays: it is a price test, not hysteresis);
* ``snnrm-evict``: no live remap. The node only reports the degradation; :class:`EvictControllerMirror` plays the
  cluster's :class:`snnrm.cluster.reallocation.ReallocationController` (1 s reconcile tick, 1 s confirmation,
  minimum stage age, eviction-priced migration cost) and the evicted stage is down for
  ``ExperimentConfig.evict_restart`` seconds before it runs again on its new cores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from snnrm.core.health import HealthSettings
from snnrm.core.health import Reason as HealthReason
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import NodeView, StageDemand, first_fit_plan, plan_job
from snnrm.core.reallocation import (
    MoveBudget,
    ReallocationSettings,
    Reason,
    StageWatch,
    evaluate_remap,
    local_job,
    signals_of,
)
from snnrm.core.topology import BoolArray, IntArray, Topology

Placer = Literal["first-fit", "random", "plan"]
Realloc = Literal["none", "remap", "evict"]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    placer: Placer
    realloc: Realloc
    hysteresis: bool
    description: str

    @property
    def uses_monitor(self) -> bool:
        """Runs snnrm's telemetry pipeline (a classic device plugin only reports hard failures)."""
        return self.placer == "plan" or self.realloc != "none"


POLICIES: dict[str, PolicySpec] = {
    p.name: p
    for p in (
        PolicySpec("first-fit", "first-fit", "none", True, "count-based first-fit (classic device plugin), no moves"),
        PolicySpec("random", "random", "none", True, "any N free cores at random, no moves"),
        PolicySpec("static", "plan", "none", True, "snnrm's planner at admission, no reallocation"),
        PolicySpec("snnrm", "plan", "remap", True, "snnrm: planner + telemetry-driven live remap, with hysteresis"),
        PolicySpec("snnrm-no-hysteresis", "plan", "remap", False, "ablation: snnrm without dwell/exit/cooldown"),
        PolicySpec("snnrm-evict", "plan", "evict", True, "ablation: snnrm without live remap (evict + reschedule)"),
    )
}
BASELINES = ("first-fit", "random", "static")


def health_settings(policy: PolicySpec) -> HealthSettings:
    """The daemon's defaults, or (ablation) the same thresholds with no dwell and exit = entry."""
    d = HealthSettings()
    if policy.hysteresis:
        return d
    return replace(d, queue_exit=d.queue_enter, efficiency_exit=d.efficiency_enter, link_exit=d.link_enter,
                   enter_dwell=0.0, recover_dwell=0.0)  # fmt: skip


def realloc_settings(policy: PolicySpec) -> ReallocationSettings:
    """The daemon's defaults (placement config: dwell 2 s, cooldown 60 s), or (ablation) no hysteresis at all."""
    d = ReallocationSettings()
    if policy.hysteresis:
        return d
    return replace(d, queue_exit=d.queue_enter, efficiency_exit=d.efficiency_enter, link_exit=d.link_enter,
                   dwell=0.0, clear=0.0, cooldown=0.0, max_moves_per_window=1_000_000, min_age=0.0)  # fmt: skip


def place(
    policy: PolicySpec, view: NodeView, demands: Sequence[StageDemand], rng: np.random.Generator
) -> tuple[IntArray, ...] | None:
    """Cores for every stage of a new job, or None when the free cores cannot hold it."""
    if policy.placer == "first-fit":
        plan = first_fit_plan(view, demands)
        return None if plan is None else plan.stages
    if policy.placer == "plan":
        plan = plan_job(view, demands)
        return None if plan is None else plan.stages
    pool = np.flatnonzero(view.free)
    need = sum(d.cores for d in demands)
    if need > len(pool):
        return None
    drawn = rng.permutation(pool)
    out: list[IntArray] = []
    pos = 0
    for d in demands:
        out.append(np.sort(drawn[pos : pos + d.cores]).astype(np.int64))
        pos += d.cores
    return tuple(out)


# -- the reallocation loop -------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class RunningStage:
    """A stage pod as the node knows it."""

    job: str
    index: int
    cores: IntArray
    """Cores it runs on now."""
    admitted: IntArray
    """Cores the kubelet admitted it to (stay booked after a live remap, until the pod ends)."""
    uid: int
    created: float
    last_move: float | None = None


@dataclass(slots=True, eq=False)
class RunningJob:
    name: str
    demands: tuple[StageDemand, ...]
    stages: list[RunningStage]
    in_flight: bool = False
    """A stage is evicted and not yet running again."""


@dataclass(frozen=True, slots=True, eq=False)
class Move:
    """A decision to move one stage."""

    job: str
    stage: int
    target: IntArray
    reasons: tuple[str, ...]
    must_move: bool
    cost_before: float
    cost_after: float
    migration: float
    action: Literal["remap", "evict"]
    at: float


def node_view(monitor: NodeMonitor, booked: BoolArray, inter_chip_weight: float) -> tuple[NodeView, BoolArray]:
    """What NodeReallocator._view computes: free = healthy and not booked; ``failed`` = cores Unhealthy for a hard
    reason (a failure or telemetry gone quiet), which must be left."""
    healthy = monitor.core_healthy
    hard = (monitor.health.reasons & (int(HealthReason.FAILED) | int(HealthReason.STALE))) != 0
    failed: BoolArray = hard & ~healthy
    view = NodeView.measured(
        monitor.topology,
        free=healthy & ~booked,
        queue_fill=monitor.queue_fill,
        link_utilization=monitor.link_utilization,
        link_failed=monitor.link_failed,
        inter_chip_weight=inter_chip_weight,
    )
    return view, failed


@dataclass(eq=False)
class NodeReallocatorMirror:
    """:class:`snnrm.cluster.remap.NodeReallocator`'s decisions, synchronous and without pods or files.

    With ``live_remap`` it decides and returns moves; without, it only records which stages it would report
    degraded (``reports``), for :class:`EvictControllerMirror`.
    """

    topology: Topology
    settings: ReallocationSettings
    inter_chip_weight: float
    live_remap: bool = True
    budget: MoveBudget = field(init=False)
    watches: dict[tuple[str, int, int], StageWatch] = field(default_factory=dict)
    reports: dict[tuple[str, int, int], tuple[str, ...]] = field(default_factory=dict)
    """Stages reported degraded now -> their active reasons (evict mode)."""
    evaluations: int = 0
    activations: list[tuple[float, str]] = field(default_factory=list)
    """(time, job) each time a stage's watch turns active (detection, for the experiment)."""
    _active: set[tuple[str, int, int]] = field(default_factory=set)
    outcomes: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, job, outcome) of every evaluation that did not move: ``no-target`` (no better home on the node),
    ``not-worth-it`` (the cost test), ``blocked`` (cooldown / move budget)."""

    def __post_init__(self) -> None:
        self.budget = MoveBudget(self.settings)

    def step(self, now: float, monitor: NodeMonitor, jobs: Mapping[str, RunningJob], booked: BoolArray) -> list[Move]:
        """One pass over every stage on the node (NodeReallocator.step)."""
        live = {(j.name, s.index, s.uid) for j in jobs.values() if not j.in_flight for s in j.stages}
        for key in [k for k in self.watches if k not in live]:
            del self.watches[key]
        for key in [k for k in self.reports if k not in live]:
            del self.reports[key]
        view, failed = node_view(monitor, booked, self.inter_chip_weight)
        eff = monitor.rates.rates.efficiency
        moves: list[Move] = []
        for name in sorted(jobs):
            job = jobs[name]
            if job.in_flight:
                continue
            for s in sorted(job.stages, key=lambda x: x.index):
                key = (name, s.index, s.uid)
                watch = self.watches.setdefault(key, StageWatch())
                sig = signals_of(s.cores, failed=failed, queue_fill=view.queue_fill, efficiency=eff,
                                 link_util=view.link_util)  # fmt: skip
                active = watch.observe(sig, now, self.settings)
                if not active:
                    self.reports.pop(key, None)
                    self._active.discard(key)
                    continue
                reasons = tuple(sorted(r.value for r in active))
                if key not in self._active:
                    self._active.add(key)
                    self.activations.append((now, name))
                if not self.live_remap:
                    self.reports[key] = reasons
                    continue
                move = self._remap(job, s, reasons, watch, view, failed, now)
                if move is not None:
                    moves.append(move)
                    # The daemon prices every job of a pass against one view; keep the cores just taken out of
                    # it so that two moves in one pass can never pick the same cores.
                    view = view.without(move.target)
                    break  # one stage of a pipeline per pass
        return moves

    def _remap(
        self,
        job: RunningJob,
        s: RunningStage,
        reasons: tuple[str, ...],
        watch: StageWatch,
        view: NodeView,
        failed: BoolArray,
        now: float,
    ) -> Move | None:
        lj = local_job(job.demands, {m.index: m.cores for m in job.stages})
        pos = lj.position(s.index)
        self.evaluations += 1
        option = evaluate_remap(view, lj.demands, lj.placement, pos, failed=failed, settings=self.settings)
        if option is None or not option.worth_it(self.settings.margin):
            self.outcomes.append((now, job.name, "no-target" if option is None else "not-worth-it"))
            return None
        last = max((m.last_move for m in job.stages if m.last_move is not None), default=None)
        if self.budget.blocked(("default", job.name), now, last_move=last) is not None:
            self.outcomes.append((now, job.name, "blocked"))
            return None
        self.budget.record(("default", job.name), now)
        watch.active.clear()
        watch.bad_since.clear()
        watch.since = None
        self._active.discard((job.name, s.index, s.uid))
        return Move(job.name, s.index, np.sort(option.target), reasons, option.must_move, option.cost_before,
                    option.cost_after, option.migration_cost, "remap", now)  # fmt: skip


@dataclass(eq=False)
class EvictControllerMirror:
    """:class:`snnrm.cluster.reallocation.ReallocationController` on a one-node cluster: confirms a node's
    degraded report for ``confirm`` seconds, checks in-flight moves, the move budget and the stage's age, and
    evicts when the best home beats the current cost by the margin after an eviction's migration cost."""

    settings: ReallocationSettings
    inter_chip_weight: float
    confirm: float
    budget: MoveBudget = field(init=False)
    first_seen: dict[tuple[str, int, int], float] = field(default_factory=dict)
    evaluations: int = 0
    outcomes: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.budget = MoveBudget(self.settings)

    def step(
        self,
        now: float,
        node: NodeReallocatorMirror,
        monitor: NodeMonitor,
        jobs: Mapping[str, RunningJob],
        booked: BoolArray,
    ) -> list[Move]:
        live = set(node.reports)
        for key in [k for k in self.first_seen if k not in live]:
            del self.first_seen[key]
        view: NodeView | None = None
        failed: BoolArray | None = None
        moves: list[Move] = []
        for name in sorted(jobs):
            job = jobs[name]
            confirmed = []
            for s in sorted(job.stages, key=lambda x: x.index):
                key = (name, s.index, s.uid)
                if key in node.reports and now - self.first_seen.setdefault(key, now) >= self.confirm:
                    confirmed.append(s)
            if not confirmed or job.in_flight:
                continue
            s = confirmed[0]
            last = max((m.last_move for m in job.stages if m.last_move is not None), default=None)
            if self.budget.blocked(("default", name), now, last_move=last) is not None or (
                now - s.created < self.settings.min_age
            ):
                self.outcomes.append((now, name, "blocked"))
                continue
            if view is None or failed is None:
                view, failed = node_view(monitor, booked, self.inter_chip_weight)
            self.evaluations += 1
            option = evaluate_remap(view, job.demands, [m.cores for m in job.stages], s.index, failed=failed,
                                    settings=self.settings, migration_hops=self.settings.evict_cost_hops)  # fmt: skip
            reasons = node.reports[(name, s.index, s.uid)]
            must = Reason.FAILED_CORE.value in reasons
            if option is None or not (must or option.worth_it(self.settings.margin)):
                self.outcomes.append((now, name, "no-target" if option is None else "not-worth-it"))
                continue
            self.budget.record(("default", name), now)
            moves.append(Move(name, s.index, np.sort(option.target), reasons, must, option.cost_before,
                              option.cost_after, option.migration_cost, "evict", now))  # fmt: skip
            view = view.without(option.target)
        return moves
