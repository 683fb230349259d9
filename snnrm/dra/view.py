"""The node's DRA device state, kept current from the telemetry monitor.

:class:`DraView` folds the monitor's per-core health, reasons and effective throughput into
:class:`snnrm.core.dra.DraState` whenever the device plugin's core feed changes (hard faults arrive there within
milliseconds) and at least every ``period`` seconds (headroom moves without health changing). Readers (the
ResourceSlice publisher, the health stream, NodePrepareResources) see the latest :class:`DraSnapshot` and wait
on version counters: ``health_version`` grows when health or taints change, ``version`` on any change.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

import numpy as np

from snnrm.core.dra import DraLayout, DraSnapshot, DraState, HeadroomSettings
from snnrm.core.monitor import NodeMonitor
from snnrm.core.topology import FloatArray, IntArray
from snnrm.kubelet.feed import DeviceFeed


class DraTelemetry(Protocol):
    """What the view reads each tick (all arrays indexed by global core)."""

    def core_state(self) -> IntArray: ...

    def core_reasons(self) -> IntArray: ...

    def effective_keps(self) -> FloatArray: ...

    def healthy_blocks_per_chip(self) -> IntArray: ...

    def now(self) -> float:
        """Backend time of the latest data (NaN before the first frame)."""
        ...


class MonitorTelemetry:
    """:class:`DraTelemetry` of a :class:`NodeMonitor` (the daemon's telemetry pipeline)."""

    def __init__(self, monitor: NodeMonitor) -> None:
        self._m = monitor

    def core_state(self) -> IntArray:
        return self._m.health.state

    def core_reasons(self) -> IntArray:
        return self._m.health.reasons

    def effective_keps(self) -> FloatArray:
        return self._m.effective_keps()

    def healthy_blocks_per_chip(self) -> IntArray:
        return self._m.capacity.healthy_per_chip

    def now(self) -> float:
        return self._m.last_frame_time


class DraView:
    """Current DRA device state of the node, and change notification for its readers."""

    def __init__(
        self,
        layout: DraLayout,
        telemetry: DraTelemetry,
        *,
        trigger: DeviceFeed | None = None,
        period: float = 0.5,
        headroom: HeadroomSettings | None = None,
    ) -> None:
        self.layout = layout
        self._telemetry = telemetry
        self._trigger = trigger
        self._period = period
        self._state = DraState(layout, headroom or HeadroomSettings())
        self._snapshot: DraSnapshot | None = None
        self.version = 0
        """Grows on every change of what slices or health reports would say."""
        self.health_version = 0
        """Grows when any device's health or taint changes (publish at once, no rate limit)."""
        self._changed = asyncio.Event()
        self.ready = asyncio.Event()
        """Set after the first fold of real telemetry."""

    @property
    def snapshot(self) -> DraSnapshot | None:
        return self._snapshot

    def fold(self) -> bool:
        """Read the telemetry now; True if anything readers see changed. Synchronous (vectorised, ~1 ms)."""
        t = self._telemetry
        now = t.now()
        if math.isnan(now):
            return False
        health, headroom = self._state.update(
            core_state=np.asarray(t.core_state()),
            core_reasons=np.asarray(t.core_reasons()),
            effective_keps=np.asarray(t.effective_keps()),
            healthy_blocks_per_chip=np.asarray(t.healthy_blocks_per_chip()),
            now=now,
        )
        if not (health or headroom) and self._snapshot is not None:
            return False
        self._snapshot = self._state.snapshot()
        self.version += 1
        if health:
            self.health_version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.ready.set()
        return True

    async def wait_newer(self, version: int) -> int:
        """Return :attr:`version` once it differs from ``version``."""
        while self.version == version:
            await self._changed.wait()
        return self.version

    async def run(self) -> None:
        """Fold on every core-feed change (hard faults) and at least every ``period`` seconds."""
        seen = self._trigger.version if self._trigger is not None else 0
        while True:
            self.fold()
            if self._trigger is None:
                await asyncio.sleep(self._period)
                continue
            try:
                async with asyncio.timeout(self._period):
                    seen = await self._trigger.wait_newer(seen)
            except TimeoutError:
                pass
