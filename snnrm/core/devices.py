"""The devices snnrm advertises to the kubelet, derived from topology and per-core health/capacity.

Two extended resources:

* ``snnrm.io/neuron-core``: one device per core; healthy when the core is.
* ``snnrm.io/event-throughput``: one device per block of event throughput (KEPS). Blocks belong to a chip; a
  chip's healthy blocks are as many as its *effective* capacity covers, so falling measured headroom shrinks
  what the scheduler sees and recovery grows it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snnrm.core.topology import BoolArray, IntArray, Topology

NEURON_CORE = "snnrm.io/neuron-core"
EVENT_THROUGHPUT = "snnrm.io/event-throughput"
CDI_VERSION = "0.5.0"
"""``cdiVersion`` of every CDI spec snnrm writes (device plugin and DRA): the lowest covering the fields used
(``env`` and ``deviceNodes``, no annotations); loaders reject specs whose version is lower than their fields need,
and older runtimes reject versions they do not know."""
MAX_DEVICES_PER_RESOURCE = 16384
"""Kubelet copes with large lists, but node status and ListAndWatch messages grow with them; ~16k keeps a full
list under a megabyte and the scheduler's per-node bookkeeping small."""


class BlockSizeError(ValueError):
    """The event-throughput block size cannot cut this node's chips into devices."""


@dataclass(frozen=True, slots=True, eq=False)
class DeviceSet:
    """The complete device list of one resource (ListAndWatch always sends the complete list)."""

    resource: str
    ids: tuple[str, ...]
    healthy: BoolArray
    numa: IntArray

    def same_as(self, other: DeviceSet | None) -> bool:
        """True if sending ``self`` after ``other`` would tell the kubelet nothing new."""
        # Identity first: the IDs (16k strings compare in ~60 us) and NUMA nodes are usually the topology's own.
        return (
            other is not None
            and (self.ids is other.ids or self.ids == other.ids)
            and np.array_equal(self.healthy, other.healthy)
            and (self.numa is other.numa or np.array_equal(self.numa, other.numa))
        )

    @property
    def healthy_count(self) -> int:
        return int(np.count_nonzero(self.healthy))


def neuron_core_devices(topology: Topology, core_healthy: BoolArray) -> DeviceSet:
    """One device per core, NUMA node from the chip's attachment."""
    return DeviceSet(
        resource=NEURON_CORE,
        ids=topology.ids,
        healthy=np.asarray(core_healthy, dtype=np.bool_).copy(),
        numa=topology.core_numa,
    )


@dataclass(frozen=True, slots=True, eq=False)
class ThroughputBlocks:
    """Static layout of the event-throughput devices: which chip each block belongs to."""

    block_keps: float
    """Event throughput one device stands for, in KEPS."""
    chip_of_block: IntArray
    rank_in_chip: IntArray
    """Position of each block within its chip: blocks 0..k-1 of a chip are the healthy ones."""
    ids: tuple[str, ...]

    @classmethod
    def plan(
        cls, topology: Topology, *, block_keps: float, max_devices: int = MAX_DEVICES_PER_RESOURCE
    ) -> ThroughputBlocks:
        """Cut each chip's nominal throughput into blocks; grow the block size if the count would pass the cap."""
        if not block_keps > 0:
            raise BlockSizeError(f"event-throughput block size must be positive, got {block_keps}")
        if not np.isfinite(block_keps):
            raise BlockSizeError(f"event-throughput block size must be finite, got {block_keps}")
        per_chip = np.bincount(topology.chip_of, weights=topology.core_nominal_keps, minlength=topology.n_chips)
        # Counted in floats first: a tiny block size makes counts no int64 holds.
        if float(np.floor(per_chip / block_keps).sum()) > max_devices:
            # Round the block size up so the whole node stays under the cap with the same size everywhere.
            block_keps = float(np.ceil(per_chip.sum() / max_devices))
        counts = np.floor(per_chip / block_keps).astype(np.int64)
        if topology.n_chips and not counts.any():
            raise BlockSizeError(
                f"event-throughput block size {block_keps:g} KEPS is more than any chip's throughput (the largest "
                f"is {float(per_chip.max()):g} KEPS): the node would offer no event-throughput device"
            )
        chip_of_block = np.repeat(np.arange(topology.n_chips, dtype=np.int64), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        rank = np.arange(len(chip_of_block), dtype=np.int64) - starts
        ids = tuple(f"chip{c}-ev{r}" for c, r in zip(chip_of_block.tolist(), rank.tolist(), strict=True))
        return cls(block_keps=block_keps, chip_of_block=chip_of_block, rank_in_chip=rank, ids=ids)


def event_throughput_devices(blocks: ThroughputBlocks, topology: Topology, healthy_per_chip: IntArray) -> DeviceSet:
    """The first ``healthy_per_chip[c]`` blocks of each chip are Healthy, the rest Unhealthy.

    Keeping the healthy ones at the low ranks means a shrinking chip always withdraws the same devices, so
    the kubelet sees the smallest possible change.
    """
    healthy = blocks.rank_in_chip < np.asarray(healthy_per_chip, dtype=np.int64)[blocks.chip_of_block]
    return DeviceSet(
        resource=EVENT_THROUGHPUT,
        ids=blocks.ids,
        healthy=healthy,
        numa=topology.chip_numa[blocks.chip_of_block],
    )


def core_counts(healthy: BoolArray, withheld: BoolArray | None) -> dict[str, int]:
    """Neuron cores by meaning, so every surface (page, log, /api/v1/node, metrics) says the same thing:
    ``healthy`` (telemetry says so) = ``allocatable`` (advertised to the kubelet) + ``withheld_for_remap`` (healthy,
    but lent to a live remap, so the kubelet must not hand them out); ``unhealthy`` = ``total`` - ``healthy``."""
    n_healthy = int(np.count_nonzero(healthy))
    lent = int(np.count_nonzero(healthy & withheld)) if withheld is not None else 0
    return {
        "total": int(healthy.size),
        "healthy": n_healthy,
        "unhealthy": int(healthy.size) - n_healthy,
        "withheld_for_remap": lent,
        "allocatable": n_healthy - lent,
    }
