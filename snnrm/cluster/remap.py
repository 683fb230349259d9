"""On the node: watch each stage's cores, live-remap a degraded stage within the node, or report it.

:class:`NodeReallocator` runs in the node daemon, which owns the node's cores and sees every telemetry sample.
On each frame the node folds in (at most once per ``period``) it computes, for each stage running here, the
stage's signals (failed cores, queue fill, spike-transfer efficiency, busiest link on its routers), folds them
through a per-stage :class:`~snnrm.core.reallocation.StageWatch` (dwell and hysteresis), and for an active
degradation asks :func:`~snnrm.core.reallocation.evaluate_remap` for a better home on this node. Then:

* **live remap** when the stage's runtime opted in (``snnrm.io/live-remap: "true"``), the move is worth its
  migration cost by the margin, and the job's cooldown and the node's move budget allow it. The remap:

  1. records it in ``<state_dir>/remaps/<namespace>_<pod>.json`` (so a restarted daemon recovers it);
  2. advertises the target cores Unhealthy to the kubelet (:meth:`NodeService.withhold`): the kubelet still books
     the stage on the cores it admitted it to, so the cores the stage now really uses must never be handed to
     another pod. The admitted cores stay booked to the pod (idle, wasted until the pod ends, but never twice);
  3. rewrites the per-allocation file that Allocate mounted into the container, **in place** (a bind-mounted file
     keeps its inode, so a rename would never be seen), with a new ``generation``, the new ``cores`` and
     ``remapped_from``; the runtime follows the file (the env vars set at admission do not change);
  4. reports the stage (``snnrm.io/cores``, ``snnrm.io/last-move``, ``snnrm.io/stage-health``), an Event and a
     ``snnrm_reallocations_total{reason,action="remap"}`` sample;

* otherwise it **reports** the degradation on the pod (``remap``: ``unavailable`` or ``not-opted-in``, with the
  stage's current cost), and the cluster's reallocation controller decides about an eviction.

Reports are written only when they change, so a steady state costs no API calls.

Recovery: :meth:`RemapLedger.recover` reads the remap records at start and keeps those whose pod still holds its
admitted cores according to the kubelet's PodResources API (records of pods that are gone are deleted), so the
lent cores are withheld again before the device plugins register: no core is handed out twice across restarts.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import structlog

from snnrm.cluster.reallocation import ReallocationMetrics
from snnrm.core.health import HealthReason
from snnrm.core.jobs import StageHealth
from snnrm.core.placement import PlacementView, StageDemand, plan_cost
from snnrm.core.reallocation import (
    URGENT,
    MoveBudget,
    MoveReason,
    ReallocationSettings,
    StageSignals,
    StageWatch,
    degraded_view,
    evaluate_remap,
    hot_neighbourhood,
    links_to_avoid,
    local_job,
    own_reasons,
    queue_pressure,
    stage_signals,
    standing,
    urgency,
)
from snnrm.core.topology import BoolArray, FloatArray, IntArray, Topology
from snnrm.kubelet.allocation_file import Remap, core_allocation, write_allocation
from snnrm.kubelet.allocation_file import read_allocation as read_allocation  # what runtimes read; the demo uses it
from snnrm.kubelet.allocator import AllocationFiles
from snnrm.node import NodeService
from snnrm.obs.tracing import NoopTracer, Tracer

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class LocalStage:
    """A stage running on this node, as the node knows it."""

    namespace: str
    pod: str
    uid: str
    job: str
    index: int
    demands: tuple[StageDemand, ...]
    """Every stage of the job (only the ones here are placed on this node)."""
    admitted: tuple[str, ...]
    """Core IDs the kubelet admitted the stage to (keys its per-allocation file)."""
    cores: IntArray
    """Cores the stage uses now (the admitted ones, or a remap's target)."""
    live_remap: bool = False
    last_move: float | None = None

    @property
    def job_key(self) -> tuple[str, str]:
        return (self.namespace, self.job)


class StageSource(Protocol):
    """The stages running on this node now."""

    def stages(self) -> Sequence[LocalStage]: ...


class StageReporter(Protocol):
    """Where the node's verdicts go: pod annotations + Events in a cluster, the log in the demo."""

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None: ...

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None: ...


class NullReporter:
    """StageReporter that reports nowhere: a node without a cluster whose verdicts nobody reads (benchmarks)."""

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        return None

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        return None


# -- the remap record and the per-allocation file -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RemapRecord:
    namespace: str
    pod: str
    uid: str
    admitted: tuple[str, ...]
    cores: tuple[str, ...]
    generation: int
    at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "pod": self.pod,
            "uid": self.uid,
            "admitted": list(self.admitted),
            "cores": list(self.cores),
            "generation": self.generation,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RemapRecord:
        return cls(
            str(d["namespace"]),
            str(d["pod"]),
            str(d.get("uid") or ""),
            tuple(str(x) for x in d["admitted"]),
            tuple(str(x) for x in d["cores"]),
            int(d["generation"]),
            float(d["at"]),
        )


def remap_fields(admitted: Sequence[str], generation: int, at: float) -> Remap:
    """What a remap adds to the allocation file Allocate wrote for ``admitted``."""
    return {"generation": generation, "remapped_from": list(admitted), "remapped_at": at}


def remapped_allocation_files(state_dir: Path) -> set[Path]:
    """The allocation files live remaps rewrote (from the records on disk, read-only): the ledger's to restore."""
    files = AllocationFiles(state_dir)
    out = set()
    for path in sorted((state_dir / "remaps").glob("*.json")):
        try:
            out.add(files.path_for(RemapRecord.from_json(json.loads(path.read_text())).admitted)[1])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: RemapLedger.recover deletes it, and the file is then Allocate's again
    return out


@dataclass(eq=False)
class RemapLedger:
    """Remap records on disk and the cores they lend (see the module docstring)."""

    state_dir: Path
    topology: Topology
    records: dict[tuple[str, str], RemapRecord] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.state_dir / "remaps"

    def _path(self, namespace: str, pod: str) -> Path:
        return self.dir / f"{namespace}_{pod}.json"

    def allocation_file(self, admitted: Sequence[str]) -> Path:
        return AllocationFiles(self.state_dir).path_for(admitted)[1]

    def lent(self) -> BoolArray:
        """Cores used by remapped stages beyond what the kubelet admitted them to."""
        mask = np.zeros(self.topology.n_cores, dtype=np.bool_)
        for r in self.records.values():
            admitted = set(r.admitted)
            for c in r.cores:
                if c not in admitted and c in self.topology.index_of:
                    mask[self.topology.index_of[c]] = True
        return mask

    def current(self, namespace: str, pod: str, uid: str) -> RemapRecord | None:
        r = self.records.get((namespace, pod))
        return r if r is not None and (not uid or not r.uid or r.uid == uid) else None

    def record(self, stage: LocalStage, cores: IntArray, now: float) -> RemapRecord:
        """Record (on disk, then in memory) that ``stage`` runs on ``cores`` now."""
        rec = self.next_record(stage, cores, now)
        self._write(rec)
        return rec

    def next_record(self, stage: LocalStage, cores: IntArray, now: float) -> RemapRecord:
        """The record a remap of ``stage`` to ``cores`` makes (nothing is written)."""
        prev = self.records.get((stage.namespace, stage.pod))
        return RemapRecord(
            stage.namespace,
            stage.pod,
            stage.uid,
            stage.admitted,
            tuple(self.topology.ids[i] for i in np.sort(cores).tolist()),
            (prev.generation if prev is not None else 0) + 1,
            now,
        )

    def save(self, rec: RemapRecord) -> None:
        """Write ``rec``'s file (atomically by rename); memory is the caller's."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(rec.namespace, rec.pod).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.as_json()))
        os.replace(tmp, self._path(rec.namespace, rec.pod))

    def _write(self, rec: RemapRecord) -> None:
        self.save(rec)
        self.records[(rec.namespace, rec.pod)] = rec

    def restore(self, namespace: str, pod: str, rec: RemapRecord | None) -> None:
        """Put back the record a failed remap replaced (``None``: there was none)."""
        if rec is None:
            self.forget(namespace, pod)
            return
        self._write(rec)

    def forget(self, namespace: str, pod: str) -> None:
        self.records.pop((namespace, pod), None)
        self._path(namespace, pod).unlink(missing_ok=True)

    def recover(self, holders: Mapping[str, tuple[str, str]] | None) -> list[RemapRecord]:
        """Load records; keep those whose pod still holds its admitted cores (``holders``: core ID -> (namespace,
        pod) from PodResources; None when PodResources is unavailable: keep every record). Returns the kept."""
        kept = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                rec = RemapRecord.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("remap_record_unreadable", file=str(path), error=repr(e))
                path.unlink(missing_ok=True)
                continue
            if holders is not None and not all(holders.get(c) == (rec.namespace, rec.pod) for c in rec.admitted):
                log.info("remap_record_dropped", pod=f"{rec.namespace}/{rec.pod}", why="pod no longer holds its cores")
                path.unlink(missing_ok=True)
                continue
            self.records[(rec.namespace, rec.pod)] = rec
            idx = np.array([self.topology.index_of[c] for c in rec.cores if c in self.topology.index_of])
            write_allocation(
                self.allocation_file(rec.admitted),
                core_allocation(self.topology, idx, remap_fields(rec.admitted, rec.generation, rec.at)),
                in_place=True,
            )
            kept.append(rec)
        return kept


PASS_SLICE_S = 0.0005
"""Seconds of a pass between two yields to the event loop: at 16,384 cores and 300 stages a pass is 1-3 ms, and a
hard fault's path to ListAndWatch has 5 ms, of which the gRPC send of 16,384 devices to another process takes
1-2 ms (the fault benchmark's floor). A fault that lands mid-pass waits for the slice and, behind the pass's next
slice, for its ListAndWatch task's turn: half a millisecond each."""

_T = TypeVar("_T")


class Offload(Protocol):
    """Where the reallocator runs work that must not hold the event loop: evaluations and durable writes."""

    def __call__(self, work: Callable[[], _T]) -> Awaitable[_T]: ...


async def in_thread(work: Callable[[], _T]) -> _T:
    """Run ``work`` in a worker thread. A replan at 16,384 cores takes ~25 ms of numpy and Python, and a remap's
    allocation file is fsynced (a disk may take milliseconds): on the loop either would hold back the ListAndWatch
    send of a fault that lands meanwhile (the fault benchmark with 300 stages placed: p999 loop lag 28 ms)."""
    return await asyncio.to_thread(work)


async def inline(work: Callable[[], _T]) -> _T:
    """Run ``work`` on the caller's thread (a driver without an event loop: the experiments)."""
    return work()


# -- the reallocator --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class NodeReallocator:
    """See the module docstring."""

    node: NodeService
    source: StageSource
    reporter: StageReporter
    ledger: RemapLedger
    allocated: Callable[[], BoolArray]
    """(n_cores,) cores the kubelet has handed out now (PodResources, or the stand-in's book)."""
    metrics: ReallocationMetrics | None = None
    settings: ReallocationSettings = field(default_factory=ReallocationSettings)
    period: float = 0.1
    """Least seconds between two evaluations. A pass runs on each telemetry frame the node folds in (what it reads
    changes only then, so a pass between frames would see the same data, and a fixed tick would add up to its
    own length to every reaction); this bounds their rate when frames come faster (the default is the default
    sample period)."""
    inter_chip_weight: float = field(kw_only=True)
    """Hops a chip crossing counts for: the hardware's own (``SimBackend.inter_chip_weight`` for the sim), no default
    so no caller can fall back to a figure that disagrees with the node's summary and the daemon's plans."""
    dry_run: bool = False
    remap_allowed: bool = True
    """False: never move, only report degradations (the controller may still evict)."""
    tracer: Tracer = field(default_factory=NoopTracer)
    clock: Callable[[], float] = time.time
    on_remap: Callable[[LocalStage, IntArray], None] | None = None
    """Called after a remap (the demo logs latency around it)."""
    offload: Offload = in_thread
    """Where an evaluation runs (:func:`in_thread`; :func:`inline` where no loop serves anything else). Its inputs
    are built before and its targets checked again after, so a fault that lands meanwhile is never moved onto."""
    budget: MoveBudget = field(init=False)
    watches: dict[tuple[str, str, str], StageWatch] = field(default_factory=dict)
    reported: dict[tuple[str, str], str] = field(default_factory=dict)
    remaps: int = 0
    started: float = field(init=False)
    _pass_left: int = field(init=False, default=0)
    """Stage moves this pass may still make (half of what the window allowed when it began)."""
    saturated_at: FloatArray = field(init=False)
    """(n_cores,) when each core's queue last read saturated (-inf: never). A hot spot outlives the work that showed
    it: once its stage has left, a throttled core reads idle, and the next saturated stage must not be moved
    onto it (the hot-spot scenario, seed 4: a stage moved onto a core of the region its neighbour had just left,
    saturated again and waited out its 60 s cooldown there)."""

    def __post_init__(self) -> None:
        self.budget = MoveBudget(self.settings)
        self.started = self.clock()
        self.saturated_at = np.full(self.node.topology.n_cores, -math.inf)
        self.node.withhold(self.ledger.lent())

    async def run(self) -> None:
        """A pass per telemetry frame folded in, at most one per ``period``."""
        seen = self.node.frames
        last = -math.inf
        while True:
            seen = await self.node.next_frame(seen)
            wait = last + self.period - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            last = time.monotonic()
            await self.step()

    def _view(self) -> tuple[PlacementView, BoolArray, BoolArray]:
        """The node now, the cores that failed (hard), and all degraded cores: Unhealthy for any reason, or with
        a queue whose wait is a saturated one's (:func:`~snnrm.core.reallocation.queue_pressure`).

        Stale telemetry is not a failed core: a core whose counters stopped for a few seconds (a glitch) is not a
        target (it is Unhealthy, so not free) but does not force its stage to move either.
        """
        m = self.node.monitor
        t = self.node.topology
        healthy = self.node.core_healthy()
        hard = (m.health.reasons & int(HealthReason.FAILED)) != 0
        failed = hard & ~healthy
        withheld = self.node.withheld if self.node.withheld is not None else np.zeros_like(healthy)
        free = healthy & ~self.allocated() & ~withheld
        r = m.rates.rates
        pressure = queue_pressure(
            r.queue_depth, r.events_processed_rate, t.core_queue_capacity, t.core_nominal_keps * 1e3
        )
        view = PlacementView.measured(
            t,
            free=free & ~(pressure > self.settings.queue_enter),
            queue_fill=pressure,
            link_utilization=m.link_utilization,
            link_failed=m.link_failed,
            inter_chip_weight=self.inter_chip_weight,
        )
        return view, failed, ~healthy | (pressure > self.settings.queue_enter)

    async def step(self) -> None:
        """One evaluation of every stage on this node."""
        now = self.clock()
        stages = list(self.source.stages())
        live = {(s.namespace, s.pod, s.uid) for s in stages}
        for key in [k for k in self.watches if k not in live]:
            del self.watches[key]
        if not stages:
            return
        if wait := self.node.stand_back():
            await asyncio.sleep(wait)  # a hard fault was just published: its ListAndWatch message goes first
        slice_start = time.perf_counter()
        view, failed, unhealthy = self._view()
        self.saturated_at[np.nan_to_num(view.queue_fill, nan=0.0) > self.settings.queue_enter] = now
        stages.sort(key=lambda x: (x.job_key, x.index))
        if time.perf_counter() - slice_start > PASS_SLICE_S:
            await asyncio.sleep(self.node.stand_back())  # listing the stages and the view: 0.5-1.5 ms here
            slice_start = time.perf_counter()
        signals = stage_signals(
            [s.cores for s in stages],
            failed=failed,
            queue_fill=view.queue_fill,
            efficiency=self.node.monitor.rates.rates.efficiency,
            link_util=view.link_util,
        )
        by_job: dict[tuple[str, str], tuple[list[LocalStage], list[StageSignals]]] = {}
        for s, sig in zip(stages, signals, strict=True):
            group, group_sigs = by_job.setdefault(s.job_key, ([], []))
            group.append(s)
            group_sigs.append(sig)
        # One pass may spend at most half of what the node's move window still allows: a stage that degrades a
        # moment later (the victim of a hot spot, whose neighbours read its spill-over first) must find some left
        # (the full hot-spot set, seed 10: one pass spent all 6 moves on two neighbours, the victim waited 120 s).
        self._pass_left = math.ceil(self.budget.allowance(now) / 2)
        for job, (members, sigs) in by_job.items():  # jobs in order, each job's stages by index
            if time.perf_counter() - slice_start > PASS_SLICE_S:
                await asyncio.sleep(self.node.stand_back())  # a pushed hard fault goes first, not after the pass
                slice_start = time.perf_counter()
            degraded: list[tuple[LocalStage, frozenset[Any], frozenset[Any], StageWatch]] = []
            for k, (s, sig) in enumerate(zip(members, sigs, strict=True)):
                watch = self.watches.setdefault((s.namespace, s.pod, s.uid), StageWatch())
                active = frozenset() if watch.quiet(sig, self.settings) else watch.observe(sig, now, self.settings)
                nxt = sigs[k + 1] if k + 1 < len(sigs) and members[k + 1].index == s.index + 1 else None
                # Losses and stalls caused by the next stage are that stage's to answer (it is judged on its own).
                active = own_reasons(active, nxt, self.settings)
                if not active:
                    await self._report(s, StageHealth("ok"), cores=None, moved_at=None)
                else:
                    degraded.append((s, active, standing(active, sig, self.settings), watch))
            # The job may move once per cooldown: the most urgent stage takes it (a stage on a failed core runs
            # nothing; a saturated one drops events), not the first by index. Among equals the last stage goes
            # first: on a flow-controlled mesh (Loihi) a saturated stage stalls every stage before it, whose
            # queues then fill too, so the most downstream one is the bottleneck.
            degraded.sort(key=lambda d: (urgency(d[2]), -d[0].index))
            for s, held, active, watch in degraded:
                if await self._act(job, members, s, held, active, watch, view, failed, unhealthy, now):
                    # The cores just taken are withheld now: the rest of this pass prices other jobs against
                    # the new state, so two stages never receive the same cores.
                    view, failed, unhealthy = self._view()
                    break  # one decision per job per pass (it may move several stages); the next sees the result

    async def _act(
        self,
        job: tuple[str, str],
        members: list[LocalStage],
        s: LocalStage,
        held: frozenset[Any],
        active: frozenset[Any],
        watch: StageWatch,
        view: PlacementView,
        failed: BoolArray,
        unhealthy: BoolArray,
        now: float,
    ) -> bool:
        """Decide about stage ``s`` of ``job``: ``held`` are its active conditions, ``active`` those whose signal is
        still past its exit threshold now (:func:`~snnrm.core.reallocation.standing`). True if the job moved."""
        reasons = sorted(r.value for r in (active or held))  # what is there now; what is held, if nothing is
        reason = reasons[0]
        lj = local_job(s.demands, {m.index: m.cores for m in members})
        pos = lj.position(s.index)
        since = watch.since or now

        def cost_now() -> float:
            """What the job's placement costs on the degraded node (only for a verdict that reports it)."""
            return plan_cost(degraded_view(view, failed | unhealthy), lj.demands, lj.placement).total

        if not active:
            # Degraded by hysteresis only (its signals read good again, not yet for long enough to clear): reported
            # as such, with nothing to do, here or by the cluster's eviction path (which skips "none"), as a move
            # must answer trouble that is there now (see `standing`).
            await self._report(
                s, StageHealth("degraded", tuple(reasons), since, "none", cost_now()), cores=None, moved_at=None
            )
            return False
        if not s.live_remap or not self.remap_allowed:
            await self._report(
                s, StageHealth("degraded", tuple(reasons), since, "not-opted-in", cost_now()), cores=None, moved_at=None
            )
            return False
        # The move budget first: a job that may not move now costs no evaluation (a replan is the expensive part).
        last = max((m.last_move for m in members if m.last_move is not None), default=None)
        if active & URGENT:  # the stage's own cooldown: it loses work now, and it is not the one that moved
            blocked = self.budget.blocked(
                job,
                now,
                last_move=last,
                urgent_stage=s.index,
                stage_last_move=s.last_move,
                settle=MoveReason.FAILED_CORE not in active,
            )
        else:
            blocked = self.budget.blocked(job, now, last_move=last)
        if blocked is None and self._pass_left <= 0:
            blocked = "this pass spent its share of the move window"
        if blocked is not None:
            self._count(s, reason, "blocked")
            await self.reporter.event(s, reason="RemapDeferred", note=f"{reason}: {blocked}")
            return False
        with self.tracer.span(
            "snnrm.remap", {"snnrm.job": s.job, "snnrm.stage": s.index, "snnrm.reason": reason}
        ) as span:
            m = self.node.monitor
            congested = links_to_avoid(m.link_utilization, m.link_failed, self.settings)
            degraded = unhealthy
            if MoveReason.QUEUE_SATURATED in active:
                # Leave the hot region, not only the hot cores: a hot spot shows in the queues of whatever runs in
                # it, other jobs' included (a stage moved next to another job's saturated core, still inside the
                # region, and stayed saturated for its cooldown: the hot-spot scenario, seed 7). A core counts as
                # hot for one cooldown after it last read saturated: landing on one would cost that long.
                hot = np.flatnonzero(now - self.saturated_at <= self.settings.cooldown)
                degraded = unhealthy | hot_neighbourhood(self.node.topology, np.union1d(hot, s.cores))
            evaluate = functools.partial(
                evaluate_remap,
                view,
                lj.demands,
                lj.placement,
                pos,
                failed=failed,
                degraded=degraded,
                settings=self.settings,
                congested=congested,
            )
            option = await self.offload(evaluate)
            if option is None or not option.worth_it(self.settings.margin):
                # The stage alone buys too little when its neighbours in the pipeline sit on bad cores too (the
                # pipeline runs at its worst stage's pace): then the job's other opted-in stages on bad cores go
                # with it, downstream first, as many as the window still allows. The smallest move that is worth
                # it wins: first the stages whose own cores show trouble (failed, Unhealthy, a saturated queue),
                # then, if that is not enough, every stage on cores this evaluation prices as bad (the hot region
                # around a saturated core too: a stage on idle cores of the region made the lone move "not worth
                # it" and was never allowed to come along; the combined scenario, seed 8, kept a job outside its
                # SLO for the rest of the run). A stage only stalled behind this one recovers when it leaves.
                tried: list[int] = []
                for sick in (failed | unhealthy, failed | degraded):
                    others = sorted(
                        (
                            x
                            for x in members
                            if x is not s
                            and x.live_remap
                            and sick[x.cores].any()
                            and self.budget.blocked(
                                job, now, last_move=last, urgent_stage=x.index, stage_last_move=x.last_move
                            )
                            is None
                        ),
                        key=lambda x: -x.index,
                    )[: max(min(self.budget.allowance(now), self._pass_left) - 1, 0)]
                    with_stages = [lj.position(x.index) for x in others]
                    if not with_stages or with_stages == tried:
                        continue
                    tried = with_stages
                    option = await self.offload(functools.partial(evaluate, with_stages=with_stages))
                    if option is not None and option.worth_it(self.settings.margin):
                        break
            if option is None or not option.worth_it(self.settings.margin):
                span.set_attribute("snnrm.action", "unavailable")
                self._count(s, reason, "no-target" if option is None else "not-worth-it")
                await self._report(
                    s,
                    StageHealth("degraded", tuple(reasons), since, "unavailable", cost_now()),
                    cores=None,
                    moved_at=None,
                )
                return False
            by_index = {x.index: x for x in members}
            moving = [(by_index[lj.stages[k]], t) for k, t in zip(option.stages, option.targets, strict=True)]
            span.set_attribute("snnrm.stages", len(moving))
            if not self._still_free([t for _, t in moving], members):
                # The node changed while the evaluation ran (a core failed, the kubelet handed cores out): the next
                # pass evaluates against what is there now.
                span.set_attribute("snnrm.action", "superseded")
                self._count(s, reason, "superseded")
                return False
            moved: list[int] = []
            for x, target in moving:
                ids = [self.node.topology.ids[i] for i in np.sort(target).tolist()]
                why = reasons if x is s else [*reasons, f"with stage {s.index}"]
                note = (
                    f"{', '.join(why)}: live remap of stage {x.index} from {len(x.cores)} cores to {len(ids)} cores "
                    f"({ids[0]} ..); cost {option.cost_before:.0f} -> {option.cost_after:.0f} "
                    f"(+{option.migration_cost:.0f} migration)"
                )
                if self.dry_run:
                    span.set_attribute("snnrm.action", "dry-run")
                    if self.metrics is not None:
                        self.metrics.count(reason, "dry-run", namespace=x.namespace, job=x.job, stage=x.index)
                    await self.reporter.event(x, reason="WouldRemap", note=note)
                    continue
                try:
                    stands = await self._commit(x, target, now)
                except OSError as e:
                    # The runtime never saw new cores: the stage stays where it was, and says why. Stages already
                    # moved in this decision stay moved (each remap stands on its own).
                    span.set_error(f"remap failed: {e}")
                    self._count(x, reason, "failed")
                    log.warning("stage_remap_failed", job=x.job, stage=x.index, pod=x.pod, error=repr(e))
                    await self.reporter.event(x, reason="RemapFailed", note=f"{reason}: {e}", warning=True)
                    if x is s:
                        return False
                    continue
                if not stands:  # the pod ended while its files were written: there is no stage to move
                    self._count(x, reason, "superseded")
                    log.info("stage_remap_superseded", job=x.job, stage=x.index, pod=x.pod, why="pod ended")
                    if x is s:
                        return False
                    continue
                moved.append(x.index)
                self.remaps += 1
                self._count(x, reason, "remap")
                log.warning(
                    "stage_remapped",
                    job=x.job,
                    stage=x.index,
                    pod=x.pod,
                    reasons=why,
                    cores=len(ids),
                    cost_before=round(option.cost_before),
                    cost_after=round(option.cost_after),
                )
                await self._report(
                    x, StageHealth("ok", tuple(reasons), now, "done", option.cost_after), cores=ids, moved_at=now
                )
                await self.reporter.event(x, reason="Remapped", note=note)
                if self.on_remap is not None:
                    self.on_remap(x, target)
            if not moved:
                return False
            self.budget.record(job, now, stages=moved)
            self._pass_left -= len(moved)
            # Every stage of the job starts watching over: a queue that filled behind the stage that left drains
            # now and must not move its stage (it must show its own trouble for a whole dwell).
            for x in members:
                w = self.watches.get((x.namespace, x.pod, x.uid))
                if w is not None:
                    w.reset()
            span.set_attribute("snnrm.action", "remap")
            return True

    def _still_free(self, targets: Sequence[IntArray], members: Sequence[LocalStage]) -> bool:
        """Every target core is healthy, not lent, and free or already the job's own (its stages may shuffle)."""
        healthy = self.node.core_healthy()
        own = np.zeros_like(healthy)
        for m in members:
            own[m.cores] = True
            own[self.node.topology.indices(m.admitted)] = True
        withheld = self.node.withheld if self.node.withheld is not None else np.zeros_like(healthy)
        ok = healthy & ((~self.allocated() & ~withheld) | own)
        return all(bool(ok[t].all()) for t in targets)

    async def _commit(self, s: LocalStage, target: IntArray, now: float) -> bool:
        """Lend the remap's cores, then record it and rewrite the stage's allocation file off the loop; on an I/O
        error undo the record and the lending (the allocation file is the last write: if it fails, nothing moved).

        The cores are lent in memory first, so the kubelet is told they are taken before the writes, and no pass or
        Allocate meanwhile can hand them out. False if the pod ended meanwhile (nothing moved)."""
        prev = self.ledger.current(s.namespace, s.pod, s.uid)
        rec = self.ledger.next_record(s, target, now)
        body = core_allocation(self.node.topology, target, remap_fields(s.admitted, rec.generation, now))
        path = self.ledger.allocation_file(s.admitted)

        def write() -> None:
            self.ledger.save(rec)
            write_allocation(path, body, in_place=True)

        key = (s.namespace, s.pod)
        self.ledger.records[key] = rec
        try:
            self.node.withhold(self.ledger.lent())
            await self.offload(write)
        except OSError:
            if self.ledger.records.get(key) is rec:
                self.ledger.restore(s.namespace, s.pod, prev)
            self.node.withhold(self.ledger.lent())
            raise
        if self.ledger.records.get(key) is not rec:
            # The pod ended while its files were written (the node agent forgot the record and took the cores
            # back): what was written describes nothing.
            self.ledger.forget(s.namespace, s.pod)
            return False
        return True

    def _count(self, s: LocalStage, reason: str, action: str) -> None:
        if self.metrics is not None:
            self.metrics.count(reason, action, namespace=s.namespace, job=s.job, stage=s.index)

    async def _report(self, s: LocalStage, h: StageHealth, *, cores: list[str] | None, moved_at: float | None) -> None:
        # Only state changes are written (cost and since are informative and would churn the pod).
        key = (s.namespace, s.pod)
        sig = f"{h.state}|{','.join(h.reasons)}|{h.remap}|{'' if cores is None else ','.join(cores)}"
        if self.reported.get(key) == sig:
            return
        self.reported[key] = sig
        await self.reporter.report(s, h, cores=cores, moved_at=moved_at)


def stages_body(topology: Topology, stages: Sequence[LocalStage], ledger: RemapLedger | None = None) -> dict[str, Any]:
    """The stages running on a node as JSON: cores, chips and remap state per stage, and the mean hops of the
    route between consecutive stages (``GET /api/v1/stages``, for the status page's mesh)."""
    jobs: dict[tuple[str, str], list[LocalStage]] = {}
    for s in stages:
        jobs.setdefault(s.job_key, []).append(s)
    out = []
    for (ns, job), members in sorted(jobs.items()):
        members.sort(key=lambda s: s.index)
        lj = local_job(members[0].demands, {m.index: m.cores for m in members})
        hops = plan_cost(PlacementView.idle(topology), lj.demands, lj.placement).mean_hops if len(members) > 1 else ()
        body = []
        for m in members:
            rec = ledger.current(m.namespace, m.pod, m.uid) if ledger is not None else None
            idx = np.sort(np.asarray(m.cores, dtype=np.int64))
            body.append(
                {
                    "stage": m.index,
                    "pod": m.pod,
                    "cores": [topology.ids[i] for i in idx.tolist()],
                    "chips": np.unique(topology.chip_of[idx]).tolist(),
                    "remapped": rec is not None,
                    "generation": rec.generation if rec is not None else 0,
                }
            )
        routes = [
            {"from": a, "to": b, "mean_hops": round(h, 3)}
            for a, b, h in zip(lj.stages, lj.stages[1:], hops, strict=False)
        ]
        out.append({"namespace": ns, "job": job, "stages": body, "routes": routes})
    return {"jobs": out}
