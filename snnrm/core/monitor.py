"""The node's telemetry decisions in one place: frames and hard faults in, device lists out.

:class:`NodeMonitor` folds each telemetry frame through validation and smoothing (:mod:`snnrm.core.rates`), the
health state machine (:mod:`snnrm.core.health`) and effective capacity (:mod:`snnrm.core.capacity`), and
answers with the complete device list of each resource. It is pure: the asyncio shell feeds it and publishes
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from snnrm.core.capacity import CapacityTracker, effective_core_keps
from snnrm.core.devices import (
    DeviceSet,
    ThroughputBlocks,
    event_throughput_devices,
    neuron_core_devices,
)
from snnrm.core.health import HealthMachine, HealthSettings, HealthStep, Observation
from snnrm.core.rates import RateSettings, RateTracker
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import BoolArray, FloatArray, Topology


def _no_pause() -> None:
    """:meth:`NodeMonitor.prepare`'s default: run the steps back to back."""


@dataclass(frozen=True, slots=True, eq=False)
class HealthPlan:
    """A frame's link and health decisions computed (:meth:`NodeMonitor.plan_health`), not yet applied."""

    faults: int
    """:attr:`NodeMonitor.faults_applied` when computed: a pushed fault applied since makes the plan stale."""
    link_utilization: FloatArray
    link_failed: BoolArray
    step: HealthStep
    timestamp: float


@dataclass(slots=True, eq=False)
class NodeMonitor:
    """Per-node telemetry state and the decisions taken from it."""

    topology: Topology
    blocks: ThroughputBlocks
    rate_settings: RateSettings = field(default_factory=RateSettings)
    health_settings: HealthSettings = field(default_factory=HealthSettings)
    rates: RateTracker = field(init=False)
    health: HealthMachine = field(init=False)
    capacity: CapacityTracker = field(init=False)
    link_utilization: FloatArray = field(init=False)
    link_failed: BoolArray = field(init=False)
    last_frame_time: float = field(init=False, default=float("nan"))
    frames: int = field(init=False, default=0)
    rejected_frames: int = field(init=False, default=0)
    faults_applied: int = field(init=False, default=0)
    """Pushed hard faults applied so far (:meth:`fault_health`)."""

    def __post_init__(self) -> None:
        t = self.topology
        self.rates = RateTracker(nominal_keps=t.core_nominal_keps, settings=self.rate_settings)
        self.health = HealthMachine(t.n_cores, settings=self.health_settings)
        self.capacity = CapacityTracker(t, self.blocks)
        self.link_utilization = np.zeros(t.n_links)
        self.link_failed = np.zeros(t.n_links, dtype=np.bool_)

    @property
    def queue_fill(self) -> FloatArray:
        """Smoothed event-queue fill per core, 0..1."""
        return np.clip(self.rates.rates.queue_depth / self.topology.core_queue_capacity, 0.0, 1.0)

    @property
    def core_healthy(self) -> BoolArray:
        return self.health.healthy

    def effective_keps(self) -> FloatArray:
        """Per-core usable event throughput now (KEPS)."""
        return effective_core_keps(
            self.topology.core_nominal_keps, self.health.healthy, self.rates.rates.efficiency, self.queue_fill
        )

    def observe(self, frame: TelemetryFrame) -> bool:
        """Fold a frame in; True if any advertised device changed health."""
        if not self.fold_rates(frame):
            return False
        health_changed = self.fold_health(frame)
        return self.fold_capacity(frame) or health_changed

    def fold_rates(self, frame: TelemetryFrame) -> bool:
        """First half of :meth:`observe`: validate and smooth the counters. False (and nothing changed) for a
        frame of the wrong shape; then :meth:`fold_health` must not be called with it.

        It touches only the rate tracker (nothing a hard fault changes), so the shell may run it off the event
        loop: at 16,384 cores it is 1-2 ms of numpy, which a pushed hard fault would otherwise wait behind (its
        budget to ListAndWatch is 5 ms). A fault applied before :meth:`fold_health` stays applied (a pushed
        failure holds until a frame sampled after it says otherwise).
        """
        n = self.topology.n_cores
        if frame.queue_depth.shape != (n,) or frame.link_utilization.shape != (self.topology.n_links,):
            # A frame of the wrong shape is a backend bug or a hot-swapped board; never index with it.
            self.rejected_frames += 1
            return False
        self.rates.update(frame)
        return True

    def fold_health(self, frame: TelemetryFrame) -> bool:
        """Second part of :meth:`observe`: links and the health state machine; True if any core changed health.
        Call :meth:`fold_capacity` next."""
        changed = self.apply_health(self.plan_health(frame))
        assert changed is not None  # nothing ran between the two
        return changed

    def prepare(self, frame: TelemetryFrame, pause: Callable[[], None] = _no_pause) -> HealthPlan | None:
        """:meth:`fold_rates` then :meth:`plan_health`: what the shell runs off the event loop (None: a frame of
        the wrong shape, nothing changed). Only the rate tracker is written; a hard fault applied meanwhile makes
        the plan stale, and :meth:`apply_health` says so instead of undoing the fault.

        ``pause`` is called before each step: where the shell's worker waits while a pushed hard fault's message
        is sent, rather than share the CPU and the GIL with it."""
        pause()
        if not self.fold_rates(frame):
            return None
        pause()
        return self.plan_health(frame)

    def plan_health(self, frame: TelemetryFrame) -> HealthPlan:
        """:meth:`fold_health`'s decisions from the state now, changing nothing (safe beside the fault path)."""
        faults = self.faults_applied  # first: a fault applied while the state is read makes the plan stale
        util = np.nan_to_num(np.asarray(frame.link_utilization, dtype=np.float64), nan=0.0).clip(0.0, None)
        link_failed = np.asarray(frame.link_failed, dtype=np.bool_)
        # A failed link is as bad as a fully congested one for the cores whose router it leaves.
        eff_util = np.where(link_failed, np.inf, util)
        router_util = np.zeros(self.topology.n_routers)
        np.maximum.at(router_util, self.topology.link_src, eff_util)
        step = self.health.propose(
            Observation(
                now=frame.timestamp,
                failed=np.asarray(frame.core_failed, dtype=np.bool_),
                last_valid=self.rates.rates.last_valid,
                queue_fill=self.queue_fill,
                efficiency=self.rates.rates.efficiency,
                router_link_utilization=router_util[self.topology.router],
            )
        )
        return HealthPlan(faults, util, link_failed, step, frame.timestamp)

    def apply_health(self, plan: HealthPlan) -> bool | None:
        """Apply ``plan``: True if any core changed health; None (nothing changed) when a pushed fault was
        applied since it was planned (then :meth:`fold_health` the frame again)."""
        if plan.faults != self.faults_applied or self.health.commit(plan.step) is None:
            return None
        self.link_utilization = plan.link_utilization
        self.link_failed = plan.link_failed
        self.last_frame_time = plan.timestamp
        self.frames += 1
        return plan.step.healthy_changed

    def fold_capacity(self, frame: TelemetryFrame) -> bool:
        """Last part of :meth:`observe`: effective capacity from the new health and rates; True if the
        event-throughput devices changed."""
        return self.capacity.update(self.effective_keps(), now=frame.timestamp)

    def hard_fault(self, fault: HardFault) -> bool:
        """Apply a pushed hard fault at once; True if advertised devices changed."""
        cores_changed = self.fault_health(fault)
        if not self.acts_at_once(fault):
            return cores_changed
        return self.fault_capacity(fault.timestamp) or cores_changed

    def fault_health(self, fault: HardFault) -> bool:
        """First half of :meth:`hard_fault`: the cores' health; True if any neuron core changed health.

        The shell publishes the cores before :meth:`fault_capacity` (the kubelet must stop placing work on a
        failed core first; the event-throughput side follows a moment later).
        """
        self.faults_applied += 1
        if fault.kind is FaultKind.LINK and 0 <= fault.index < self.topology.n_links:
            self.link_failed[fault.index] = fault.failed
        if not self.acts_at_once(fault):
            return False
        if fault.kind is FaultKind.CORE:
            cores = np.array([fault.index])
        else:
            cores = np.flatnonzero(self.topology.router == self.topology.link_src[fault.index])
        before = self.health.healthy[cores]
        self.health.fail(cores, failed=fault.failed, now=fault.timestamp)
        return bool((before != self.health.healthy[cores]).any())

    def fault_capacity(self, now: float) -> bool:
        """Second half of :meth:`hard_fault`: effective capacity at once (for every fault applied since the last
        call, so a burst needs one); True if event-throughput changed."""
        return self.capacity.update(self.effective_keps(), now=now, immediate=True)

    def acts_at_once(self, fault: HardFault) -> bool:
        """Whether ``fault`` changes health at once (a core or link failure in range; a recovery waits for
        frames to confirm it, dwell applies)."""
        if fault.kind is FaultKind.CORE:
            return 0 <= fault.index < self.topology.n_cores
        return 0 <= fault.index < self.topology.n_links and fault.failed

    def core_devices(self) -> DeviceSet:
        """The neuron-core device list alone (what a hard fault must publish first)."""
        return neuron_core_devices(self.topology, self.health.healthy)

    def devices(self) -> dict[str, DeviceSet]:
        """The complete device list of each resource, as ListAndWatch must send it."""
        nc = self.core_devices()
        ev = event_throughput_devices(self.blocks, self.topology, self.capacity.healthy_per_chip)
        return {nc.resource: nc, ev.resource: ev}
