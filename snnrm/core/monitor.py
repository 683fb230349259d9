"""The node's telemetry decisions in one place: frames and hard faults in, device lists out.

:class:`NodeMonitor` folds each telemetry frame through validation and smoothing (:mod:`snnrm.core.rates`), the
health state machine (:mod:`snnrm.core.health`) and effective capacity (:mod:`snnrm.core.capacity`), and
answers with the complete device list of each resource. It is pure: the asyncio shell feeds it and publishes
what it returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snnrm.core.capacity import CapacityTracker, effective_core_keps
from snnrm.core.devices import (
    DeviceSet,
    ThroughputBlocks,
    event_throughput_devices,
    neuron_core_devices,
)
from snnrm.core.health import Health, HealthMachine, HealthSettings, Observation
from snnrm.core.rates import RateSettings, RateTracker
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import BoolArray, FloatArray, Topology


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
        n = self.topology.n_cores
        if frame.queue_depth.shape != (n,) or frame.link_utilization.shape != (self.topology.n_links,):
            # A frame of the wrong shape is a backend bug or a hot-swapped board; never index with it.
            self.rejected_frames += 1
            return False
        self.rates.update(frame)
        util = np.nan_to_num(np.asarray(frame.link_utilization, dtype=np.float64), nan=0.0).clip(0.0, None)
        self.link_utilization = util
        self.link_failed = np.asarray(frame.link_failed, dtype=np.bool_)
        # A failed link is as bad as a fully congested one for the cores whose router it leaves.
        eff_util = np.where(self.link_failed, np.inf, util)
        router_util = np.zeros(self.topology.n_routers)
        np.maximum.at(router_util, self.topology.link_src, eff_util)
        before = self.health.state.copy()
        self.health.step(
            Observation(
                now=frame.timestamp,
                failed=np.asarray(frame.core_failed, dtype=np.bool_),
                last_valid=self.rates.rates.last_valid,
                queue_fill=self.queue_fill,
                efficiency=self.rates.rates.efficiency,
                router_link_utilization=router_util[self.topology.router],
            )
        )
        self.last_frame_time = frame.timestamp
        self.frames += 1
        health_changed = bool(((before == Health.HEALTHY) != self.health.healthy).any())
        capacity_changed = self.capacity.update(self.effective_keps(), now=frame.timestamp)
        return health_changed or capacity_changed

    def hard_fault(self, fault: HardFault) -> bool:
        """Apply a pushed hard fault at once; True if advertised devices changed."""
        if fault.kind is FaultKind.CORE:
            if not 0 <= fault.index < self.topology.n_cores:
                return False
            cores = np.array([fault.index])
        else:
            if not 0 <= fault.index < self.topology.n_links:
                return False
            self.link_failed[fault.index] = fault.failed
            # Only a failure acts at once; a link recovery is confirmed by the next frames (dwell applies).
            if not fault.failed:
                return False
            r = self.topology.link_src[fault.index]
            cores = np.flatnonzero(self.topology.router == r)
        before = self.health.healthy.copy()
        self.health.fail(cores, failed=fault.failed, now=fault.timestamp)
        changed = bool((before != self.health.healthy).any())
        return self.capacity.update(self.effective_keps(), now=fault.timestamp, immediate=True) or changed

    def devices(self) -> dict[str, DeviceSet]:
        """The complete device list of each resource, as ListAndWatch must send it."""
        nc = neuron_core_devices(self.topology, self.health.healthy)
        ev = event_throughput_devices(self.blocks, self.topology, self.capacity.healthy_per_chip)
        return {nc.resource: nc, ev.resource: ev}
