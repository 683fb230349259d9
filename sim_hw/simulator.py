"""A fast, deterministic discrete-time simulator of many-core neuromorphic chips on a mesh network-on-chip.

Why this shape: the daemon and the experiments need thousands of simulated seconds on 16k-core machines, so the
hot loop (:meth:`Simulator.advance`) touches only flat float32 numpy arrays: one vector op per quantity per
step, no Python object per core, link or flow. Everything that depends only on *placement* or on the set of
*active faults* (routes, traffic shares, effective service rates, which links could overflow at all) is
recomputed when those change, not every step.

Model, per step of ``dt`` seconds:

* each core's input queue receives its arrivals (spikes routed from the previous stage, the job's external and
  internal events, background load, input bursts), processes up to ``service_rate * dt`` of them, and drops
  what no longer fits in ``queue_capacity`` (a failed core processes nothing and holds nothing);
* a stage's cores emit spikes in proportion to the events they processed (the stage's nominal gain), and the
  spikes of stage ``i`` travel to stage ``i + 1`` over XY routes. Traffic shares between the two stages'
  routers are uniform, so each stage transition has a fixed link-incidence vector ``M[:, t]`` and its link
  loads are ``M @ S`` for the spikes ``S`` sent this step;
* a link loaded beyond its (possibly degraded) capacity drops the excess, charged to the transitions crossing it
  in proportion to their share; a failed link drops everything routed over it. Links whose load can never exceed
  capacity (bounded by the senders' service rates) are skipped in the loop;
* spikes that cross the network arrive at the next stage's cores one step later;
* with ``overflow: backpressure`` (Loihi's flow-controlled mesh) no spike between stages is dropped for lack of
  room: a sender processes only what its destination stage can still take (queue capacity plus one step of
  service), so a saturated stage stalls the stages before it and its backlog shows up as latency; spikes a
  congested link cannot carry wait one step at the sender instead of being lost. Input from outside the mesh waits
  at the host, up to ``INPUT_HOLD_S`` of the core's present service; beyond that the host sheds it (dropped).
  With ``overflow: drop`` (SpiNNaker's router) the excess is discarded;
* energy (when the preset gives per-operation figures): ``synops_per_event * energy_per_synop`` per processed
  event, plus per spike sent the per-hop energy of its route (on-chip and chip-to-chip hops priced apart).

Input noise comes from a seeded bank of normal deviates read at a random offset each step (Poisson plus rate
modulation, in the Gaussian approximation), so runs are reproducible and no random numbers are drawn per core.
Latency is estimated analytically per stage transition: traffic-weighted hops times per-hop latency, plus the
queueing delay at the receiving cores (backlog / service rate, plus the M/D/1 mean wait at the observed
utilisation, so a slowed core shows up in latency before its queue overflows).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import numpy as np
import numpy.typing as npt

from sim_hw.faults import (
    MAX_FACTOR,
    MAX_SURGE,
    ChipFailure,
    CoreFailure,
    Fault,
    HotSpot,
    LinkCongestion,
    LinkFailure,
    QueueSaturation,
    TelemetryGlitch,
    fault_from_dict,
)
from sim_hw.mesh import Mesh
from sim_hw.networks import Job
from sim_hw.spec import MachineSpec

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

MAX_ROUTER_PAIRS = 4096
"""Router pairs routed exactly per stage transition; larger stages route an evenly spaced sample of routers
(64 x 64), which keeps a placement change well under a second even for stages spanning whole chips."""

_NOISE_CLIP = 4.0
"""Normal deviates are clipped to +-4 sigma so that arrivals stay bounded (and the link-overflow bound holds)."""

_FOLD_EVERY = 16
"""Steps between folds of the float32 running sums into the float64 counters (keeps float32 error < 1e-6)."""

INPUT_HOLD_S = 1.0
"""Under backpressure, the most a core's input may hold: this many seconds of its present service (assumed).

Stages stall their senders, but input from outside the mesh (job input, background, bursts, a hot spot's extra
load) has nowhere to wait but the host; a host that falls a second behind sheds the rest, counted as dropped.
Without a bound, one second of the largest allowed burst left a core saturated for half an hour after it ended."""

_RHO_MAX = 0.99
"""Utilisation cap in the M/D/1 waiting-time term (beyond it the leftover backlog dominates anyway)."""

FaultStatus = Literal["pending", "active", "ended"]


def _wsum(index: IntArray, weights: npt.ArrayLike, n: int) -> FloatArray:
    """Weighted bincount (numpy's stubs type every bincount as integer; with weights it is float64, except on empty
    input, where numpy returns int64: a node whose every route stays inside one router has no link entries)."""
    return cast(FloatArray, np.bincount(index, weights, minlength=n).astype(np.float64, copy=False))


def _segments(values: IntArray, starts: IntArray, counts: IntArray, which: IntArray) -> tuple[IntArray, IntArray]:
    """The segments ``which`` of a segmented array (segment i is ``values[starts[i]:starts[i] + counts[i]]``,
    non-empty), concatenated, and their starts in the result (for ``np.add.reduceat``)."""
    lengths = counts[which]
    sub_starts = np.zeros(len(which), np.int64)
    np.cumsum(lengths[:-1], out=sub_starts[1:])
    idx = np.repeat(starts[which] - sub_starts, lengths) + np.arange(int(sub_starts[-1] + lengths[-1]))
    return values[idx], sub_starts


@dataclass(frozen=True, slots=True, eq=False)
class _StallSegments:
    """The destination and sender cores of the transitions backpressure evaluates, with what they read that
    changes only with the set (rebuilt by ``_stalled_service`` when the set changes, dropped by ``_refresh_stall``).
    """

    trans: IntArray
    dst: IntArray
    dst_starts: IntArray
    dst_room: F32Array
    dst_svc: F32Array
    src: IntArray
    src_starts: IntArray
    src_svc: F32Array
    src_per_trans: IntArray
    gain: FloatArray


class HardFaultCallback(Protocol):
    """Receives each hard-fault change: ``kind`` is "core" or "link", ``failed`` False on recovery."""

    def __call__(self, kind: str, index: int, failed: bool, sim_time: float) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class Counters:
    """A snapshot of the hardware counters, as the daemon would read them (glitches applied, arrays copied)."""

    time: float
    """Simulated seconds at the snapshot."""
    queue_depth: FloatArray
    """(n_cores,) events waiting in each core's input queue."""
    events_in: FloatArray
    """(n_cores,) cumulative events that arrived at each core."""
    events_processed: FloatArray
    """(n_cores,) cumulative events each core processed."""
    events_dropped: FloatArray
    """(n_cores,) cumulative events dropped at each core (queue overflow, failure, or migration)."""
    spikes_sent: FloatArray
    """(n_cores,) cumulative spikes each core sent towards the next stage."""
    spikes_delivered: FloatArray
    """(n_cores,) cumulative spikes sent by each core that crossed the mesh to a live destination core."""
    link_utilization: FloatArray
    """(n_links,) load over the last step as a fraction of the link's current capacity, clipped to 0..1."""
    core_failed: BoolArray
    """(n_cores,) the core is failed."""
    link_failed: BoolArray
    """(n_links,) the link is failed."""


@dataclass(frozen=True, slots=True)
class StageMetrics:
    """What one placed stage experienced over the last step, plus latency estimates for reaching it."""

    job: str
    stage: int
    name: str
    n_cores: int
    n_failed: int
    hops_mean: float
    """Traffic-weighted mean hops from the previous stage's cores (0 for stage 0)."""
    inter_chip_hops_mean: float
    """Of those, hops over chip-to-chip links."""
    hop_latency_s: float
    """Traffic-weighted sum of per-hop latencies from the previous stage."""
    queue_depth_mean: float
    queue_delay_s: float
    """Mean over live cores of queue depth / effective service rate, plus the M/D/1 mean wait at the last
    step's utilisation."""
    queue_delay_max_s: float
    latency_s: float
    """hop_latency_s + queue_delay_s: the spike latency estimate into this stage (inf if all cores failed)."""
    events_in_per_s: float
    events_processed_per_s: float
    events_dropped_per_s: float
    spikes_sent_per_s: float
    """Spikes sent to the next stage (0 for the last stage, whose output leaves the chip)."""
    spikes_delivered_per_s: float
    transfer_efficiency: float
    """Delivered / sent spikes towards the next stage over the last step (1.0 when nothing was sent)."""
    events_dropped_total: float
    """Cumulative events dropped on the stage's current cores."""
    synaptic_power_w: float = 0.0
    """Synaptic-operation power of the stage over the last step (events processed x synops x J per synop)."""
    noc_power_w: float = 0.0
    """Power of the stage's outgoing spikes on the mesh over the last step (spikes x per-hop energy of the route)."""
    utilisation_max: float = 0.0
    """Busiest live core's arrivals over its service over the last step (unclipped: > 1 means it falls behind;
    inf if every core failed)."""
    backlog_max_s: float = 0.0
    """Busiest live core's queued events over its service rate: seconds of work carried into the next timestep."""


def step_time(stages: Sequence[StageMetrics], timestep: float, barrier: float) -> float:
    """Seconds one SNN timestep of a job takes on barrier-synchronised cores (docs/hardware-model.md).

    Every core integrates the spikes of step t before any core starts t+1: the step lasts as long as its busiest
    core needs for the backlog it carries plus one timestep's arrivals, plus the spikes' route to the next stage
    and the barrier. Each stage's busiest core is taken separately for backlog and arrivals, so this is an upper
    bound; routes are the traffic-weighted mean, not the longest. A step longer than ``timestep`` (the sensor's
    real time) means the job falls behind.
    """
    if not stages:
        return 0.0
    work = max(m.backlog_max_s + m.utilisation_max * timestep for m in stages)
    return work + max(m.hop_latency_s for m in stages) + barrier


ENDED_FAULTS_KEPT = 256
"""Ended faults remembered for status queries; older ones answer "ended" without being stored."""


@dataclass(slots=True)
class _FaultState:
    fault: Fault
    status: FaultStatus
    start_step: int
    end_step: int | None
    stale: dict[str, FloatArray] | None = None


@dataclass(slots=True)
class _Placed:
    job: Job
    cores: list[IntArray]


@dataclass(frozen=True, slots=True)
class _Route:
    link: IntArray
    weight: FloatArray
    """Fraction of the transition's spikes that cross each link."""


class Simulator:
    """Many-core chips on a mesh NoC running split-SNN jobs, with schedulable, reversible faults.

    Deterministic: the same spec, seed and sequence of calls give identical arrays.
    """

    # Flattened per-flow structures, rebuilt whenever placement changes (see _rebuild). A "transition" is the
    # traffic from stage i to stage i + 1 of one job; "entries" are its coalesced (link, share) pairs.
    _n_trans: int
    _n_src: int
    _src_cores: IntArray
    _src_trans: IntArray
    _src_gain: F32Array
    _dst_cores: IntArray
    _dst_trans: IntArray
    _dst_share: F32Array
    _ent_link: IntArray
    _ent_trans: IntArray
    _ent_w: FloatArray
    _alive_share: FloatArray
    _src_alive_share: FloatArray
    _src_starts: IntArray
    _trans_gain: FloatArray
    _dst_count: IntArray
    _src_proc_acc: F32Array
    _src_lost_acc: F32Array
    _last_s: FloatArray
    _last_through: FloatArray
    _trans_hops: FloatArray
    _trans_inter: FloatArray
    _trans_latency: FloatArray
    _trans_energy: FloatArray
    _dst_starts: IntArray
    _carry: FloatArray
    # Entries on links that could overflow (only these are evaluated per step).
    _risk_link: IntArray
    _risk_trans: IntArray
    _risk_w: FloatArray
    _risk_cap: FloatArray
    _risk_bg: FloatArray
    _n_risk: int
    _link_cap_dt: FloatArray
    _link_bg_dt: FloatArray

    def __init__(self, spec: MachineSpec, *, seed: int = 0, dt: float = 0.01, input_cv: float = 0.1) -> None:
        """Build the machine. ``input_cv`` is the relative rate modulation added to Poisson input noise."""
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        if input_cv < 0:
            raise ValueError("input_cv must be >= 0")
        self.spec = spec
        self.dt = float(dt)
        self.input_cv = float(input_cv)
        self.mesh = Mesh(spec)
        n, nl = spec.n_cores, self.mesh.n_links
        self._rng = np.random.default_rng(seed)
        bank_len = n + (1 << 16)
        self._bank = np.clip(self._rng.standard_normal(bank_len, dtype=np.float32), -_NOISE_CLIP, _NOISE_CLIP)
        self._offsets: list[int] = []
        self._bank_span = bank_len - n + 1

        self.core_service_rate: FloatArray = np.full(n, spec.core_service_rate)
        """(n_cores,) nominal events per second each core processes."""
        self.core_queue_capacity: FloatArray = np.full(n, spec.core_queue_capacity)
        """(n_cores,) events each core's input queue holds."""
        self.core_service_rate.setflags(write=False)
        self.core_queue_capacity.setflags(write=False)

        # True state (float32 for speed; counters float64 so they stay exact over long runs).
        self._steps = 0
        self._q = np.zeros(n, np.float32)
        self._routed = np.zeros(n, np.float32)
        # Arrivals, processed and dropped events of the last step, stacked so that one add accumulates all three
        # into float32 running sums, folded into the float64 counters every _FOLD_EVERY steps and on every read.
        self._flow = np.zeros((3, n), np.float32)
        self._arr, self._proc, self._drop = self._flow[0], self._flow[1], self._flow[2]
        self._flow_acc = np.zeros((3, n), np.float32)
        self._since_fold = 0
        self._qtmp = np.zeros(n, np.float32)
        self._c_in = np.zeros(n)
        self._c_proc = np.zeros(n)
        self._c_drop = np.zeros(n)
        self._c_sent = np.zeros(n)
        self._c_deliv = np.zeros(n)
        self._c_noc_energy = np.zeros(n)
        self._backpressure = spec.overflow == "backpressure"
        self._synop_energy = spec.synops_per_event * spec.energy_per_synop
        """Joules per processed event (0 when the preset publishes no figure)."""

        # Faults and their combined effect.
        self._faults: dict[int, _FaultState] = {}
        """Pending and active faults only: an ended fault moves to ``_ended``, so the cost of a step never grows
        with the history of faults."""
        self._ended: dict[int, float] = {}
        """Recently ended faults → simulated time they ended (the newest ``ENDED_FAULTS_KEPT``)."""
        self._events: list[tuple[int, int, str, int]] = []
        self._next_id = 1
        self._seq = 0
        self._callbacks: list[HardFaultCallback] = []
        self._core_failed = np.zeros(n, bool)
        self._link_failed = np.zeros(nl, bool)
        self._svc_div = np.ones(n)
        self._load_mult: F32Array | None = None
        self._burst = np.zeros(n)
        self._link_div = np.ones(nl)
        self._svc_dt = np.zeros(n, np.float32)
        self._cap_eff = np.zeros(n, np.float32)
        self._bp_room_dt = np.zeros(n, np.float32)
        self._link_cap_dt = np.zeros(nl)

        # Background load.
        self._bg_core_rate = np.zeros(n)
        self._bg_link_fraction = 0.0

        # Jobs and the flattened structures derived from their placement.
        self._jobs: dict[str, _Placed] = {}
        self._owner = np.full(n, -1, dtype=np.int64)
        self._route_cache: dict[tuple[str, int], _Route] = {}
        self._trans_keys: list[tuple[str, int]] = []
        self._trans_index: dict[tuple[str, int], int] = {}
        self._ext_mean = np.zeros(n, np.float32)
        self._ext_std = np.zeros(n, np.float32)
        self._job_ext_rate = np.zeros(n)
        # Backpressure's stall filter (_refresh_stall) and the segments of the transitions it last evaluated.
        self._stall_free_q = np.full(n, np.inf, np.float32)
        self._core_dst_trans = np.zeros(n, np.int64)
        self._stall_seg: _StallSegments | None = None
        self._src_count: IntArray = np.zeros(0, np.int64)
        self._set_empty_flows()
        self._refresh_effects(notify=False)

    # ------------------------------------------------------------------ geometry
    @property
    def n_cores(self) -> int:
        """Neuron cores on the machine."""
        return self.spec.n_cores

    @property
    def n_chips(self) -> int:
        """Chips on the machine."""
        return self.spec.chips

    @property
    def n_links(self) -> int:
        """Directed mesh links (canonical order, see :mod:`sim_hw.mesh`)."""
        return self.mesh.n_links

    @property
    def chip_pos(self) -> IntArray:
        """(n_chips, 2) board (col, row) of each chip."""
        return self.mesh.chip_pos

    @property
    def link_src(self) -> IntArray:
        """(n_links,) source router of each directed link."""
        return self.mesh.link_src

    @property
    def link_dst(self) -> IntArray:
        """(n_links,) destination router of each directed link."""
        return self.mesh.link_dst

    @property
    def time(self) -> float:
        """Simulated seconds since start."""
        return self._steps * self.dt

    # ------------------------------------------------------------------ running
    def advance(self, n_steps: int = 1) -> None:
        """Run ``n_steps`` steps of ``dt``, applying scheduled fault starts and ends on the way."""
        if n_steps < 0:
            raise ValueError("n_steps must be >= 0")
        events = self._events
        step = self._step
        for _ in range(n_steps):
            if events and events[0][0] <= self._steps:
                self._process_events()
            step()
        if events and events[0][0] <= self._steps:
            self._process_events()

    def advance_to(self, t: float) -> None:
        """Run until simulated time ``t`` (rounded to whole steps); no-op if already there."""
        self.advance(max(0, round((t - self.time) / self.dt)))

    def _next_offset(self) -> int:
        if not self._offsets:
            self._offsets = self._rng.integers(0, self._bank_span, 4096).tolist()
        return self._offsets.pop()

    def _step(self) -> None:
        n = self.spec.n_cores
        o = self._next_offset()
        arr = self._arr
        np.multiply(self._ext_std, self._bank[o : o + n], out=arr)
        arr += self._ext_mean
        np.maximum(arr, 0.0, out=arr)
        arr += self._routed
        if self._load_mult is not None:
            arr *= self._load_mult
        q = self._q
        q += arr
        svc = self._stalled_service(q) if self._backpressure and self._n_src else self._svc_dt
        proc = np.minimum(q, svc, out=self._proc)
        q -= proc
        kept = np.minimum(q, self._cap_eff, out=self._qtmp)
        np.subtract(q, kept, out=self._drop)
        self._q, self._qtmp = kept, q
        self._flow_acc += self._flow
        self._steps += 1
        self._since_fold += 1
        if self._n_src:
            # Spikes per transition: the processed events of its source cores (contiguous in _src_cores)
            # times the stage's gain.
            p_src = np.take(proc, self._src_cores)
            self._src_proc_acc += p_src
            s = np.add.reduceat(p_src, self._src_starts).astype(np.float64)
            s *= self._trans_gain
            if self._backpressure:
                s += self._carry
            if self._risk_trans.size:
                loads = _wsum(self._risk_link, self._risk_w * s[self._risk_trans], self._n_risk)
                loads += self._risk_bg
                excess = np.maximum(loads - self._risk_cap, 0.0)
                lossy = bool(excess.any())
                if lossy:
                    frac = excess / np.maximum(loads, 1e-30)
                    lost = _wsum(self._risk_trans, self._risk_w * frac[self._risk_link], self._n_trans)
                    through = np.maximum(1.0 - lost, 0.0)
                    s_through = s * through
                else:
                    # Every at-risk link carries its load: nothing is lost or held (exactly what the above gives).
                    through = np.ones(self._n_trans)
                    s_through = s
                if self._backpressure:
                    # Flow control: what the link could not carry waits at the sender for the next step.
                    self._carry = s - s_through
                else:
                    if lossy:
                        self._src_lost_acc += p_src * ((1.0 - through) * self._trans_gain)[self._src_trans]
                    self._last_through = through
            else:
                s_through = s
            self._routed[self._dst_cores] = np.repeat(s_through / self._dst_count, self._dst_count)
            self._last_s = s
        if self._since_fold >= _FOLD_EVERY:
            self._fold()

    def _stalled_service(self, q: F32Array) -> F32Array:
        """Per-step service under backpressure: a stage's senders process only what the next stage can take.

        The room of a transition is, summed over its destination cores, what their queues can take so that after
        the next step's service they hold at most their capacity, less the spikes still waiting for a congested
        link; the senders' service is scaled by room / (spikes they would send this step unstalled).

        Only transitions that could stall are evaluated: one with a destination queue above its free depth
        (``_refresh_stall``) or with spikes waiting for a link. The rest have room for every spike their senders
        can send, so their factor would be exactly 1; the result is the same array the full evaluation gives.
        """
        hot = self._core_dst_trans[np.flatnonzero(q > self._stall_free_q)]
        mask = self._carry > 0.0
        mask[hot] = True
        t = np.flatnonzero(mask)
        if not t.size:
            return self._svc_dt
        g = self._stall_seg
        if g is None or not np.array_equal(t, g.trans):
            # The set is usually the same step after step: what depends only on it is rebuilt when it changes.
            dst, dst_starts = _segments(self._dst_cores, self._dst_starts, self._dst_count, t)
            src, src_starts = _segments(self._src_cores, self._src_starts, self._src_count, t)
            g = self._stall_seg = _StallSegments(
                trans=t,
                dst=dst,
                dst_starts=dst_starts,
                dst_room=self._bp_room_dt[dst],
                dst_svc=self._svc_dt[dst],
                src=src,
                src_starts=src_starts,
                src_svc=self._svc_dt[src],
                src_per_trans=self._src_count[t],
                gain=self._trans_gain[t],
            )
        q_dst = q[g.dst]
        # What arrives now is queued behind this step's service: after it, a full queue holds exactly capacity.
        room = g.dst_room - q_dst
        room += np.minimum(q_dst, g.dst_svc)
        np.maximum(room, 0.0, out=room)
        room_t = np.add.reduceat(room, g.dst_starts).astype(np.float64)
        # Spikes still waiting for a congested link take room first (they were sent earlier).
        room_t = np.maximum(room_t - self._carry[t], 0.0)
        want_t = g.gain * np.add.reduceat(np.minimum(q[g.src], g.src_svc), g.src_starts)
        frac = np.divide(room_t, want_t, out=np.ones(t.size), where=want_t > 0)
        if frac.min() >= 1.0:
            return self._svc_dt
        svc = self._svc_dt.copy()
        svc[g.src] = g.src_svc * np.repeat(np.minimum(frac, 1.0).astype(np.float32), g.src_per_trans)
        return svc

    def _refresh_stall(self) -> None:
        """Each destination core's free depth: while every destination queue of a transition is at or below it
        (and no spike waits for a link), the transition has room for all its senders can send in a step, with a
        0.1 % margin for float32 rounding; below zero when even empty queues could not take that (always checked).
        """
        n = self.n_cores
        self._stall_free_q = np.full(n, np.inf, np.float32)
        self._core_dst_trans = np.zeros(n, np.int64)
        self._stall_seg = None
        self._src_count = np.diff(np.r_[self._src_starts, self._n_src]) if self._n_trans else np.zeros(0, np.int64)
        if not self._n_trans:
            return
        room = np.add.reduceat(self._bp_room_dt[self._dst_cores].astype(np.float64), self._dst_starts)
        most = self._trans_gain * np.add.reduceat(self._svc_dt[self._src_cores].astype(np.float64), self._src_starts)
        free = (room * (1.0 - 1e-3) - most * (1.0 + 1e-3)) / self._dst_count
        self._stall_free_q[self._dst_cores] = free[self._dst_trans]
        self._core_dst_trans[self._dst_cores] = self._dst_trans

    # ------------------------------------------------------------------ jobs and placement
    def add_job(self, job: Job, placement: Sequence[npt.ArrayLike]) -> None:
        """Place a job: ``placement[i]`` holds the global core indices of stage ``i`` (cores are exclusive)."""
        if job.name in self._jobs:
            raise ValueError(f"job {job.name!r} is already placed")
        if len(placement) != len(job.stages):
            raise ValueError(f"job {job.name!r} has {len(job.stages)} stages but {len(placement)} placements")
        cores = [self._check_cores(p, f"stage {i} of {job.name!r}") for i, p in enumerate(placement)]
        flat = np.concatenate(cores)
        if len(np.unique(flat)) != len(flat):
            raise ValueError(f"job {job.name!r}: a core is placed in more than one stage")
        self._check_free(flat, job.name, None)
        self._jobs[job.name] = _Placed(job=job, cores=cores)
        self._rebuild()

    def move_stage(self, job_name: str, stage_index: int, cores: npt.ArrayLike) -> None:
        """Move one stage to new cores (live remap): events queued on released cores are dropped."""
        placed = self._placed(job_name)
        if not 0 <= stage_index < len(placed.job.stages):
            raise ValueError(f"job {job_name!r} has no stage {stage_index}")
        new = self._check_cores(cores, f"stage {stage_index} of {job_name!r}")
        others = [c for i, c in enumerate(placed.cores) if i != stage_index]
        if others and np.isin(new, np.concatenate(others)).any():
            raise ValueError(f"job {job_name!r}: new cores overlap another stage of the same job")
        self._check_free(new, job_name, None)
        old = placed.cores[stage_index]
        self._release(old[~np.isin(old, new)])
        placed.cores[stage_index] = new
        self._route_cache.pop((job_name, stage_index), None)
        self._route_cache.pop((job_name, stage_index - 1), None)
        self._rebuild()

    def remove_job(self, job_name: str) -> None:
        """Remove a job; its queued events are dropped and its cores become free."""
        placed = self._placed(job_name)
        self._release(np.concatenate(placed.cores))
        del self._jobs[job_name]
        for i in range(len(placed.job.stages)):
            self._route_cache.pop((job_name, i), None)
        self._rebuild()

    def jobs(self) -> dict[str, list[IntArray]]:
        """Placed jobs and the cores of each of their stages (copies)."""
        return {name: [c.copy() for c in p.cores] for name, p in self._jobs.items()}

    def busy_cores(self) -> BoolArray:
        """(n_cores,) True for cores that hold a stage of a placed job."""
        return self._owner >= 0

    def set_background(self, core_rate: float | npt.ArrayLike = 0.0, link_fraction: float = 0.0) -> None:
        """Background load from work outside the simulated jobs.

        ``core_rate``: events/s arriving at every core (scalar or per-core array); ``link_fraction``: share of
        each link's nominal capacity used by other traffic.
        """
        rate = np.broadcast_to(np.asarray(core_rate, dtype=np.float64), (self.n_cores,)).copy()
        if not np.isfinite(rate).all() or (rate < 0).any():
            raise ValueError("core_rate must be finite and >= 0")
        if not (0.0 <= link_fraction < 1.0):
            raise ValueError("link_fraction must be in [0, 1)")
        self._bg_core_rate = rate
        self._bg_link_fraction = float(link_fraction)
        self._refresh_inputs()
        self._refresh_risk()

    def _placed(self, job_name: str) -> _Placed:
        try:
            return self._jobs[job_name]
        except KeyError:
            raise KeyError(f"no job named {job_name!r}") from None

    def _check_cores(self, cores: npt.ArrayLike, what: str) -> IntArray:
        a = np.asarray(cores)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{what}: cores must be a non-empty 1-D array")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{what}: cores must be integers")
        a = a.astype(np.int64)
        if a.min() < 0 or a.max() >= self.n_cores:
            raise ValueError(f"{what}: core indices must be in 0..{self.n_cores - 1}")
        if len(np.unique(a)) != len(a):
            raise ValueError(f"{what}: duplicate cores")
        return a

    def _check_free(self, cores: IntArray, job_name: str, _: None) -> None:
        names = list(self._jobs)
        owners = self._owner[cores]
        foreign = [(int(c), names[o]) for c, o in zip(cores, owners, strict=True) if o >= 0 and names[o] != job_name]
        if foreign:
            c, other = foreign[0]
            raise ValueError(f"core {c} is already used by job {other!r}")

    def _release(self, cores: IntArray) -> None:
        self._fold()
        self._c_drop[cores] += self._q[cores]
        self._q[cores] = 0.0
        self._routed[cores] = 0.0

    def _set_empty_flows(self) -> None:
        e_i = np.zeros(0, np.int64)
        self._n_trans = 0
        self._n_src = 0
        self._src_cores, self._src_trans = e_i, e_i
        self._src_gain = np.zeros(0, np.float32)
        self._src_starts = e_i
        self._trans_gain = np.zeros(0)
        self._dst_count = e_i
        self._dst_cores, self._dst_trans = e_i, e_i
        self._dst_share = np.zeros(0, np.float32)
        self._ent_link, self._ent_trans = e_i, e_i
        self._ent_w = np.zeros(0)
        self._alive_share = np.zeros(0)
        self._src_alive_share = np.zeros(0)
        self._src_proc_acc = np.zeros(0, np.float32)
        self._src_lost_acc = np.zeros(0, np.float32)
        self._last_s = np.zeros(0)
        self._last_through = np.zeros(0)
        self._trans_energy = np.zeros(0)
        self._dst_starts = e_i
        self._carry = np.zeros(0)
        self._risk_link, self._risk_trans = e_i, e_i
        self._risk_w = np.zeros(0)
        self._risk_cap = np.zeros(0)
        self._risk_bg = np.zeros(0)
        self._n_risk = 0

    def _route(self, key: tuple[str, int], src: IntArray, dst: IntArray) -> _Route:
        cached = self._route_cache.get(key)
        if cached is not None:
            return cached
        mesh = self.mesh
        rs, cs = np.unique(mesh.core_router[src], return_counts=True)
        rd, cd = np.unique(mesh.core_router[dst], return_counts=True)
        ws, wd = cs / cs.sum(), cd / cd.sum()
        if len(rs) * len(rd) > MAX_ROUTER_PAIRS:
            side = math.isqrt(MAX_ROUTER_PAIRS)
            if len(rs) > side:
                pick = np.linspace(0, len(rs) - 1, side).round().astype(np.int64)
                rs, ws = rs[pick], ws[pick] / ws[pick].sum()
            if len(rd) > side:
                pick = np.linspace(0, len(rd) - 1, side).round().astype(np.int64)
                rd, wd = rd[pick], wd[pick] / wd[pick].sum()
        ps, pd = np.repeat(rs, len(rd)), np.tile(rd, len(rs))
        pw = np.repeat(ws, len(rd)) * np.tile(wd, len(rs))
        pair, link = mesh.route_pairs(ps, pd)
        links, inv = np.unique(link, return_inverse=True)
        route = _Route(link=links, weight=_wsum(inv, pw[pair], len(links)))
        self._route_cache[key] = route
        return route

    def _rebuild(self) -> None:
        """Recompute every flattened per-flow structure from the current placement."""
        self._fold()
        # Spikes already in flight to a stage follow it to its new cores.
        pending: dict[tuple[str, int], float] = {}
        for name, p in self._jobs.items():
            for i, c in enumerate(p.cores):
                pending[(name, i)] = float(self._routed[c].sum())
        self._routed[:] = 0.0
        self._set_empty_flows()
        self._owner[:] = -1
        src_c, src_t, src_g, dst_c, dst_t, dst_s = [], [], [], [], [], []
        ent_l, ent_t, ent_w = [], [], []
        keys: list[tuple[str, int]] = []
        job_ext = np.zeros(self.n_cores)
        for j, (name, p) in enumerate(self._jobs.items()):
            job = p.job
            for i, cores in enumerate(p.cores):
                self._owner[cores] = j
                stage = job.stages[i]
                job_ext[cores] += ((job.input_rate if i == 0 else 0.0) + stage.internal_rate) / len(cores)
                if (name, i) in pending:
                    self._routed[cores] = pending[(name, i)] / len(cores)
                if i + 1 == len(job.stages):
                    continue
                t = len(keys)
                keys.append((name, i))
                demand = job.stage_input_rate(i) + stage.internal_rate
                gain = stage.spike_rate / demand if demand > 0 else 0.0
                src_c.append(cores)
                src_t.append(np.full(len(cores), t, np.int64))
                src_g.append(np.full(len(cores), gain, np.float32))
                nxt = p.cores[i + 1]
                dst_c.append(nxt)
                dst_t.append(np.full(len(nxt), t, np.int64))
                dst_s.append(np.full(len(nxt), 1.0 / len(nxt), np.float32))
                r = self._route((name, i), cores, nxt)
                ent_l.append(r.link)
                ent_t.append(np.full(len(r.link), t, np.int64))
                ent_w.append(r.weight)
        self._job_ext_rate = job_ext
        self._trans_keys = keys
        self._trans_index = {k: t for t, k in enumerate(keys)}
        if keys:
            self._n_trans = len(keys)
            self._src_cores = np.concatenate(src_c)
            self._src_trans = np.concatenate(src_t)
            self._src_gain = np.concatenate(src_g)
            self._n_src = len(self._src_cores)
            self._dst_cores = np.concatenate(dst_c)
            self._dst_trans = np.concatenate(dst_t)
            self._dst_share = np.concatenate(dst_s)
            self._ent_link = np.concatenate(ent_l)
            self._ent_trans = np.concatenate(ent_t)
            self._ent_w = np.concatenate(ent_w)
            self._src_proc_acc = np.zeros(self._n_src, np.float32)
            self._src_lost_acc = np.zeros(self._n_src, np.float32)
            self._src_starts = np.flatnonzero(np.r_[True, self._src_trans[1:] != self._src_trans[:-1]])
            self._trans_gain = self._src_gain[self._src_starts].astype(np.float64)
            self._dst_count = np.bincount(self._dst_trans, minlength=self._n_trans)
            self._last_s = np.zeros(self._n_trans)
            self._last_through = np.ones(self._n_trans)
            lat = self.mesh.link_latency[self._ent_link]
            inter = self.mesh.link_inter_chip[self._ent_link]
            nt = self._n_trans
            self._trans_hops = _wsum(self._ent_trans, self._ent_w, nt)
            self._trans_inter = _wsum(self._ent_trans, self._ent_w * inter, nt)
            self._trans_latency = _wsum(self._ent_trans, self._ent_w * lat, nt)
            spec = self.spec
            on_chip = self._trans_hops - self._trans_inter
            self._trans_energy = on_chip * spec.energy_per_hop + self._trans_inter * spec.energy_per_inter_chip_hop
            self._dst_starts = np.flatnonzero(np.r_[True, self._dst_trans[1:] != self._dst_trans[:-1]])
            self._carry = np.zeros(nt)
        self._refresh_inputs()
        self._refresh_alive()
        self._refresh_risk()
        self._refresh_stall()

    def _fold(self) -> None:
        """Move the float32 running sums into the float64 counters.

        Must run before anything the sums depend on changes (placement, gains, which destinations are alive).
        """
        self._since_fold = 0
        acc = self._flow_acc
        self._c_in += acc[0]
        self._c_proc += acc[1]
        self._c_drop += acc[2]
        acc[:] = 0.0
        if self._n_src:
            sent = self._src_proc_acc * self._src_gain.astype(np.float64)
            self._c_sent[self._src_cores] += sent
            self._c_deliv[self._src_cores] += (sent - self._src_lost_acc) * self._src_alive_share
            self._c_noc_energy[self._src_cores] += sent * self._trans_energy[self._src_trans]
            self._src_proc_acc[:] = 0.0
            self._src_lost_acc[:] = 0.0

    def _refresh_inputs(self) -> None:
        """Per-step mean and noise of locally generated arrivals (job input, inner layers, background, bursts)."""
        job_lam = self._job_ext_rate * self.dt
        lam = job_lam + self._bg_core_rate * self.dt + self._burst * self.dt
        std = np.sqrt(lam + (self.input_cv * job_lam) ** 2)
        self._ext_mean = lam.astype(np.float32)
        self._ext_std = std.astype(np.float32)

    def _refresh_alive(self) -> None:
        if not self._n_trans:
            return
        alive = ~self._core_failed[self._dst_cores]
        share = _wsum(self._dst_trans, self._dst_share * alive, self._n_trans)
        self._alive_share = np.minimum(share, 1.0)  # float32 shares can sum to 1 + 3e-8
        self._src_alive_share = self._alive_share[self._src_trans]

    def _refresh_risk(self) -> None:
        """Find the links whose load could exceed capacity; only those are evaluated every step."""
        nl = self.n_links
        nominal_dt = self.mesh.link_capacity * self.dt
        self._link_cap_dt = np.where(self._link_failed, 0.0, nominal_dt / self._link_div)
        self._link_bg_dt = nominal_dt * self._bg_link_fraction
        if not self._n_trans:
            self._risk_trans = np.zeros(0, np.int64)
            return
        # Upper bound of spikes per step per transition: every live sender busy at its full service rate.
        bound = _wsum(self._src_trans, self._svc_dt[self._src_cores].astype(np.float64) * self._src_gain, self._n_trans)
        load_max = _wsum(self._ent_link, self._ent_w * bound[self._ent_trans], nl)
        load_max += self._link_bg_dt
        risky = load_max > self._link_cap_dt * (1.0 - 1e-6)
        ent = np.flatnonzero(risky[self._ent_link])
        compact = np.cumsum(risky) - 1
        self._risk_link = compact[self._ent_link[ent]]
        self._risk_trans = self._ent_trans[ent]
        self._risk_w = self._ent_w[ent]
        self._risk_cap = self._link_cap_dt[risky]
        self._risk_bg = self._link_bg_dt[risky]
        self._n_risk = int(risky.sum())
        if not self._risk_trans.size:
            self._last_through = np.ones(self._n_trans)

    # ------------------------------------------------------------------ faults
    def on_hard_fault(self, cb: HardFaultCallback) -> Callable[[], None]:
        """Subscribe to core/link failures and recoveries; returns a function that unsubscribes.

        Callbacks run synchronously inside :meth:`inject`, :meth:`schedule`, :meth:`clear` or :meth:`advance`,
        once per changed core or link, after the simulator state reflects the change.
        """
        self._callbacks.append(cb)

        def unsubscribe() -> None:
            if cb in self._callbacks:
                self._callbacks.remove(cb)

        return unsubscribe

    def inject(self, fault: Fault, duration: float | None = None) -> int:
        """Start a fault now (optionally ending after ``duration`` seconds); returns its id."""
        return self.schedule(fault, at=self.time, duration=duration)

    def schedule(self, fault: Fault, at: float, duration: float | None = None) -> int:
        """Start ``fault`` at simulated time ``at`` (now if already past) for ``duration`` seconds (or until
        :meth:`clear`); returns its id."""
        self._check_fault(fault)
        if not math.isfinite(at):
            raise ValueError("at must be finite")
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a finite number > 0, got {duration!r}")
        start = max(self._steps, math.ceil(at / self.dt - 1e-9))
        end = None if duration is None else max(start + 1, math.ceil((at + duration) / self.dt - 1e-9))
        fid = self._next_id
        self._next_id += 1
        self._faults[fid] = _FaultState(fault=fault, status="pending", start_step=start, end_step=end)
        if start <= self._steps:
            self._activate(fid)
        else:
            self._push(start, "start", fid)
        if end is not None:
            self._push(end, "end", fid)
        return fid

    def submit(self, request: dict[str, Any]) -> int:
        """Validate an untrusted JSON fault request (see :func:`sim_hw.faults.fault_from_dict`) and schedule it."""
        req = fault_from_dict(request, n_cores=self.n_cores, n_chips=self.n_chips, n_links=self.n_links)
        return self.schedule(req.fault, at=self.time if req.at is None else req.at, duration=req.duration)

    def clear(self, fault_id: int) -> None:
        """End an active fault now, or cancel a pending one. Clearing an ended fault does nothing."""
        st = self._faults.get(fault_id)
        if st is None:
            if 0 < fault_id < self._next_id:
                return  # ended already
            raise KeyError(f"no fault with id {fault_id}")
        self._end(fault_id)

    def fault_status(self, fault_id: int) -> FaultStatus:
        """ "pending", "active" or "ended" (also for an ended fault no longer kept)."""
        st = self._faults.get(fault_id)
        if st is not None:
            return st.status
        if 0 < fault_id < self._next_id:
            return "ended"
        raise KeyError(f"no fault with id {fault_id}")

    def ended_at(self, fault_id: int) -> float | None:
        """Simulated time a recently ended fault ended, or None (still live, unknown, or ended long ago)."""
        return self._ended.get(fault_id)

    @property
    def live_faults(self) -> int:
        """Faults pending or active."""
        return len(self._faults)

    def _end(self, fid: int) -> None:
        st = self._faults.pop(fid)
        was_active = st.status == "active"
        st.status = "ended"
        self._ended[fid] = self.time
        while len(self._ended) > ENDED_FAULTS_KEPT:
            del self._ended[next(iter(self._ended))]
        if was_active:
            self._refresh_effects(notify=True)

    def active_faults(self) -> dict[int, Fault]:
        """Faults currently in effect, by id."""
        return {fid: st.fault for fid, st in self._faults.items() if st.status == "active"}

    def _push(self, step: int, action: str, fid: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (step, self._seq, action, fid))

    def _process_events(self) -> None:
        while self._events and self._events[0][0] <= self._steps:
            _, _, action, fid = heapq.heappop(self._events)
            st = self._faults.get(fid)
            if st is None:
                continue  # cleared before its scheduled start or end
            if action == "start" and st.status == "pending":
                self._activate(fid)
            elif action == "end":
                self._end(fid)

    def _activate(self, fid: int) -> None:
        st = self._faults[fid]
        st.status = "active"
        if isinstance(st.fault, TelemetryGlitch) and st.fault.mode == "stale":
            truth = self._true_counters()
            idx = np.asarray(st.fault.cores, dtype=np.int64)
            st.stale = {k: v[idx].copy() for k, v in truth.items()}
        self._refresh_effects(notify=True)

    def _check_fault(self, fault: Fault) -> None:
        if isinstance(fault, CoreFailure | HotSpot | QueueSaturation | TelemetryGlitch):
            limit, idx, what = self.n_cores, fault.cores, "core"
        elif isinstance(fault, ChipFailure):
            limit, idx, what = self.n_chips, fault.chips, "chip"
        else:
            limit, idx, what = self.n_links, fault.links, "link"
        if max(idx) >= limit:
            raise ValueError(f"{what} index {max(idx)} out of range (0..{limit - 1})")

    def _refresh_effects(self, *, notify: bool) -> None:
        """Recombine every active fault into the effective arrays; report hard-fault changes."""
        self._fold()
        n, nl = self.n_cores, self.n_links
        core_failed = np.zeros(n, bool)
        link_failed = np.zeros(nl, bool)
        svc_div = np.ones(n)
        load = np.ones(n)
        burst = np.zeros(n)
        link_div = np.ones(nl)
        for st in self._faults.values():
            if st.status != "active":
                continue
            f = st.fault
            if isinstance(f, CoreFailure):
                core_failed[list(f.cores)] = True
            elif isinstance(f, ChipFailure):
                chips = np.asarray(f.chips)
                core_failed[np.isin(self.mesh.core_chip, chips)] = True
                rchip = self.mesh.router_chip
                link_failed[np.isin(rchip[self.link_src], chips) | np.isin(rchip[self.link_dst], chips)] = True
            elif isinstance(f, HotSpot):
                idx = list(f.cores)
                svc_div[idx] *= f.service_divisor
                load[idx] *= f.load_factor
            elif isinstance(f, QueueSaturation):
                burst[list(f.cores)] += f.burst_factor * self.core_service_rate[list(f.cores)]
            elif isinstance(f, LinkCongestion):
                link_div[list(f.links)] *= f.capacity_divisor
            elif isinstance(f, LinkFailure):
                link_failed[list(f.links)] = True
        # Stacked faults multiply; the product is bounded like one fault's factor, so no combination can overflow
        # the float32 state and clearing them always returns the exact prior state.
        for combined, top in ((svc_div, MAX_FACTOR), (load, MAX_SURGE), (link_div, MAX_FACTOR)):
            np.minimum(combined, top, out=combined)
        np.minimum(burst, MAX_SURGE * self.core_service_rate, out=burst)
        new_core = np.flatnonzero(core_failed & ~self._core_failed)
        back_core = np.flatnonzero(~core_failed & self._core_failed)
        new_link = np.flatnonzero(link_failed & ~self._link_failed)
        back_link = np.flatnonzero(~link_failed & self._link_failed)
        if new_core.size:
            # A failing core loses what it held.
            self._c_drop[new_core] += self._q[new_core]
            self._q[new_core] = 0.0
        self._core_failed = core_failed
        self._link_failed = link_failed
        self._svc_div = svc_div
        self._load_mult = None if (load == 1.0).all() else load.astype(np.float32)
        self._burst = burst
        self._link_div = link_div
        svc = self.core_service_rate * self.dt / svc_div
        self._svc_dt = np.where(core_failed, 0.0, svc).astype(np.float32)
        # Under backpressure a stage's senders stall instead of overflowing its queue (_stalled_service); what
        # still exceeds the bound came from outside the mesh and is shed at the host (INPUT_HOLD_S).
        # A failed core holds nothing.
        if self._backpressure:
            # At the core's present rate: a throttled core's input falls a second behind sooner.
            cap = np.maximum(self.core_queue_capacity, self.core_service_rate / svc_div * INPUT_HOLD_S)
        else:
            cap = self.core_queue_capacity
        self._cap_eff = np.where(core_failed, 0.0, cap).astype(np.float32)
        # A failed destination never stalls its senders: what they send to it is lost (counted by _alive_share).
        room = np.where(core_failed, np.inf, self.core_queue_capacity + self._svc_dt)
        self._bp_room_dt = room.astype(np.float32)
        self._refresh_inputs()
        self._refresh_alive()
        self._refresh_risk()
        self._refresh_stall()
        if not notify or not self._callbacks:
            return
        t = self.time
        changes = [("core", int(i), True) for i in new_core] + [("core", int(i), False) for i in back_core]
        changes += [("link", int(i), True) for i in new_link] + [("link", int(i), False) for i in back_link]
        for kind, index, failed in changes:
            for cb in list(self._callbacks):
                cb(kind, index, failed, t)

    # ------------------------------------------------------------------ observation
    def _true_counters(self) -> dict[str, FloatArray]:
        self._fold()
        return {
            "queue_depth": self._q.astype(np.float64),
            "events_in": self._c_in.copy(),
            "events_processed": self._c_proc.copy(),
            "events_dropped": self._c_drop.copy(),
            "spikes_sent": self._c_sent.copy(),
            "spikes_delivered": self._c_deliv.copy(),
        }

    def energy(self) -> tuple[FloatArray, FloatArray]:
        """(n_cores,) cumulative joules per core: synaptic operations, and the NoC hops of the spikes it sent.

        Both are zero on a preset that publishes no per-operation energy (never an invented figure).
        """
        self._fold()
        return self._c_proc * self._synop_energy, self._c_noc_energy.copy()

    def link_loads(self) -> FloatArray:
        """(n_links,) spike messages per second on each link over the last step (job traffic + background)."""
        loads = _wsum(self._ent_link, self._ent_w * self._last_s[self._ent_trans], self.n_links)
        return (loads + self._link_bg_dt) / self.dt

    def counters(self) -> Counters:
        """Snapshot the hardware counters. Telemetry glitches apply here only, never to the simulation."""
        values = self._true_counters()
        cap = self._link_cap_dt / self.dt
        loads = self.link_loads()
        util = np.divide(loads, cap, out=np.zeros(self.n_links), where=cap > 0)
        np.clip(util, 0.0, 1.0, out=util)
        for st in self._faults.values():
            f = st.fault
            if st.status != "active" or not isinstance(f, TelemetryGlitch):
                continue
            idx = np.asarray(f.cores, dtype=np.int64)
            for key, arr in values.items():
                if f.mode == "nan":
                    arr[idx] = np.nan
                elif f.mode == "negative":
                    arr[idx] = -(np.abs(arr[idx]) + 1.0)
                elif st.stale is not None:
                    arr[idx] = st.stale[key]
        return Counters(
            time=self.time,
            link_utilization=util,
            core_failed=self._core_failed.copy(),
            link_failed=self._link_failed.copy(),
            **values,
        )

    def stage_metrics(self, job_name: str) -> tuple[StageMetrics, ...]:
        """Per-stage latency estimates, rates over the last step and drops for one placed job."""
        placed = self._placed(job_name)
        self._fold()
        dt = self.dt
        out: list[StageMetrics] = []
        for i, cores in enumerate(placed.cores):
            live = ~self._core_failed[cores]
            svc = self._svc_dt[cores].astype(np.float64) / dt
            q = self._q[cores].astype(np.float64)
            if live.any():
                # Backlog left over between steps, plus the mean wait of an M/D/1 queue at the utilisation
                # of the last step (the backlog alone is 0 whenever a core keeps up within a step).
                mu = svc[live]
                rho = np.minimum(self._arr[cores][live].astype(np.float64) / (mu * dt), _RHO_MAX)
                delay = q[live] / mu + rho / (2.0 * mu * (1.0 - rho))
                qd, qmax = float(delay.mean()), float(delay.max())
                util_max = float((self._arr[cores][live] / (mu * dt)).max())
                backlog_max = float((q[live] / mu).max())
            else:
                qd = qmax = util_max = backlog_max = math.inf
            t_in = self._trans_index.get((job_name, i - 1))
            hops = inter = hop_lat = 0.0
            if t_in is not None:
                hops = float(self._trans_hops[t_in])
                inter = float(self._trans_inter[t_in])
                hop_lat = float(self._trans_latency[t_in])
            t_out = self._trans_index.get((job_name, i))
            sent_ps = deliv_ps = 0.0
            eff = 1.0
            if t_out is not None:
                sent_ps = float(self._last_s[t_out]) / dt
                through = float(self._last_through[t_out]) if self._risk_trans.size else 1.0
                eff = through * float(self._alive_share[t_out])
                deliv_ps = sent_ps * eff
                if sent_ps == 0.0:
                    eff = 1.0
            out.append(
                StageMetrics(
                    job=job_name,
                    stage=i,
                    name=placed.job.stages[i].name,
                    n_cores=len(cores),
                    n_failed=int((~live).sum()),
                    hops_mean=hops,
                    inter_chip_hops_mean=inter,
                    hop_latency_s=hop_lat,
                    queue_depth_mean=float(q.mean()),
                    queue_delay_s=qd,
                    queue_delay_max_s=qmax,
                    latency_s=hop_lat + qd,
                    events_in_per_s=float(self._arr[cores].sum()) / dt,
                    events_processed_per_s=float(self._proc[cores].sum()) / dt,
                    events_dropped_per_s=float(self._drop[cores].sum()) / dt,
                    spikes_sent_per_s=sent_ps,
                    spikes_delivered_per_s=deliv_ps,
                    transfer_efficiency=eff,
                    events_dropped_total=float(self._c_drop[cores].sum()),
                    synaptic_power_w=float(self._proc[cores].sum()) / dt * self._synop_energy,
                    noc_power_w=sent_ps * float(self._trans_energy[t_out]) if t_out is not None else 0.0,
                    utilisation_max=util_max,
                    backlog_max_s=backlog_max,
                )
            )
        return tuple(out)

    # ------------------------------------------------------------------ helpers for callers
    def route(self, src_core: int, dst_core: int) -> IntArray:
        """Link indices of the XY route between two cores, in path order."""
        return self.mesh.route(src_core, dst_core)

    def chip_cores(self, chip: int) -> IntArray:
        """Global indices of the cores on one chip."""
        cpc = self.spec.cores_per_chip
        return np.arange(chip * cpc, (chip + 1) * cpc, dtype=np.int64)
