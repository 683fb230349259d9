"""The placement controller: one cluster cache, and (while it leads) the gang planner and the reallocator.

Every replica keeps the cache (Node summaries, stage pods, reservations rebuilt from the pods' plan annotations)
and can answer the scheduler extender from it; only the Lease holder plans and moves stages, so there is one
actor. The HTTP side (extender verbs, probes, metrics) is wired by :mod:`snnrm.controller_app`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from snnrm.cluster.cache import ClusterCache
from snnrm.cluster.events import EventRecorder
from snnrm.cluster.leader import LeaderElector
from snnrm.cluster.native import NativeGang, detect
from snnrm.cluster.planner import GangPlanner
from snnrm.core.cluster import ClusterIndex
from snnrm.core.requeue import REQUESTED_AT, Turned, TurnedAway
from snnrm.kube.api import PODS, ClusterApi, KubeError

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    """How the placement controller behaves; the CLI maps ``snnrm controller`` flags onto this."""

    namespace: str = "default"
    """Namespace of the leader-election Lease (the chart uses its release namespace)."""
    identity: str = field(default_factory=socket.gethostname)
    """This replica's name in the Lease and in Events (the pod name in a cluster)."""
    reservation_ttl: float = 120.0
    """Seconds a plan's cores stay reserved before its pod binds."""
    summary_stale_after: float = 900.0
    """Seconds after which a node's summary no longer counts (three publisher heartbeats of 300 s)."""
    dry_run: bool = False
    """Plan and decide, record Events, but reserve, patch and evict nothing."""
    lease_name: str = "snnrm-placement-controller"
    lease_duration: float = 15.0
    """Seconds a leader holds the Lease without renewing (client-go's default)."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it stops leading (two thirds of the duration)."""
    retry_period: float = 2.0
    native_gang: bool = True
    """Detect the native gang API (scheduling.k8s.io PodGroup) and create a group per job where it is served."""


@dataclass(eq=False)
class PlacementController:
    api: ClusterApi
    settings: ControllerSettings = field(default_factory=ControllerSettings)
    clock: Callable[[], float] = time.time
    extra_leader_work: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    """More root tasks to run while leading (the reallocation controller)."""
    index: ClusterIndex = field(init=False)
    cache: ClusterCache = field(init=False)
    recorder: EventRecorder = field(init=False)
    planner: GangPlanner = field(init=False)
    elector: LeaderElector = field(init=False)
    native: NativeGang | None = field(init=False, default=None)
    turned_away: TurnedAway = field(init=False)
    """Pods this replica's extender turned away for lack of cores (:mod:`snnrm.core.requeue`)."""
    _requeue: asyncio.Queue[Turned] = field(init=False)
    requeued: int = 0

    def __post_init__(self) -> None:
        s = self.settings
        self.index = ClusterIndex(stale_after=s.summary_stale_after)
        self.cache = ClusterCache(self.api, self.index, reservation_ttl=s.reservation_ttl, clock=self.clock)
        self.turned_away = TurnedAway()
        self._requeue = asyncio.Queue()
        self.cache.on_summary = self._summary_changed
        self.recorder = EventRecorder(self.api, instance=s.identity)
        self.planner = GangPlanner(
            self.api, self.cache, self.recorder, reservation_ttl=s.reservation_ttl, dry_run=s.dry_run, clock=self.clock
        )
        self.elector = LeaderElector(
            self.api,
            namespace=s.namespace,
            identity=s.identity,
            name=s.lease_name,
            lease_duration=s.lease_duration,
            renew_deadline=s.renew_deadline,
            retry_period=s.retry_period,
        )

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.cache.run(), name="cluster-cache")
            tg.create_task(self.elector.run(self._lead), name="leader-election")
            tg.create_task(self._hand_back(), name="requeue")

    def _summary_changed(self, node: str) -> None:
        for t in self.turned_away.due(node, self.index.available(node), self.clock()):
            self._requeue.put_nowait(t)

    async def _hand_back(self) -> None:
        """Touch each pod a newer summary has room for, so the scheduler asks the extender again at once instead
        of after its 5 min flush (every replica hands back the pods its own extender turned away)."""
        while True:
            t = await self._requeue.get()
            if self.settings.dry_run:
                log.info("pod_would_be_requeued", namespace=t.namespace, pod=t.name)
                continue
            meta: dict[str, Any] = {"annotations": {REQUESTED_AT: f"{self.clock():.3f}"}}
            if t.uid:
                meta["uid"] = t.uid  # a precondition: never touch a newer pod of the same name
            try:
                await self.api.merge_patch(PODS, t.name, {"metadata": meta}, namespace=t.namespace)
            except KubeError as e:  # gone, replaced or already bound: nothing to hand back
                log.info("pod_requeue_skipped", namespace=t.namespace, pod=t.name, error=str(e))
                continue
            self.requeued += 1
            log.info("pod_requeued", namespace=t.namespace, pod=t.name, cores=t.cores)

    async def _lead(self) -> None:
        if self.settings.native_gang:
            self.native = await detect(self.api)
            log.info(
                "gang_mechanism",
                native=None if self.native is None else f"scheduling.k8s.io/{self.native.version}",
                fallback_gate=True,
            )
        self.planner.native = self.native
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.planner.run(), name="gang-planner")
            for i, work in enumerate(self.extra_leader_work):
                tg.create_task(work(), name=f"leader-work-{i}")
