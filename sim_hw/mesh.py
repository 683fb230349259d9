"""Mesh geometry and XY routing as flat numpy index arrays.

The index conventions are the ones of ``snnrm.core.topology`` (which this package must not import):

* global core = chip * cores_per_chip + local; local = router_local * cores_per_router + k;
  router_local = ry * cols + rx;
* chips tiled row-major on a board grid of ``board_cols`` columns: chip c at (c % board_cols, c // board_cols);
* global router = chip * (cols * rows) + router_local; gx = chip_col * cols + rx, gy = chip_row * rows + ry;
* directed links between mesh-adjacent routers in canonical order: routers in index order, each with its
  neighbours E (+x), W (-x), N (+y), S (-y) where one exists.

Routing is dimension-order (X then Y). When the board's last chip row is only partly filled, an XY route can
cross a position with no chip; such routes go Y then X instead, which always exists for a row-major tiling.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sim_hw.spec import MachineSpec

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

E, W, N, S = 0, 1, 2, 3
_DIRS = ((1, 0), (-1, 0), (0, 1), (0, -1))


class Mesh:
    """Read-only index arrays for the cores, routers and directed links of a :class:`MachineSpec`."""

    def __init__(self, spec: MachineSpec) -> None:
        self.spec = spec
        n_chips, rpc = spec.chips, spec.routers_per_chip
        chip_ids = np.arange(n_chips, dtype=np.int64)
        self.chip_pos: IntArray = np.stack([chip_ids % spec.board_cols, chip_ids // spec.board_cols], axis=1)
        """(n_chips, 2) board-level (col, row) of each chip."""
        r = np.arange(spec.n_routers, dtype=np.int64)
        r_chip, r_local = r // rpc, r % rpc
        self.router_chip: IntArray = r_chip
        self.router_x: IntArray = self.chip_pos[r_chip, 0] * spec.cols + r_local % spec.cols
        self.router_y: IntArray = self.chip_pos[r_chip, 1] * spec.rows + r_local // spec.cols
        c = np.arange(spec.n_cores, dtype=np.int64)
        self.core_chip: IntArray = c // spec.cores_per_chip
        self.core_router: IntArray = self.core_chip * rpc + (c % spec.cores_per_chip) // spec.cores_per_router
        """(n_cores,) global router of each core."""
        self.width = spec.board_cols * spec.cols
        self.height = spec.board_rows * spec.rows
        grid = np.full((self.width, self.height), -1, dtype=np.int64)
        grid[self.router_x, self.router_y] = r
        self._grid = grid
        # Neighbour of every router in each direction (-1 where the mesh ends or no chip sits there).
        nb = np.full((spec.n_routers, 4), -1, dtype=np.int64)
        for d, (dx, dy) in enumerate(_DIRS):
            x, y = self.router_x + dx, self.router_y + dy
            ok = (x >= 0) & (x < self.width) & (y >= 0) & (y < self.height)
            nb[ok, d] = grid[x[ok], y[ok]]
        exists = nb >= 0
        # Row-major flattening of (router, direction) is exactly the canonical link order.
        self.link_src: IntArray = np.repeat(r, 4).reshape(-1, 4)[exists]
        self.link_dst: IntArray = nb[exists]
        self.link_inter_chip: BoolArray = r_chip[self.link_src] != r_chip[self.link_dst]
        link_id = np.full((spec.n_routers, 4), -1, dtype=np.int64)
        link_id[exists] = np.arange(int(exists.sum()), dtype=np.int64)
        self._link_id = link_id
        self.link_capacity: FloatArray = np.where(
            self.link_inter_chip, spec.inter_chip_link_capacity, spec.link_capacity
        ).astype(np.float64)
        """(n_links,) nominal spike messages per second of each directed link."""
        self.link_latency: FloatArray = np.where(
            self.link_inter_chip, spec.inter_chip_hop_latency, spec.hop_latency
        ).astype(np.float64)
        """(n_links,) seconds per hop over each link."""
        for a in (self.chip_pos, self.router_x, self.router_y, self.core_chip, self.core_router):
            a.setflags(write=False)
        for a in (self.link_src, self.link_dst, self.link_inter_chip, self.link_capacity, self.link_latency):
            a.setflags(write=False)

    @property
    def n_links(self) -> int:
        """Directed mesh links (on-chip and inter-chip)."""
        return len(self.link_src)

    def route_pairs(self, src: IntArray, dst: IntArray) -> tuple[IntArray, IntArray]:
        """Links of the XY routes from routers ``src[i]`` to ``dst[i]``.

        Returns ``(pair, link)``: flat arrays, one entry per hop, ``pair`` indexing into ``src``/``dst``,
        hops of one pair contiguous and in path order.
        """
        pair, link = self._routes(src, dst, x_first=True)
        bad = np.unique(pair[link < 0])
        if bad.size == 0:
            return pair, link
        # Partly filled board: route these pairs Y-first, which stays on existing chips.
        keep = ~np.isin(pair, bad)
        pair_b, link_b = self._routes(src[bad], dst[bad], x_first=False)
        if (link_b < 0).any():
            raise ValueError("no dimension-order route between some routers (board has holes)")
        pair_all = np.concatenate([pair[keep], bad[pair_b]])
        link_all = np.concatenate([link[keep], link_b])
        order = np.argsort(pair_all, kind="stable")
        return pair_all[order], link_all[order]

    def _routes(self, src: IntArray, dst: IntArray, *, x_first: bool) -> tuple[IntArray, IntArray]:
        x0, y0 = self.router_x[src], self.router_y[src]
        x1, y1 = self.router_x[dst], self.router_y[dst]
        dx, dy = x1 - x0, y1 - y0
        adx, ady = np.abs(dx), np.abs(dy)
        hops = adx + ady
        total = int(hops.sum())
        pair = np.repeat(np.arange(len(src), dtype=np.int64), hops)
        start = np.cumsum(hops) - hops
        k = np.arange(total, dtype=np.int64) - np.repeat(start, hops)
        sx, sy = np.sign(dx)[pair], np.sign(dy)[pair]
        first_len = (adx if x_first else ady)[pair]
        in_first = k < first_len
        j = k - first_len
        if x_first:
            x = np.where(in_first, x0[pair] + sx * k, x1[pair])
            y = np.where(in_first, y0[pair], y0[pair] + sy * j)
            horizontal = in_first
        else:
            y = np.where(in_first, y0[pair] + sy * k, y1[pair])
            x = np.where(in_first, x0[pair], x0[pair] + sx * j)
            horizontal = ~in_first
        d = np.where(horizontal, np.where(sx > 0, E, W), np.where(sy > 0, N, S))
        router = self._grid[x, y]
        link = np.where(router >= 0, self._link_id[np.maximum(router, 0), d], -1)
        return pair, link

    def route(self, src_core: int, dst_core: int) -> IntArray:
        """Link indices, in path order, of the route from one core to another (empty within one router)."""
        s = self.core_router[np.array([src_core])]
        d = self.core_router[np.array([dst_core])]
        return self.route_pairs(s, d)[1]

    def hops(self, a: IntArray | int, b: IntArray | int) -> tuple[IntArray, IntArray]:
        """``(on_chip_hops, inter_chip_hops)`` of the XY routes between cores ``a`` and ``b`` (broadcasting)."""
        ra, rb = self.core_router[np.asarray(a)], self.core_router[np.asarray(b)]
        total = np.abs(self.router_x[ra] - self.router_x[rb]) + np.abs(self.router_y[ra] - self.router_y[rb])
        pa, pb = self.chip_pos[self.router_chip[ra]], self.chip_pos[self.router_chip[rb]]
        inter = np.abs(pa - pb).sum(axis=-1)
        return (total - inter).astype(np.int64), inter.astype(np.int64)
