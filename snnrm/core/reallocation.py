"""When to move a stage, and where: the pure decisions behind live remaps and evictions.

A stage's placement is *degraded* when, over its cores, a hard failure shows up, event queues saturate, spike
transfer efficiency falls, or a link on its routes congests. Acting on one bad sample would flap, so each
condition passes a hysteresis (:class:`StageWatch`): it must hold beyond its entry threshold for ``dwell``
seconds to become active, and stay beyond its (stricter) exit threshold for ``clear`` seconds to clear, the
same shape as Koordinator's anomaly detector and the HPA's stabilisation window.

An active degradation is a reason to look, not to move. :func:`evaluate_remap` asks the planner for a new home
on the same node with every other stage held still (:func:`~snnrm.core.placement.replan_stage`), prices the
current and the new placement with the same cost model in a view where degraded cores cost the most (a full
queue and a saturated link), and recommends a move only when

    cost_after + migration_cost < (1 - margin) * cost_before,     migration_cost = hops * stage traffic

or when cores of the stage have failed (a stage on dead cores cannot run; any healthy home beats it). The
job's other stages that sit on bad cores too may be re-planned in the same decision and priced with it (a live
remap moves them at once; an eviction moves one stage at a time).
:class:`MoveBudget` adds the rest of the safety: a cooldown per job after any move, a cap on stage moves per
window, a minimum stage age (evictions), and at most one stage of a pipeline in flight (evictions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from snnrm.core.health import HealthSettings
from snnrm.core.placement import MIN_KEPS, PlacementView, StageDemand, plan_cost, replan_stage
from snnrm.core.topology import BoolArray, FloatArray, IntArray, Topology

_HEALTH = HealthSettings()
"""The stage thresholds default to the core health machine's (one definition; a stage is judged by its worst core)."""


class MoveReason(StrEnum):
    """Why a stage's placement is degraded (the ``reason`` label of ``snnrm_reallocations_total``)."""

    FAILED_CORE = "failed-core"
    QUEUE_SATURATED = "queue-saturated"
    LOW_EFFICIENCY = "low-efficiency"
    LINK_CONGESTED = "link-congested"


MOVE_URGENCY: tuple[MoveReason, ...] = (
    MoveReason.FAILED_CORE,  # the stage runs nothing
    MoveReason.QUEUE_SATURATED,  # it drops events
    MoveReason.LINK_CONGESTED,
    MoveReason.LOW_EFFICIENCY,
)
"""Most urgent first: when several stages of one job are degraded, the job's one move per cooldown goes to the
stage whose worst reason comes first here."""


def urgency(reasons: Iterable[MoveReason]) -> int:
    """Rank of the most urgent of ``reasons`` in :data:`MOVE_URGENCY` (lower moves first)."""
    return min((MOVE_URGENCY.index(r) for r in reasons if r in MOVE_URGENCY), default=len(MOVE_URGENCY))


@dataclass(frozen=True, slots=True)
class ReallocationSettings:
    """Thresholds, times and budgets; each default is tied to the health machine or to a published practice."""

    queue_enter: float = _HEALTH.queue_enter
    """Mean queue fill over the stage's cores above which it is saturated (the health machine's core threshold)."""
    queue_exit: float = _HEALTH.queue_exit
    efficiency_enter: float = _HEALTH.efficiency_enter
    """Spike-transfer efficiency of the stage's output below which spikes are being lost."""
    efficiency_exit: float = _HEALTH.efficiency_exit
    link_enter: float = _HEALTH.link_enter
    """Utilisation of the busiest link on the stage's routes above which it is congested."""
    link_exit: float = _HEALTH.link_exit
    dwell: float = 2.0
    """Seconds a condition must hold before it is active: four times the health machine's 0.5 s, so a core
    flagged Unhealthy for a moment never moves a whole stage."""
    full_queue: float = 0.98
    """Queue fill at which a queue is full: it drops events now, which no noise or glitch produces (an unknown
    reading is not a fill), so it needs only ``full_dwell``."""
    full_dwell: float = 0.1
    """Seconds a full queue must last before its stage moves: one telemetry period, so two readings in a row (one
    reading could be a single bad frame). A full queue stalls or drops now, so every period waited costs: under a
    hot spot the 2 s ``dwell`` doubled the victim's time outside its SLO (experiments' hot-spot scenario, seeds
    0-2: 2.8 -> 1.4 s at 0.5 s), and at 0.5 s the victim still moved 0.7-1.1 s after the fault, after its step
    time had grown to 0.5 s (benchmarks/results, the hot-spot headline before this change)."""
    clear: float = 5.0
    """Seconds of good readings before an active condition clears (longer than ``dwell``: hysteresis in time)."""
    cooldown: float = 60.0
    """Seconds after any move of a job before it may move again (Koordinator's per-workload limit is 5 min;
    a live remap is cheap, so one minute)."""
    window: float = 600.0
    max_moves_per_window: int = 6
    """Moves per ``window`` across all jobs of one actor: a storm of faults degrades gracefully, never a storm of
    moves."""
    min_age: float = 10.0
    """Seconds a stage must have run at its place before it is moved (remembered sources, descheduler #424)."""
    margin: float = 0.2
    """Relative cost improvement a move must bring beyond its migration cost."""
    remap_cost_hops: float = 1.0
    """Migration cost of a live remap, in hops per KEPS of stage traffic: the queued events it drops."""
    evict_cost_hops: float = 16.0
    """Migration cost of an eviction: a restart loses seconds of the stage's traffic, far more than a remap."""


@dataclass(frozen=True, slots=True)
class StageSignals:
    """One observation of a stage's cores."""

    failed: int
    """Cores of the stage that are failed or Unhealthy for a hard reason."""
    queue_fill: float
    """Mean event-queue fill over the stage's cores, 0..1."""
    efficiency: float
    """Spike-transfer efficiency of what the stage sends, 0..1 (1 when it sends nothing)."""
    link: float
    """Utilisation of the busiest link leaving the stage's routers, 0..1."""


def _over(value: float, enter: float, exit_: float, active: bool, *, below: bool = False) -> bool:
    if math.isnan(value):
        return False
    if below:
        return value < (exit_ if active else enter)
    return value > (exit_ if active else enter)


_CLOCK_SLACK = 1e-6
"""Seconds by which a dwell may fall short and still count: readings a period apart are sums of float periods
(0.3 - 0.2 < 0.1), so a dwell of exactly one period must not need a third reading."""


@dataclass(slots=True)
class StageWatch:
    """Hysteresis per condition for one stage (state between observations; decisions are pure given it)."""

    bad_since: dict[MoveReason, float] = field(default_factory=dict)
    good_since: dict[MoveReason, float] = field(default_factory=dict)
    active: set[MoveReason] = field(default_factory=set)
    since: float | None = None
    """When the earliest active condition became active."""
    full_since: float | None = None
    """Since when every reading showed a full queue (None: the last one did not)."""

    def reset(self) -> None:
        """Start over: the stage or its pipeline just moved, so what was seen before describes another placement."""
        self.bad_since.clear()
        self.good_since.clear()
        self.active.clear()
        self.since = None
        self.full_since = None

    def quiet(self, s: StageSignals, settings: ReallocationSettings) -> bool:
        """True when nothing is pending or active and ``s`` raises no condition: :meth:`observe` would change
        nothing and return none. Most stages are quiet most of the time; the reallocator's pass skips the full fold
        for them (at 300 stages it was ~1.5 ms a pass on the loop that sends ListAndWatch)."""
        st = settings
        return (
            not self.active
            and not self.bad_since
            and not self.good_since
            and self.full_since is None
            and not s.failed > 0
            and not s.queue_fill > st.queue_enter
            and not s.queue_fill >= st.full_queue
            and not s.efficiency < st.efficiency_enter
            and not s.link > st.link_enter
        )

    def observe(self, s: StageSignals, now: float, settings: ReallocationSettings) -> frozenset[MoveReason]:
        """Fold one observation in; returns the active conditions."""
        st = settings
        raw = {
            MoveReason.FAILED_CORE: s.failed > 0,
            MoveReason.QUEUE_SATURATED: _over(
                s.queue_fill, st.queue_enter, st.queue_exit, MoveReason.QUEUE_SATURATED in self.active
            ),
            MoveReason.LOW_EFFICIENCY: _over(
                s.efficiency,
                st.efficiency_enter,
                st.efficiency_exit,
                MoveReason.LOW_EFFICIENCY in self.active,
                below=True,
            ),
            MoveReason.LINK_CONGESTED: _over(
                s.link, st.link_enter, st.link_exit, MoveReason.LINK_CONGESTED in self.active
            ),
        }
        full = not math.isnan(s.queue_fill) and s.queue_fill >= st.full_queue
        self.full_since = (self.full_since if self.full_since is not None else now) if full else None
        for reason, bad in raw.items():
            if bad:
                self.good_since.pop(reason, None)
                start = self.bad_since.setdefault(reason, now)
                # A failed core is a fact, not a noisy reading: it acts without dwell; a full queue is nearly one.
                dwell = st.dwell
                if reason is MoveReason.FAILED_CORE:
                    dwell = 0.0
                elif reason is MoveReason.QUEUE_SATURATED and self.full_since is not None:
                    start = max(start, self.full_since)  # full for full_dwell, not merely saturated
                    dwell = min(st.dwell, st.full_dwell)
                if now - start >= dwell - _CLOCK_SLACK and reason not in self.active:
                    self.active.add(reason)
                    self.since = now if self.since is None else min(self.since, now)
            else:
                self.bad_since.pop(reason, None)
                if reason in self.active:
                    start = self.good_since.setdefault(reason, now)
                    if reason is MoveReason.FAILED_CORE or now - start >= st.clear:
                        self.active.discard(reason)
                        self.good_since.pop(reason, None)
        if not self.active:
            self.since = None
        return frozenset(self.active)


WAIT_RATE_FLOOR = 0.01
"""Share of a core's nominal rate below which its measured processing rate is not trusted for a wait estimate (an
idle core's rate is noise; a stuck one is the health machine's to call stale)."""


def queue_pressure(
    queue_depth: FloatArray, processed_per_s: FloatArray, capacity: FloatArray, nominal_per_s: FloatArray
) -> FloatArray:
    """Per-core queue pressure, 0..1: the larger of the queue's fill and its *wait* relative to the wait of a full
    queue at the core's nominal rate.

    The wait is the queue's depth over the rate the core really processes (Little's law). A core that runs at
    its nominal rate waits at most a full queue's worth, so on it pressure is the fill. A throttled core (a hot
    spot: the chip slows it, and nothing reports its real service rate) is different: near its reduced capacity
    its queue stays short and noisy, a quarter full, but drains four times slower, and every spike waits
    milliseconds. Fill alone never calls that saturated; the wait does. NaN depth (no telemetry) gives NaN.
    """
    depth = np.asarray(queue_depth, dtype=np.float64)
    cap = np.maximum(np.asarray(capacity, dtype=np.float64), 1.0)
    nominal = np.maximum(np.asarray(nominal_per_s, dtype=np.float64), 1e-9)
    rate = np.maximum(np.nan_to_num(np.asarray(processed_per_s, dtype=np.float64), nan=0.0), WAIT_RATE_FLOOR * nominal)
    wait = depth * nominal / (rate * cap)
    out: FloatArray = np.clip(np.fmax(depth / cap, wait), 0.0, 1.0)
    return out


def own_reasons(
    active: frozenset[MoveReason], nxt: StageSignals | None, settings: ReallocationSettings
) -> frozenset[MoveReason]:
    """The active reasons that are this stage's own, once what its next stage explains is taken away.

    Lost spikes are counted by the core that sent them (delivered / sent), but they are lost where they land: a
    next stage with failed cores drops what is sent to them, so the sender's low efficiency is that stage's
    failure (which moves at once on its own account), and moving the sender would cure nothing. Likewise a queue
    that is only saturated while the next stage's is too is stalled, not slow: on a flow-controlled mesh (Loihi)
    a saturated stage holds back its senders' spikes and their queues fill behind them. ``nxt`` is the next
    stage's signals (None when it is not on this node: nothing is known about it, nothing is excused).
    """
    if nxt is None:
        return active
    own = set(active)
    if nxt.failed > 0:
        own.discard(MoveReason.LOW_EFFICIENCY)
    if own == {MoveReason.QUEUE_SATURATED} and nxt.queue_fill >= settings.queue_enter:
        own.clear()
    return frozenset(own)


def standing(active: frozenset[MoveReason], s: StageSignals, settings: ReallocationSettings) -> frozenset[MoveReason]:
    """The active reasons whose signal is still past its exit threshold now: the ones a move may answer.

    Hysteresis keeps a condition active until its signal has read good for ``clear`` seconds, so a stage's report
    does not flap; but a move must answer trouble that is there now. A queue that filled behind the next stage
    (a stall) drains once that stage has left; held active by hysteresis, it moved its stage two seconds later
    onto other cores with nothing left to gain, and the job's truly slow stage waited out the job's settling
    time behind that move (the full hot-spot set, seed 19: the victim outside its SLO 4.3 s). An unknown reading
    (NaN) is not evidence either way: the condition stands.
    """
    st = settings
    still = {
        MoveReason.FAILED_CORE: s.failed > 0,
        MoveReason.QUEUE_SATURATED: not s.queue_fill <= st.queue_exit,
        MoveReason.LOW_EFFICIENCY: not s.efficiency >= st.efficiency_exit,
        MoveReason.LINK_CONGESTED: not s.link <= st.link_exit,
    }
    return frozenset(r for r in active if still.get(r, True))


def stage_signals(
    stages: Sequence[IntArray],
    *,
    failed: BoolArray,
    queue_fill: FloatArray,
    efficiency: FloatArray,
    link_util: FloatArray,
) -> list[StageSignals]:
    """Every stage's signals from per-core arrays, in one vectorised pass: ``stages`` holds each stage's cores,
    ``failed`` marks cores that cannot run (a hard failure), ``link_util`` the busiest link leaving each core's
    router.

    The worst core speaks for the stage (the busiest queue, the lowest efficiency): a pipeline runs at the pace of
    its slowest core, and a mean over 16 cores hides one saturated core. An unknown reading (NaN: no telemetry) is
    not evidence of anything; it neither saturates a queue nor fails a core. (Per stage, the same numpy calls on
    a few cores each cost 40 us a stage: 12 ms a pass for 300 stages, on the event loop, ten times a second.)
    """
    sizes = np.fromiter((len(c) for c in stages), dtype=np.int64, count=len(stages))
    out = [StageSignals(0, 0.0, 1.0, 0.0)] * len(stages)
    full = np.flatnonzero(sizes)
    if len(full) == 0:
        return out
    cores = np.concatenate([np.asarray(stages[i], dtype=np.int64) for i in full.tolist()])
    starts = np.concatenate(([0], np.cumsum(sizes[full])[:-1]))
    fill = np.clip(np.nan_to_num(np.asarray(queue_fill, dtype=np.float64)[cores], nan=0.0), 0.0, 1.0)
    eff = np.clip(np.nan_to_num(np.asarray(efficiency, dtype=np.float64)[cores], nan=1.0), 0.0, 1.0)
    link = np.clip(np.nan_to_num(np.asarray(link_util, dtype=np.float64)[cores], nan=0.0), 0.0, 1.0)
    n_failed = np.add.reduceat(np.asarray(failed, dtype=np.int64)[cores], starts).tolist()
    worst_fill = np.maximum.reduceat(fill, starts).tolist()
    worst_eff = np.minimum.reduceat(eff, starts).tolist()
    worst_link = np.maximum.reduceat(link, starts).tolist()
    for k, i in enumerate(full.tolist()):
        out[i] = StageSignals(int(n_failed[k]), float(worst_fill[k]), float(worst_eff[k]), float(worst_link[k]))
    return out


def signals_of(
    cores: IntArray,
    *,
    failed: BoolArray,
    queue_fill: FloatArray,
    efficiency: FloatArray,
    link_util: FloatArray,
) -> StageSignals:
    """One stage's signals (:func:`stage_signals` for a single stage)."""
    return stage_signals([cores], failed=failed, queue_fill=queue_fill, efficiency=efficiency, link_util=link_util)[0]


@dataclass(frozen=True, slots=True, eq=False)
class MoveOption:
    """A candidate move of one stage, or of several stages of one job together, priced as one."""

    stages: tuple[int, ...]
    """The stages that move: the one evaluated first, then those that go with it."""
    targets: tuple[IntArray, ...]
    """New cores of each of :attr:`stages`."""
    cost_before: float
    cost_after: float
    migration_cost: float
    """Sum over the moving stages."""
    must_move: bool
    """Cores of a moving stage have failed: staying is not an option."""

    @property
    def stage(self) -> int:
        """The stage the move was evaluated for."""
        return self.stages[0]

    @property
    def target(self) -> IntArray:
        return self.targets[0]

    @property
    def gain(self) -> float:
        """Relative improvement after paying the migration (1.0 when the stage must move)."""
        if self.must_move:
            return 1.0
        if not self.cost_before > 0:
            return 0.0
        return (self.cost_before - self.cost_after - self.migration_cost) / self.cost_before

    def worth_it(self, margin: float) -> bool:
        return self.must_move or self.gain > margin


DEGRADED_PENALTY_HOPS = 64.0
"""Least hop-equivalents a spike pays on a degraded core (failed, or Unhealthy for a saturated queue, lost spikes
or a congested link); :func:`degraded_penalty_hops` raises it to the node's size."""


def degraded_penalty_hops(view: PlacementView) -> float:
    """Hop-equivalents a spike pays on a degraded core: twice the longest route on the node (every hop priced as a
    chip crossing), at least :data:`DEGRADED_PENALTY_HOPS`. A full queue stalls each spike for milliseconds
    (queue capacity / service rate) against ~100 ns per hop, so it must outweigh any detour: a stage whose only
    free home is across the board still leaves a saturated core."""
    t = view.topology
    if t.n_cores == 0:
        return DEGRADED_PENALTY_HOPS
    span = float(np.ptp(t.gx) + np.ptp(t.gy))
    return max(DEGRADED_PENALTY_HOPS, 2.0 * span * max(float(view.inter_chip_weight), 1.0))


def stage_loads(demands: Sequence[StageDemand]) -> FloatArray:
    """Traffic touching each stage (KEPS in + out), floored at :data:`~snnrm.core.placement.MIN_KEPS` as the
    planner's headroom term weighs it."""
    load = np.array([max(d.in_keps, 0.0) for d in demands], dtype=np.float64)
    out = np.array([max(d.out_keps, MIN_KEPS) for d in demands[:-1]], dtype=np.float64)
    load[1:] += out
    load[:-1] += out
    return np.maximum(load, MIN_KEPS)


def pipeline_cost(view: PlacementView, demands: Sequence[StageDemand], placement: Sequence[IntArray]) -> float:
    """:func:`~snnrm.core.placement.plan_cost` with each stage priced by its worst core: the planner's headroom
    term averages the penalty over a stage's cores (right for choosing cores), but a pipeline runs at the pace of
    its slowest core, so one saturated core of sixteen must cost as much as sixteen."""
    total = plan_cost(view, demands, placement).total
    pen = view.core_penalty()
    load = stage_loads(demands)
    for i, cores in enumerate(placement):
        c = np.asarray(cores, dtype=np.int64)
        if len(c):
            total += float(load[i]) * float(pen[c].max() - pen[c].mean())
    return total


def hot_neighbourhood(topology: Topology, hot: IntArray) -> BoolArray:
    """Cores within one router hop of ``hot`` on the same chip, ``hot`` included: where the cause of a saturated
    queue (heat, a traffic burst) likely extends. An idle core next to a throttled one shows no symptom until work
    lands on it: the experiments' regional hot spot saw a stage moved one core over stay saturated for its job's
    whole cooldown.

    Computed on the mesh's router grid (mark the hot routers, spread each mark one step in the four directions
    where both ends are on one chip): O(cores + grid), where comparing every core with every hot core cost
    cores x hot (hundreds of MB at 16,384 cores with a few hundred hot ones).
    """
    hot = np.asarray(hot, dtype=np.int64)
    n = topology.n_cores
    if len(hot) == 0:
        return np.zeros(n, dtype=np.bool_)
    gx, gy = topology.gx, topology.gy
    chip = np.full((int(gy.max()) + 1, int(gx.max()) + 1), -1, dtype=np.int64)
    chip[gy, gx] = topology.chip_of
    marked = np.zeros(chip.shape, dtype=np.bool_)
    marked[gy[hot], gx[hot]] = True
    near = marked.copy()
    for axis in (0, 1):
        lo = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        hi = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        joined = (chip[lo] == chip[hi]) & (chip[lo] >= 0)  # neighbours on the grid and on one chip
        near[hi] |= marked[lo] & joined
        near[lo] |= marked[hi] & joined
    out: BoolArray = near[gy, gx]
    return out


def links_to_avoid(utilization: FloatArray, failed: BoolArray, settings: ReallocationSettings) -> BoolArray:
    """Links a move's new routes must not cross: failed, unknown, or loaded past the *exit* threshold.

    Not only those past the entry one: a saturated link reads 0.95 +- the counters' noise, so one frame says
    "congested" and the next does not (the experiments' combined scenario, seed 3: a stage moved onto a route
    through a link that read 0.95 in that frame, and stalled behind it for its cooldown)."""
    util = np.nan_to_num(np.asarray(utilization, dtype=np.float64), nan=1.0)
    out: BoolArray = (util > settings.link_exit) | np.asarray(failed, dtype=np.bool_)
    return out


def degraded_view(view: PlacementView, bad: BoolArray) -> PlacementView:
    """The node with ``bad`` cores priced as degraded (a full queue, a saturated link and
    :func:`degraded_penalty_hops`) and not free."""
    b = np.asarray(bad, dtype=np.bool_)
    fill = np.where(b, 1.0, np.nan_to_num(view.queue_fill, nan=1.0))
    link = np.where(b, 1.0, np.nan_to_num(view.link_util, nan=1.0))
    extra = np.where(b, degraded_penalty_hops(view), 0.0)
    if view.extra_penalty is not None:
        extra = extra + view.extra_penalty
    return replace(view, free=view.free & ~b, queue_fill=fill, link_util=link, extra_penalty=extra)


def routes_crossing(topology: Topology, src: IntArray, dst: IntArray, links: IntArray) -> BoolArray:
    """(len(src), len(dst)): whether the dimension-order route (X then Y, in the node's global mesh coordinates)
    from router ``src[i]`` to router ``dst[j]`` uses any of ``links``.

    A route uses a link a->b in the X phase when the link runs along the source's row, in the direction of
    travel, between the two x coordinates; in the Y phase when it runs along the destination's column between
    the two y coordinates. That is closed form, so a node's worth of candidate routers costs a few vector
    operations per congested link.
    """
    x, y = topology.router_xy()
    sx, sy = x[np.asarray(src, dtype=np.int64)][:, None], y[np.asarray(src, dtype=np.int64)][:, None]
    dx, dy = x[np.asarray(dst, dtype=np.int64)][None, :], y[np.asarray(dst, dtype=np.int64)][None, :]
    out = np.zeros((len(src), len(dst)), dtype=np.bool_)
    for link in np.asarray(links, dtype=np.int64).tolist():
        a, b = int(topology.link_src[link]), int(topology.link_dst[link])
        ax, ay, bx, by = int(x[a]), int(y[a]), int(x[b]), int(y[b])
        if ay == by:  # horizontal: X phase, along the source's row
            step = bx - ax
            along = (sy == ay) & (np.sign(dx - sx) == step)
            out |= along & (np.minimum(sx, dx) <= min(ax, bx)) & (max(ax, bx) <= np.maximum(sx, dx))
        else:  # vertical: Y phase, along the destination's column
            step = by - ay
            along = (dx == ax) & (np.sign(dy - sy) == step)
            out |= along & (np.minimum(sy, dy) <= min(ay, by)) & (max(ay, by) <= np.maximum(sy, dy))
    return out


def route_penalty(view: PlacementView, placement: Sequence[IntArray], stage: int, congested: BoolArray) -> FloatArray:
    """Per core: :func:`degraded_penalty_hops` where a spike between that core and a neighbouring stage of
    ``stage`` would cross a ``congested`` link (per directed link), else 0.

    The headroom term sees only the links leaving a core's own router; a stage moved off a congested link's
    router onto the next core along the same row still sends every spike over that link. Pricing the route
    makes the new home route around it.
    """
    t = view.topology
    bad = np.flatnonzero(np.asarray(congested, dtype=np.bool_))
    out = np.zeros(t.n_cores)
    if len(bad) == 0:
        return out
    every = np.arange(t.n_routers, dtype=np.int64)
    hit = np.zeros(t.n_routers, dtype=np.bool_)
    if stage > 0 and len(placement[stage - 1]):
        hit |= routes_crossing(t, np.unique(t.router[placement[stage - 1]]), every, bad).any(axis=0)
    if stage + 1 < len(placement) and len(placement[stage + 1]):
        hit |= routes_crossing(t, every, np.unique(t.router[placement[stage + 1]]), bad).any(axis=1)
    out[hit[t.router]] = degraded_penalty_hops(view)
    return out


def evaluate_remap(
    view: PlacementView,
    demands: Sequence[StageDemand],
    placement: Sequence[IntArray],
    stage: int,
    *,
    failed: BoolArray,
    settings: ReallocationSettings,
    degraded: BoolArray | None = None,
    migration_hops: float | None = None,
    congested: BoolArray | None = None,
    with_stages: Sequence[int] = (),
) -> MoveOption | None:
    """The best home for ``stage`` on this node with the other stages still (None if there is none), and for
    each of ``with_stages`` that sits on a bad core too.

    ``view.free`` holds the node's free healthy cores; ``failed`` marks cores that cannot run (the stage must
    leave them), ``degraded`` cores that run badly (Unhealthy for a soft reason): both are left and priced at
    :func:`degraded_penalty_hops`. ``congested`` marks links (per directed link) whose load is past the
    congestion threshold: cores whose route to a neighbouring stage of ``stage`` crosses one are priced the same
    (:func:`route_penalty`). Both placements are priced by :func:`pipeline_cost` (each stage by its worst core).

    ``with_stages`` are other stages of the job that may move in the same decision. A stage among them on a bad
    core is re-planned after ``stage``, in the order given, each against the placement the previous ones left;
    the others stay. Moving them together is what makes leaving a hot region worth it: the pipeline's cost is
    its worst stage's, so a stage that leaves while its neighbour stays in the region buys almost nothing
    (a bystander job under the experiments' regional hot spot kept dropping events for the whole run), and a
    job that may move once per cooldown would otherwise leave its next stage there for a minute.
    """
    bad = np.asarray(failed, dtype=np.bool_)
    if degraded is not None:
        bad = bad | np.asarray(degraded, dtype=np.bool_)
    dv = degraded_view(view, bad)
    cur = [np.asarray(p, dtype=np.int64) for p in placement]
    if congested is not None and np.any(congested):
        extra = route_penalty(dv, cur, stage, congested)
        dv = replace(dv, extra_penalty=extra if dv.extra_penalty is None else dv.extra_penalty + extra)
    order = [stage] + [j for j in dict.fromkeys(with_stages) if j != stage and 0 <= j < len(cur) and bad[cur[j]].any()]
    new = list(cur)
    free = np.asarray(dv.free, dtype=np.bool_).copy()
    moved: list[int] = []
    for j in order:
        mine = new[j]
        plan = replan_stage(replace(dv, free=free), demands, new, j, keep=mine[~bad[mine]])
        if plan is None or np.array_equal(np.sort(plan.stages[j]), np.sort(mine)):
            if j == stage:
                return None
            continue  # this one stays; the lead's move is still priced on its own merit
        new[j] = np.asarray(plan.stages[j], dtype=np.int64)
        free[new[j]] = False  # the cores it takes are not free for the next stage of the gang
        moved.append(j)
    before = pipeline_cost(dv, demands, cur)
    after = pipeline_cost(dv, demands, new)
    hops = settings.remap_cost_hops if migration_hops is None else migration_hops
    migration = 0.0
    for j in moved:
        d = demands[j]
        migration += hops * max(d.in_keps + d.out_keps + (demands[j - 1].out_keps if j else 0.0), 1e-3)
    failed_b = np.asarray(failed, dtype=np.bool_)
    must = any(bool(failed_b[cur[j]].any()) for j in moved)
    return MoveOption(tuple(moved), tuple(new[j] for j in moved), before, after, migration, must)


URGENT: frozenset[MoveReason] = frozenset({MoveReason.FAILED_CORE, MoveReason.QUEUE_SATURATED})
"""Reasons that lose work now (a stage on a dead core runs nothing; a saturated one drops or stalls events)."""


@dataclass(slots=True)
class MoveBudget:
    """Cooldown per job (per stage for urgent moves) and a cap on stage moves per window, for one actor."""

    settings: ReallocationSettings
    last_move: dict[tuple[str, str], float] = field(default_factory=dict)
    stage_moved: dict[tuple[str, str, int], float] = field(default_factory=dict)
    recent: list[float] = field(default_factory=list)

    def blocked(
        self,
        job: tuple[str, str],
        now: float,
        *,
        last_move: float | None = None,
        urgent_stage: int | None = None,
        stage_last_move: float | None = None,
        settle: bool = True,
    ) -> str | None:
        """Why ``job`` may not move now (None if it may). ``last_move`` adds a time known from elsewhere (the job's
        last move as its pods record it; ``stage_last_move`` the stage's own).

        For an urgent move (``urgent_stage``: a stage that loses work now, :data:`URGENT`) the cooldown is that
        stage's own, once the job has been still for ``dwell`` seconds. The cooldown stops a job from flapping, and
        a stage that has not moved is not flapping: under a regional hot spot a job's second stage in the region
        often saturates only once the first has left it, and waited out the job's whole minute dropping events
        (the experiments' hot-spot scenario, seeds 1 and 7). The ``dwell`` wait lets a queue that filled behind the
        stage that moved drain first (it does by itself, ~1 s for a 4-core stage in the remap tests, and moving its
        stage would drop the backlog: the evaluation after the wait sees the drained queue and finds no gain); a
        stage on a failed core has no backlog to wait for (``settle=False``).
        The window's cap still bounds a storm.
        """
        s = self.settings
        job_last = max(self.last_move.get(job, -math.inf), last_move if last_move is not None else -math.inf)
        if urgent_stage is None:
            if now - job_last < s.cooldown:
                return f"job moved {now - job_last:.0f}s ago (cooldown {s.cooldown:.0f}s)"
        else:
            mine = max(
                self.stage_moved.get((*job, urgent_stage), -math.inf),
                stage_last_move if stage_last_move is not None else -math.inf,
            )
            if now - mine < s.cooldown:
                return f"stage {urgent_stage} moved {now - mine:.0f}s ago (cooldown {s.cooldown:.0f}s)"
            if settle and now - job_last < s.dwell:
                return f"job moved {now - job_last:.1f}s ago (settling {s.dwell:.0f}s)"
        if self.allowance(now) == 0:
            return f"{len(self.recent)} moves in the last {s.window:.0f}s (limit {s.max_moves_per_window})"
        return None

    def allowance(self, now: float) -> int:
        """Stage moves the window still allows now (a job's stages moving together count one each)."""
        s = self.settings
        self.recent = [t for t in self.recent if now - t < s.window]
        return max(s.max_moves_per_window - len(self.recent), 0)

    def record(self, job: tuple[str, str], now: float, *, stages: Sequence[int] = ()) -> None:
        """``job`` moved at ``now``: the job's cooldown, each of ``stages``' own, one window move per stage (one
        when the mover does not say which stages, as an eviction of one stage does not)."""
        self.last_move[job] = now
        # Stage cooldowns that have run out decide nothing any more: keep the map as small as the live ones.
        self.stage_moved = {k: t for k, t in self.stage_moved.items() if now - t < self.settings.cooldown}
        for i in stages:
            self.stage_moved[(*job, i)] = now
        self.recent.extend([now] * max(len(stages), 1))


@dataclass(frozen=True, slots=True, eq=False)
class LocalJob:
    """The stages of one job that run on this node, as a chain of their own (edges only between consecutive
    stages that are both here), for in-node decisions."""

    stages: tuple[int, ...]
    """Job stage indices, ascending."""
    demands: tuple[StageDemand, ...]
    placement: tuple[IntArray, ...]

    def position(self, stage: int) -> int:
        return self.stages.index(stage)


def local_job(demands: Sequence[StageDemand], cores: dict[int, IntArray]) -> LocalJob:
    """The sub-job of ``demands`` made of the stages in ``cores`` (stage index -> its cores on this node)."""
    members = sorted(i for i in cores if 0 <= i < len(demands))
    sub = []
    for k, i in enumerate(members):
        nxt = members[k + 1] if k + 1 < len(members) else None
        d = demands[i]
        # Spikes from a stage on another node arrive from outside this mesh: they weigh only on headroom.
        remote_in = demands[i - 1].out_keps if i and i - 1 not in cores else 0.0
        sub.append(StageDemand(d.cores, out_keps=d.out_keps if nxt == i + 1 else 0.0, in_keps=d.in_keps + remote_in))
    return LocalJob(tuple(members), tuple(sub), tuple(np.asarray(cores[i], dtype=np.int64) for i in members))
