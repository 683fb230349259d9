"""Gang planning: the whole job at once, across nodes and cores, before any stage binds.

A scheduler extender sees one pod at a time and cannot hold the rest of a job back, so a pipeline could end up
with stage 0 placed and stage 1 unplaceable, holding cores for nothing. The planner instead places every stage
still to be placed in one decision, against the controller's :class:`~snnrm.core.cluster.ClusterIndex`
(summaries minus reservations), and either returns a complete plan or nothing:

1. one node for all of them, if any fresh node has the room: the few best-ranked nodes (those already running
   a neighbouring stage first, then the emptiest) are planned at core level with
   :func:`~snnrm.core.placement.plan_job` and the cheapest wins, inter-node edges costed at
   :data:`~snnrm.core.cluster.INTER_NODE_HOPS` per spike;
2. otherwise a split: stages in pipeline order stay on the node of their predecessor while it has room, else go
   to the node of an already placed successor, else to the fresh node with the most room; each node's share is
   then planned at core level. Any share that does not fit fails the whole plan.

Stages already running (bound pods) stay where they are; when their cores are known they are must-include
cores of their node's share, so the new stages are laid out next to them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from snnrm.core.cluster import INTER_NODE_HOPS, ClusterIndex, StageKey
from snnrm.core.placement import JobPlan, StageDemand, plan_job
from snnrm.core.topology import BoolArray, IntArray

MAX_NODES_PLANNED = 8
"""Nodes planned at core level per single-node attempt; ranking by neighbours and room makes the ninth best
node very unlikely to win, and each core-level plan costs a few milliseconds at 16k cores."""


@dataclass(frozen=True, slots=True, eq=False)
class StagePlacement:
    stage: int
    node: str
    cores: IntArray
    """Global core indices on ``node`` (ascending)."""


@dataclass(frozen=True, slots=True, eq=False)
class GangPlan:
    """Where every stage that was to be placed goes, and what the whole job then costs."""

    job: tuple[str, str]
    stages: dict[int, StagePlacement]
    cost: float
    nodes: tuple[str, ...]
    """The nodes used, in stage order of first use."""


@dataclass(frozen=True, slots=True, eq=False)
class Placed:
    """A stage that already runs: its node, and its cores there when the node reported them."""

    node: str
    cores: IntArray | None = None


def _edge_weight(demands: Sequence[StageDemand], i: int) -> float:
    return max(demands[i].out_keps, 1e-3)


def _plan_share(
    index: ClusterIndex,
    job: tuple[str, str],
    node: str,
    demands: Sequence[StageDemand],
    members: Sequence[int],
    fixed: Mapping[int, IntArray],
    avoid: BoolArray | None = None,
) -> JobPlan | None:
    """Core-level plan of the stages ``members`` (ascending) on one node, never on ``avoid``'s cores; edges only
    between consecutive ones."""
    sub = []
    for k, i in enumerate(members):
        nxt = members[k + 1] if k + 1 < len(members) else None
        d = demands[i]
        sub.append(StageDemand(d.cores, out_keps=d.out_keps if nxt == i + 1 else 0.0, in_keps=d.in_keps))
    own = [StageKey(job[0], job[1], i) for i in range(len(demands))]
    view = index.view(node, exclude=own)
    if view is None:
        return None
    if avoid is not None:
        view = replace(view, free=view.free & ~avoid)
    local_fixed = {k: fixed[i] for k, i in enumerate(members) if i in fixed}
    return plan_job(view, sub, fixed=local_fixed)


def _cross_cost(demands: Sequence[StageDemand], node_of: Mapping[int, str]) -> float:
    return sum(
        _edge_weight(demands, i) * INTER_NODE_HOPS
        for i in range(len(demands) - 1)
        if i in node_of and i + 1 in node_of and node_of[i] != node_of[i + 1]
    )


def _assemble(
    index: ClusterIndex,
    job: tuple[str, str],
    demands: Sequence[StageDemand],
    placed: Mapping[int, Placed],
    assign: Mapping[int, str],
    avoid: Mapping[str, BoolArray],
) -> GangPlan | None:
    """Plan each node's share of ``assign`` (todo stage -> node) at core level; None if any share fails."""
    node_of = {i: p.node for i, p in placed.items()} | dict(assign)
    out: dict[int, StagePlacement] = {}
    cost = _cross_cost(demands, node_of)
    for node in sorted(set(assign.values())):
        fixed = {i: p.cores for i, p in placed.items() if p.node == node and p.cores is not None and len(p.cores)}
        members = sorted({i for i, n in assign.items() if n == node} | set(fixed))
        plan = _plan_share(index, job, node, demands, members, fixed, avoid.get(node))
        if plan is None:
            return None
        cost += plan.total_cost
        for k, i in enumerate(members):
            if i in assign:
                out[i] = StagePlacement(i, node, plan.stages[k])
    order: list[str] = []
    for i in sorted(node_of):
        if node_of[i] not in order:
            order.append(node_of[i])
    return GangPlan(job=job, stages=out, cost=cost, nodes=tuple(order))


def plan_gang(
    index: ClusterIndex,
    job: tuple[str, str],
    demands: Sequence[StageDemand],
    placed: Mapping[int, Placed],
    *,
    now: float,
    exclude_nodes: Collection[str] = (),
    skip: Collection[int] = (),
    max_nodes: int = MAX_NODES_PLANNED,
    avoid: Mapping[str, BoolArray] | None = None,
) -> GangPlan | None:
    """Place every stage of ``job`` neither in ``placed`` nor in ``skip`` (see the module docstring); None when
    they cannot all fit. ``skip`` are stages someone else places (pods created without our gate). ``avoid``: per
    node, cores no stage may be placed on although the node's summary shows them free (a hot region around a
    saturated stage: the summary's per-chip means do not show it)."""
    avoid = avoid or {}
    todo = [i for i in range(len(demands)) if i not in placed and i not in skip]
    if not todo:
        return GangPlan(job=job, stages={}, cost=0.0, nodes=())
    own = [StageKey(job[0], job[1], i) for i in range(len(demands))]
    nodes = [n for n in index.node_names() if n not in exclude_nodes and index.fresh(n, now)]
    room = {n: index.available(n, exclude=own, avoid=avoid.get(n)) for n in nodes}
    need = sum(demands[i].cores for i in todo)

    # 1. One node for everything still to place.
    def affinity(node: str) -> float:
        return sum(
            _edge_weight(demands, min(i, j))
            for i in todo
            for j in (i - 1, i + 1)
            if j in placed and placed[j].node == node
        )

    single = sorted((n for n in nodes if room[n] >= need), key=lambda n: (-affinity(n), -room[n], n))
    best: GangPlan | None = None
    for node in single[:max_nodes]:
        plan = _assemble(index, job, demands, placed, dict.fromkeys(todo, node), avoid)
        if plan is not None and (best is None or plan.cost < best.cost):
            best = plan
    if best is not None:
        return best

    # 2. A split, greedily in pipeline order.
    left = dict(room)
    assign: dict[int, str] = {}
    for i in todo:
        d = demands[i].cores
        prev = assign.get(i - 1) or (placed[i - 1].node if i - 1 in placed else None)
        succ = placed[i + 1].node if i + 1 in placed else None
        choice = next((n for n in (prev, succ) if n is not None and left.get(n, 0) >= d), None)
        if choice is None:
            fits = [n for n in nodes if left[n] >= d]
            if not fits:
                return None
            choice = min(fits, key=lambda n: (-left[n], n))
        assign[i] = choice
        left[choice] -= d
    return _assemble(index, job, demands, placed, assign, avoid)


def ids_of(index: ClusterIndex, placement: StagePlacement) -> list[str]:
    """Device IDs of a planned stage's cores."""
    topo = index.topology(placement.node)
    if topo is None:
        return []
    return [topo.ids[i] for i in np.asarray(placement.cores).tolist()]
