"""The static shape of one node's neuromorphic hardware.

A node holds chips; each chip is a 2-D mesh of neuron cores joined by routers (dimension-order, XY routing);
chips sit on a board-level grid joined by slower inter-chip links. Every per-core quantity in snnrm is a numpy
array indexed by the *global core index* defined here, so the topology is the one place that maps between
indices, device IDs and mesh coordinates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

INTER_CHIP_WEIGHT = 4.0
"""Hops one chip-to-chip crossing counts for when the hardware does not say (the default of every cost in the
core): an off-chip SerDes link is several times slower than a router hop on every board we model. Where the
hardware is known, its own ratio is passed instead (the daemon derives it from the sim preset's latencies)."""

_CORE_ID = re.compile(r"^chip(\d+)-core(\d+)$")


def core_id(chip: int, core: int) -> str:
    """Device ID of a neuron core: stable, short (well under the kubelet's 63 characters), CDI-safe."""
    return f"chip{chip}-core{core}"


@dataclass(frozen=True, slots=True)
class ChipGeometry:
    """Mesh geometry shared by all chips of a node."""

    cols: int
    """Routers along x on one chip."""
    rows: int
    """Routers along y on one chip."""
    cores_per_router: int = 1
    """Cores that share one router (a core group / router domain, e.g. 4 on a Loihi tile)."""

    @property
    def cores(self) -> int:
        return self.cols * self.rows * self.cores_per_router


@dataclass(frozen=True, slots=True, eq=False)
class Topology:
    """Chips, cores and their mesh coordinates, as arrays indexed by global core index.

    Build it with :meth:`grid`; backends translate what their hardware reports into this shape.
    """

    geometry: ChipGeometry
    chip_pos: IntArray
    """(n_chips, 2) board-level (col, row) of each chip."""
    chip_numa: IntArray
    """(n_chips,) host NUMA node each chip hangs off (reported as Device.topology)."""
    core_nominal_keps: FloatArray
    """(n_cores,) nominal event throughput of each core in kilo-events per second."""
    core_queue_capacity: FloatArray
    """(n_cores,) depth of each core's event input queue, in events."""
    chip_of: IntArray = field(init=False)
    core_numa: IntArray = field(init=False)
    """(n_cores,) ``chip_numa`` of each core's chip (one read-only array, so device lists can share it)."""
    local: IntArray = field(init=False)
    router: IntArray = field(init=False)
    """Global router-domain index of each core (cores behind one router form one asynchronous unit)."""
    gx: IntArray = field(init=False)
    """Global mesh x: chip column * chip cols + router x."""
    gy: IntArray = field(init=False)
    ids: tuple[str, ...] = field(init=False)
    index_of: dict[str, int] = field(init=False)
    link_src: IntArray = field(init=False)
    """(n_links,) source router of each directed mesh link (canonical order: by source router, then E, W, N, S)."""
    link_dst: IntArray = field(init=False)
    """(n_links,) destination router of each directed mesh link."""
    link_inter_chip: BoolArray = field(init=False)
    """(n_links,) the link crosses a chip boundary (slower, off-chip SerDes)."""

    def __post_init__(self) -> None:
        g = self.geometry
        n_chips = len(self.chip_pos)
        n = n_chips * g.cores
        if self.core_nominal_keps.shape != (n,) or self.core_queue_capacity.shape != (n,):
            raise ValueError(f"per-core arrays must have shape ({n},)")
        if self.chip_numa.shape != (n_chips,):
            raise ValueError(f"chip_numa must have shape ({n_chips},)")
        idx = np.arange(n, dtype=np.int64)
        chip = idx // g.cores
        local = idx % g.cores
        router_local = local // g.cores_per_router
        rx = router_local % g.cols
        ry = router_local // g.cols
        set_ = object.__setattr__  # frozen dataclass: derived arrays are computed once here
        set_(self, "chip_of", chip)
        set_(self, "core_numa", self.chip_numa[chip])
        set_(self, "local", local)
        set_(self, "router", chip * (g.cols * g.rows) + router_local)
        set_(self, "gx", self.chip_pos[chip, 0] * g.cols + rx)
        set_(self, "gy", self.chip_pos[chip, 1] * g.rows + ry)
        ids = tuple(core_id(int(c), int(k)) for c, k in zip(chip, local, strict=True))
        set_(self, "ids", ids)
        set_(self, "index_of", {s: i for i, s in enumerate(ids)})
        src, dst = self._mesh_links()
        set_(self, "link_src", src)
        set_(self, "link_dst", dst)
        rchip = self.router_chip
        set_(self, "link_inter_chip", rchip[src] != rchip[dst])
        for a in (chip, self.core_numa, local, self.router, self.gx, self.gy):
            a.setflags(write=False)

    @classmethod
    def grid(
        cls,
        *,
        chips: int,
        geometry: ChipGeometry,
        board_cols: int | None = None,
        nominal_keps: float = 1000.0,
        queue_capacity: float = 256.0,
        numa_nodes: int = 1,
    ) -> Topology:
        """A board of ``chips`` identical chips tiled row-major on a near-square grid."""
        if chips < 1:
            raise ValueError("a node needs at least one chip")
        cols = board_cols or int(np.ceil(np.sqrt(chips)))
        pos = np.stack([np.arange(chips) % cols, np.arange(chips) // cols], axis=1).astype(np.int64)
        # Chips are spread evenly over the host's NUMA nodes, in order, as PCIe slots usually are.
        numa = (np.arange(chips, dtype=np.int64) * max(numa_nodes, 1)) // chips
        n = chips * geometry.cores
        return cls(
            geometry=geometry,
            chip_pos=pos,
            chip_numa=numa,
            core_nominal_keps=np.full(n, float(nominal_keps)),
            core_queue_capacity=np.full(n, float(queue_capacity)),
        )

    @property
    def routers_per_chip(self) -> int:
        return self.geometry.cols * self.geometry.rows

    @property
    def n_routers(self) -> int:
        return self.n_chips * self.routers_per_chip

    @property
    def router_chip(self) -> IntArray:
        """(n_routers,) chip of each router."""
        return np.arange(self.n_routers, dtype=np.int64) // self.routers_per_chip

    def router_xy(self) -> tuple[IntArray, IntArray]:
        """Global mesh coordinates of every router."""
        g = self.geometry
        r = np.arange(self.n_routers, dtype=np.int64)
        chip, local = r // self.routers_per_chip, r % self.routers_per_chip
        return self.chip_pos[chip, 0] * g.cols + local % g.cols, self.chip_pos[chip, 1] * g.rows + local // g.cols

    def _mesh_links(self) -> tuple[IntArray, IntArray]:
        x, y = self.router_xy()
        at = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(x, y, strict=True))}
        src: list[int] = []
        dst: list[int] = []
        for i, (a, b) in enumerate(zip(x.tolist(), y.tolist(), strict=True)):
            for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                j = at.get((a + dx, b + dy))
                if j is not None:
                    src.append(i)
                    dst.append(j)
        return np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)

    @property
    def n_links(self) -> int:
        return len(self.link_src)

    @property
    def n_cores(self) -> int:
        return len(self.ids)

    @property
    def n_chips(self) -> int:
        return len(self.chip_pos)

    def indices(self, ids: list[str] | tuple[str, ...]) -> IntArray:
        """Global indices of device IDs; raises KeyError naming the first unknown ID."""
        try:
            return np.fromiter((self.index_of[i] for i in ids), dtype=np.int64, count=len(ids))
        except KeyError as e:
            raise KeyError(f"unknown core ID {e.args[0]!r}") from None

    def hops(self, a: IntArray | int, b: IntArray | int, *, inter_chip_weight: float = INTER_CHIP_WEIGHT) -> FloatArray:
        """Hop-weighted XY route length between cores ``a`` and ``b`` (broadcasting).

        Inter-chip links are slower than on-chip hops; each chip boundary crossed counts ``inter_chip_weight``.
        """
        a_ = np.asarray(a)
        b_ = np.asarray(b)
        on_mesh = np.abs(self.gx[a_] - self.gx[b_]) + np.abs(self.gy[a_] - self.gy[b_])
        ca = self.chip_pos[self.chip_of[a_]]
        cb = self.chip_pos[self.chip_of[b_]]
        crossings = np.abs(ca - cb).sum(axis=-1)
        out: FloatArray = (on_mesh + (inter_chip_weight - 1.0) * crossings).astype(np.float64)
        return out
