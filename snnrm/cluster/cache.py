"""Keeps the :class:`~snnrm.core.cluster.ClusterIndex` current from Node and stage-Pod watches (no fan-out).

Two informer loops (list, then watch from the list's resourceVersion; on a broken or expired watch, back off and
list again) feed the pure index:

* Nodes: the ``snnrm.io/summary`` annotation is decoded into the node's summary; a node without one, or with a
  garbled one (counted and logged, never trusted), is dropped from the index, and the extender then fails it
  with a reason;
* Pods labelled ``snnrm.io/job``: each becomes a :class:`~snnrm.core.jobs.StageRef`. A pod carrying a plan
  (``snnrm.io/planned-node`` + ``snnrm.io/planned-cores``) holds a reservation of those cores, so a restarted
  controller (or a second replica) rebuilds every reservation from the pods themselves; the reservation is
  committed when the pod is seen bound, and released when the pod is deleted or finishes.

:attr:`ClusterCache.changed` is pulsed on every change so the planner wakes without polling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from snnrm.core.cluster import ClusterIndex, Reservation, StageKey
from snnrm.core.jobs import JOB, ContractError, StageRef, stage_of
from snnrm.core.summary import ANNOTATION, NodeSummary, SummaryError
from snnrm.core.types import JSON
from snnrm.kube.api import NODES, PODS, ClusterApi, GoneError, KubeError, Resource

log = structlog.get_logger(__name__)

RELIST_BACKOFF_S = (0.2, 5.0)
"""First and largest pause before listing again after a failed list or watch."""
EXPIRE_EVERY_S = 1.0
"""How often uncommitted reservations are checked against their TTL."""


@dataclass(eq=False)
class ClusterCache:
    """Node summaries and stage pods from the apiserver into ``index``; see the module docstring."""

    api: ClusterApi
    index: ClusterIndex
    reservation_ttl: float = 120.0
    """Seconds a plan's reservation holds before its pod binds: the scheduler places an ungated pod within a
    second or two, so two minutes covers a slow scheduler queue without holding cores for dead plans long."""
    clock: Callable[[], float] = time.time
    """Wall clock (summaries carry the publisher's wall-clock time)."""
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once both initial lists are in."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    bad_summaries: int = 0
    contract_errors: dict[tuple[str, str], str] = field(default_factory=dict)
    """(namespace, pod) -> why the pod breaks the job contract (the planner reports it as an Event)."""
    on_summary: Callable[[str], None] | None = None
    """Called with a node's name after its summary changed in ``index``."""
    _nodes_synced: bool = False
    _pods_synced: bool = False
    _pod_jobs: dict[tuple[str, str], str] = field(default_factory=dict)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._inform(NODES, None, self._on_node, "nodes"), name="cache-nodes")
            tg.create_task(self._inform(PODS, JOB, self._on_pod, "pods"), name="cache-pods")
            tg.create_task(self._expire_forever(), name="cache-expiry")

    def _pulse(self) -> None:
        self.changed.set()

    # -- informers ----------------------------------------------------------------------------------------------

    async def _inform(
        self, res: Resource, label_selector: str | None, on: Callable[[str, JSON], None], what: str
    ) -> None:
        delay = RELIST_BACKOFF_S[0]
        while True:
            try:
                items, rv = await self.api.list(res, label_selector=label_selector)
                self._replace_all(res, items, on)
                if what == "nodes":
                    self._nodes_synced = True
                else:
                    self._pods_synced = True
                if self._nodes_synced and self._pods_synced:
                    self.synced.set()
                delay = RELIST_BACKOFF_S[0]
                async for kind, obj in self.api.watch(res, resource_version=rv, label_selector=label_selector):
                    if kind == "BOOKMARK":
                        continue
                    on(kind, obj)
                    self._pulse()
            except GoneError:
                log.info("watch_expired", resource=what)
            except KubeError as e:
                log.warning("watch_failed", resource=what, error=str(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RELIST_BACKOFF_S[1])

    def _replace_all(self, res: Resource, items: list[JSON], on: Callable[[str, JSON], None]) -> None:
        """A fresh list: apply every item, and drop what the index holds that the list no longer has."""
        if res == NODES:
            seen = {str((i.get("metadata") or {}).get("name")) for i in items}
            for name in self.index.node_names():
                if name not in seen:
                    self.index.drop_node(name)
        else:
            seen_pods = {
                (str((i.get("metadata") or {}).get("namespace")), str((i.get("metadata") or {}).get("name")))
                for i in items
            }
            for key in [k for k in self._pod_jobs if k not in seen_pods]:
                self._forget_pod(*key, uid=None)
        for obj in items:
            on("ADDED", obj)
        self._pulse()

    # -- nodes ----------------------------------------------------------------------------------------------------

    def _on_node(self, kind: str, node: JSON) -> None:
        meta = node.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            return
        raw = (meta.get("annotations") or {}).get(ANNOTATION)
        if kind == "DELETED" or raw is None:
            self.index.drop_node(name)
            return
        try:
            summary = NodeSummary.decode(str(raw))
        except SummaryError as e:
            self.bad_summaries += 1
            log.warning("node_summary_rejected", node=name, error=str(e), rejected=self.bad_summaries)
            self.index.drop_node(name)
            return
        self.index.set_summary(name, summary)
        if self.on_summary is not None:
            self.on_summary(name)

    # -- pods -----------------------------------------------------------------------------------------------------

    def _forget_pod(self, namespace: str, name: str, *, uid: str | None) -> None:
        job = self._pod_jobs.pop((namespace, name), None)
        self.contract_errors.pop((namespace, name), None)
        if job is None:
            return
        ref = self.index.drop_pod(namespace, job, name)
        if ref is None:
            return
        key = StageKey(namespace, job, ref.index)
        r = self.index.reservations.get(key)
        # Only the pod's own reservation goes with it; one made for its replacement (no pod yet) stays until
        # the replacement binds or the TTL ends it.
        if r is not None and r.pod_uid and r.pod_uid == (uid or ref.uid):
            self.index.release(key)

    def _on_pod(self, kind: str, pod: JSON) -> None:
        meta = pod.get("metadata") or {}
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        phase = (pod.get("status") or {}).get("phase")
        if kind == "DELETED" or phase in ("Succeeded", "Failed"):
            self._forget_pod(ns, name, uid=str(meta.get("uid") or ""))
            return
        try:
            ref = stage_of(pod)
        except ContractError as e:
            self.contract_errors[(ns, name)] = str(e)
            return
        if ref is None:
            return
        self.contract_errors.pop((ns, name), None)
        old_job = self._pod_jobs.get((ns, name))
        if old_job is not None and old_job != ref.job:
            self._forget_pod(ns, name, uid=None)
        self._pod_jobs[(ns, name)] = ref.job
        self.index.set_pod(ref)
        self._reconcile_reservation(ref)

    def _reconcile_reservation(self, ref: StageRef) -> None:
        """Make the index's reservation of this stage agree with the plan the pod carries."""
        key = StageKey(ref.namespace, ref.job, ref.index)
        r = self.index.reservations.get(key)
        if ref.terminating:
            return
        if r is None and ref.planned_node and ref.planned_cores:
            topo = self.index.topology(ref.planned_node)
            if topo is None:
                return
            idx = [topo.index_of[c] for c in ref.planned_cores if c in topo.index_of]
            r = Reservation(
                key,
                ref.planned_node,
                np.array(sorted(idx), dtype=np.int64),
                expires_at=self.clock() + self.reservation_ttl,
                pod_uid=ref.uid,
            )
            self.index.reserve(r)
            log.info("reservation_recovered", job=ref.job, stage=ref.index, node=ref.planned_node, cores=len(idx))
        bound_here = (
            r is not None
            and ref.node
            and ref.node == r.node
            and (r.pod_uid == ref.uid or (not r.pod_uid and ref.uid != r.replaces))
        )
        if bound_here and self.index.commit(key, ref.uid):
            log.info("reservation_committed", job=ref.job, stage=ref.index, node=ref.node, pod=ref.pod)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            for r in self.index.expire(self.clock()):
                log.warning("reservation_expired", job=r.key.job, stage=r.key.stage, node=r.node)
                self._pulse()
