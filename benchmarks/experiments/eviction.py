"""``snnrm-evict``: the cluster's eviction path, driven as it runs in a cluster, for stages that did not opt in to
live remap.

Every part that decides is the product's own, wired as in a deployment, around an in-memory apiserver
(:class:`snnrm.testing.fake_cluster.FakeClusterApi`, the project's one fake of it):

* the node: the daemon's :class:`~snnrm.cluster.node_agent.NodeAgent` (it watches the stage pods bound here,
  derives the stages and their admitted cores from their plans, and publishes the node's summary at its own
  cadence) and :class:`~snnrm.cluster.remap.NodeReallocator` with the agent as its stage source, reporting through
  :class:`~snnrm.cluster.node_agent.KubeStageReporter` onto the pods (``remap: not-opted-in`` and the stage's
  cost), on the :class:`~snnrm.node.NodeService` whose monitor the runner feeds;
* the cluster: :class:`~snnrm.cluster.cache.ClusterCache` watching Nodes and Pods, and
  :class:`~snnrm.cluster.reallocation.ReallocationController` (confirmation, budget,
  :func:`~snnrm.core.gang.plan_gang`, the reservation, the Eviction API) on its 1 s tick.

What the runner plays: the kubelet and the workload controller. Each pass it mirrors its running stages as pods
(a pod per stage, bound here, its plan = its admitted cores); an eviction the controller made becomes a
``reschedule`` move to the reserved cores (the pod restarts there: ``pod_restart`` plus the weight load, as the
planner or the extender would place the replacement on the reservation), and the new pod commits the reservation.
All product components share one clock: the simulator's, shifted to a wall-clock epoch (pod ages and summary
times are wall-clock in the API).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
from prometheus_client import CollectorRegistry

from benchmarks.experiments.policies import (
    NAMESPACE,
    Move,
    NoBackend,
    RecordedReallocator,
    RunningJob,
    StageRecorder,
    pod_name,
)
from snnrm.backends.base import HardwareBackend
from snnrm.cluster.cache import ClusterCache
from snnrm.cluster.events import EventRecorder
from snnrm.cluster.hints import PlanHints
from snnrm.cluster.node_agent import SYNC_PERIOD, KubeStageReporter, NodeAgent
from snnrm.cluster.reallocation import TICK_S, ReallocationController, ReallocationMetrics
from snnrm.cluster.remap import LocalStage, NodeReallocator, RemapLedger, inline
from snnrm.core.cluster import ClusterIndex, StageKey
from snnrm.core.devices import NEURON_CORE, ThroughputBlocks
from snnrm.core.jobs import INPUT_RATE, JOB, PLANNED_CORES, PLANNED_NODE, SPIKE_RATE, STAGE, STAGES, StageHealth
from snnrm.core.topology import Topology
from snnrm.kube.api import PODS
from snnrm.node import NodeService
from snnrm.testing.fake_cluster import FakeClusterApi

NODE = "sim-node"
EPOCH = 1_800_000_000.0
"""Wall-clock time of simulated second 0 (2027): pods' creationTimestamps and summaries' times are wall-clock."""
SETTLE_TURNS = 20
"""Loop turns that let the watches (node pods, cluster cache) take in what was just written."""


class _Reports:
    """The node's reports go to the pods (the product's reporter) and to the runner's recorder (its metrics)."""

    def __init__(self, kube: KubeStageReporter, recorder: StageRecorder) -> None:
        self._kube = kube
        self._recorder = recorder
        self.reasons: dict[tuple[str, int], tuple[str, ...]] = {}
        """(job, stage) -> the reasons of its last degraded report (what an eviction acted on)."""

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        if health.state == "degraded":
            self.reasons[(stage.job, stage.index)] = health.reasons
        await self._recorder.report(stage, health, cores=cores, moved_at=moved_at)
        await self._kube.report(stage, health, cores=cores, moved_at=moved_at)

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        await self._recorder.event(stage, reason=reason, note=note, warning=warning)
        await self._kube.event(stage, reason=reason, note=note, warning=warning)


@dataclass(eq=False)
class ClusterReallocator(RecordedReallocator):
    """See the module docstring. Same interface as :class:`~benchmarks.experiments.policies.DaemonReallocator`."""

    api: FakeClusterApi = field(init=False)
    agent: NodeAgent = field(init=False)
    controller: ReallocationController = field(init=False)
    _loop: asyncio.AbstractEventLoop = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _cache: ClusterCache = field(init=False)
    _tmp: str = field(init=False)
    _reports: _Reports = field(init=False)
    _pods: dict[tuple[str, int], str] = field(init=False, default_factory=dict)
    """(job, stage) -> uid of the pod mirrored for it."""
    _seen_evictions: int = 0
    _next_sync: float = 0.0
    _next_tick: float = 0.0

    def __post_init__(self) -> None:
        self._tmp = tempfile.mkdtemp(prefix="snnrm-exp-evict-")
        self._loop = asyncio.new_event_loop()
        self.api = FakeClusterApi()
        self.api.add_node(NODE)
        service = NodeService(cast(HardwareBackend, NoBackend()), self.topology, _blocks(self.topology), 0.1)
        service.monitor = self.monitor
        wall = self.wall
        recorder = EventRecorder(self.api, instance=f"snnrm-node/{NODE}", clock=wall)
        self.recorder = StageRecorder(self.clock)
        ledger = RemapLedger(Path(self._tmp), self.topology)
        self.agent = NodeAgent(
            self.api,
            NODE,
            service,
            ledger,
            PlanHints(clock=wall),
            None,
            recorder,
            inter_chip_weight=self.inter_chip_weight,
            clock=wall,
        )
        self._reports = _Reports(KubeStageReporter(self.api, recorder), self.recorder)
        self.realloc = NodeReallocator(
            node=service,
            source=self.agent,
            reporter=self._reports,
            ledger=ledger,
            allocated=self.agent.allocated,
            settings=self.settings,
            inter_chip_weight=self.inter_chip_weight,
            clock=wall,
            offload=inline,  # the runner drives the pass without a loop (deterministic per seed)
        )
        self._cache = ClusterCache(self.api, ClusterIndex(), clock=wall)
        self.controller = ReallocationController(
            self.api,
            self._cache,
            EventRecorder(self.api, instance="snnrm-controller", clock=wall),
            ReallocationMetrics(CollectorRegistry()),
            self.settings,
            clock=wall,
        )
        self._loop.run_until_complete(self._start())

    def wall(self) -> float:
        return EPOCH + self.clock()

    async def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.agent.pods.run(), name="node-pods"),
            asyncio.create_task(self._cache.run(), name="cluster-cache"),
        ]
        await _settle()

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
        self._loop.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def evaluations(self) -> int:
        return self.controller.evictions

    def forget(self, job: str, stage: int) -> None:
        """The stage's pod ended: the next pass deletes it from the apiserver."""

    def step(self, jobs: Mapping[str, RunningJob], booked: np.ndarray) -> list[Move]:
        """One node pass (and, on their cadences, the node agent's sync and the controller's tick); returns the
        evictions the controller made, as moves to the cores it reserved."""
        return self._loop.run_until_complete(self._step(jobs))

    async def _step(self, jobs: Mapping[str, RunningJob]) -> list[Move]:
        await self._mirror(jobs)
        now = self.clock()
        if now >= self._next_sync:
            self._next_sync = now + SYNC_PERIOD
            await self.agent.sync_once()
        await self.realloc.step()
        if now < self._next_tick:
            return []
        self._next_tick = now + TICK_S
        await _settle()
        await self.controller.reconcile()
        await _settle()
        moves = []
        for ns, pod, _ in self.api.evictions[self._seen_evictions :]:
            job, stage = _job_stage(pod)
            res = self._cache.index.reservations.get(StageKey(ns, job, stage))
            if res is None:
                continue
            reasons = self._reports.reasons.get((job, stage), ())
            moves.append(Move(job, stage, np.sort(res.cores), reasons, "reschedule", now))
            self._pods.pop((job, stage), None)
        self._seen_evictions = len(self.api.evictions)
        return moves

    async def _mirror(self, jobs: Mapping[str, RunningJob]) -> None:
        """Make the apiserver's stage pods those the runner runs: create new ones, delete ended ones."""
        want: dict[tuple[str, int], tuple[RunningJob, int]] = {}
        for job in jobs.values():
            for s in job.stages:
                if not (job.in_flight and s.last_move is not None and (job.name, s.index) not in self._pods):
                    want[(job.name, s.index)] = (job, s.index)
        changed = False
        for key in [k for k in self._pods if k not in want]:
            self.api.delete_obj(PODS, pod_name(*key), NAMESPACE)
            del self._pods[key]
            changed = True
        for key, (job, i) in want.items():
            s = job.stages[i]
            uid = f"{job.name}-{i}-{s.uid}"
            if self._pods.get(key) == uid:
                continue
            self.api.put(PODS, self._pod(job, i, uid))
            self._pods[key] = uid
            changed = True
        if changed:
            await _settle()

    def _pod(self, job: RunningJob, i: int, uid: str) -> dict[str, Any]:
        s = job.stages[i]
        d = job.demands[i]
        ids = [self.topology.ids[c] for c in np.sort(s.admitted).tolist()]
        created = datetime.fromtimestamp(EPOCH + s.created, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        limits = {NEURON_CORE: str(len(ids))}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name(job.name, i),
                "namespace": NAMESPACE,
                "uid": uid,
                "labels": {JOB: job.name, STAGE: str(i)},
                "annotations": {
                    STAGES: str(len(job.demands)),
                    SPIKE_RATE: f"{d.out_keps:.6g}",
                    INPUT_RATE: f"{d.in_keps:.6g}",
                    PLANNED_NODE: NODE,
                    PLANNED_CORES: ",".join(ids),
                },
                "creationTimestamp": created,
            },
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "snn", "image": "snn", "resources": {"limits": limits, "requests": limits}}],
            },
            "status": {"phase": "Running"},
        }


def _blocks(topology: Topology) -> ThroughputBlocks:
    return ThroughputBlocks.plan(topology, block_keps=1000.0)


def _job_stage(pod: str) -> tuple[str, int]:
    job, _, stage = pod.rpartition("-s")
    return job, int(stage)


async def _settle() -> None:
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)
