"""The controller's picture of the cluster: node summaries, stage pods and core reservations, in one place.

The scheduler extender, the gang planner and the reallocation controller all read this one index, which the
cluster shell (:mod:`snnrm.cluster.cache`) keeps current from Node and Pod watches. It is pure and
single-threaded (the event loop owns it), and it keeps per-node numbers in flat numpy arrays indexed by a slot
per node, so that scoring thousands of nodes is a handful of vector operations.

Reservations are core-level: a stage planned on a node holds exactly the cores the plan chose. A node's
available cores are its summary's free bitmap minus every reserved core, so a reservation that the node has
already started using (its summary no longer shows those cores free) is never counted twice. A reservation
expires ``ttl`` seconds after it is made unless the binding of its pod is observed (then it is *committed* and
lasts as long as the pod), and is released when the pod goes away.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from snnrm.core.jobs import StageRef
from snnrm.core.placement import PlacementView
from snnrm.core.summary import NodeSummary
from snnrm.core.topology import BoolArray, FloatArray, IntArray, Topology

INTER_NODE_HOPS = 1000.0
"""Hop-equivalents of one spike crossing between nodes: a host network round of ~5-10 us against ~5 ns per
router hop. Large enough that the planner splits a pipeline over nodes only when no node can hold it."""


@dataclass(frozen=True, slots=True, order=True)
class StageKey:
    """One stage of one job."""

    namespace: str
    job: str
    stage: int

    @property
    def job_key(self) -> tuple[str, str]:
        return (self.namespace, self.job)


@dataclass(slots=True, eq=False)
class Reservation:
    """Cores held for one stage on one node."""

    key: StageKey
    node: str
    cores: IntArray
    expires_at: float
    plan_id: str = ""
    pod_uid: str = ""
    committed: bool = False
    """The pod's binding was observed: the reservation lasts as long as the pod."""
    replaces: str = ""
    """UID of the pod this reservation's stage is moving away from (an eviction's target): that pod never
    commits it, only its replacement does."""


@dataclass(slots=True, eq=False)
class _Node:
    name: str
    slot: int
    summary: NodeSummary
    topology: Topology
    reserved: BoolArray


@dataclass(slots=True, eq=False)
class ClusterIndex:
    """Summaries by node, stage pods by job, reservations by stage; see the module docstring."""

    stale_after: float = 900.0
    """Seconds after which a node's summary no longer counts (three missed heartbeats of the publisher)."""
    _nodes: dict[str, _Node] = field(default_factory=dict)
    _free_slots: list[int] = field(default_factory=list)
    _names: list[str | None] = field(default_factory=list)
    _topologies: dict[tuple[int, int, int, int, int, float, float], Topology] = field(default_factory=dict)
    # Per slot (grown in chunks): available cores (free minus reserved), all cores, mean fill, max link, time.
    avail: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    total: IntArray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fill: FloatArray = field(default_factory=lambda: np.zeros(0))
    link: FloatArray = field(default_factory=lambda: np.zeros(0))
    published: FloatArray = field(default_factory=lambda: np.zeros(0))
    known: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    reservations: dict[StageKey, Reservation] = field(default_factory=dict)
    _pods: dict[tuple[str, str], dict[str, StageRef]] = field(default_factory=dict)
    generation: int = 0
    """Grows on every change (planners use it to skip work when nothing moved)."""

    # -- nodes --------------------------------------------------------------------------------------------------

    def _grow(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        slot = len(self._names)
        self._names.append(None)
        if slot >= len(self.avail):
            size = max(64, 2 * len(self.avail))
            for name in ("avail", "total", "fill", "link", "published", "known"):
                old = getattr(self, name)
                new = np.zeros(size, dtype=old.dtype)
                new[: len(old)] = old
                setattr(self, name, new)
        return slot

    def set_summary(self, name: str, summary: NodeSummary) -> None:
        """Record a node's newest summary (a changed geometry resets its reservations' mask)."""
        topo = self._topologies.get(summary.geometry_key)
        if topo is None:
            topo = self._topologies[summary.geometry_key] = summary.topology()
        node = self._nodes.get(name)
        if node is None:
            slot = self._grow()
            node = _Node(name, slot, summary, topo, np.zeros(topo.n_cores, dtype=np.bool_))
            self._nodes[name] = node
            self._names[slot] = name
        else:
            node.summary, node.topology = summary, topo
            if len(node.reserved) != topo.n_cores:
                node.reserved = np.zeros(topo.n_cores, dtype=np.bool_)
        self._rebuild_reserved(node)
        s = node.slot
        self.total[s] = topo.n_cores
        self.fill[s] = float(summary.chip_fill.mean()) if summary.chips else 1.0
        self.link[s] = float(summary.chip_link.max()) if summary.chips else 1.0
        self.published[s] = summary.time
        self.known[s] = True
        self.generation += 1

    def drop_node(self, name: str) -> None:
        node = self._nodes.pop(name, None)
        if node is None:
            return
        self.known[node.slot] = False
        self.avail[node.slot] = 0
        self._names[node.slot] = None
        self._free_slots.append(node.slot)
        self.generation += 1

    def node_names(self) -> list[str]:
        return sorted(self._nodes)

    def slot_of(self, name: str) -> int:
        """The node's slot, -1 when it has no summary."""
        node = self._nodes.get(name)
        return -1 if node is None else node.slot

    def summary(self, name: str) -> NodeSummary | None:
        node = self._nodes.get(name)
        return None if node is None else node.summary

    def topology(self, name: str) -> Topology | None:
        node = self._nodes.get(name)
        return None if node is None else node.topology

    def fresh(self, name: str, now: float) -> bool:
        node = self._nodes.get(name)
        return node is not None and now - node.summary.time <= self.stale_after

    # -- reservations ---------------------------------------------------------------------------------------------

    def _rebuild_reserved(self, node: _Node) -> None:
        mask = np.zeros(node.topology.n_cores, dtype=np.bool_)
        for r in self.reservations.values():
            if r.node == node.name:
                ok = r.cores[(r.cores >= 0) & (r.cores < len(mask))]
                mask[ok] = True
        node.reserved = mask
        self.avail[node.slot] = int(np.count_nonzero(node.summary.free & ~mask))

    def reserve(self, r: Reservation) -> None:
        """Hold ``r.cores`` on ``r.node`` for ``r.key`` (replacing any earlier reservation of that stage)."""
        old = self.reservations.get(r.key)
        self.reservations[r.key] = r
        for name in {r.node} | ({old.node} if old is not None else set()):
            node = self._nodes.get(name)
            if node is not None:
                self._rebuild_reserved(node)
        self.generation += 1

    def release(self, key: StageKey) -> Reservation | None:
        r = self.reservations.pop(key, None)
        if r is not None:
            node = self._nodes.get(r.node)
            if node is not None:
                self._rebuild_reserved(node)
            self.generation += 1
        return r

    def release_job(self, job: tuple[str, str]) -> list[Reservation]:
        return [r for k in [k for k in self.reservations if k.job_key == job] if (r := self.release(k)) is not None]

    def commit(self, key: StageKey, pod_uid: str) -> bool:
        """The stage's pod was seen bound to its reserved node: keep the cores for as long as the pod lives."""
        r = self.reservations.get(key)
        if r is None or r.committed:
            return False
        r.committed, r.pod_uid, r.expires_at = True, pod_uid, float("inf")
        return True

    def expire(self, now: float) -> list[Reservation]:
        """Release every uncommitted reservation past its TTL; returns them."""
        due = [k for k, r in self.reservations.items() if not r.committed and r.expires_at <= now]
        return [r for k in due if (r := self.release(k)) is not None]

    def reserved_mask(self, name: str, *, exclude: Iterable[StageKey] = ()) -> BoolArray | None:
        node = self._nodes.get(name)
        if node is None:
            return None
        ex = set(exclude)
        if not ex or not any(self.reservations.get(k) is not None and self.reservations[k].node == name for k in ex):
            return node.reserved
        mask = np.zeros(node.topology.n_cores, dtype=np.bool_)
        for r in self.reservations.values():
            if r.node == name and r.key not in ex:
                mask[r.cores[(r.cores >= 0) & (r.cores < len(mask))]] = True
        return mask

    def view(self, name: str, *, exclude: Iterable[StageKey] = ()) -> PlacementView | None:
        """The node as placement sees it: free cores minus every reservation except ``exclude``'s."""
        node = self._nodes.get(name)
        if node is None:
            return None
        return node.summary.view(node.topology, self.reserved_mask(name, exclude=exclude))

    def available(self, name: str, *, exclude: Iterable[StageKey] = (), avoid: BoolArray | None = None) -> int:
        """Free cores on the node, minus every reservation except ``exclude``'s and minus ``avoid``."""
        node = self._nodes.get(name)
        if node is None:
            return 0
        mask = self.reserved_mask(name, exclude=exclude)
        if mask is None:
            return 0
        if avoid is not None:
            mask = mask | avoid
        return int(np.count_nonzero(node.summary.free & ~mask))

    # -- stage pods ---------------------------------------------------------------------------------------------

    def set_pod(self, ref: StageRef) -> None:
        per = self._pods.setdefault(ref.job_key, {})
        per[ref.pod] = ref
        self.generation += 1

    def drop_pod(self, namespace: str, job: str, pod: str) -> StageRef | None:
        per = self._pods.get((namespace, job))
        if per is None:
            return None
        ref = per.pop(pod, None)
        if not per:
            del self._pods[(namespace, job)]
        self.generation += 1
        return ref

    def jobs(self) -> Iterator[tuple[tuple[str, str], dict[str, StageRef]]]:
        yield from self._pods.items()

    def pods_of(self, job: tuple[str, str]) -> dict[str, StageRef]:
        return self._pods.get(job, {})

    def stages_of(self, job: tuple[str, str]) -> dict[int, StageRef]:
        """The live pod of each stage index (terminating pods only when no live one exists; newest wins)."""
        out: dict[int, StageRef] = {}
        for ref in sorted(self._pods.get(job, {}).values(), key=lambda r: (not r.terminating, r.created, r.pod)):
            out[ref.index] = ref
        return out

    def node_of_stage(self, key: StageKey) -> str | None:
        """Where a stage runs or will run: its pod's node, else its reservation's."""
        ref = self.stages_of(key.job_key).get(key.stage)
        if ref is not None and ref.node:
            return ref.node
        r = self.reservations.get(key)
        if r is not None:
            return r.node
        return ref.planned_node if ref is not None else None
