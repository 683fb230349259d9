"""Effective event-throughput capacity: what the node can really take, from measured headroom.

The scheduler sees ``snnrm.io/event-throughput`` devices; how many of them are Healthy follows each chip's
measured capacity, not its datasheet. A chip whose cores drop spikes or sit on full queues loses blocks; when it
recovers, it gains them back, with a margin so a chip hovering at a block boundary does not flap.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snnrm.core.devices import ThroughputBlocks
from snnrm.core.topology import BoolArray, FloatArray, IntArray, Topology


def effective_core_keps(
    nominal_keps: FloatArray,
    healthy: BoolArray,
    efficiency: FloatArray,
    queue_fill: FloatArray,
    *,
    queue_knee: float = 0.5,
) -> FloatArray:
    """Per-core usable throughput in KEPS.

    Spikes that do not arrive are throughput the core does not deliver, so capacity scales with spike-transfer
    efficiency; a queue filling past ``queue_knee`` means arrivals already outrun service, so the remaining
    headroom shrinks linearly to zero at a full queue. Unhealthy cores and NaN readings give nothing.
    """
    eff = np.clip(np.where(np.isnan(efficiency), 0.0, efficiency), 0.0, 1.0)
    fill = np.clip(np.where(np.isnan(queue_fill), 1.0, queue_fill), 0.0, 1.0)
    headroom = np.clip(1.0 - (fill - queue_knee) / (1.0 - queue_knee), 0.0, 1.0)
    return np.where(healthy, nominal_keps * eff * headroom, 0.0)


@dataclass(slots=True, eq=False)
class CapacityTracker:
    """Healthy event-throughput blocks per chip, with hysteresis in size and in time.

    Measured capacity moves with every sample; the advertised block count must not, or every frame would send
    the kubelet a new device list. A chip shrinks when its measured capacity has stayed below the advertised
    blocks for ``shrink_dwell`` (at once for hard faults), and grows when it has covered at least one more block
    plus ``grow_margin`` for ``grow_dwell``; it then jumps straight to the level the measurement supports.
    """

    topology: Topology
    blocks: ThroughputBlocks
    grow_margin: float = 0.5
    """Extra fraction of a block a chip must cover before it gains blocks back."""
    shrink_dwell: float = 0.5
    """Seconds below the advertised level before shrinking: the same as the health machine's enter dwell."""
    grow_dwell: float = 2.0
    """Seconds above the next level before growing: the same as the health machine's recover dwell."""
    healthy_per_chip: IntArray = field(init=False)
    max_per_chip: IntArray = field(init=False)
    _below_since: FloatArray = field(init=False)
    _above_since: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        chips = self.topology.n_chips
        self.max_per_chip = np.bincount(self.blocks.chip_of_block, minlength=chips).astype(np.int64)
        self.healthy_per_chip = self.max_per_chip.copy()
        self._below_since = np.full(chips, np.nan)
        self._above_since = np.full(chips, np.nan)

    def update(self, core_keps: FloatArray, *, now: float, immediate: bool = False) -> bool:
        """Fold in per-core effective capacity at backend time ``now``; True if any chip's block count changed.

        ``immediate`` skips the shrink dwell (a pushed hard fault: the capacity is gone, not noisy).
        """
        per_chip = np.bincount(self.topology.chip_of, weights=core_keps, minlength=self.topology.n_chips)
        ratio = per_chip / self.blocks.block_keps
        supported = np.clip(np.floor(ratio + 1e-9).astype(np.int64), 0, self.max_per_chip)
        grow_to = np.floor(ratio - self.grow_margin + 1e-9).astype(np.int64)
        grow_to = np.clip(np.where(ratio + 1e-9 >= self.max_per_chip, self.max_per_chip, grow_to), 0, self.max_per_chip)
        cur = self.healthy_per_chip
        below = supported < cur
        above = grow_to > cur
        self._below_since = np.where(below, np.where(np.isnan(self._below_since), now, self._below_since), np.nan)
        self._above_since = np.where(above, np.where(np.isnan(self._above_since), now, self._above_since), np.nan)
        shrink = below & (immediate | (now - self._below_since >= self.shrink_dwell))
        grow = above & (now - self._above_since >= self.grow_dwell)
        new = np.where(shrink, supported, np.where(grow, grow_to, cur))
        changed = bool((new != cur).any())
        if changed:
            self._below_since = np.where(new != cur, np.nan, self._below_since)
            self._above_since = np.where(new != cur, np.nan, self._above_since)
        self.healthy_per_chip = new
        return changed
