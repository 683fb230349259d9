"""Which devices to hand a container: the pure policy behind GetPreferredAllocation and Allocate.

The kubelet asks the device plugin for a *preferred* set among candidates it already chose (free, possibly
NUMA-aligned), and later asks it to *allocate* a set it settled on. Both answers are computed here from plain
arrays, so they can be property-tested and benchmarked without gRPC.

Cores. A split SNN stage sends spikes between its cores, so the cost that matters is hop distance: a good set is
a compact region of the mesh on one chip (inter-chip links are slower), away from cores whose event queues are
already deep. The search is vectorised and O(cores):

1. cores that cannot be chosen are masked out (unavailable, unhealthy, duplicates, already must-included);
2. a *seed window* is picked: for every router position on every chip, a box filter gives how many free
   cores a window just big enough for the request holds and their total queue fill; the first window (lowest
   chip, row, column) with enough room and the least queue fill wins, restricted to chips that can hold the
   whole request when any can (with must-include cores, the region is anchored on them instead);
3. the region grows from the window centre: cores are ranked by hop distance + queue-fill penalty + a penalty
   for leaving the anchor chip, with the core index breaking ties, and the nearest ones are taken (only the anchor
   chip's cores are ranked when it can hold the request: the penalty puts every other core behind them).

Event-throughput blocks have no mesh position: they are packed onto one chip, preferring the chip with most
measured headroom, so a stage's promised throughput sits behind one set of routers.

Invalid input to Allocate (unknown or unhealthy IDs) raises a typed :class:`AllocationError` naming the IDs.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np

from snnrm.core.devices import ThroughputBlocks
from snnrm.core.topology import INTER_CHIP_WEIGHT, BoolArray, FloatArray, IntArray, Topology

QUEUE_PENALTY_HOPS = 4.0
"""A core with a full event queue costs as much as one four hops further away: a deep queue adds latency to
every spike routed through it, roughly what a few router hops add, without ruling the core out."""


class AllocationError(ValueError):
    """A request names devices that cannot be allocated; ``ids`` lists every offending device ID."""

    def __init__(self, reason: str, ids: Sequence[str]) -> None:
        self.reason = reason
        # At most 16 IDs of at most 64 characters each: the message goes into a gRPC status (clients refuse
        # metadata over 16 KB, so a 20 KB ID turned INVALID_ARGUMENT into RESOURCE_EXHAUSTED) and into the log.
        self.ids = tuple(_clip(i) for i in ids[:16])
        more = len(ids) - len(self.ids)
        super().__init__(f"{reason}: {', '.join(self.ids)}" + (f" (+{more} more)" if more > 0 else ""))


def _clip(device_id: str, most: int = 64) -> str:
    """A device ID as it may be echoed back: cut to ``most`` characters."""
    return device_id if len(device_id) <= most else f"{device_id[: most - 3]}..."


class UnknownDeviceError(AllocationError):
    """IDs this plugin never advertised (or duplicates within one request): the request itself is wrong."""


class UnhealthyDeviceError(AllocationError):
    """IDs that exist but are unhealthy now: the request may succeed after they recover."""


def _ids_to_indices(index_of: Mapping[str, int], ids: Sequence[str]) -> tuple[IntArray, list[str]]:
    """Indices of ``ids`` (``-1`` for unknown) and the unknown IDs, with C-level dict lookups only."""
    # A list first: iterating a protobuf repeated field element by element is slower than copying it out.
    ids = list(ids)
    if not ids:
        return np.zeros(0, dtype=np.int64), []
    try:
        # Fast path (every ID known): one itemgetter call does all lookups in C.
        found = operator.itemgetter(*ids)(index_of)
    except KeyError:
        get = index_of.get
        idx = np.fromiter(map(get, ids, (-1,) * len(ids)), dtype=np.int64, count=len(ids))
        return idx, [ids[i] for i in np.flatnonzero(idx < 0).tolist()]
    if len(ids) == 1:
        return np.array([found], dtype=np.int64), []
    return np.fromiter(found, dtype=np.int64, count=len(ids)), []


def lookup(index_of: Mapping[str, int], ids: Sequence[str]) -> IntArray:
    """Indices of the known IDs among ``ids``, in order; unknown IDs are dropped (advisory calls only)."""
    idx, unknown = _ids_to_indices(index_of, ids)
    return idx[idx >= 0] if unknown else idx


def validate_allocation(index_of: Mapping[str, int], ids: Sequence[str], healthy: BoolArray) -> IntArray:
    """Indices of ``ids`` if every one is known, distinct and healthy; else raise naming the bad IDs.

    Unknown or duplicate IDs raise :class:`UnknownDeviceError`; unhealthy ones :class:`UnhealthyDeviceError`.
    """
    idx, unknown = _ids_to_indices(index_of, ids)
    if unknown:
        raise UnknownDeviceError("unknown device IDs", unknown)
    if len(idx) > 1:
        ordered = np.sort(idx)  # a sort and one comparison: np.unique costs ~4x this on the Allocate path
        repeated = ordered[1:] == ordered[:-1]
        if repeated.any():
            dup_idx = set(ordered[1:][repeated].tolist())
            dups = sorted({ids[i] for i in range(len(ids)) if int(idx[i]) in dup_idx})
            raise UnknownDeviceError("duplicate device IDs", dups)
    bad = ~healthy[idx]
    if bad.any():
        raise UnhealthyDeviceError("unhealthy device IDs", [ids[i] for i in np.flatnonzero(bad).tolist()])
    return idx


def _selectable(n: int, available: IntArray, must: IntArray, healthy: BoolArray) -> tuple[IntArray, BoolArray]:
    """(must-include indices deduplicated in range, mask of the candidates outside them)."""
    available = np.asarray(available, dtype=np.int64)
    must = np.asarray(must, dtype=np.int64)
    if len(must):  # usually none: a dozen small array calls saved on GetPreferredAllocation's path
        must = must[(must >= 0) & (must < n)]
        # Keep must-include in request order, first occurrence only.
        if len(must) > 1:
            _, first = np.unique(must, return_index=True)
            must = must[np.sort(first)]
    mask = np.zeros(n, dtype=np.bool_)
    mask[available[(available >= 0) & (available < n)]] = True
    mask &= np.asarray(healthy, dtype=np.bool_)
    if len(must):
        mask[must] = False
    return must, mask


def lowest_k(cost: FloatArray, cands: IntArray, k: int) -> IntArray:
    """The ``k`` candidates (``cands`` ascending) of lowest ``cost``; ties go to the lower index, so the answer
    is deterministic. NaN costs count as infinite (last). Order of the result: unspecified (callers sort).

    One partition, O(n): this sits on GetPreferredAllocation's path and in the placement descent's inner loop.
    """
    if k >= len(cands):
        return cands
    if np.isnan(cost).any():
        cost = np.where(np.isnan(cost), np.inf, cost)
    kth = np.partition(cost, k - 1)[k - 1]
    below = np.flatnonzero(cost < kth)
    # ``cands`` is ascending, so the first ties in order are the lowest indices.
    ties = np.flatnonzero(cost == kth)[: k - len(below)]
    picked: IntArray = cands[np.concatenate([below, ties])]
    return picked


def preferred_cores(
    topology: Topology,
    available: IntArray,
    must_include: IntArray,
    size: int,
    queue_fill: FloatArray,
    healthy: BoolArray,
) -> IntArray:
    """The preferred cores (global indices, ascending) for a container that needs ``size`` in total.

    Must-include cores are always kept; every other core returned is available, healthy and distinct. Returns
    fewer than ``size`` when the candidates cannot cover it (the kubelet fills the shortfall itself).
    """
    n = topology.n_cores
    must, mask = _selectable(n, available, must_include, healthy)
    need = size - len(must)
    if need <= 0 or not mask.any():
        return np.sort(must)
    fill = _clean_fill(np.asarray(queue_fill, dtype=np.float64)[:n])
    if len(must):
        anchor_chip, cx, cy = _anchor_on(topology, must)
    else:
        anchor_chip, cx, cy = _seed_window(topology, mask, fill, need)
    g = topology.geometry
    # Any core on the anchor chip costs less than any core off it (_core_cost): within a chip a core is at most
    # cols + rows - 2 hops from the centre plus the queue penalty, and leaving the chip adds more than that. So when
    # the anchor chip can hold the request, only its cores are ranked (1/chips of the work, the same answer; a
    # property test compares with ranking every candidate), with _core_cost's terms that are zero on-chip left out.
    first = anchor_chip * g.cores
    on_chip = np.flatnonzero(mask[first : first + g.cores]) + first
    if len(on_chip) >= need:
        hops = np.abs(topology.gx[on_chip] - cx) + np.abs(topology.gy[on_chip] - cy)
        cost = hops + QUEUE_PENALTY_HOPS * fill[on_chip]
        return np.sort(np.concatenate([must, lowest_k(cost, on_chip, need)]))
    cands = np.flatnonzero(mask)
    cost = _core_cost(topology, cands, anchor_chip, cx, cy, fill)
    return np.sort(np.concatenate([must, lowest_k(cost, cands, need)]))


def _core_cost(
    topology: Topology, cands: IntArray, anchor_chip: int, cx: float, cy: float, fill: FloatArray
) -> FloatArray:
    """Rank of each candidate for a region around (cx, cy) on ``anchor_chip``: hops, queue fill, leaving the chip."""
    g = topology.geometry
    chip_penalty = 2.0 * (g.cols + g.rows) + QUEUE_PENALTY_HOPS  # beyond any on-chip detour
    cost: FloatArray = (
        _hops_from(topology, cands, anchor_chip, cx, cy)
        + QUEUE_PENALTY_HOPS * fill[cands]
        + chip_penalty * (topology.chip_of[cands] != anchor_chip)
    )
    return cost


def _clean_fill(fill: FloatArray) -> FloatArray:
    """Queue fill clipped to 0..1, NaN (untrusted telemetry) counted as a full queue."""
    clean = np.fmin(fill, 1.0)  # fmin takes the number over NaN: NaN -> 1.0
    return np.fmax(clean, 0.0, out=clean)


def _hops_from(
    topology: Topology, cores: IntArray, chip: int, cx: float, cy: float, inter_chip_weight: float = INTER_CHIP_WEIGHT
) -> FloatArray:
    """:meth:`Topology.hops` from a point (global mesh coordinates, possibly between routers) on ``chip``."""
    g = topology.geometry
    gx, gy = topology.gx[cores], topology.gy[cores]
    # Global x = chip column * cols + router x, so a core's chip column is gx // cols (likewise rows).
    crossings = np.abs(gx // g.cols - topology.chip_pos[chip, 0]) + np.abs(gy // g.rows - topology.chip_pos[chip, 1])
    hops: FloatArray = np.abs(gx - cx) + np.abs(gy - cy) + (inter_chip_weight - 1.0) * crossings
    return hops


def _anchor_on(topology: Topology, must: IntArray) -> tuple[int, float, float]:
    """Anchor chip (holding most must-include cores, lowest on ties) and the median of their coordinates."""
    chips = topology.chip_of[must]
    anchor_chip = int(np.argmax(np.bincount(chips)))
    on = must[chips == anchor_chip]
    return anchor_chip, float(np.median(topology.gx[on])), float(np.median(topology.gy[on]))


def _seed_window(topology: Topology, mask: BoolArray, fill: FloatArray, need: int) -> tuple[int, float, float]:
    """Pick the chip and centre (global mesh x, y) of the best window just large enough for ``need`` cores.

    ``mask`` marks the candidate cores and ``fill`` is every core's clean queue fill, both indexed by core.
    """
    g = topology.geometry
    n_chips, rows, cols, cpr = topology.n_chips, g.rows, g.cols, g.cores_per_router
    # Free-core count and queue fill per router, as (chip, row, col) grids: a core's index is chip, router row,
    # router column, slot behind the router (Topology's layout), so the grids are reshapes, not scatters.
    # Count and queue fill as planes of one array, so each window-sum step below is one call for both.
    free = mask.reshape(n_chips, rows, cols, cpr)
    grid = np.empty((2, n_chips, rows, cols))
    free.sum(axis=3, dtype=np.float64, out=grid[0])
    np.where(free, fill.reshape(n_chips, rows, cols, cpr), 0.0).sum(axis=3, out=grid[1])
    per_chip = grid[0].reshape(n_chips, -1).sum(axis=1)
    wx = min(int(np.ceil(np.sqrt(need / cpr))), cols)
    wy = min(int(np.ceil(need / (cpr * wx))), rows)
    win_count, win_pen = _window_sums(grid.reshape(2 * n_chips, rows, cols), wy, wx).reshape(
        2, n_chips, rows - wy + 1, cols - wx + 1
    )
    # Only chips that can hold the whole request, when there are any: the region should not straddle chips.
    chip_ok = per_chip >= need
    if chip_ok.all():
        eligible: BoolArray | bool = True
    else:
        if not chip_ok.any():
            chip_ok = per_chip == per_chip.max()
        eligible = np.broadcast_to(chip_ok[:, None, None], win_count.shape)
    fits = eligible & (win_count >= need)
    if not fits.any():
        best_count = np.where(eligible, win_count, -1.0).max()
        fits = eligible & (win_count == best_count)
    key = np.where(fits, win_pen, np.inf).ravel()
    best = int(np.argmin(key))  # first minimum: lowest chip, row, column
    chip, rest = divmod(best, win_count.shape[1] * win_count.shape[2])
    y0, x0 = divmod(rest, win_count.shape[2])
    # Centre between routers for even sides, so the window's own cores are the nearest ones.
    cx = float(topology.chip_pos[chip, 0] * cols + x0) + (wx - 1) / 2
    cy = float(topology.chip_pos[chip, 1] * rows + y0) + (wy - 1) / 2
    return chip, cx, cy


def _window_sums(grid: FloatArray, wy: int, wx: int) -> FloatArray:
    """Sum over every ``wy`` x ``wx`` window of each chip's grid: (chips, rows-wy+1, cols-wx+1).

    A separable box filter of shifted-slice adds: for windows no wider than a chip this beats a summed-area
    table, whose cumulative sums along inner axes are slow on small arrays.
    """
    cols_out = grid.shape[2] - wx + 1
    h = grid[:, :, :cols_out].copy()
    for k in range(1, wx):
        h += grid[:, :, k : k + cols_out]
    rows_out = grid.shape[1] - wy + 1
    v = h[:, :rows_out].copy()
    for k in range(1, wy):
        v += h[:, k : k + rows_out]
    return v


def preferred_blocks(
    blocks: ThroughputBlocks,
    available: IntArray,
    must_include: IntArray,
    size: int,
    healthy: BoolArray,
    chip_headroom: FloatArray | None = None,
) -> IntArray:
    """The preferred event-throughput blocks (indices, ascending) for a container that needs ``size``.

    Packs onto one chip when any chip can hold the request: the must-include blocks' chip first, otherwise the
    chip with most ``chip_headroom`` (measured free KEPS per chip; free block count when not given). Spills to
    further chips in headroom order. Must-include blocks are kept; others are available, healthy, distinct.
    """
    n = len(blocks.ids)
    must, mask = _selectable(n, available, must_include, healthy)
    cands = np.flatnonzero(mask)
    need = size - len(must)
    if need <= 0 or len(cands) == 0:
        return np.sort(must)
    n_chips = int(blocks.chip_of_block.max()) + 1 if n else 0
    chips = blocks.chip_of_block[cands]
    per_chip = np.bincount(chips, minlength=n_chips)
    head = (
        per_chip.astype(np.float64)
        if chip_headroom is None
        else np.nan_to_num(np.asarray(chip_headroom, dtype=np.float64)[:n_chips], nan=0.0)
    )
    if len(must):
        anchor = int(np.argmax(np.bincount(blocks.chip_of_block[must], minlength=n_chips)))
    else:
        fits = per_chip >= need
        pool = fits if fits.any() else per_chip == per_chip.max()
        anchor = int(np.argmax(np.where(pool, head, -np.inf)))
    # Chip order: anchor first, then by headroom (descending), then chip index; within a chip, by rank.
    chip_rank = np.lexsort((np.arange(n_chips), -head))
    order_of_chip = np.empty(n_chips, dtype=np.int64)
    order_of_chip[chip_rank] = np.arange(n_chips)
    order_of_chip[anchor] = -1
    key = order_of_chip[chips] * (n + 1) + blocks.rank_in_chip[cands]
    picked = cands[np.argsort(key, kind="stable")[:need]]
    return np.sort(np.concatenate([must, picked]))
