"""DRA settings and the static layout of a node's devices: core groups, chips and event-throughput devices."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from snnrm.core.dra.names import CHIP, GROUP, THROUGHPUT
from snnrm.core.topology import FloatArray, IntArray, Topology


@dataclass(frozen=True, slots=True)
class DraFeatures:
    """What the cluster's apiserver keeps of what we send (fields of disabled features are silently dropped)."""

    partitionable: bool = True
    """``sharedCounters``/``consumesCounters`` (DRAPartitionableDevices): without it, chips are not published."""
    consumable: bool = True
    """``allowMultipleAllocations`` + ``requestPolicy`` (DRAConsumableCapacity): without it, no throughput devices."""
    taints: bool = True
    """Device ``taints`` (DRADeviceTaints): without it, degraded devices are withheld from the slices instead."""


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    """What the node knows about its chips beyond topology (published as attributes when known)."""

    model: str | None = None
    """e.g. ``loihi2`` (a sim preset or a driver's chip model)."""
    generation: int | None = None
    driver_version: str | None = None
    """snnrm's version (a semver, published as a ``version`` attribute)."""


@dataclass(frozen=True, slots=True)
class HeadroomSettings:
    """Buckets of measured headroom; the defaults keep a slice stable under normal telemetry noise."""

    levels: int = 4
    """Buckets of nominal throughput: 4 gives 0/25/50/75/100 %."""
    slack: float = 0.2
    """Fraction of a bucket forgiven when deciding the supported bucket: an idle core at 99 % efficiency is 100 %."""
    margin: float = 0.5
    """Extra fraction of a bucket a device must clear before it moves up (with ``slack``: 70-82.5 % band at 75 %)."""
    shrink_dwell: float = 2.0
    """Seconds below the published bucket before moving down (longer than health's: an attribute is a hint)."""
    grow_dwell: float = 10.0
    """Seconds above the next bucket before moving up: attribute churn rewrites slices, so recover slowly."""


def parse_tile(text: str) -> tuple[int, int]:
    """``"2x2"`` -> (2, 2): routers along x and y per core-group device."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"expected a tile like 1x1 or 2x2 (routers along x and y), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True, slots=True, eq=False)
class DraLayout:
    """The node's DRA devices in publishing order: every core group, then every chip, then every chip's
    throughput device. Built once from the topology; device ``i``'s cores are ``cores_of(i)``."""

    topology: Topology
    tile: tuple[int, int]
    group_of_core: IntArray
    group_chip: IntArray
    group_local: IntArray
    group_router: IntArray
    """Global router index of the group's origin router (its router domain when the tile is 1x1)."""
    group_gx: IntArray
    group_gy: IntArray
    group_cores: IntArray
    group_nominal: FloatArray
    chip_cores: IntArray
    chip_nominal: FloatArray
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    index_of: dict[str, int]
    _members: tuple[IntArray, ...] = field(repr=False)

    @classmethod
    def build(cls, topology: Topology, *, tile: tuple[int, int] = (1, 1)) -> DraLayout:
        g = topology.geometry
        tw, th = max(1, min(tile[0], g.cols)), max(1, min(tile[1], g.rows))
        gcols, grows = math.ceil(g.cols / tw), math.ceil(g.rows / th)
        per_chip = gcols * grows
        router_local = topology.local // g.cores_per_router
        rx, ry = router_local % g.cols, router_local // g.cols
        local_group = (ry // th) * gcols + rx // tw
        group_of_core = (topology.chip_of * per_chip + local_group).astype(np.int64)
        n_groups = topology.n_chips * per_chip
        group_chip = np.arange(n_groups, dtype=np.int64) // per_chip
        group_local = np.arange(n_groups, dtype=np.int64) % per_chip
        ox, oy = (group_local % gcols) * tw, (group_local // gcols) * th
        group_router = group_chip * topology.routers_per_chip + oy * g.cols + ox
        group_gx = topology.chip_pos[group_chip, 0] * g.cols + ox
        group_gy = topology.chip_pos[group_chip, 1] * g.rows + oy
        group_cores = np.bincount(group_of_core, minlength=n_groups).astype(np.int64)
        group_nominal = np.bincount(group_of_core, weights=topology.core_nominal_keps, minlength=n_groups).astype(
            np.float64
        )
        chip_cores = np.bincount(topology.chip_of, minlength=topology.n_chips).astype(np.int64)
        chip_nominal = np.bincount(
            topology.chip_of, weights=topology.core_nominal_keps, minlength=topology.n_chips
        ).astype(np.float64)
        chips = range(topology.n_chips)
        names = (
            *(f"chip{c}-g{k}" for c, k in zip(group_chip.tolist(), group_local.tolist(), strict=True)),
            *(f"chip{c}" for c in chips),
            *(f"chip{c}-ev" for c in chips),
        )
        kinds = (GROUP,) * n_groups + (CHIP,) * topology.n_chips + (THROUGHPUT,) * topology.n_chips
        order = np.argsort(group_of_core, kind="stable")
        bounds = np.cumsum(group_cores)[:-1]
        group_members = tuple(np.split(order, bounds))
        chip_members = tuple(np.flatnonzero(topology.chip_of == c) for c in chips)
        return cls(
            topology=topology,
            tile=(tw, th),
            group_of_core=group_of_core,
            group_chip=group_chip,
            group_local=group_local,
            group_router=group_router,
            group_gx=group_gx,
            group_gy=group_gy,
            group_cores=group_cores,
            group_nominal=group_nominal,
            chip_cores=chip_cores,
            chip_nominal=chip_nominal,
            names=names,
            kinds=kinds,
            index_of={n: i for i, n in enumerate(names)},
            _members=group_members + chip_members + chip_members,
        )

    @property
    def n_groups(self) -> int:
        return len(self.group_chip)

    @property
    def n_chips(self) -> int:
        return self.topology.n_chips

    @property
    def n_devices(self) -> int:
        return len(self.names)

    def chip_of_device(self, i: int) -> int:
        if i < self.n_groups:
            return int(self.group_chip[i])
        return (i - self.n_groups) % self.n_chips

    def cores_of(self, i: int) -> IntArray:
        """Global core indices behind device ``i``."""
        return self._members[i]

    def nominal_keps(self, i: int) -> float:
        return float(self.group_nominal[i]) if i < self.n_groups else float(self.chip_nominal[self.chip_of_device(i)])
