"""The node daemon's side of placement: publish the node summary, follow plans on admission, remap stages.

:class:`NodeAgent` runs inside ``snnrm run`` when placement is configured (``placement.enabled`` and a node
name). It watches the stage pods bound to its node (``spec.nodeName``, label ``snnrm.io/job``), and:

* publishes the node's :class:`~snnrm.core.summary.NodeSummary` as the ``snnrm.io/summary`` annotation of its
  Node, rate-limited (:class:`~snnrm.core.summary.PublishPolicy`): what the controller's planner and extender
  read instead of calling the node. It summarises every second (and on each change of its pods) but patches the
  Node only when something a placement reads changed, at most every ``min_interval`` (5 s), chip loads
  smoothed so that telemetry noise is not a change, once more when the smoothing has settled after the first
  (``settle_after``), and otherwise every ``max_interval`` (300 s);
* feeds :class:`~snnrm.cluster.hints.PlanHints` with the plans of pods bound here and not yet admitted, so
  GetPreferredAllocation follows the plan;
* runs the :class:`~snnrm.cluster.remap.NodeReallocator` over the stages running here, whose reports go to the
  pods' annotations and Events (:class:`KubeStageReporter`).

Which cores a stage holds comes from the kubelet's PodResources API (authoritative); while it is unavailable, from
the pod's plan. Cores lent by live remaps come from the remap ledger, recovered at start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from snnrm.cluster.events import EventRecorder, PodRef
from snnrm.cluster.hints import PlanHints, PlannedPod
from snnrm.cluster.planner import demand_of
from snnrm.cluster.remap import LocalStage, NodeReallocator, RemapLedger, stages_body
from snnrm.core.devices import NEURON_CORE
from snnrm.core.jobs import CORES, JOB, LAST_MOVE, STAGE_HEALTH, ContractError, StageHealth, StageRef, stage_of
from snnrm.core.placement import StageDemand
from snnrm.core.summary import ANNOTATION, LoadSmoother, NodeSummary, PublishPolicy, should_publish, summarize
from snnrm.core.topology import BoolArray, FloatArray, Topology
from snnrm.kube.api import JSON, NODES, PODS, ClusterApi, GoneError, KubeError
from snnrm.kubelet.podresources import PodResourcesClient

log = structlog.get_logger(__name__)

SYNC_PERIOD = 1.0
"""Seconds between two syncs of the agent when no pod bound here changes (each one summarises the node)."""


class LoadReadings(Protocol):
    """The telemetry the summary reads (:class:`~snnrm.core.monitor.NodeMonitor` has it)."""

    @property
    def queue_fill(self) -> FloatArray: ...
    @property
    def link_utilization(self) -> FloatArray: ...
    @property
    def link_failed(self) -> BoolArray: ...


class NodeState(Protocol):
    """What the agent needs of the node (:class:`~snnrm.node.NodeService` in the daemon; the fleet benchmark
    simulates thousands of these in one process)."""

    @property
    def topology(self) -> Topology: ...
    @property
    def monitor(self) -> LoadReadings: ...
    @property
    def withheld(self) -> BoolArray | None: ...
    def core_healthy(self) -> BoolArray: ...
    def chip_headroom_keps(self) -> FloatArray: ...
    def withhold(self, cores: BoolArray | None) -> None: ...


@dataclass(eq=False)
class NodePods:
    """Stage pods bound to one node, from a list + watch (``spec.nodeName=<node>``, label ``snnrm.io/job``)."""

    api: ClusterApi
    node: str
    pods: dict[tuple[str, str], StageRef] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def apply(self, kind: str, pod: JSON) -> None:
        """Fold one list item or watch event in (the fleet benchmark feeds many nodes from one watch)."""
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        phase = (pod.get("status") or {}).get("phase")
        if kind == "DELETED" or phase in ("Succeeded", "Failed"):
            self.pods.pop(key, None)
        else:
            try:
                ref = stage_of(pod)
            except ContractError:
                ref = None
            if ref is None:
                self.pods.pop(key, None)
            else:
                self.pods[key] = ref
        self.changed.set()

    async def run(self) -> None:
        selector = f"spec.nodeName={self.node}"
        delay = 0.2
        while True:
            try:
                items, rv = await self.api.list(PODS, label_selector=JOB, field_selector=selector)
                self.pods.clear()
                for p in items:
                    self.apply("ADDED", p)
                delay = 0.2
                async for kind, obj in self.api.watch(
                    PODS, resource_version=rv, label_selector=JOB, field_selector=selector
                ):
                    if kind != "BOOKMARK":
                        self.apply(kind, obj)
            except GoneError:
                continue
            except KubeError as e:
                log.warning("node_pod_watch_failed", error=str(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


@dataclass(eq=False)
class KubeStageReporter:
    """Writes a stage's report to its pod's annotations (merge patch) and records Events."""

    api: ClusterApi
    recorder: EventRecorder

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        ann: dict[str, str] = {STAGE_HEALTH: health.encode()}
        if cores is not None:
            ann[CORES] = ",".join(cores)
        if moved_at is not None:
            ann[LAST_MOVE] = f"{moved_at:.3f}"
        try:
            await self.api.merge_patch(PODS, stage.pod, {"metadata": {"annotations": ann}}, namespace=stage.namespace)
        except KubeError as e:
            log.warning("stage_report_failed", pod=stage.pod, error=str(e))

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        await self.recorder.record(
            PodRef(stage.namespace, stage.pod, stage.uid), reason=reason, note=note, action="Remap", warning=warning
        )


@dataclass(eq=False)
class NodeAgent:
    """See the module docstring."""

    api: ClusterApi
    node_name: str
    node: NodeState
    ledger: RemapLedger
    hints: PlanHints
    pod_resources: PodResourcesClient | None
    recorder: EventRecorder
    reallocator_factory: Callable[[NodeAgent], NodeReallocator] | None = None
    """Builds the remapper once the agent exists (None: no live remaps, reports only from the controller)."""
    policy: PublishPolicy = field(default_factory=PublishPolicy)
    inter_chip_weight: float = field(kw_only=True)
    """Hops a chip crossing counts for in the published summary: the hardware's own, the one the remapper uses."""
    clock: Callable[[], float] = time.time
    close: Callable[[], Awaitable[None]] | None = None
    """Closes the API client the agent was given (the daemon calls it on shutdown)."""
    pods: NodePods = field(init=False)
    published: NodeSummary | None = field(default=None, init=False)
    publications: int = field(default=0, init=False)
    reallocator: NodeReallocator | None = field(default=None, init=False)
    _owners: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    _loads: LoadSmoother = field(init=False)
    _first: float | None = field(default=None, init=False)
    """When the first summary was published (the settling write follows ``policy.settle_after`` later)."""
    _settled: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.pods = NodePods(self.api, self.node_name)
        self._loads = LoadSmoother(self.policy.load_tau, max_step=SYNC_PERIOD)

    # -- what the kubelet handed out -----------------------------------------------------------------------------

    def _holders(self) -> dict[str, tuple[str, str]] | None:
        """Core ID -> (namespace, pod) from PodResources; None when it is unavailable."""
        if self.pod_resources is None or not self.pod_resources.available:
            return None
        owners = self.pod_resources.owners().get(NEURON_CORE, {})
        return {dev: (ref.namespace, ref.pod) for dev, ref in owners.items()}

    def allocated(self) -> BoolArray:
        """Cores handed out (PodResources) plus the planned cores of stage pods bound here and not admitted yet
        (or, without PodResources, of every stage pod here): none of them is free for anyone else."""
        topo = self.node.topology
        mask = np.zeros(topo.n_cores, dtype=np.bool_)
        holders = self._owners
        mask[[topo.index_of[c] for c in holders if c in topo.index_of]] = True
        admitted = set(holders.values())
        for key, ref in self.pods.pods.items():
            if key not in admitted and not ref.terminating:
                ids = ref.cores_held or ref.planned_cores
                mask[[topo.index_of[c] for c in ids if c in topo.index_of]] = True
        return mask

    def stages(self) -> Sequence[LocalStage]:
        """The stages running here (StageSource for the remapper)."""
        topo = self.node.topology
        by_pod: dict[tuple[str, str], list[str]] = {}
        for dev, who in self._owners.items():
            by_pod.setdefault(who, []).append(dev)
        jobs: dict[tuple[str, str], dict[int, StageRef]] = {}
        for ref in self.pods.pods.values():
            if not ref.terminating:
                jobs.setdefault(ref.job_key, {})[ref.index] = ref
        out = []
        for (ns, job), stages in jobs.items():
            n = max(r.stages for r in stages.values())
            # A stage on another node is not watched here: it only shapes the chain (its rates stay unknown).
            demands = tuple(demand_of(stages[i]) if i in stages else StageDemand(1) for i in range(n))
            for ref in stages.values():
                admitted = tuple(sorted(by_pod.get((ns, ref.pod), ()))) or tuple(sorted(ref.planned_cores))
                if not admitted:
                    continue
                rec = self.ledger.current(ns, ref.pod, ref.uid)
                ids = rec.cores if rec is not None else admitted
                cores = np.array(sorted(topo.index_of[c] for c in ids if c in topo.index_of), dtype=np.int64)
                out.append(
                    LocalStage(
                        ns, ref.pod, ref.uid, job, ref.index, demands, admitted, cores, ref.live_remap, ref.last_move
                    )
                )
        return out

    def stage_view(self) -> dict[str, Any]:
        """``GET /api/v1/stages`` of this node's daemon."""
        return stages_body(self.node.topology, self.stages(), self.ledger)

    # -- loops ---------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        holders = None
        if self.pod_resources is not None:
            await self.pod_resources.refresh()
            holders = self._holders()
        kept = self.ledger.recover(holders)
        self.node.withhold(self.ledger.lent())
        log.info("placement_agent_started", node=self.node_name, remaps_recovered=len(kept))
        if self.reallocator_factory is not None:
            self.reallocator = self.reallocator_factory(self)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.pods.run(), name="node-pods")
            tg.create_task(self.sync_forever(), name="node-summary")
            if self.reallocator is not None:
                tg.create_task(self.reallocator.run(), name="node-reallocator")

    async def sync_forever(self) -> None:
        """Sync every second, and at once when a pod bound here changes."""
        while True:
            await self.sync_once()
            try:
                async with asyncio.timeout(SYNC_PERIOD):
                    await self.pods.changed.wait()
            except TimeoutError:
                pass
            self.pods.changed.clear()

    async def sync_once(self) -> None:
        """Refresh admissions, plan hints, forgotten remaps, and publish the summary if it is due."""
        plans = self._plans()
        if self.pod_resources is not None:
            # An admission may be waiting for these plans (CoreAllocator.settle): hand them over before asking the
            # kubelet, which answers PodResources late while it is busy admitting. Known admissions are kept.
            self.hints.set_plans(plans)
            await self.pod_resources.refresh()
        holders = self._holders()
        self._owners = holders or {}
        self.hints.set_plans(plans, admitted=set(self._owners.values()))
        if holders is not None:  # a remapped pod that no longer holds its cores has ended: its lent cores come back
            for (ns, pod), rec in list(self.ledger.records.items()):
                if not all(self._owners.get(c) == (ns, pod) for c in rec.admitted):
                    self.ledger.forget(ns, pod)
                    self.node.withhold(self.ledger.lent())
        await self.publish_if_due()

    def _plans(self) -> list[PlannedPod]:
        """The plans of the live pods bound here that carry one, as global core indices."""
        topo = self.node.topology
        plans = []
        for (ns, name), ref in self.pods.pods.items():
            if ref.planned_cores and not ref.terminating:
                idx = np.array(
                    sorted(topo.index_of[c] for c in ref.planned_cores if c in topo.index_of), dtype=np.int64
                )
                plans.append(PlannedPod(ns, name, ref.created, idx))
        return plans

    async def publish_if_due(self) -> None:
        """Patch the Node's summary annotation if :func:`~snnrm.core.summary.should_publish` says so."""
        summary = self.summary()
        settling = (
            self._first is not None and not self._settled and summary.time - self._first >= self.policy.settle_after
        )
        if not settling and not should_publish(self.published, summary, self.policy):
            return
        try:
            await self.api.merge_patch(
                NODES, self.node_name, {"metadata": {"annotations": {ANNOTATION: summary.encode()}}}
            )
        except KubeError as e:
            log.warning("node_summary_publish_failed", node=self.node_name, error=str(e))
            return
        self.published = summary
        self.publications += 1
        if self._first is None:
            self._first = summary.time
        elif settling:
            self._settled = True

    def summary(self) -> NodeSummary:
        """The node's summary now, chip loads smoothed (each call folds the current readings in)."""
        m = self.node.monitor
        healthy = self.node.core_healthy()
        withheld = self.node.withheld if self.node.withheld is not None else np.zeros_like(healthy)
        raw = summarize(
            self.node.topology,
            now=self.clock(),
            free=~self.allocated() & ~withheld,
            healthy=healthy,
            queue_fill=m.queue_fill,
            link_utilization=np.where(m.link_failed, 1.0, m.link_utilization),
            chip_headroom_keps=self.node.chip_headroom_keps(),
            inter_chip_weight=self.inter_chip_weight,
        )
        return self._loads.smooth(raw)
