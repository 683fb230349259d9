"""The policies compared. snnrm's decisions are made by the daemon's own reallocator, not a copy of it.

Baselines:

* ``first-fit``: count-based first-fit, the lowest-numbered free cores stage after stage. That is what a classic
  device plugin gets from the kubelet (any N healthy devices); device health changes never move a running pod.
* ``reactive``: the same first-fit placement, plus what a descheduler adds: every ``realloc_period`` a stage with
  a core the device plugin advertises Unhealthy (the same :class:`~snnrm.core.monitor.NodeMonitor` health
  snnrm's device plugin publishes, from the same noisy, delayed telemetry) is evicted and re-placed on the
  lowest-numbered free healthy cores (:func:`reactive_moves`). It pays a pod restart plus the weight reload.
* ``random``: any N free cores, drawn at random (seeded).
* ``static``: snnrm's planner (:func:`snnrm.core.placement.plan_job`) at admission, on the measured node view,
  and nothing afterwards (static topology-aware placement in the style of SNEAP/SpiNeMap).

snnrm and its ablation place like ``static`` and then watch every stage:

* ``snnrm``: :class:`DaemonReallocator` runs :class:`snnrm.cluster.remap.NodeReallocator` itself (its signals,
  :class:`~snnrm.core.reallocation.StageWatch` hysteresis, budget, :func:`~snnrm.core.reallocation.evaluate_remap`
  and its ledger of lent cores) against a :class:`snnrm.node.NodeService` whose monitor the runner feeds, with the
  simulator's clock injected; each remap it decides is executed as a live remap that stalls the stage while its
  weights load onto the new cores;
* ``snnrm-no-hysteresis``: the same with every dwell, exit threshold and cooldown removed, in the health
  machine and in the stage watch (the margin on cost stays: it is a price test, not hysteresis).

Ablations of the other claims (run by :mod:`benchmarks.experiments.ablations`, not in the default set):

* ``snnrm-whole-chips``: no sparsity-aware reporting. The node reports chips, not cores, as a classic device
  plugin reports accelerators: the kubelet hands a stage whole free chips (count-based, lowest first), however few
  cores its neurons need; the daemon's reallocator still runs, on what it was handed.
* ``snnrm-no-units``: snnrm's planner without asynchronous-unit awareness
  (:attr:`~snnrm.core.placement.PlacementView.shared_unit_hops` = 0), so two stages of a job may share a router's
  core group; the reallocator is unchanged.

* ``snnrm-evict``: no live remap. Stages do not opt in, so the node only reports, and the cluster's
  :class:`snnrm.cluster.reallocation.ReallocationController` evicts and re-places them
  (:mod:`benchmarks.experiments.eviction`: the node agent, the controller and its cache on an in-memory apiserver).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

from snnrm.backends.base import HardwareBackend
from snnrm.cluster.remap import LocalStage, NodeReallocator, RemapLedger, inline
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.health import HealthSettings
from snnrm.core.jobs import StageHealth
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import PlacementView, StageDemand, first_fit_plan, plan_job
from snnrm.core.reallocation import ReallocationSettings
from snnrm.core.topology import BoolArray, IntArray, Topology
from snnrm.node import NodeService

Placer = Literal["first-fit", "random", "plan", "chips"]
Realloc = Literal["none", "remap", "reschedule", "evict"]


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    placer: Placer
    realloc: Realloc
    hysteresis: bool
    description: str
    unit_aware: bool = True
    """Placement prices stages that share a core group (the asynchronous-unit claim)."""
    keps: bool = True
    """Event-driven scheduling (the KEPS claim): jobs are sized as ``snnrm job plan`` sizes them (a stage whose
    events need more cores than its neurons gets them) and the node admits a job only while its healthy
    snnrm.io/event-throughput devices cover the job's request. Off: cores by neuron count, admission by count."""

    @property
    def uses_monitor(self) -> bool:
        """Runs snnrm's telemetry pipeline (a classic device plugin only reports hard failures)."""
        return self.placer in ("plan", "chips") or self.realloc != "none"

    def __post_init__(self) -> None:
        if self.keps and not self.uses_monitor:
            raise ValueError(f"policy {self.name}: KEPS admission needs snnrm's telemetry (the capacity it admits by)")

    @property
    def restarts(self) -> bool:
        """A move is a pod restart (evict + reschedule) rather than a live remap."""
        return self.realloc in ("reschedule", "evict")


POLICIES: dict[str, PolicySpec] = {
    p.name: p
    for p in (
        PolicySpec(
            "first-fit",
            "first-fit",
            "none",
            True,
            "count-based first-fit (classic device plugin), no moves",
            keps=False,
        ),
        PolicySpec(
            "reactive",
            "first-fit",
            "reschedule",
            True,
            "first-fit + descheduler: a stage on an Unhealthy core is restarted on first-fit free cores",
            keps=False,
        ),
        PolicySpec("random", "random", "none", True, "any N free cores at random, no moves", keps=False),
        PolicySpec("static", "plan", "none", True, "snnrm's planner at admission, no reallocation"),
        PolicySpec("snnrm", "plan", "remap", True, "snnrm: planner + telemetry-driven live remap, with hysteresis"),
        PolicySpec("snnrm-no-hysteresis", "plan", "remap", False, "ablation: snnrm without dwell/exit/cooldown"),
        PolicySpec(
            "snnrm-whole-chips",
            "chips",
            "remap",
            True,
            "ablation: snnrm without sparsity-aware reporting (the node reports whole chips; a stage gets whole chips)",
        ),
        PolicySpec(
            "snnrm-evict",
            "plan",
            "evict",
            True,
            "ablation: snnrm without live remap (the node reports; the cluster's controller evicts and re-places)",
        ),
        PolicySpec(
            "snnrm-no-units",
            "plan",
            "remap",
            True,
            "ablation: snnrm's planner without asynchronous-unit awareness (stages may share a core group)",
            unit_aware=False,
        ),
        PolicySpec(
            "snnrm-count",
            "plan",
            "remap",
            True,
            "ablation: snnrm without event-driven scheduling (stages sized by neurons, admission by core count)",
            keps=False,
        ),
    )
}
DEFAULT_POLICIES = ("first-fit", "reactive", "random", "static", "snnrm", "snnrm-no-hysteresis")
"""The default set's policies; the other ablations run in :mod:`benchmarks.experiments.ablations`."""
BASELINES = ("reactive", "first-fit", "random", "static")
REACTIVE = "reactive"


def _exit_at_entry(d: HealthSettings | ReallocationSettings) -> dict[str, float]:
    """The three thresholds' exit levels set to their entry levels (no hysteresis in level)."""
    return {"queue_exit": d.queue_enter, "efficiency_exit": d.efficiency_enter, "link_exit": d.link_enter}


def health_settings(policy: PolicySpec) -> HealthSettings:
    """The daemon's defaults, or (ablation) the same thresholds with no dwell and exit = entry."""
    d = HealthSettings()
    if policy.hysteresis:
        return d
    return replace(
        d,
        **_exit_at_entry(d),
        enter_dwell=0.0,
        recover_dwell=0.0,
    )


def realloc_settings(policy: PolicySpec) -> ReallocationSettings:
    """The daemon's defaults (placement config: dwell 2 s, cooldown 60 s), or (ablation) no hysteresis at all."""
    d = ReallocationSettings()
    if policy.hysteresis:
        return d
    return replace(
        d,
        **_exit_at_entry(d),
        dwell=0.0,
        clear=0.0,
        cooldown=0.0,
        max_moves_per_window=1_000_000,
        min_age=0.0,
    )


def place(
    policy: PolicySpec, view: PlacementView, demands: Sequence[StageDemand], rng: np.random.Generator
) -> tuple[IntArray, ...] | None:
    """Cores for every stage of a new job, or None when the free cores cannot hold it."""
    if policy.placer == "first-fit":
        plan = first_fit_plan(view, demands)
        return None if plan is None else plan.stages
    if policy.placer == "plan":
        plan = plan_job(view if policy.unit_aware else replace(view, shared_unit_hops=0.0), demands)
        return None if plan is None else plan.stages
    if policy.placer == "chips":
        return whole_chips(view, demands)
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


def whole_chips(view: PlacementView, demands: Sequence[StageDemand]) -> tuple[IntArray, ...] | None:
    """What a node that reports whole chips gets from the kubelet: for each stage, the lowest-numbered chips with
    no core taken or unhealthy, as many as its cores need (None if they run out). The stage's runtime maps its
    neurons onto the first cores it needs; the rest of its chips sit idle, and since a chip with a core in use
    is no longer a free device, no other stage gets them."""
    t = view.topology
    per_chip = np.bincount(t.chip_of, minlength=t.n_chips)
    free_chips = [c for c in range(t.n_chips) if np.all(view.free[t.chip_of == c])]
    out: list[IntArray] = []
    for d in demands:
        got: list[int] = []
        while free_chips and sum(int(per_chip[c]) for c in got) < d.cores:
            got.append(free_chips.pop(0))
        if sum(int(per_chip[c]) for c in got) < d.cores:
            return None
        out.append(np.flatnonzero(np.isin(t.chip_of, got))[: d.cores].astype(np.int64))
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
    """A stage is stalled (restarting, or loading its weights after a move) and not running."""


@dataclass(frozen=True, slots=True, eq=False)
class Move:
    """A decision to move one stage."""

    job: str
    stage: int
    target: IntArray
    reasons: tuple[str, ...]
    action: Literal["remap", "reschedule"]
    at: float


NAMESPACE = "default"


def pod_name(job: str, stage: int) -> str:
    return f"{job}-s{stage}"


def _drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine that never waits for anything (the reallocator's awaits here are all on in-process
    recorders); a bare yield to the loop (``asyncio.sleep(0)``: the pass lets hard faults in) is resumed at once."""
    while True:
        try:
            waited = coro.send(None)
        except StopIteration:
            return
        if waited is not None:  # a future: real I/O
            coro.close()
            raise RuntimeError("the reallocator suspended: an await reached real I/O")


@dataclass(eq=False)
class _Source:
    stages_now: list[LocalStage] = field(default_factory=list)

    def stages(self) -> Sequence[LocalStage]:
        return self.stages_now


@dataclass(eq=False)
class StageRecorder:
    """The daemon's StageReporter, recording what it would write on pods (detection, outcomes)."""

    clock: Callable[[], float]
    activations: list[tuple[float, str]] = field(default_factory=list)
    """(time, job) each time a stage is first reported degraded."""
    outcomes: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, job, outcome) of evaluations that did not move: ``unavailable`` or ``blocked``."""
    done: dict[tuple[str, int], tuple[str, ...]] = field(default_factory=dict)
    """Reasons of the last remap of each (job, stage)."""
    last: dict[tuple[str, int], StageHealth] = field(default_factory=dict)
    """The last report on each (job, stage)."""
    _degraded: set[tuple[str, str]] = field(default_factory=set)

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        key = (stage.namespace, stage.pod)
        self.last[(stage.job, stage.index)] = health
        if health.remap == "done":  # a failed core moves at once, without a "degraded" report first
            self.done[(stage.job, stage.index)] = health.reasons
        if (health.state == "degraded" or health.remap == "done") and key not in self._degraded:
            self.activations.append((self.clock(), stage.job))
        if health.state != "degraded":
            self._degraded.discard(key)
            return
        self._degraded.add(key)
        if health.remap == "unavailable":
            self.outcomes.append((self.clock(), stage.job, "unavailable"))

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        if reason == "RemapDeferred":
            self.outcomes.append((self.clock(), stage.job, "blocked"))


class NoBackend:
    """NodeService is given no hardware: the runner feeds its monitor the frames it reads from the simulator."""

    name = "experiment"


@dataclass(eq=False)
class RecordedReallocator:
    """A reallocator the runner drives: built from the same five things, read for the daemon's pass interval and
    what its reports said. Subclasses build ``realloc`` and ``recorder``."""

    topology: Topology
    monitor: NodeMonitor
    settings: ReallocationSettings
    inter_chip_weight: float
    clock: Callable[[], float]
    """The simulator's clock (seconds from 0)."""
    realloc: NodeReallocator = field(init=False)
    recorder: StageRecorder = field(init=False)

    @property
    def period(self) -> float:
        """Least seconds between two of the daemon's passes (it runs one per telemetry frame folded in)."""
        return self.realloc.period

    @property
    def activations(self) -> list[tuple[float, str]]:
        return self.recorder.activations

    @property
    def outcomes(self) -> list[tuple[float, str, str]]:
        return self.recorder.outcomes


@dataclass(eq=False)
class DaemonReallocator(RecordedReallocator):
    """:class:`snnrm.cluster.remap.NodeReallocator` itself, on a :class:`snnrm.node.NodeService` whose monitor
    the runner feeds, with the simulator's clock and the runner's book of allocated cores injected.

    Remap records and per-allocation files go to a private temporary directory (the daemon's state dir).
    """

    service: NodeService = field(init=False)
    _source: _Source = field(init=False)
    _booked: BoolArray = field(init=False)
    _moves: list[Move] = field(init=False, default_factory=list)
    _tmp: str = field(init=False)

    def __post_init__(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="snnrm-exp-")
        blocks = ThroughputBlocks.plan(self.topology, block_keps=1000.0)
        self.service = NodeService(cast(HardwareBackend, NoBackend()), self.topology, blocks, 0.1)
        self.service.monitor = self.monitor
        self._booked = np.zeros(self.topology.n_cores, dtype=np.bool_)
        self._source = _Source()
        self.recorder = StageRecorder(self.clock)
        self.realloc = NodeReallocator(
            node=self.service,
            source=self._source,
            reporter=self.recorder,
            ledger=RemapLedger(Path(self._tmp), self.topology),
            allocated=lambda: self._booked,
            settings=self.settings,
            inter_chip_weight=self.inter_chip_weight,
            clock=self.clock,
            on_remap=self._on_remap,
            offload=inline,  # the runner drives the pass without a loop (deterministic per seed)
        )

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def evaluations(self) -> int:
        return self.realloc.remaps

    def _on_remap(self, stage: LocalStage, target: IntArray) -> None:
        # The daemon reported the stage "ok, remap done" with the reasons just before calling back.
        reasons = self.recorder.done.get((stage.job, stage.index), ())
        target = np.sort(np.asarray(target, dtype=np.int64))
        self._moves.append(Move(stage.job, stage.index, target, reasons, "remap", self.clock()))

    def local_stages(self, jobs: Mapping[str, RunningJob]) -> list[LocalStage]:
        """The stages on the node as the daemon's StageSource gives them (pods with live remap opted in)."""
        ids = self.topology.ids
        out = []
        for name in sorted(jobs):
            job = jobs[name]
            if job.in_flight:
                continue
            for s in job.stages:
                out.append(
                    LocalStage(
                        NAMESPACE,
                        pod_name(name, s.index),
                        str(s.uid),
                        name,
                        s.index,
                        job.demands,
                        tuple(ids[i] for i in np.sort(s.admitted).tolist()),
                        np.asarray(s.cores, dtype=np.int64),
                        True,
                        s.last_move,
                    )
                )
        return out

    def step(self, jobs: Mapping[str, RunningJob], booked: BoolArray) -> list[Move]:
        """One NodeReallocator pass; returns the remaps it made."""
        self._source.stages_now = self.local_stages(jobs)
        self._booked = np.asarray(booked, dtype=np.bool_)
        self._moves = []
        _drive(self.realloc.step())
        return list(self._moves)

    def forget(self, job: str, stage: int) -> None:
        """The stage's pod ended (or was replaced): drop its remap record and stop lending its cores."""
        self.realloc.ledger.forget(NAMESPACE, pod_name(job, stage))
        self.service.withhold(self.realloc.ledger.lent())


def reactive_moves(
    healthy: BoolArray, jobs: Mapping[str, RunningJob], booked: BoolArray, now: float
) -> tuple[list[Move], list[tuple[float, str, str]]]:
    """The reactive baseline's pass: every stage with a core advertised Unhealthy is evicted and re-placed on the
    lowest-numbered free healthy cores (a descheduler plus the default scheduler with a count-based device
    plugin). One pass never gives two stages the same cores; a stage with no room stays (``no-room``)."""
    free = np.asarray(healthy, dtype=np.bool_) & ~np.asarray(booked, dtype=np.bool_)
    moves: list[Move] = []
    failed: list[tuple[float, str, str]] = []
    for name in sorted(jobs):
        job = jobs[name]
        if job.in_flight:
            continue
        for s in sorted(job.stages, key=lambda x: x.index):
            if np.all(healthy[s.cores]):
                continue
            pool = np.flatnonzero(free)
            if len(pool) < len(s.cores):
                failed.append((now, name, "no-room"))
                continue
            target = pool[: len(s.cores)].astype(np.int64)
            free[target] = False
            moves.append(Move(name, s.index, target, ("unhealthy-device",), "reschedule", now))
            break  # the job restarts this stage; the next pass sees the rest
    return moves, failed
