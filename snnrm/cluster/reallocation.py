"""The reallocation controller: evicts a degraded stage when its node cannot fix it, so it is re-placed.

Who does what. The node daemon owns its cores and sees every sample of them, so it watches each stage it runs
(hysteresis and dwell, :class:`~snnrm.core.reallocation.StageWatch`), performs a live remap on the same node when
the stage's runtime opted in and a better home exists (:mod:`snnrm.cluster.remap`), and reports the stage's state
on the pod (``snnrm.io/stage-health``). This controller, the only actor in the cluster (it runs while it holds
the Lease), handles what a node cannot: a stage still degraded with no live remap possible. For such a stage it

1. waits ``confirm`` seconds more (the report must persist: hysteresis on the controller's side too);
2. checks the job: no stage in flight (terminating, unbound, gated, or a replacement reservation pending), the
   job's cooldown and the actor's move budget (:class:`~snnrm.core.reallocation.MoveBudget`), the stage's age;
3. plans the stage's new home with every other stage held where it is (:func:`~snnrm.core.gang.plan_gang`) and
   moves only when that beats the current cost (reported by the node) by the margin after the eviction's
   migration cost, or when cores of the stage have failed;
4. reserves the target cores first, then evicts through the Eviction API, so PodDisruptionBudgets hold (a 429
   leaves the pod, releases the reservation and is recorded); the workload controller re-creates the pod, and
   the planner (or, for an ungated pod, the extender, which honours the reservation) places it.

Every decision is an Event on the pod, a ``snnrm_reallocations_total{reason,action}`` sample, and a trace span.
Dry-run decides and records, and changes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter

from snnrm.cluster.cache import ClusterCache
from snnrm.cluster.events import EventRecorder, PodRef
from snnrm.cluster.planner import demand_of
from snnrm.core.cluster import ClusterIndex, Reservation, StageKey
from snnrm.core.gang import Placed, plan_gang
from snnrm.core.jobs import LAST_MOVE, StageRef
from snnrm.core.reallocation import MoveBudget, MoveReason, ReallocationSettings, hot_neighbourhood
from snnrm.core.topology import BoolArray, IntArray
from snnrm.kube.api import PODS, ClusterApi, KubeError, TooManyRequestsError, evict
from snnrm.obs.tracing import NoopTracer, Tracer

log = structlog.get_logger(__name__)

TICK_S = 1.0
"""Seconds between passes when nothing changes (the confirm window and cooldowns are checked on this beat)."""


class ReallocationMetrics:
    """``snnrm_reallocations_total{namespace,snn_job,stage,reason,action}`` in an injected registry (no global
    state). The job labels are what the shipped dashboards and the SnnrmReallocationStorm rule sum by; jobs are
    few and long-lived, so the series stay few."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.total = Counter(
            "snnrm_reallocations",
            "Stage reallocation decisions by job, stage, degradation reason and action "
            "(remap, evict, blocked, not-worth-it, no-target, superseded, dry-run, failed).",
            ["namespace", "snn_job", "stage", "reason", "action"],
            registry=registry,
        )

    def count(self, reason: str, action: str, *, namespace: str = "", job: str = "", stage: int | None = None) -> None:
        self.total.labels(
            namespace=namespace, snn_job=job, stage="" if stage is None else str(stage), reason=reason, action=action
        ).inc()

    def value(self, reason: str, action: str) -> float:
        """Sum over jobs and stages (tests)."""
        return sum(
            s.value
            for metric in self.total.collect()
            for s in metric.samples
            if s.name.endswith("_total") and s.labels.get("reason") == reason and s.labels.get("action") == action
        )


def _age(ref: StageRef, now: float) -> float:
    try:
        created = datetime.fromisoformat(ref.created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return float("inf")
    return now - created


@dataclass(eq=False)
class ReallocationController:
    api: ClusterApi
    cache: ClusterCache
    recorder: EventRecorder
    metrics: ReallocationMetrics = field(default_factory=ReallocationMetrics)
    settings: ReallocationSettings = field(default_factory=ReallocationSettings)
    dry_run: bool = False
    confirm: float = 1.0
    """Seconds a node's degraded report must stand before the controller acts on it."""
    reservation_ttl: float = 120.0
    """Seconds the target of an eviction stays reserved for the replacement pod."""
    tracer: Tracer = field(default_factory=NoopTracer)
    clock: Callable[[], float] = time.time
    budget: MoveBudget = field(init=False)
    _first_seen: dict[tuple[str, str, str], float] = field(default_factory=dict, init=False)
    evictions: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.budget = MoveBudget(self.settings)

    async def run(self) -> None:
        await self.cache.synced.wait()
        log.info("reallocation_controller_started", dry_run=self.dry_run)
        while True:
            await self.reconcile()
            await asyncio.sleep(TICK_S)

    def _in_flight(self, job: tuple[str, str], stages: dict[int, StageRef]) -> str | None:
        index = self.cache.index
        n = max((r.stages for r in stages.values()), default=0)
        for i in range(n):
            r = stages.get(i)
            if r is None:
                return f"stage {i} has no pod (being re-created)"
            if r.terminating:
                return f"stage {i} is terminating"
            if r.gated or not r.node:
                return f"stage {i} is not placed yet"
            res = index.reservations.get(StageKey(job[0], job[1], i))
            if res is not None and not res.committed and res.node != r.node:
                return f"stage {i} has a move pending"
        return None

    async def reconcile(self) -> None:
        now = self.clock()
        live: set[tuple[str, str, str]] = set()
        for job, _pods in list(self.cache.index.jobs()):
            stages = self.cache.index.stages_of(job)
            confirmed: list[tuple[int, StageRef]] = []
            for i, ref in sorted(stages.items()):
                h = ref.health
                # "done": the node moved it; "none": nothing to do (its signals read good again).
                if h is None or not h.degraded or h.remap in ("done", "none") or not ref.node or ref.terminating:
                    continue
                key = (ref.namespace, ref.pod, ref.uid)
                live.add(key)
                if now - self._first_seen.setdefault(key, now) >= self.confirm:
                    confirmed.append((i, ref))
            if confirmed:  # at most one stage of a pipeline per pass (and in flight)
                await self._consider(job, stages, *confirmed[0], now)
        for key in [k for k in self._first_seen if k not in live]:
            del self._first_seen[key]

    async def _consider(
        self, job: tuple[str, str], stages: dict[int, StageRef], i: int, ref: StageRef, now: float
    ) -> None:
        h = ref.health
        assert h is not None
        reason = h.reasons[0] if h.reasons else "degraded"
        pod = PodRef(ref.namespace, ref.pod, ref.uid)
        where: dict[str, Any] = {"namespace": ref.namespace, "job": job[1], "stage": i}
        attrs: dict[str, str | int] = {
            "snnrm.job": job[1],
            "snnrm.stage": i,
            "snnrm.reason": reason,
            "snnrm.node": ref.node or "",
        }
        with self.tracer.span("snnrm.reallocate", attrs) as span:
            blocked = self._in_flight(job, stages)
            last = max((r.last_move for r in stages.values() if r.last_move is not None), default=None)
            blocked = blocked or self.budget.blocked(job, now, last_move=last)
            if blocked is None and _age(ref, now) < self.settings.min_age:
                blocked = f"stage is {_age(ref, now):.0f}s old (min {self.settings.min_age:.0f}s)"
            if blocked is not None:
                span.set_attribute("snnrm.action", "deferred")
                await self.recorder.record(
                    pod, reason="ReallocationDeferred", note=f"{reason}: {blocked}", action="Reallocate"
                )
                return
            index = self.cache.index
            demands = [demand_of(stages[k]) for k in range(ref.stages)]
            placed = {k: Placed(r.node or "", self._held(r)) for k, r in stages.items() if k != i and r.node}
            avoid = None
            if MoveReason.QUEUE_SATURATED.value in h.reasons and ref.node:
                # Not back into the hot region: its idle cores look free in the node's summary (per-chip means).
                region = hot_region(index, ref.node)
                avoid = {ref.node: region} if region is not None else None
            plan = plan_gang(index, job, demands, placed, now=now, avoid=avoid)
            target = plan.stages.get(i) if plan is not None else None
            must = MoveReason.FAILED_CORE.value in h.reasons
            if plan is None or target is None:
                self.metrics.count(reason, "no-target", **where)
                span.set_attribute("snnrm.action", "no-target")
                note = f"{reason} on node {ref.node}; no node can take the stage now"
                await self.recorder.record(
                    pod, reason="NoBetterPlacement", note=note, action="Reallocate", warning=True
                )
                return
            traffic = demands[i].in_keps + demands[i].out_keps + (demands[i - 1].out_keps if i else 0.0)
            migration = self.settings.evict_cost_hops * max(traffic, 1e-3)
            if not must and not plan.cost + migration < (1.0 - self.settings.margin) * h.cost:
                self.metrics.count(reason, "not-worth-it", **where)
                span.set_attribute("snnrm.action", "not-worth-it")
                await self.recorder.record(
                    pod,
                    reason="ReallocationNotWorthIt",
                    action="Reallocate",
                    note=f"{reason}: best home (node {target.node}) costs {plan.cost:.0f} + {migration:.0f} "
                    f"migration vs {h.cost:.0f} now (margin {self.settings.margin:.0%})",
                )
                return
            note = (
                f"{reason} on node {ref.node}: evicting for re-placement on node {target.node} "
                f"({len(target.cores)} cores reserved)"
            )
            span.set_attribute("snnrm.target_node", target.node)
            if self.dry_run:
                self.metrics.count(reason, "dry-run", **where)
                span.set_attribute("snnrm.action", "dry-run")
                await self.recorder.record(pod, reason="WouldEvict", note=note, action="Reallocate")
                return
            key = StageKey(job[0], job[1], i)
            index.reserve(
                Reservation(key, target.node, target.cores, now + self.reservation_ttl, "realloc", replaces=ref.uid)
            )
            try:
                await self.api.merge_patch(
                    PODS, ref.pod, {"metadata": {"annotations": {LAST_MOVE: f"{now:.3f}"}}}, namespace=ref.namespace
                )
                await evict(self.api, ref.namespace, ref.pod)
            except TooManyRequestsError as e:
                index.release(key)
                self.metrics.count(reason, "blocked", **where)
                span.set_error("eviction refused")
                await self.recorder.record(
                    pod,
                    reason="EvictionBlocked",
                    action="Evict",
                    warning=True,
                    note=f"{reason}: eviction refused ({e.message})",
                )
                return
            except KubeError as e:
                index.release(key)
                self.metrics.count(reason, "failed", **where)
                span.set_error(str(e))
                log.warning("eviction_failed", job=job[1], stage=i, pod=ref.pod, error=str(e))
                return
            self.budget.record(job, now)
            self.evictions += 1
            self.metrics.count(reason, "evict", **where)
            span.set_attribute("snnrm.action", "evict")
            log.warning("stage_evicted", job=job[1], stage=i, pod=ref.pod, reason=reason, target=target.node)
            await self.recorder.record(pod, reason="Evicted", note=note, action="Evict", warning=True)

    def _held(self, ref: StageRef) -> IntArray | None:
        return held_cores(self.cache.index, ref)


def hot_region(index: ClusterIndex, node: str) -> BoolArray | None:
    """Cores of ``node`` within one router hop of a stage its node reports saturated
    (:func:`~snnrm.core.reallocation.hot_neighbourhood`, the rule the node's own remaps follow); None if the
    node's topology is unknown.

    Measured on the experiments' hot spot through this controller (``snnrm-evict``): without it the evicted
    victim was re-placed on the next core of the throttled region (the nearest free one to its next stage), and
    stayed saturated for its job's whole cooldown.
    """
    topo = index.topology(node)
    if topo is None:
        return None
    hot: list[IntArray] = []
    for job, _ in list(index.jobs()):
        for r in index.stages_of(job).values():
            h = r.health
            if r.node == node and h is not None and h.degraded and MoveReason.QUEUE_SATURATED.value in h.reasons:
                cores = held_cores(index, r)
                if cores is not None:
                    hot.append(cores)
    return hot_neighbourhood(topo, np.concatenate(hot) if hot else np.zeros(0, dtype=np.int64))


def held_cores(index: ClusterIndex, ref: StageRef) -> IntArray | None:
    """The cores a placed stage holds: what its node reported, else its plan, else its reservation."""
    res = index.reservations.get(StageKey(ref.namespace, ref.job, ref.index))
    topo = index.topology(ref.node or "")
    ids = ref.cores_held or ref.planned_cores
    if topo is not None and ids:
        return np.array(sorted(topo.index_of[c] for c in ids if c in topo.index_of), dtype=np.int64)
    if res is not None and res.node == ref.node:
        return res.cores
    return None
