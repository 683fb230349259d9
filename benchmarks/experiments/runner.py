"""One run: a workload on the simulator under one policy and one fault scenario, in simulated time.

No sockets and no wall clock: the runner drives :class:`sim_hw.Simulator` step by step and plays the daemon's
schedule against it: a telemetry frame every ``sample_period`` (``sim.counters()`` -> :class:`TelemetryFrame`,
with noise and a read-out delay (:mod:`benchmarks.experiments.telemetry`) -> :meth:`NodeMonitor.observe`, the
daemon's real validation, smoothing, health and hysteresis), hard faults pushed the moment the simulator applies
them (:meth:`NodeMonitor.hard_fault`), and reallocation passes: the daemon's own
:class:`snnrm.cluster.remap.NodeReallocator` for snnrm, on each frame the monitor folds in (as in the daemon), and
:func:`~benchmarks.experiments.policies.reactive_moves` for the reactive baseline every ``realloc_period`` (a
descheduler's tick). The phases of those clocks are drawn from the seed (a daemon is not started in step with a
fault) and are the same for every policy.

Every move costs: the moved stage stops while its weights load onto the new cores (cores x synapses per core x
bytes per synapse / load bandwidth), and a rescheduled pod also restarts (``pod_restart``); the job's traffic into
the stage during that time is dropped. A move counts as *false* when the stage it moved was not degraded in truth
(no failed or faulted core under it, no true queue above half full), whatever telemetry said.

What is measured, and how (all per job, then summed or averaged):

* end-to-end spike latency: the sum over stages of :meth:`Simulator.stage_metrics` ``latency_s`` (hop latency
  plus queueing delay into each stage), sampled every ``metric_stride`` steps. Percentiles are taken over the
  samples where the job delivered output; outages (a stage wholly failed or evicted) count in SLO time and drops;
* SLO: per timestep. A sample violates it when the job's timestep (``sim_hw.step_time``) overruns the 1 ms real-time
  budget, or more than ``slo_loss`` of the job's events are lost in that step, or the job delivers nothing;
* dropped events: exact, from the simulator's cumulative counters over the cores each job held at the time
  (including queues flushed by a move), plus spikes lost on congested links (sampled from ``stage_metrics``) and
  the traffic into an evicted stage while it is down;
* hops per spike: traffic-weighted mean hops between consecutive stages (``stage_metrics``);
* energy: synaptic and NoC power from ``stage_metrics`` (the preset's pJ per synaptic op and per hop, see
  docs/hardware-model.md) integrated over the samples, reported per job timestep (µJ) and NoC pJ per spike;
* the resource manager's cost: process CPU time inside decision code (placement, telemetry ingest, reallocation),
  and with ``trace_memory`` the memory that code holds and allocates at peak (``tracemalloc``).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import structlog

from benchmarks.experiments.config import ExperimentConfig
from benchmarks.experiments.eviction import ClusterReallocator
from benchmarks.experiments.metrics import DecisionMeter, EnergyMeter, FloatArray, percentile, recovery_time
from benchmarks.experiments.policies import (
    POLICIES,
    DaemonReallocator,
    Move,
    PolicySpec,
    RunningJob,
    RunningStage,
    health_settings,
    place,
    reactive_moves,
    realloc_settings,
)
from benchmarks.experiments.scenarios import (
    NODE_WIDE,
    SCENARIOS,
    PlannedFault,
    build_fault,
    busiest_stage,
    flaky_glitches,
    pick_victims,
)
from benchmarks.experiments.telemetry import NoisyTelemetry
from benchmarks.experiments.workloads import (
    JobSpec,
    make_workload,
    sized_for_events,
    stage_utilisation,
    throughput_devices,
)
from sim_hw import Job, MachineSpec, Simulator, StageMetrics, load_preset, networks, step_time
from snnrm.backends.sim import frame_of, topology_of
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import PlacementView
from snnrm.core.telemetry import FaultKind, HardFault
from snnrm.core.topology import BoolArray, IntArray
from snnrm.job.plan import BLOCK_KEPS

Int16Array = npt.NDArray[np.int16]

TIMESTEP_S = float(networks.measurements()["dt_s"])
"""One SNN timestep of the workloads (their measured rates are per 1 ms step): the unit of energy per inference."""


class AccountingSimulator(Simulator):
    """The simulator plus read access to its true cumulative counters (telemetry glitches corrupt only what
    :meth:`counters` returns to the resource manager; the experiment's own accounting must see the truth)."""

    def truth(self) -> dict[str, FloatArray]:
        return self._true_counters()


@dataclass(frozen=True, slots=True)
class MoveRecord:
    t: float
    job: str
    stage: int
    action: str
    reasons: tuple[str, ...]
    cores: int
    victim: bool
    degraded: bool
    """The moved stage was degraded in truth (failed/faulted core under it, or a true queue over half full)."""
    stall: float
    """Seconds the stage was down for the move (weight reload, plus a pod restart for a reschedule)."""


@dataclass(slots=True, eq=False)
class RunResult:
    """Everything one run produced: scalar metrics, plus small arrays for the plots."""

    scenario: str
    policy: str
    seed: int
    metrics: dict[str, float]
    victims: list[tuple[str, int, str]]
    """(job, stage, fault kind) per injected fault."""
    moves: list[MoveRecord]
    times: FloatArray
    """Sample times of the timeline arrays."""
    victim_latency: FloatArray
    """First victim's time per SNN timestep per sample, s (inf: no output; NaN: not running)."""
    victim_loss: FloatArray
    victim_slo: float
    """The timestep budget the SLO holds every step to, s."""
    victim_latency_post: FloatArray
    """First victim's finite step times after the fault (for CDFs)."""
    owner_at_fault: Int16Array
    """Job index holding each core just before the faults (-1: free)."""
    owner_end: Int16Array
    fault_cores: IntArray
    jobs: list[str]
    wall: float


@dataclass(slots=True, eq=False)
class _Track:
    spec: JobSpec
    idx: int
    running: RunningJob | None = None
    rejected: bool = False
    ended: bool = False
    blocks: int = 0
    """snnrm.io/event-throughput devices the job's pods hold (KEPS admission only)."""
    lat: FloatArray = field(default_factory=lambda: np.zeros(0))
    step: FloatArray = field(default_factory=lambda: np.zeros(0))
    """Seconds one SNN timestep took at each sample (sim_hw.step_time)."""
    viol: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    present: BoolArray = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))
    loss: FloatArray = field(default_factory=lambda: np.zeros(0))
    dropped: float = 0.0
    offered: float = 0.0
    evicted_at: float = math.nan
    evicted_stage: int = -1
    restart_step: int = -1
    restart_uid: bool = False
    """The stalled stage comes back as a new pod (reschedule) rather than the same pod (live remap)."""


def _loss_rates(ms: tuple[StageMetrics, ...]) -> tuple[float, float, float, float]:
    """One job over the last step: (events dropped at its cores /s, spikes lost on links /s, events in /s,
    spikes sent between its stages /s).

    Link losses are what transfer efficiency misses beyond dead destinations (spikes sent to a failed core are
    counted where that core drops them, not twice).
    """
    dropped = sum(m.events_dropped_per_s for m in ms)
    events_in = sum(m.events_in_per_s for m in ms)
    lost = 0.0
    for a, b in itertools.pairwise(ms):
        if a.spikes_sent_per_s <= 0:
            continue
        alive = (b.n_cores - b.n_failed) / b.n_cores if b.n_cores else 0.0
        if alive <= 0:
            continue  # everything sent went to dead cores: already counted where it was dropped
        through = min(a.transfer_efficiency / alive, 1.0)
        lost += a.spikes_sent_per_s * (1.0 - through)
    sent = sum(m.spikes_sent_per_s for m in ms[:-1])
    return dropped, lost, events_in, sent


class Run:
    """State of one run (see the module docstring); :func:`run_one` is the entry point."""

    def __init__(self, cfg: ExperimentConfig, scenario: str, policy: str, seed: int, *, trace_memory: bool) -> None:
        self.cfg = cfg
        self.scenario = SCENARIOS[scenario]
        self.policy: PolicySpec = POLICIES[policy]
        self.seed = seed
        self.spec: MachineSpec = load_preset(cfg.preset, chips=cfg.chips)
        self.sim = AccountingSimulator(self.spec, seed=seed, dt=cfg.dt)
        self.topology = topology_of(self.sim)
        self.weight = self.spec.inter_chip_hop_latency / self.spec.hop_latency
        self.n = self.topology.n_cores
        self.dt = cfg.dt
        self.n_steps = round(cfg.duration / cfg.dt)
        self.fault_step = round(cfg.fault_time / cfg.dt)
        self.meter = DecisionMeter(trace=trace_memory)
        self.rng_place = np.random.default_rng(np.random.SeedSequence([seed, 5]))
        phase = np.random.default_rng(np.random.SeedSequence([seed, 4]))
        self.tel_every = max(1, round(cfg.sample_period / cfg.dt))
        self.realloc_every = max(1, round(cfg.realloc_period / cfg.dt))
        self.next_tel = int(phase.integers(1, self.tel_every + 1))
        self.next_realloc = int(phase.integers(1, self.realloc_every + 1))
        self.next_metric = cfg.metric_stride

        self.specs = make_workload(seed, cfg, self.spec)
        if self.policy.keps:  # the same arrivals, as `snnrm job plan` sizes them (events may need more cores)
            self.specs = tuple(sized_for_events(j, self.spec) for j in self.specs)
        self.refused_keps = 0
        self.tracks = {j.name: _Track(j, k) for k, j in enumerate(self.specs)}
        n_samples = self.n_steps // cfg.metric_stride
        self.times = (np.arange(1, n_samples + 1) * cfg.metric_stride * cfg.dt).astype(np.float64)
        for t in self.tracks.values():
            t.lat = np.full(n_samples, np.nan)
            t.step = np.full(n_samples, np.nan)
            t.loss = np.full(n_samples, np.nan)
            t.viol = np.zeros(n_samples, dtype=np.bool_)
            t.present = np.zeros(n_samples, dtype=np.bool_)
        self.sample = 0
        self.owner = np.full(self.n, -1, dtype=np.int64)
        self.hw_failed = np.zeros(self.n, dtype=np.bool_)
        self.prev = self.sim.truth()
        self.uid = 0
        self.moves: list[MoveRecord] = []
        self.victims: list[tuple[str, int, str]] = []
        self.fault_cores = np.zeros(0, dtype=np.int64)
        self.faulted: list[tuple[IntArray, float, float]] = []
        """(cores, start, end) of every injected fault that degrades hardware (not telemetry glitches)."""
        self.telemetry = NoisyTelemetry(
            cfg.telemetry_noise, cfg.telemetry_delay, np.random.default_rng(np.random.SeedSequence([seed, 6]))
        )
        self.declined: list[tuple[float, str, str]] = []
        self.owner_at_fault = np.full(self.n, -1, dtype=np.int16)
        self.hop_spikes = 0.0
        self.spikes = 0.0
        self.energy = EnergyMeter()
        self.alloc_sum = 0.0
        self.running_sum = 0.0
        self.util_samples = 0

        self.monitor: NodeMonitor | None = None
        self.node: DaemonReallocator | ClusterReallocator | None = None
        with self.meter.state():
            if self.policy.uses_monitor:
                self.monitor = NodeMonitor(
                    self.topology,
                    ThroughputBlocks.plan(self.topology, block_keps=BLOCK_KEPS),
                    health_settings=health_settings(self.policy),
                )
            if self.policy.realloc in ("remap", "evict"):
                assert self.monitor is not None
                kind = DaemonReallocator if self.policy.realloc == "remap" else ClusterReallocator
                self.node = kind(
                    self.topology, self.monitor, realloc_settings(self.policy), self.weight, lambda: self.sim.time
                )
        self.sim.on_hard_fault(self._on_hard_fault)

    # -- time ------------------------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.sim.time

    def _step(self) -> int:
        return round(self.sim.time / self.dt)

    # -- accounting ------------------------------------------------------------------------------------------
    def _account(self) -> None:
        """Attribute the counter deltas since the last call to the jobs that own each core now."""
        truth = self.sim.truth()
        held = self.owner >= 0
        if held.any():
            who = self.owner[held]
            nj = len(self.tracks)
            d_in = np.bincount(who, (truth["events_in"] - self.prev["events_in"])[held], minlength=nj)
            d_drop = np.bincount(who, (truth["events_dropped"] - self.prev["events_dropped"])[held], minlength=nj)
            for t in self.tracks.values():
                t.offered += float(d_in[t.idx])
                t.dropped += float(d_drop[t.idx])
        self.prev = truth

    def _booked(self) -> BoolArray:
        """Cores the kubelet has handed out (admitted cores stay booked after a live remap) or that are
        reserved for an evicted stage's replacement."""
        booked = np.zeros(self.n, dtype=np.bool_)
        for t in self.tracks.values():
            if t.running is None:
                continue
            for s in t.running.stages:
                booked[s.cores] = True
                booked[s.admitted] = True
        return booked

    def _running_cores(self) -> int:
        busy: BoolArray = self.sim.busy_cores()
        return int(busy.sum())

    def _set_owner(self, t: _Track) -> None:
        self.owner[self.owner == t.idx] = -1
        if t.running is None:
            return
        for s in t.running.stages:
            self.owner[s.cores] = t.idx

    # -- events ----------------------------------------------------------------------------------------------
    def _on_hard_fault(self, kind: str, index: int, failed: bool, sim_time: float) -> None:
        if kind == "core":
            self.hw_failed[index] = failed
        if self.monitor is not None:
            with self.meter.decide():
                self.monitor.hard_fault(HardFault(FaultKind(kind), int(index), bool(failed), float(sim_time)))

    def _arrive(self, t: _Track) -> None:
        booked = self._booked()
        j = t.spec
        with self.meter.decide():
            if self.monitor is not None:
                m = self.monitor
                view = PlacementView.measured(
                    self.topology,
                    free=m.core_healthy & ~booked,
                    queue_fill=m.queue_fill,
                    link_utilization=m.link_utilization,
                    link_failed=m.link_failed,
                    inter_chip_weight=self.weight,
                )
            else:  # a classic device plugin knows only hard failures
                view = PlacementView.idle(self.topology, ~booked & ~self.hw_failed, inter_chip_weight=self.weight)
            placement = place(self.policy, view, j.demands, self.rng_place)
            blocks = throughput_devices(j.job) if self.policy.keps else 0
            if placement is not None and blocks and blocks > self._free_blocks():
                placement = None  # the kubelet refuses the pod: not enough event-throughput devices
                self.refused_keps += 1
        if placement is None:
            t.rejected = True
            return
        t.blocks = blocks
        self._account()
        self.sim.add_job(j.job, list(placement))
        stages = []
        for i, cores in enumerate(placement):
            self.uid += 1
            stages.append(RunningStage(j.name, i, cores.copy(), cores.copy(), self.uid, self.now))
        t.running = RunningJob(j.name, j.demands, stages)
        self._set_owner(t)

    def _free_blocks(self) -> int:
        """Healthy snnrm.io/event-throughput devices the running jobs do not hold (what the kubelet counts)."""
        assert self.monitor is not None, "KEPS admission runs snnrm's telemetry pipeline"
        held = sum(t.blocks for t in self.tracks.values() if t.running is not None)
        return int(self.monitor.capacity.healthy_per_chip.sum()) - held

    def _depart(self, t: _Track) -> None:
        t.ended = True
        if t.running is None:
            return
        self._account()
        if t.spec.name in self.sim.jobs():
            self.sim.remove_job(t.spec.name)
        self._account()
        if self.node is not None:
            for s in t.running.stages:
                self.node.forget(t.spec.name, s.index)
        t.running = None
        t.restart_step = -1
        self._set_owner(t)

    def stall_of(self, cores: int) -> float:
        """Seconds a stage of ``cores`` cores is down while its weights load onto new cores."""
        synapses = cores * self.spec.synapses_per_core
        return synapses * self.cfg.weight_bytes_per_synapse / self.cfg.weight_load_bandwidth

    def _truly_degraded(self, cores: IntArray) -> bool:
        """Ground truth: a failed or faulted core under the stage, or a true queue over half full."""
        c = np.asarray(cores, dtype=np.int64)
        if self.hw_failed[c].any():
            return True
        now = self.now
        for fc, start, end in self.faulted:
            if start - 1e-9 <= now <= end + 1e-9 and np.isin(c, fc).any():
                return True
        q = self.sim.truth()["queue_depth"][c]
        return bool(np.nanmax(q) > 0.5 * self.spec.core_queue_capacity) if len(c) else False

    def _move(self, mvs: Sequence[Move]) -> None:
        """Execute one job's moves of a pass: the moved stages stop, their weights load onto the target cores one
        stage after another over the host link (and a rescheduled pod restarts); the stages before the first
        moved one keep running and their output into it is lost until the job is back."""
        t = self.tracks[mvs[0].job]
        assert t.running is not None
        assert all(mv.job == mvs[0].job for mv in mvs)
        i = min(mv.stage for mv in mvs)
        degraded = {mv.stage: self._truly_degraded(t.running.stages[mv.stage].cores) for mv in mvs}
        down = sum(self.stall_of(len(mv.target)) for mv in mvs)
        if any(mv.action == "reschedule" for mv in mvs):
            down += self.cfg.pod_restart
        job = t.spec.job
        self._account()
        self.sim.remove_job(job.name)
        if i > 0:
            self.sim.add_job(Job(job.name, job.stages[:i], job.input_rate), [m.cores for m in t.running.stages[:i]])
        self._account()  # the queues the move flushed, charged to the job that left them
        for mv in mvs:
            s = t.running.stages[mv.stage]
            s.cores = np.asarray(mv.target, dtype=np.int64)
            if mv.action == "reschedule":  # a new pod: the kubelet books the new cores and frees the old
                s.admitted = s.cores.copy()
            s.last_move = self.now
        t.running.in_flight = True
        t.evicted_at = self.now
        t.evicted_stage = i
        t.restart_uid = any(mv.action == "reschedule" for mv in mvs)
        t.restart_step = self._step() + max(1, math.ceil(down / self.dt - 1e-9))
        self._set_owner(t)
        for mv in mvs:
            self.owner[t.running.stages[mv.stage].cores] = -1  # reserved, but nothing runs there yet
        victim = any(v[0] == t.spec.name for v in self.victims)
        for mv in mvs:
            self.moves.append(
                MoveRecord(
                    self.now,
                    mv.job,
                    mv.stage,
                    mv.action,
                    mv.reasons,
                    len(mv.target),
                    victim,
                    degraded[mv.stage],
                    (t.restart_step - self._step()) * self.dt,
                )
            )

    def _restart(self, t: _Track) -> None:
        assert t.running is not None
        job = t.spec.job
        i = t.evicted_stage
        self._account()
        if i > 0:
            self.sim.remove_job(job.name)
        self.sim.add_job(job, [s.cores for s in t.running.stages])
        self._account()
        gap = self.now - t.evicted_at
        lost = job.stage_input_rate(i) * gap  # what flowed into the missing stage while it was down
        t.dropped += lost
        t.offered += lost
        s = t.running.stages[i]
        if t.restart_uid:
            self.uid += 1
            t.running.stages[i] = RunningStage(job.name, i, s.cores, s.admitted, self.uid, self.now, self.now)
        t.running.in_flight = False
        t.restart_step = -1
        self._set_owner(t)

    def _inject(self) -> None:
        placed = [t.spec.name for t in self.tracks.values() if t.running is not None and t.spec.long_running]
        self.owner_at_fault = self.owner.astype(np.int16)
        hit: list[IntArray] = []
        for kind in self.scenario.faults:
            if kind == "flaky-telemetry":
                for glitch, at, duration in flaky_glitches(self.n, self.now, self.cfg.duration, self.cfg, self.seed):
                    self.sim.schedule(glitch, at=at, duration=duration)
        targeted = [k for k in self.scenario.faults if k not in NODE_WIDE]
        victims = pick_victims(placed, len(targeted), self.seed)
        planned: list[PlannedFault] = []
        for k, (kind, name) in enumerate(zip(targeted, victims, strict=True)):
            t = self.tracks[name]
            assert t.running is not None
            util = stage_utilisation(t.spec.job, self.spec.core_service_rate)
            stage = busiest_stage(util)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 3, k]))
            placement = [s.cores for s in t.running.stages]
            pf = build_fault(
                kind,
                sim=self.sim,
                job=name,
                placement=placement,
                stage=stage,
                cfg=self.cfg,
                rng=rng,
                utilisation=float(util[stage]),
            )
            planned.append(pf)
            self.victims.append((name, stage, pf.kind))
            hit.append(pf.cores)
            if pf.kind != "telemetry-glitch":
                end = self.now + pf.duration if pf.duration is not None else math.inf
                self.faulted.append((np.asarray(pf.cores, dtype=np.int64), self.now, end))
        for pf in planned:  # build all first, so one fault's effect cannot steer where the next one lands
            self.sim.inject(pf.fault, duration=pf.duration)
        self.fault_cores = np.unique(np.concatenate(hit)) if hit else np.zeros(0, dtype=np.int64)

    def _telemetry(self) -> int:
        """Push a frame into the delayed link and fold in the ones due; returns how many were folded."""
        self._account()
        if self.monitor is None:
            return 0
        self.telemetry.push(frame_of(self.sim))
        folded = 0
        with self.meter.decide():
            for frame in self.telemetry.due(self.now):
                self.monitor.observe(frame)
                folded += 1
        return folded

    def _metrics(self) -> None:
        k = self.sample
        if k >= len(self.times):
            return
        stride_s = self.cfg.metric_stride * self.dt
        for t in self.tracks.values():
            if t.running is None:
                continue
            t.present[k] = True
            if t.running.in_flight:
                t.lat[k] = t.step[k] = math.inf
                t.loss[k] = 1.0
                t.viol[k] = True
                continue
            ms = self.sim.stage_metrics(t.spec.name)
            lat = float(sum(m.latency_s for m in ms))
            dropped, lost, events_in, sent = _loss_rates(ms)
            t.dropped += lost * stride_s
            t.offered += lost * stride_s
            frac = (dropped + lost) / (events_in + lost) if events_in + lost > 0 else 0.0
            t.lat[k] = lat
            t.step[k] = step_time(ms, TIMESTEP_S, self.spec.barrier_latency)
            t.loss[k] = frac
            t.viol[k] = not t.step[k] <= TIMESTEP_S or frac > self.cfg.slo_loss  # inf/NaN steps violate too
            for a, b in itertools.pairwise(ms):
                self.hop_spikes += a.spikes_sent_per_s * b.hops_mean
            self.spikes += sent
            self.energy.add(sum(m.synaptic_power_w for m in ms), sum(m.noc_power_w for m in ms), sent, stride_s)
        self.alloc_sum += float(self._booked().sum()) / self.n
        self.running_sum += self._running_cores() / self.n
        self.util_samples += 1
        self.sample += 1

    def _reallocate(self) -> None:
        if self.monitor is None or self.policy.realloc == "none":
            return
        running = {t.spec.name: t.running for t in self.tracks.values() if t.running is not None}
        booked = self._booked()
        with self.meter.decide():
            if self.node is not None:
                moves = self.node.step(running, booked)
            else:
                moves, failed = reactive_moves(self.monitor.core_healthy, running, booked, self.now)
                self.declined.extend(failed)
        by_job: dict[str, list[Move]] = {}
        for mv in moves:
            by_job.setdefault(mv.job, []).append(mv)
        for group in by_job.values():
            self._move(group)

    # -- the loop --------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        wall0 = time.perf_counter()
        arrivals = sorted(self.tracks.values(), key=lambda t: t.spec.arrival)
        arrive_at = [round(t.spec.arrival / self.dt) for t in arrivals]
        departures = sorted(
            (round(t.spec.departure / self.dt), t.idx, t) for t in self.tracks.values() if t.spec.departure is not None
        )
        ai = di = 0
        injected = not self.scenario.faults
        last_pass = -math.inf
        step = 0
        while step < self.n_steps:
            restarts = [t.restart_step for t in self.tracks.values() if t.restart_step >= 0]
            cand = [self.n_steps, self.next_tel, self.next_metric]
            if self.node is None and self.policy.realloc != "none":
                cand.append(self.next_realloc)
            if ai < len(arrivals):
                cand.append(arrive_at[ai])
            if di < len(departures):
                cand.append(departures[di][0])
            if not injected:
                cand.append(self.fault_step)
            cand.extend(restarts)
            nxt = max(min(cand), step)
            if nxt > step:
                self.sim.advance(nxt - step)
                step = nxt
            while di < len(departures) and departures[di][0] <= step:
                self._depart(departures[di][2])
                di += 1
            while ai < len(arrivals) and arrive_at[ai] <= step:
                if not arrivals[ai].ended:
                    self._arrive(arrivals[ai])
                ai += 1
            for t in self.tracks.values():
                if 0 <= t.restart_step <= step and t.running is not None:
                    self._restart(t)
            if not injected and step >= self.fault_step:
                self._inject()
                injected = True
            if step >= self.next_tel:
                # The daemon's reallocator runs a pass on each frame its node folds in (at most one per its period).
                if self._telemetry() and self.node is not None and self.now - last_pass >= self.node.period - 1e-6:
                    last_pass = self.now
                    self._reallocate()
                self.next_tel += self.tel_every
            if step >= self.next_metric:
                self._metrics()
                self.next_metric += self.cfg.metric_stride
            if self.node is None and self.policy.realloc != "none" and step >= self.next_realloc:
                self._reallocate()  # the reactive baseline's descheduler: a fixed tick
                self.next_realloc += self.realloc_every
            if step >= self.n_steps:
                break
        self._account()
        result = self._result(time.perf_counter() - wall0)
        self.meter.close()
        if self.node is not None:
            self.node.close()
        return result

    # -- results ---------------------------------------------------------------------------------------------
    def _result(self, wall: float) -> RunResult:
        cfg = self.cfg
        fault_t = cfg.fault_time
        stride_s = cfg.metric_stride * self.dt
        tracks = [t for t in self.tracks.values() if not t.rejected]
        post = self.times >= fault_t - 1e-9
        present_s = sum(float(t.present.sum()) for t in tracks) * stride_s
        viol_s = sum(float((t.viol & t.present).sum()) for t in tracks) * stride_s
        offered = sum(t.offered for t in tracks)
        dropped = sum(t.dropped for t in tracks)
        p99_over_slo = [percentile(t.step[t.present], 99) / TIMESTEP_S for t in tracks if t.present.any()]
        victim_names = list(dict.fromkeys(v[0] for v in self.victims))
        vt = self.tracks[victim_names[0]] if victim_names else None
        if vt is None:  # no fault: measure the job the faulty scenarios would hit, over the same window
            placed = [t.spec.name for t in tracks if t.spec.long_running and t.present.any()]
            pick = pick_victims(placed, 1, self.seed)
            vt = self.tracks[pick[0]] if pick else None
        metrics: dict[str, float] = {
            "jobs": float(len(tracks)),
            "rejected": float(sum(t.rejected for t in self.tracks.values())),
            "refused_keps": float(self.refused_keps),
            "peak_core_load": max(
                (float(stage_utilisation(t.spec.job, self.spec.core_service_rate).max()) for t in tracks),
                default=math.nan,
            ),
            "slo_met_job_s": sum(float((t.present & ~t.viol).sum()) for t in tracks) * stride_s,
            "hops_per_spike": self.hop_spikes / self.spikes if self.spikes > 0 else math.nan,
            "slo_violation_pct": 100.0 * viol_s / present_s if present_s > 0 else math.nan,
            "dropped_pct": 100.0 * dropped / offered if offered > 0 else math.nan,
            "p99_over_slo": float(np.nanmean(p99_over_slo)) if p99_over_slo else math.nan,
            "moves": float(len(self.moves)),
            "moves_per_hour": len(self.moves) / (cfg.duration / 3600.0),
            "false_moves": float(sum(1 for m in self.moves if not m.degraded)),
            "move_stall_s": float(sum(m.stall for m in self.moves)),
            "alloc_pct": 100.0 * self.alloc_sum / max(self.util_samples, 1),
            "running_pct": 100.0 * self.running_sum / max(self.util_samples, 1),
            "stranded_cores": float(self._booked().sum() - self._running_cores()),
            "decision_cpu_s": self.meter.cpu,
            "decision_cpu_ms_per_s": 1e3 * self.meter.cpu / cfg.duration,
            "decision_calls": float(self.meter.calls),
            "decision_mem_kib": self.meter.memory_bytes / 1024.0 if self.meter.trace else math.nan,
            "wall_s": wall,
        }
        metrics.update(self.energy.metrics(TIMESTEP_S))
        # The SLO time without its loss part: job-time whose timestep overran the sensor's real time.
        late_s = sum(float((t.present & ~(t.step <= TIMESTEP_S)).sum()) for t in tracks) * stride_s
        metrics["late_step_pct"] = 100.0 * late_s / present_s if present_s > 0 else math.nan
        victim_step = np.full(len(self.times), np.nan)
        victim_loss = np.full(len(self.times), np.nan)
        victim_post = np.zeros(0)
        if vt is not None:
            lat = np.where(vt.present, vt.lat, np.nan)
            victim_loss = np.where(vt.present, vt.loss, np.nan)
            window = lat[post]
            victim_post = window[np.isfinite(window)]
            metrics["victim_p50_us"] = percentile(window, 50) * 1e6
            metrics["victim_p99_us"] = percentile(window, 99) * 1e6
            settled_at = self.times >= fault_t + cfg.settle - 1e-9
            metrics["victim_p99_settled_us"] = percentile(lat[settled_at], 99) * 1e6
            # Per timestep (what the SLO and the hot-spot headline use): the victim's step time, ms.
            victim_step = np.where(vt.present, vt.step, np.nan)
            metrics["victim_step_p99_ms"] = percentile(victim_step[post], 99) * 1e3
            metrics["victim_step_p99_settled_ms"] = percentile(victim_step[settled_at], 99) * 1e3
            # Not saturated by the queue bound the way p99 is: how long the queue stayed full moves the mean.
            metrics["victim_mean_us"] = float(np.mean(victim_post)) * 1e6 if len(victim_post) else math.nan
            metrics["victim_outage_s"] = float(np.sum(~np.isfinite(window[~np.isnan(window)]))) * stride_s
        victim_tracks = [self.tracks[n] for n in victim_names]
        metrics["victim_slo_s"] = (
            sum(float((t.viol & t.present & post).sum()) for t in victim_tracks) * stride_s
            if victim_tracks
            else math.nan
        )
        metrics["victim_dropped_pct"] = (
            100.0 * sum(t.dropped for t in victim_tracks) / max(sum(t.offered for t in victim_tracks), 1e-9)
            if victim_tracks
            else math.nan
        )
        first = [m.t - fault_t for m in self.moves if m.victim and m.t >= fault_t - 1e-9]
        metrics["realloc_s"] = min(first) if first else math.nan
        activations = self.node.activations if self.node is not None else []
        detected = [t - fault_t for t, n in activations if n in victim_names and t >= fault_t - 1e-9]
        metrics["detect_s"] = min(detected) if detected else math.nan
        outcomes = (self.node.outcomes if self.node is not None else []) + self.declined
        for what in ("unavailable", "blocked", "no-room"):
            metrics[f"declined_{what.replace('-', '_')}"] = float(
                sum(1 for t, job, o in outcomes if o == what and job in victim_names and t >= fault_t - 1e-9)
            )
        if victim_tracks:
            v0 = victim_tracks[0]
            rec = recovery_time(self.times[v0.present], v0.viol[v0.present], fault_t, cfg.recovered_for)
            # Never recovered: censored at the end of the run (kept in every statistic, never dropped).
            metrics["recovered"] = 1.0 if math.isfinite(rec) else 0.0
            metrics["recovery_s"] = rec if math.isfinite(rec) else cfg.duration - fault_t
        else:
            metrics["recovery_s"] = math.nan
            metrics["recovered"] = math.nan
        return RunResult(
            scenario=self.scenario.name,
            policy=self.policy.name,
            seed=self.seed,
            metrics=metrics,
            victims=self.victims,
            moves=self.moves,
            times=self.times,
            victim_latency=victim_step.astype(np.float32),
            victim_loss=victim_loss.astype(np.float32),
            victim_slo=TIMESTEP_S,
            victim_latency_post=victim_step[post][np.isfinite(victim_step[post])].astype(np.float32),
            owner_at_fault=self.owner_at_fault,
            owner_end=self.owner.astype(np.int16),
            fault_cores=self.fault_cores,
            jobs=[t.spec.name for t in self.tracks.values()],
            wall=wall,
        )


def quiet_logs() -> None:
    """The daemon's code logs every remap and capacity change; in an experiment that is noise on stdout."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def run_one(cfg: ExperimentConfig, scenario: str, policy: str, seed: int, *, trace_memory: bool = False) -> RunResult:
    """Run one (scenario, policy, seed) cell."""
    quiet_logs()
    return Run(cfg, scenario, policy, seed, trace_memory=trace_memory).run()
