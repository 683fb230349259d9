"""The node service: the asyncio shell around :class:`snnrm.core.monitor.NodeMonitor`.

It owns the telemetry sampling loop and the hard-fault listener of one backend, folds what they deliver into the
monitor, and publishes the resulting device lists to one :class:`DeviceFeed` per resource, which the device
plugin servers stream to the kubelet. Hard faults take the short path (event → monitor → feed) so that a failed
core reaches ListAndWatch without waiting for the next sample.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import structlog

from snnrm.backends.base import HardwareBackend
from snnrm.core.devices import NEURON_CORE, DeviceSet, ThroughputBlocks, core_counts
from snnrm.core.monitor import NodeMonitor
from snnrm.core.topology import BoolArray, FloatArray, Topology
from snnrm.kubelet.feed import DeviceFeed

log = structlog.get_logger(__name__)

BURST_SETTLE_S = 0.01
"""Seconds after a burst's first hard fault before its capacity update and log line (past its ListAndWatch send)."""

FAULT_SEND_S = 0.004
"""Seconds other work stands back after a pushed hard fault changed what ListAndWatch sends: the send of 16,384
devices takes 1-2 ms of loop turns (the fault benchmark's floor), and on a 2-core node a reallocator pass slice
between turns, or a frame's rates and health computed in a worker thread beside them (1.5 ms alone, 3-4 ms when
sharing the CPU and the GIL with the send), pushed it past its 5 ms budget."""


@dataclass(slots=True, eq=False)
class NodeService:
    """Telemetry → health/capacity → device feeds, for one node."""

    backend: HardwareBackend
    topology: Topology
    blocks: ThroughputBlocks
    sample_period: float
    monitor: NodeMonitor = field(init=False)
    feeds: dict[str, DeviceFeed] = field(init=False)
    ready: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    """Set once the first frame has been folded in (so what we advertise is measured, not assumed)."""
    frame_errors: int = field(init=False, default=0)
    stale_health_plans: int = field(init=False, default=0)
    """Frames whose health, computed off the loop, was folded again on it because a hard fault came meanwhile."""
    withheld: BoolArray | None = field(init=False, default=None)
    """Neuron cores advertised Unhealthy because a live remap lent them to a running stage (see :meth:`withhold`)."""
    last_sample_wall: float = field(init=False, default=float("nan"))
    frames: int = field(init=False, default=0)
    """Frames folded in so far: what the reallocator's pass reads changes only when this does."""
    _folded: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    fault_published: float = field(init=False, default=-math.inf)
    """``time.monotonic()`` when a pushed hard fault last changed what ListAndWatch sends: other work on the loop
    (the reallocator's pass) stands back for a moment after it, so the message goes out first."""

    def stand_back(self) -> float:
        """Seconds other work should still leave the loop, the GIL and the CPU to a just-published hard fault's
        ListAndWatch message (0 when none was published within ``FAULT_SEND_S``)."""
        return max(self.fault_published + FAULT_SEND_S - time.monotonic(), 0.0)

    def yield_to_faults(self) -> None:
        """Worker-thread side of :meth:`stand_back`: sleep (the GIL released) while a fault's message goes out."""
        while (wait := self.stand_back()) > 0:
            time.sleep(wait)

    def __post_init__(self) -> None:
        self.monitor = NodeMonitor(self.topology, self.blocks)
        self.feeds = {res: DeviceFeed(res, devs) for res, devs in self.monitor.devices().items()}

    @classmethod
    async def start(cls, backend: HardwareBackend, *, block_keps: float, sample_period: float) -> NodeService:
        """Discover the hardware and build the service around it."""
        topology = await backend.discover()
        blocks = ThroughputBlocks.plan(topology, block_keps=block_keps)  # BlockSizeError: no block fits a chip
        log.info(
            "hardware_discovered",
            backend=backend.name,
            chips=topology.n_chips,
            cores=topology.n_cores,
            links=topology.n_links,
            throughput_blocks=len(blocks.ids),
            block_keps=blocks.block_keps,
        )
        return cls(backend=backend, topology=topology, blocks=blocks, sample_period=sample_period)

    # -- what the device plugin reads ------------------------------------------------------------------------

    def core_healthy(self) -> BoolArray:
        return self.monitor.core_healthy

    def queue_fill(self) -> FloatArray:
        return self.monitor.queue_fill

    def chip_headroom_keps(self) -> FloatArray:
        """Measured usable event throughput per chip, in KEPS."""
        out: FloatArray = np.bincount(
            self.topology.chip_of, weights=self.monitor.effective_keps(), minlength=self.topology.n_chips
        ).astype(np.float64)
        return out

    def devices(self) -> dict[str, DeviceSet]:
        """What each resource last advertised."""
        return {res: devs for res, feed in self.feeds.items() if (devs := feed.current) is not None}

    # -- cores lent by live remaps (snnrm/cluster/remap.py) --------------------------------------------------------

    def withhold(self, cores: BoolArray | None) -> None:
        """Advertise ``cores`` Unhealthy whatever their health: a live remap moved a stage onto them while the
        kubelet still books the stage on its old cores, so the kubelet must not hand these out. None: lend none."""
        self.withheld = None if cores is None or not np.any(cores) else np.asarray(cores, dtype=np.bool_).copy()
        self._publish()

    def core_counts(self) -> dict[str, int]:
        """Neuron cores by meaning (:func:`snnrm.core.devices.core_counts`)."""
        return core_counts(self.monitor.core_healthy, self.withheld)

    def _devices_now(self) -> dict[str, DeviceSet]:
        devices = self.monitor.devices()
        devices[NEURON_CORE] = self._withhold(devices[NEURON_CORE])
        return devices

    def _core_devices_now(self) -> DeviceSet:
        return self._withhold(self.monitor.core_devices())

    def _withhold(self, nc: DeviceSet) -> DeviceSet:
        return nc if self.withheld is None else replace(nc, healthy=nc.healthy & ~self.withheld)

    # -- loops -----------------------------------------------------------------------------------------------

    def _publish(self, devices: dict[str, DeviceSet] | None = None, *, quiet: bool = False) -> None:
        """Publish ``devices`` (default: every resource's list now) to the feeds ListAndWatch streams from, and
        log each change of healthy count (unless ``quiet``: the hard-fault path logs once per burst)."""
        for res, devs in (self._devices_now() if devices is None else devices).items():
            before = self.feeds[res].current
            self.feeds[res].publish(devs)
            if not quiet and before is not None:
                _log_capacity(res, before.healthy_count, devs)

    async def sample_forever(self) -> None:
        """Read a frame every ``sample_period``; a failing read is logged and counted, never fatal."""
        next_due = time.monotonic()
        while True:
            try:
                frame = await self.backend.read_frame()
            except Exception as e:  # noqa: BLE001 - a backend fault must not stop the daemon; it is counted
                self.frame_errors += 1
                log.warning("telemetry_read_failed", error=repr(e), errors=self.frame_errors)
            else:
                # The rates and the health decisions are computed in a worker thread (numpy releases the GIL): at
                # 16,384 cores that is ~1.5 ms of work, and a pushed hard fault must not wait behind it (5 ms to
                # ListAndWatch); between its steps the worker sleeps while a fault's message goes out. The health
                # plan only reads what hard faults write; it is applied here, on the loop, unless a fault was
                # applied meanwhile: then the frame's health is folded again here (rare: a fault and a frame within
                # the same millisecond or two), never over the fault.
                plan = await asyncio.to_thread(self.monitor.prepare, frame, self.yield_to_faults)
                if plan is not None:
                    # A hard fault that became ready meanwhile goes first, and one just published is sent before
                    # this frame's ~1-2 ms of loop work (applying the plan, capacity, the publish of both resources).
                    await asyncio.sleep(self.stand_back())
                    changed = self.monitor.apply_health(plan)
                    if changed is None:
                        self.stale_health_plans += 1
                        changed = self.monitor.fold_health(frame)
                        await asyncio.sleep(0)
                    if self.monitor.fold_capacity(frame) or changed:
                        self._publish()
                    self._frame_folded()
                self.last_sample_wall = time.monotonic()
                self.ready.set()
            next_due += self.sample_period
            delay = next_due - time.monotonic()
            if delay < 0:  # fell behind: don't burst to catch up, just resume the cadence from now
                next_due = time.monotonic()
                delay = 0.0
            await asyncio.sleep(delay)

    def _frame_folded(self) -> None:
        self.frames += 1
        folded, self._folded = self._folded, asyncio.Event()
        folded.set()

    async def next_frame(self, seen: int) -> int:
        """Wait until more than ``seen`` frames have been folded in; returns how many have."""
        while self.frames <= seen:
            await self._folded.wait()
        return self.frames

    async def watch_hard_faults(self) -> None:
        """Apply pushed hard faults the moment they arrive.

        The cores' health is applied and published per event, at once: the kubelet must stop placing work on a
        failed core within the 5 ms budget. What can wait a moment runs once per burst, ``BURST_SETTLE_S`` after
        its first event, so it never delays the ListAndWatch message: the recomputed event throughput (~0.5 ms at
        16,384 cores, a second message) and the log line. A chip failure arrives as one event per core and per
        link (hundreds at once) and is logged as one line per burst with counts, so it does not flood the log.
        """
        loop = asyncio.get_running_loop()
        burst: dict[tuple[str, bool], list[int]] = {}
        capacity_at: float | None = None
        settle: asyncio.TimerHandle | None = None
        cores_before = 0

        def after_burst() -> None:
            nonlocal capacity_at, settle
            settle = None
            if capacity_at is not None and self.monitor.fault_capacity(capacity_at):
                self._publish()
            capacity_at = None
            cores = self.feeds[NEURON_CORE].current
            if cores is not None:
                _log_capacity(NEURON_CORE, cores_before, cores)
            for (kind, failed), indices in burst.items():
                log.info(
                    "hard_fault",
                    kind=kind,
                    failed=failed,
                    count=len(indices),
                    first=min(indices),
                    last=max(indices),
                )
            burst.clear()

        try:
            async for fault in self.backend.hard_faults():
                if settle is None:
                    cores = self.feeds[NEURON_CORE].current
                    cores_before = 0 if cores is None else cores.healthy_count
                burst.setdefault((fault.kind.value, fault.failed), []).append(fault.index)
                if self.monitor.fault_health(fault):
                    self._publish({NEURON_CORE: self._core_devices_now()}, quiet=True)
                    self.fault_published = time.monotonic()
                if self.monitor.acts_at_once(fault):
                    capacity_at = fault.timestamp if capacity_at is None else max(capacity_at, fault.timestamp)
                if settle is None:
                    settle = loop.call_later(BURST_SETTLE_S, after_burst)
        finally:
            if settle is not None:
                settle.cancel()
                after_burst()  # the capacity and the log of faults already applied are not lost on shutdown


def _log_capacity(resource: str, was: int, devices: DeviceSet) -> None:
    if devices.healthy_count != was:
        log.info("capacity_changed", resource=resource, healthy=devices.healthy_count, total=len(devices.ids), was=was)
