"""The gang planner: plans each job whole, reserves its cores, then releases its gated stage pods to their nodes.

Stage pods are created behind the scheduling gate ``snnrm.io/placement``; the scheduler ignores them until the
gate is gone. Whenever the cache changes, the planner looks at every job with gated pods, oldest first:

1. it waits until a pod exists for every stage (``snnrm.io/stages`` of them);
2. it plans the gated stages with :func:`~snnrm.core.gang.plan_gang`, keeping stages that already run where they
   are; no plan (not enough room anywhere) means every gated pod of the job stays gated: all or nothing;
3. it reserves the planned cores in the index *before* touching any pod, so no other job's plan, and no
   extender decision, can take them; reservations expire after a TTL unless the binding is observed;
4. it patches each gated pod: the plan as annotations (node, core IDs, plan id), the descheduler opt-out, a
   required node affinity to the planned node (allowed on gated pods since Kubernetes 1.27, KEP-3838), and the
   gate removed; the scheduler (with our extender) then binds each pod to its planned node.

Jobs are planned one at a time against reservations, so two jobs competing for the same chips never end up
half-placed each: the older one gets the cores, the newer one waits whole until they free up.

Every decision is a Kubernetes Event on the pod. In dry-run mode plans are logged and recorded as Events, and
nothing is reserved or patched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import structlog

from snnrm.cluster.cache import ClusterCache
from snnrm.cluster.events import EventRecorder, PodRef
from snnrm.cluster.native import NativeGang, ensure_group
from snnrm.core.cluster import Reservation, StageKey
from snnrm.core.gang import GangPlan, Placed, ids_of, plan_gang
from snnrm.core.jobs import (
    DESCHEDULER_PREFER_NO_EVICTION,
    GATE,
    PLAN_ID,
    PLANNED_CORES,
    PLANNED_NODE,
    StageRef,
)
from snnrm.core.placement import StageDemand
from snnrm.core.topology import IntArray
from snnrm.kube.api import PODS, ClusterApi, KubeError

log = structlog.get_logger(__name__)

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
IDLE_RECHECK_S = 2.0
"""Re-plan waiting jobs at least this often even without a watch event (summaries refresh capacity quietly)."""


def demand_of(ref: StageRef) -> StageDemand:
    return StageDemand(cores=ref.cores, out_keps=ref.out_keps, in_keps=ref.in_keps)


def release_patch(pod: dict[str, Any] | None, node: str, ids: list[str], plan_id: str) -> dict[str, Any]:
    """The merge patch that ungates a planned pod with a required node affinity to its planned node."""
    spec = (pod or {}).get("spec") or {}
    gates = [g for g in spec.get("schedulingGates") or [] if isinstance(g, dict) and g.get("name") != GATE]
    pin = {"key": "metadata.name", "operator": "In", "values": [node]}
    node_affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = node_affinity.get(REQUIRED) or {}
    terms = [t for t in required.get("nodeSelectorTerms") or [] if isinstance(t, dict)]
    # Terms are ORed; a requirement added to each keeps the pod's own constraints and adds ours (KEP-3838 allows
    # only such narrowing on a gated pod).
    terms = [{**t, "matchFields": [*(t.get("matchFields") or []), pin]} for t in terms] or [{"matchFields": [pin]}]
    return {
        "metadata": {
            "annotations": {
                PLANNED_NODE: node,
                PLANNED_CORES: ",".join(ids),
                PLAN_ID: plan_id,
                DESCHEDULER_PREFER_NO_EVICTION: "true",
            }
        },
        "spec": {
            "schedulingGates": gates or None,
            "affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": terms}}},
        },
    }


@dataclass(eq=False)
class GangPlanner:
    """See the module docstring; ``run`` is a root task of the controller while it leads."""

    api: ClusterApi
    cache: ClusterCache
    recorder: EventRecorder
    reservation_ttl: float = 120.0
    dry_run: bool = False
    native: NativeGang | None = None
    clock: Callable[[], float] = time.time
    plans: int = 0
    """Jobs (or parts of jobs) planned and released so far."""
    _seq: int = field(default=0, init=False)

    async def run(self) -> None:
        await self.cache.synced.wait()
        native = None if self.native is None else self.native.version
        log.info("gang_planner_started", dry_run=self.dry_run, native=native)
        while True:
            self.cache.changed.clear()
            await self.reconcile()
            try:
                async with asyncio.timeout(IDLE_RECHECK_S):
                    await self.cache.changed.wait()
            except TimeoutError:
                pass

    async def reconcile(self) -> None:
        """One pass over every job with gated pods, oldest job first."""
        index = self.cache.index
        waiting: list[tuple[str, tuple[str, str]]] = []
        for job, pods in index.jobs():
            gated = [r for r in pods.values() if r.gated and not r.terminating]
            if gated:
                waiting.append((min(r.created for r in gated), job))
        for (ns, name), err in list(self.cache.contract_errors.items()):
            await self.recorder.record(PodRef(ns, name), reason="InvalidStage", note=err, action="Plan", warning=True)
        for _, job in sorted(waiting):
            try:
                await self.plan(job)
            except KubeError as e:  # the next change or recheck retries; nothing half-done is left unreserved
                log.warning("gang_plan_failed", job=job[1], error=str(e))

    async def plan(self, job: tuple[str, str]) -> GangPlan | None:
        index = self.cache.index
        stages = index.stages_of(job)
        if not stages:
            return None
        n = max(r.stages for r in stages.values())
        gated = {i: r for i, r in stages.items() if r.gated and not r.terminating}
        missing = [i for i in range(n) if i not in stages]
        if missing:
            for r in gated.values():
                await self.recorder.record(
                    PodRef(r.namespace, r.pod, r.uid),
                    reason="WaitingForStages",
                    note=f"job {job[1]}: no pod yet for stage(s) {', '.join(map(str, missing))} of {n}",
                    action="Plan",
                )
            return None
        in_flight = [
            i
            for i, r in gated.items()
            if (res := index.reservations.get(StageKey(job[0], job[1], i))) is not None and res.pod_uid == r.uid
        ]
        if in_flight:
            return None  # released by us a moment ago; the watch has not caught up with the patch yet
        placed: dict[int, Placed] = {}
        skip: list[int] = []
        for i, r in stages.items():
            if i in gated:
                continue
            res = index.reservations.get(StageKey(job[0], job[1], i))
            node = r.node or (res.node if res is not None else None)
            if node is None:
                skip.append(i)  # created without our gate: the scheduler and extender place it alone
                continue
            placed[i] = Placed(node, self._cores(node, r, res))
        demands = [demand_of(stages[i]) for i in range(n)]
        now = self.clock()
        plan = plan_gang(index, job, demands, placed, now=now, skip=skip)
        if plan is None:
            need = sum(stages[i].cores for i in gated)
            best = max((index.available(x) for x in index.node_names() if index.fresh(x, now)), default=0)
            for r in gated.values():
                await self.recorder.record(
                    PodRef(r.namespace, r.pod, r.uid),
                    reason="WaitingForCapacity",
                    note=f"job {job[1]}: {len(gated)} gated stage(s) need {need} cores together; "
                    f"no placement fits (largest free node: {best} cores). All stages stay gated.",
                    action="Plan",
                )
            return None
        self._seq += 1
        plan_id = f"{int(now)}-{self._seq}"
        if self.native is not None and not self.dry_run:
            await ensure_group(self.api, self.native, job[0], job[1], n)
        for i, p in plan.stages.items():
            r = gated[i]
            ids = ids_of(index, p)
            note = f"job {job[1]} stage {i}/{n}: node {p.node}, {len(ids)} cores ({_span(ids)}), plan {plan_id}"
            if self.dry_run:
                log.info("gang_plan_dry_run", job=job[1], stage=i, node=p.node, cores=len(ids))
                await self.recorder.record(
                    PodRef(r.namespace, r.pod, r.uid), reason="WouldPlace", note=note, action="Plan"
                )
                continue
            index.reserve(
                Reservation(StageKey(job[0], job[1], i), p.node, p.cores, now + self.reservation_ttl, plan_id, r.uid)
            )
        if self.dry_run:
            return plan
        # Every stage is reserved; now release the pods one by one (a failure leaves its reservation to expire
        # or its replacement pod to be planned next to the others).
        for i, p in plan.stages.items():
            r = gated[i]
            ids = ids_of(index, p)
            try:
                current = await self.api.get(PODS, r.pod, namespace=r.namespace)
                await self.api.merge_patch(
                    PODS, r.pod, release_patch(current, p.node, ids, plan_id), namespace=r.namespace
                )
            except KubeError as e:
                log.warning("gang_release_failed", job=job[1], stage=i, pod=r.pod, error=str(e))
                index.release(StageKey(job[0], job[1], i))
                continue
            # Optimistically, until the watch delivers the patched pod.
            index.set_pod(replace(r, gated=False, planned_node=p.node, planned_cores=tuple(ids)))
            await self.recorder.record(
                PodRef(r.namespace, r.pod, r.uid),
                reason="Planned",
                note=f"job {job[1]} stage {i}/{n}: node {p.node}, {len(ids)} cores ({_span(ids)}), plan {plan_id}",
                action="Plan",
            )
        self.plans += 1
        log.info(
            "gang_planned",
            job=job[1],
            stages=sorted(plan.stages),
            nodes=list(plan.nodes),
            cost=round(plan.cost, 1),
            plan=plan_id,
        )
        return plan

    def _cores(self, node: str, ref: StageRef, res: Reservation | None) -> IntArray | None:
        topo = self.cache.index.topology(node)
        held = ref.cores_held or ref.planned_cores
        if topo is not None and held and (ref.node or node) == node:
            return np.array(sorted(topo.index_of[c] for c in held if c in topo.index_of), dtype=np.int64)
        if res is not None and res.node == node:
            return res.cores
        return None


def _span(ids: list[str]) -> str:
    if not ids:
        return "none"
    return ids[0] if len(ids) == 1 else f"{ids[0]} .. {ids[-1]}"
