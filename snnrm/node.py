"""The node service: the asyncio shell around :class:`snnrm.core.monitor.NodeMonitor`.

It owns the telemetry sampling loop and the hard-fault listener of one backend, folds what they deliver into the
monitor, and publishes the resulting device lists to one :class:`DeviceFeed` per resource, which the device
plugin servers stream to the kubelet. Hard faults take the short path (event → monitor → feed) so that a failed
core reaches ListAndWatch without waiting for the next sample.
"""

from __future__ import annotations

import asyncio
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
    withheld: BoolArray | None = field(init=False, default=None)
    """Neuron cores advertised Unhealthy because a live remap lent them to a running stage (see :meth:`withhold`)."""
    last_sample_wall: float = field(init=False, default=float("nan"))

    def __post_init__(self) -> None:
        self.monitor = NodeMonitor(self.topology, self.blocks)
        self.feeds = {res: DeviceFeed(res, devs) for res, devs in self.monitor.devices().items()}

    @classmethod
    async def start(cls, backend: HardwareBackend, *, block_keps: float, sample_period: float) -> NodeService:
        """Discover the hardware and build the service around it."""
        topology = await backend.discover()
        blocks = ThroughputBlocks.plan(topology, block_keps=block_keps)
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
        nc = devices.get(NEURON_CORE)
        if self.withheld is not None and nc is not None:
            devices[NEURON_CORE] = replace(nc, healthy=nc.healthy & ~self.withheld)
        return devices

    # -- loops -----------------------------------------------------------------------------------------------

    def _publish(self) -> None:
        for res, devs in self._devices_now().items():
            before = self.feeds[res].current
            self.feeds[res].publish(devs)
            if before is not None and before.healthy_count != devs.healthy_count:
                log.info(
                    "capacity_changed",
                    resource=res,
                    healthy=devs.healthy_count,
                    total=len(devs.ids),
                    was=before.healthy_count,
                )

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
                if self.monitor.observe(frame):
                    self._publish()
                self.last_sample_wall = time.monotonic()
                self.ready.set()
            next_due += self.sample_period
            delay = next_due - time.monotonic()
            if delay < 0:  # fell behind: don't burst to catch up, just resume the cadence from now
                next_due = time.monotonic()
                delay = 0.0
            await asyncio.sleep(delay)

    async def watch_hard_faults(self) -> None:
        """Apply pushed hard faults the moment they arrive.

        A chip failure arrives as one event per core and per link (hundreds at once); they are applied one by one
        (the first reaches ListAndWatch at once) but logged as one line per burst with counts, so a failing chip
        does not flood the log.
        """
        loop = asyncio.get_running_loop()
        burst: dict[tuple[str, bool], list[int]] = {}

        def flush() -> None:
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
                if not burst:
                    loop.call_soon(flush)  # after every event already queued in this burst has been applied
                burst.setdefault((fault.kind.value, fault.failed), []).append(fault.index)
                if self.monitor.hard_fault(fault):
                    self._publish()
        finally:
            if burst:
                flush()
