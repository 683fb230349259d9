"""What the device plugin needs to know about the hardware right now, supplied by the app.

Health for validation and preference is *not* asked here: it is the health last advertised through the
resource's :class:`~snnrm.kubelet.feed.DeviceFeed`, so Allocate judges a device by exactly what the kubelet was
told. This seam gives the rest: the static layout and the live load that steers preferences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from snnrm.core.devices import ThroughputBlocks
from snnrm.core.topology import FloatArray, Topology


class AllocationState(Protocol):
    """Live hardware state for allocation decisions. Calls must be cheap (they sit on the RPC path)."""

    @property
    def topology(self) -> Topology: ...

    @property
    def blocks(self) -> ThroughputBlocks:
        """Layout of the event-throughput devices."""
        ...

    def queue_fill(self) -> FloatArray:
        """(n_cores,) event-queue depth / capacity per core now, 0..1 (NaN is treated as full)."""
        ...

    def chip_headroom_keps(self) -> FloatArray:
        """(n_chips,) measured free event throughput per chip, in KEPS."""
        ...


@dataclass(slots=True)
class StaticAllocationState:
    """An :class:`AllocationState` holding plain arrays; used by the stand-in demo, tests and benchmarks."""

    topology: Topology
    blocks: ThroughputBlocks
    fill: FloatArray | None = None
    headroom: FloatArray | None = None
    _zeros: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        self._zeros = np.zeros(self.topology.n_cores)

    def queue_fill(self) -> FloatArray:
        return self._zeros if self.fill is None else self.fill

    def chip_headroom_keps(self) -> FloatArray:
        if self.headroom is not None:
            return self.headroom
        per_chip = np.bincount(
            self.topology.chip_of, weights=self.topology.core_nominal_keps, minlength=self.topology.n_chips
        )
        return per_chip.astype(np.float64)
