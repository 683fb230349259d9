"""Where the stages of a split SNN go: the cost model and the planner, as pure functions of arrays.

A split-learning job is a chain of stages (layer groups, one pod each); stage ``i`` sends ``out_keps`` kilo-spikes
per second to stage ``i + 1``. On a mesh of many-core chips a spike costs one router hop per mesh step, and a
chip-to-chip crossing costs ``inter_chip_weight`` hops (slower SerDes links; :data:`INTER_CHIP_WEIGHT` unless the
backend knows the machine's ratio). Traffic between two stages is
spread evenly over their cores (what XY routing with uniform fan-out gives, and what :mod:`sim_hw` simulates),
so the traffic cost of a placement is

    traffic = sum_i  out_keps_i * mean_{a in S_i, b in S_i+1} hops(a, b)          [KEPS x hops]

and two further terms keep headroom and concurrency:

* headroom: every spike entering or leaving a stage pays ``QUEUE_PENALTY_HOPS * queue_fill`` and
  ``LINK_PENALTY_HOPS * link_utilisation`` of the core it uses, averaged over the stage's cores; a full queue
  or a saturated router link costs as much as a few extra hops, without ruling the core out;
* asynchronous units: cores behind one router (a core group) share that router's bandwidth and run as one
  unit. A core whose router also serves another stage of the job pays ``SHARED_UNIT_PENALTY_HOPS`` per spike,
  so stages take separate units whenever there is room. (Chips are shared when that shortens routes: a pipeline
  cut over chips pays inter-chip hops on every spike, more than two stages lose by sharing a chip.)

Hop means are exact and cheap: hop distance is a sum of four absolute differences of small integers (mesh x,
mesh y, chip column, chip row), so the mean over all pairs of two sets follows from their coordinate histograms
in O(mesh width), and the mean distance from *every* core to a set from two cumulative sums.

The planner (:func:`plan_job`) builds several deterministic starting placements (count-based first-fit, the
baseline every classic device plugin uses; serpentine strips of several heights in two orientations, which lay a
chain of stages out as a chain of adjacent compact blocks; a chain grown stage by stage from its neighbours),
then improves the best of them by block-coordinate descent: with every other stage held still, a stage's cost is
*linear* in which cores it holds, so its best cores are exactly the ones of lowest marginal cost. Each step
therefore never raises the total, and the answer is never worse on :func:`plan_cost` than first-fit (which is
one of the starts). Ties go to the lowest core index, so the same input always gives the same answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from snnrm.core.allocation import QUEUE_PENALTY_HOPS, lowest_k, preferred_cores
from snnrm.core.topology import INTER_CHIP_WEIGHT as INTER_CHIP_WEIGHT  # re-exported: placement's callers use it
from snnrm.core.topology import BoolArray, FloatArray, IntArray, Topology

LINK_PENALTY_HOPS = 4.0
"""A core whose router's busiest outgoing link is saturated costs as much as one four hops further away."""
SHARED_UNIT_PENALTY_HOPS = 2.0
"""A core whose router also serves another stage of the job costs as much as two extra hops: the two stages
then share one router's bandwidth instead of running concurrently on separate units."""
MIN_KEPS = 1e-3
"""Rates are floored at this, so a job declaring no rates is still laid out compactly (ties are broken by
geometry rather than by core index alone)."""
DESCENT_PASSES = 6
"""Block-coordinate descent passes over the stages; each pass is exact per stage, and the cost stops falling
after two or three passes on every workload we measured."""
DESCENT_STARTS = 2
"""How many of the best starting placements are refined (more only helps on adversarial free-core patterns)."""


@dataclass(frozen=True, slots=True)
class StageDemand:
    """What one stage of a job needs and sends."""

    cores: int
    """Neuron cores the stage needs."""
    out_keps: float = 0.0
    """Kilo-spikes per second the stage sends to the next one (0 for the last stage)."""
    in_keps: float = 0.0
    """Kilo-events per second arriving from outside the job (the sensor stream into stage 0); only weights the
    stage's headroom term, since where it comes from is not on this mesh."""

    def __post_init__(self) -> None:
        if self.cores < 1:
            raise ValueError(f"a stage needs at least one core, got {self.cores}")
        if not (np.isfinite(self.out_keps) and np.isfinite(self.in_keps)) or self.out_keps < 0 or self.in_keps < 0:
            raise ValueError("stage rates must be finite and >= 0")


@dataclass(frozen=True, slots=True, eq=False)
class PlacementView:
    """What placement needs to know about one node now, as arrays indexed by global core index."""

    topology: Topology
    free: BoolArray
    """Cores that may be given out: healthy and held by nobody."""
    queue_fill: FloatArray
    """Event-queue depth / capacity, 0..1 (NaN counts as a full queue)."""
    link_util: FloatArray
    """Utilisation of the busiest link leaving each core's router, 0..1 (a failed link counts as 1)."""
    inter_chip_weight: float = INTER_CHIP_WEIGHT
    """Hops one chip-to-chip crossing counts for on this machine (its hop latency over an on-chip hop's, when
    the backend knows both)."""
    extra_penalty: FloatArray | None = None
    """Further hop-equivalents per core (the reallocator prices degraded cores with it)."""
    shared_unit_hops: float = SHARED_UNIT_PENALTY_HOPS
    """Hop-equivalents per spike for a core whose router serves another stage of the job (0: placement ignores
    asynchronous units; the experiments' ablation of that claim)."""

    def __post_init__(self) -> None:
        n = self.topology.n_cores
        for name in ("free", "queue_fill", "link_util"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"PlacementView.{name} must have shape ({n},)")

    @classmethod
    def idle(
        cls, topology: Topology, free: BoolArray | None = None, *, inter_chip_weight: float = INTER_CHIP_WEIGHT
    ) -> PlacementView:
        """A node with empty queues and idle links (planning before any telemetry, tests)."""
        n = topology.n_cores
        f = np.ones(n, dtype=np.bool_) if free is None else np.asarray(free, dtype=np.bool_)
        return cls(topology, f, np.zeros(n), np.zeros(n), inter_chip_weight)

    @classmethod
    def measured(
        cls,
        topology: Topology,
        *,
        free: BoolArray,
        queue_fill: FloatArray,
        link_utilization: FloatArray,
        link_failed: BoolArray | None = None,
        inter_chip_weight: float = INTER_CHIP_WEIGHT,
    ) -> PlacementView:
        """From per-link telemetry: each core gets the worst utilisation among the links leaving its router."""
        util = np.clip(np.nan_to_num(np.asarray(link_utilization, dtype=np.float64), nan=1.0), 0.0, 1.0)
        if link_failed is not None:
            util = np.where(np.asarray(link_failed, dtype=np.bool_), 1.0, util)
        per_router = np.zeros(topology.n_routers)
        if topology.n_links:
            np.maximum.at(per_router, topology.link_src, util)
        return cls(
            topology,
            np.asarray(free, dtype=np.bool_),
            np.asarray(queue_fill, dtype=np.float64),
            per_router[topology.router],
            inter_chip_weight,
        )

    def without(self, cores: IntArray) -> PlacementView:
        """The same view with ``cores`` no longer free (reserved for someone else)."""
        free = self.free.copy()
        free[np.asarray(cores, dtype=np.int64)] = False
        return replace(self, free=free)

    def core_penalty(self) -> FloatArray:
        """Headroom penalty of every core in hop-equivalents (see the module docstring)."""
        fill = np.clip(np.where(np.isnan(self.queue_fill), 1.0, self.queue_fill), 0.0, 1.0)
        link = np.clip(np.nan_to_num(self.link_util, nan=1.0), 0.0, 1.0)
        out: FloatArray = QUEUE_PENALTY_HOPS * fill + LINK_PENALTY_HOPS * link
        if self.extra_penalty is not None:
            out = out + np.nan_to_num(np.asarray(self.extra_penalty, dtype=np.float64), nan=0.0)
        return out


@dataclass(frozen=True, slots=True)
class CostBreakdown:
    """:func:`plan_cost` split into its terms (KEPS x hop-equivalents)."""

    traffic: float
    headroom: float
    shared_units: float
    mean_hops: tuple[float, ...]
    """Mean hops between each pair of consecutive stages (len = stages - 1)."""

    @property
    def total(self) -> float:
        return self.traffic + self.headroom + self.shared_units


@dataclass(frozen=True, slots=True, eq=False)
class JobPlan:
    """Cores per stage (global indices, ascending) and what they cost."""

    stages: tuple[IntArray, ...]
    cost: CostBreakdown
    start: str = ""
    """Which starting placement the refined answer came from (for logs and benchmarks)."""

    @property
    def total_cost(self) -> float:
        return self.cost.total

    def ids(self, topology: Topology) -> list[list[str]]:
        """Device IDs per stage."""
        return [[topology.ids[i] for i in s.tolist()] for s in self.stages]


# -- exact hop means from coordinate histograms ------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class _Coords:
    """The four integer coordinates whose absolute differences make up a hop distance, and their weights."""

    axes: tuple[IntArray, IntArray, IntArray, IntArray] = field(repr=False)
    weights: tuple[float, float, float, float]
    sizes: tuple[int, int, int, int]

    @classmethod
    def of(cls, t: Topology, inter_chip_weight: float = INTER_CHIP_WEIGHT) -> _Coords:
        cc = t.chip_pos[t.chip_of]
        axes = (t.gx, t.gy, np.ascontiguousarray(cc[:, 0]), np.ascontiguousarray(cc[:, 1]))
        w = inter_chip_weight - 1.0
        return cls(axes, (1.0, 1.0, w, w), tuple(int(a.max()) + 1 for a in axes))  # type: ignore[arg-type]


def _cdf(values: IntArray, size: int) -> FloatArray:
    h = np.bincount(values, minlength=size).astype(np.float64)
    out: FloatArray = np.cumsum(h) / max(len(values), 1)
    return out


def _mean_pair_hops(c: _Coords, a: IntArray, b: IntArray) -> float:
    """Mean hops over all pairs (x in a, y in b): sum over thresholds t of P(X <= t < Y) + P(Y <= t < X)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    total = 0.0
    for axis, w, size in zip(c.axes, c.weights, c.sizes, strict=True):
        if w == 0.0 or size < 2:
            continue
        fa, fb = _cdf(axis[a], size)[:-1], _cdf(axis[b], size)[:-1]
        total += w * float((fa * (1.0 - fb) + fb * (1.0 - fa)).sum())
    return total


def _hops_to_set(c: _Coords, s: IntArray) -> FloatArray:
    """Mean hops from every core to the cores of ``s``: g(v) = sum_{t<v} F(t) + sum_{t>=v} (1 - F(t))."""
    n = len(c.axes[0])
    out = np.zeros(n)
    if len(s) == 0:
        return out
    for axis, w, size in zip(c.axes, c.weights, c.sizes, strict=True):
        if w == 0.0 or size < 2:
            continue
        f = _cdf(axis[s], size)[:-1]
        below = np.concatenate(([0.0], np.cumsum(f)))  # sum_{t < v} F(t), v = 0..size-1
        above = np.concatenate((np.cumsum((1.0 - f)[::-1])[::-1], [0.0]))  # sum_{t >= v} (1 - F(t))
        out += w * (below + above)[axis]
    return out


# -- the cost function ---------------------------------------------------------------------------------------


def _rates(stages: Sequence[StageDemand]) -> tuple[FloatArray, FloatArray]:
    """(traffic weight of each edge i -> i+1, traffic touching each stage), floored at :data:`MIN_KEPS`."""
    out = np.array([max(s.out_keps, MIN_KEPS) for s in stages[:-1]], dtype=np.float64)
    load = np.array([max(s.in_keps, 0.0) for s in stages], dtype=np.float64)
    load[1:] += out
    load[:-1] += out
    return out, np.maximum(load, MIN_KEPS)


def _shared_router_mask(t: Topology, placement: Sequence[IntArray], i: int) -> BoolArray:
    """Routers that hold a core of some stage other than ``i``."""
    mask = np.zeros(t.n_routers, dtype=np.bool_)
    for j, s in enumerate(placement):
        if j != i and len(s):
            mask[t.router[s]] = True
    return mask


def plan_cost(view: PlacementView, stages: Sequence[StageDemand], placement: Sequence[IntArray]) -> CostBreakdown:
    """The cost of a placement (one core array per stage); see the module docstring for the terms."""
    if len(placement) != len(stages):
        raise ValueError(f"{len(stages)} stages but {len(placement)} core sets")
    t = view.topology
    coords = _Coords.of(t, view.inter_chip_weight)
    edge, load = _rates(stages)
    hops = tuple(_mean_pair_hops(coords, placement[i], placement[i + 1]) for i in range(len(stages) - 1))
    traffic = float(np.dot(edge, hops)) if hops else 0.0
    pen = view.core_penalty()
    headroom = shared = 0.0
    for i, s in enumerate(placement):
        if len(s) == 0:
            continue
        headroom += float(load[i]) * float(pen[s].mean())
        if t.geometry.cores_per_router > 1 and len(stages) > 1:
            others = _shared_router_mask(t, placement, i)
            shared += float(load[i]) * view.shared_unit_hops * float(others[t.router[s]].mean())
    return CostBreakdown(traffic=traffic, headroom=headroom, shared_units=shared, mean_hops=hops)


# -- starting placements --------------------------------------------------------------------------------------


def _normalise_fixed(
    n: int, stages: Sequence[StageDemand], fixed: Mapping[int, IntArray] | None
) -> tuple[list[StageDemand], list[IntArray]]:
    """Per stage, the distinct in-range cores it must keep (a core claimed twice goes to the first stage), and
    the stages grown to hold all of them (must-include wins over the declared size, as in the kubelet API)."""
    out: list[IntArray] = []
    grown: list[StageDemand] = []
    taken: set[int] = set()
    for i, s in enumerate(stages):
        raw = np.asarray((fixed or {}).get(i, ()), dtype=np.int64).ravel()
        raw = raw[(raw >= 0) & (raw < n)]
        keep: list[int] = []
        for c in raw.tolist():
            if c not in taken:
                keep.append(c)
                taken.add(c)
        out.append(np.array(sorted(keep), dtype=np.int64))
        grown.append(s if len(keep) <= s.cores else replace(s, cores=len(keep)))
    return grown, out


def _chunk(order: IntArray, fixed: list[IntArray], stages: Sequence[StageDemand]) -> list[IntArray]:
    """Give each stage its fixed cores plus the next cores of ``order`` (which holds no fixed core)."""
    out: list[IntArray] = []
    pos = 0
    for s, f in zip(stages, fixed, strict=True):
        need = s.cores - len(f)
        out.append(np.sort(np.concatenate([f, order[pos : pos + need]])))
        pos += need
    return out


def _first_fit(pool: IntArray, fixed: list[IntArray], stages: Sequence[StageDemand]) -> list[IntArray]:
    """Count-based first-fit: lowest free core indices, stage after stage (what a classic plugin gets)."""
    return _chunk(pool, fixed, stages)


def _serpentine_orders(t: Topology, pool: IntArray) -> list[tuple[str, IntArray]]:
    """Orders of the free cores that walk chips one after another and, inside a chip, strips of ``h`` rows
    (or columns), back and forth, so consecutive chunks are adjacent compact blocks."""
    g = t.geometry
    chip = t.chip_of[pool]
    cpos = t.chip_pos[chip]
    # Chips in a board serpentine: row by row, every other row reversed.
    board_cols = int(t.chip_pos[:, 0].max()) + 1
    chip_col = np.where(cpos[:, 1] % 2 == 0, cpos[:, 0], board_cols - 1 - cpos[:, 0])
    chip_rank = cpos[:, 1] * board_cols + chip_col
    lx = t.gx[pool] - cpos[:, 0] * g.cols
    ly = t.gy[pool] - cpos[:, 1] * g.rows
    slot = t.local[pool] % g.cores_per_router
    orders: list[tuple[str, IntArray]] = []
    for name, along, across, n_along, n_across in (("rows", lx, ly, g.cols, g.rows), ("cols", ly, lx, g.rows, g.cols)):
        for h in sorted({1, 2, 4, n_across} & set(range(1, n_across + 1))):
            strip = across // h
            a = np.where(strip % 2 == 0, along, n_along - 1 - along)
            b = across % h
            b = np.where(a % 2 == 0, b, h - 1 - b)
            key = ((chip_rank * (n_across // h + 1) + strip) * n_along + a) * (h + 1) + b
            key = key * g.cores_per_router + slot
            orders.append((f"serpentine-{name}-{h}", pool[np.argsort(key, kind="stable")]))
    return orders


def _grown_chain(
    view: PlacementView, coords: _Coords, pool: IntArray, fixed: list[IntArray], stages: Sequence[StageDemand]
) -> list[IntArray]:
    """Stage by stage, the free cores nearest the previous stage (the first stage in the emptiest window)."""
    t = view.topology
    pen = view.core_penalty()
    avail = np.zeros(t.n_cores, dtype=np.bool_)
    avail[pool] = True
    out: list[IntArray] = []
    for i, (s, f) in enumerate(zip(stages, fixed, strict=True)):
        need = s.cores - len(f)
        cands = np.flatnonzero(avail)
        if need <= 0 or len(cands) == 0:
            out.append(f)
            continue
        anchor = f if len(f) else (out[i - 1] if i else np.zeros(0, dtype=np.int64))
        if len(anchor):
            cost = _hops_to_set(coords, anchor)[cands] + QUEUE_PENALTY_HOPS * pen[cands] / 8.0
            picked = lowest_k(cost, cands, need)
        else:
            picked = preferred_cores(t, cands, np.zeros(0, dtype=np.int64), need, view.queue_fill, avail)
        avail[picked] = False
        out.append(np.sort(np.concatenate([f, picked])))
    return out


# -- refinement -----------------------------------------------------------------------------------------------


def _descend(
    view: PlacementView,
    coords: _Coords,
    stages: Sequence[StageDemand],
    placement: list[IntArray],
    fixed: list[IntArray],
    allowed: BoolArray,
) -> list[IntArray]:
    """Block-coordinate descent: re-choose each stage's free cores given the others; stop when nothing moves."""
    t = view.topology
    edge, load = _rates(stages)
    pen = view.core_penalty()
    share = t.geometry.cores_per_router > 1 and len(stages) > 1 and view.shared_unit_hops > 0
    cur = [p.copy() for p in placement]
    for _ in range(DESCENT_PASSES):
        moved = False
        for i, s in enumerate(stages):
            need = s.cores - len(fixed[i])
            if need <= 0:
                continue
            marginal = load[i] * pen
            if i > 0:
                marginal = marginal + edge[i - 1] * _hops_to_set(coords, cur[i - 1])
            if i + 1 < len(stages):
                marginal = marginal + edge[i] * _hops_to_set(coords, cur[i + 1])
            if share:
                shared = _shared_router_mask(t, cur, i)[t.router]
                marginal = marginal + load[i] * view.shared_unit_hops * shared
            mine = allowed.copy()
            for j, other in enumerate(cur):
                if j != i:
                    mine[other] = False
            mine[fixed[i]] = False
            cands = np.flatnonzero(mine)
            picked = np.sort(np.concatenate([fixed[i], lowest_k(marginal[cands], cands, need)]))
            # Only move when strictly better (ties keep the current cores, so the descent terminates).
            if not np.array_equal(picked, cur[i]) and marginal[picked].sum() < marginal[cur[i]].sum() - 1e-9:
                cur[i] = picked
                moved = True
        if not moved:
            break
    return cur


# -- the planner ----------------------------------------------------------------------------------------------


def plan_job(
    view: PlacementView,
    stages: Sequence[StageDemand],
    *,
    fixed: Mapping[int, IntArray] | None = None,
) -> JobPlan | None:
    """Cores for every stage of a job on one node, or None when the free cores cannot hold it.

    ``fixed[i]`` are cores stage ``i`` already holds and keeps (must-include: they need not be free, e.g. a
    running stage's own cores; a stage with more of them than it needs keeps them all); the rest of each stage
    comes from ``view.free``. Stages never share a core.
    """
    if not stages:
        return JobPlan(stages=(), cost=CostBreakdown(0.0, 0.0, 0.0, ()), start="empty")
    t = view.topology
    stages, fixed_ = _normalise_fixed(t.n_cores, stages, fixed)
    allowed = np.asarray(view.free, dtype=np.bool_).copy()
    for f in fixed_:
        allowed[f] = False
    pool = np.flatnonzero(allowed)
    need = sum(s.cores - len(f) for s, f in zip(stages, fixed_, strict=True))
    if need > len(pool):
        return None
    coords = _Coords.of(t, view.inter_chip_weight)
    starts: list[tuple[str, list[IntArray]]] = [("first-fit", _first_fit(pool, fixed_, stages))]
    starts += [(name, _chunk(order, fixed_, stages)) for name, order in _serpentine_orders(t, pool)]
    starts.append(("grown-chain", _grown_chain(view, coords, pool, fixed_, stages)))
    scored = sorted(
        ((plan_cost(view, stages, p).total, k, name, p) for k, (name, p) in enumerate(starts)),
        key=lambda x: (x[0], x[1]),
    )
    best: tuple[float, int, str, list[IntArray]] | None = None
    for cost0, k, name, p in scored[:DESCENT_STARTS]:
        refined = _descend(view, coords, stages, p, fixed_, allowed)
        cost = plan_cost(view, stages, refined).total
        if cost > cost0:  # descent is monotone per stage; guard against float drift anyway
            refined, cost = p, cost0
        if best is None or (cost, k) < (best[0], best[1]):
            best = (cost, k, name, refined)
    assert best is not None
    placement = tuple(np.asarray(p, dtype=np.int64) for p in best[3])
    return JobPlan(stages=placement, cost=plan_cost(view, stages, placement), start=best[2])


def first_fit_plan(
    view: PlacementView, stages: Sequence[StageDemand], *, fixed: Mapping[int, IntArray] | None = None
) -> JobPlan | None:
    """The count-based first-fit baseline on its own (benchmarks, tests)."""
    t = view.topology
    stages, fixed_ = _normalise_fixed(t.n_cores, stages, fixed)
    allowed = np.asarray(view.free, dtype=np.bool_).copy()
    for f in fixed_:
        allowed[f] = False
    pool = np.flatnonzero(allowed)
    if sum(s.cores - len(f) for s, f in zip(stages, fixed_, strict=True)) > len(pool):
        return None
    placement = tuple(_first_fit(pool, fixed_, stages))
    return JobPlan(stages=placement, cost=plan_cost(view, stages, placement), start="first-fit")


def replan_stage(
    view: PlacementView, stages: Sequence[StageDemand], placement: Sequence[IntArray], index: int, *, keep: IntArray
) -> JobPlan | None:
    """A new home for stage ``index`` with every other stage where it is: the reallocation question.

    ``keep`` are the stage's current cores it may stay on (its healthy ones); its degraded cores are simply not
    in ``keep`` and not free, so they are left. Returns None when no such home exists on this node.
    """
    if not 0 <= index < len(stages):
        raise ValueError(f"no stage {index} in a job of {len(stages)}")
    fixed = {j: np.asarray(p, dtype=np.int64) for j, p in enumerate(placement) if j != index}
    free = np.asarray(view.free, dtype=np.bool_).copy()
    free[np.asarray(keep, dtype=np.int64)] = True
    for p in fixed.values():
        free[p] = False
    return plan_job(replace(view, free=free), stages, fixed=fixed)


def follow_plan(
    topology: Topology,
    available: IntArray,
    must_include: IntArray,
    size: int,
    planned: IntArray,
    queue_fill: FloatArray,
    healthy: BoolArray,
) -> IntArray:
    """GetPreferredAllocation for a pod whose cores were planned: must-include first, then the planned cores
    that are still available and healthy, then the nearest others (the ordinary policy) for any shortfall.

    Returns ascending global indices, never more than ``size`` unless must-include alone is larger.
    """
    n = topology.n_cores
    avail = np.asarray(available, dtype=np.int64)
    avail = avail[(avail >= 0) & (avail < n)]
    ok = np.zeros(n, dtype=np.bool_)
    ok[avail] = True
    ok &= np.asarray(healthy, dtype=np.bool_)
    must = np.asarray(must_include, dtype=np.int64)
    must = np.unique(must[(must >= 0) & (must < n)])
    plan = np.asarray(planned, dtype=np.int64)
    plan = np.unique(plan[(plan >= 0) & (plan < n)])
    plan = plan[ok[plan] & ~np.isin(plan, must)]
    chosen = np.concatenate([must, plan[: max(size - len(must), 0)]])
    if len(chosen) >= size:
        return np.sort(chosen)
    return preferred_cores(topology, avail, chosen, size, queue_fill, healthy)
