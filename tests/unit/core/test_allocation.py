"""Properties of the pure allocation policy (cores and event-throughput blocks) and of Allocate validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnrm.core.allocation import (
    AllocationError,
    UnhealthyDeviceError,
    UnknownDeviceError,
    _anchor_on,
    _clean_fill,
    _core_cost,
    _seed_window,
    _selectable,
    lookup,
    lowest_k,
    preferred_blocks,
    preferred_cores,
    validate_allocation,
)
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.topology import ChipGeometry, Topology

TOPO = Topology.grid(chips=4, geometry=ChipGeometry(cols=4, rows=3, cores_per_router=2))
N = TOPO.n_cores
BLOCKS = ThroughputBlocks.plan(TOPO, block_keps=500.0)
NB = len(BLOCKS.ids)


# available, must-include, size, fill, healthy
CoreRequest = tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]


@st.composite
def core_requests(draw: st.DrawFn, n: int = N) -> CoreRequest:
    available = np.array(draw(st.lists(st.integers(0, n - 1), max_size=2 * n)), dtype=np.int64)
    must = np.array(draw(st.lists(st.sampled_from(available.tolist()), max_size=4)) if len(available) else [])
    size = draw(st.integers(0, n))
    fill = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    healthy = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    return available, must.astype(np.int64), size, fill, healthy


@settings(max_examples=200, deadline=None)
@given(core_requests())
def test_preferred_cores_respects_candidates_and_must_include(req: CoreRequest) -> None:
    """Must-include kept; everything else available, healthy, distinct; never more than needed."""
    available, must, size, fill, healthy = req
    out = preferred_cores(TOPO, available, must, size, fill, healthy)
    assert len(out) == len(set(out.tolist()))
    assert set(must.tolist()) <= set(out.tolist())
    others = set(out.tolist()) - set(must.tolist())
    assert all(healthy[i] and i in set(available.tolist()) for i in others)
    selectable = {int(i) for i in available if healthy[i]} - set(must.tolist())
    expected = max(len(set(must.tolist())), min(size, len(set(must.tolist())) + len(selectable)))
    assert len(out) == expected
    again = preferred_cores(TOPO, available, must, size, fill, healthy)
    assert np.array_equal(out, again)


@settings(max_examples=300, deadline=None)
@given(core_requests(), st.lists(st.sampled_from([0.0, 0.25, 1.0, float("nan"), -1.0, 7.0]), min_size=N, max_size=N))
def test_ranking_only_the_anchor_chip_gives_the_answer_of_ranking_every_candidate(
    req: CoreRequest, odd_fill: list[float]
) -> None:
    """preferred_cores ranks only the anchor chip's cores when that chip can hold the request: every core off it
    must cost more than every core on it, so the answer is the one ranking all candidates by _core_cost gives
    (with fill that ties, is NaN or out of range too)."""
    available, must_in, size, fill, healthy = req
    for f in (fill, np.array(odd_fill)):
        must, mask = _selectable(N, available, must_in, healthy)
        need = size - len(must)
        cands = np.flatnonzero(mask)
        if need <= 0 or len(cands) == 0:
            continue
        clean = _clean_fill(f)
        chip, cx, cy = _anchor_on(TOPO, must) if len(must) else _seed_window(TOPO, mask, clean, need)
        every = lowest_k(_core_cost(TOPO, cands, chip, cx, cy, clean), cands, need)
        expected = np.sort(np.concatenate([must, every]))
        assert np.array_equal(preferred_cores(TOPO, available, must_in, size, f, healthy), expected)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, TOPO.n_chips - 1),
    st.floats(0, 1),
    st.floats(0, 1),
    st.lists(st.sampled_from([0.0, 1.0, float("nan")]) | st.floats(-1, 2), min_size=N, max_size=N),
)
def test_every_core_off_the_anchor_chip_costs_more_than_every_core_on_it(
    chip: int, fx: float, fy: float, fill: list[float]
) -> None:
    """The invariant the anchor-chip shortcut above rests on, for any centre on the chip and any queue fill."""
    g = TOPO.geometry
    cx = float(TOPO.chip_pos[chip, 0] * g.cols) + fx * (g.cols - 1)
    cy = float(TOPO.chip_pos[chip, 1] * g.rows) + fy * (g.rows - 1)
    cost = _core_cost(TOPO, np.arange(N), chip, cx, cy, _clean_fill(np.array(fill)))
    on = TOPO.chip_of == chip
    assert cost[on].max() < cost[~on].min()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, TOPO.geometry.cores), st.lists(st.integers(0, N - 1), max_size=N // 2))
def test_preferred_cores_stays_on_one_chip_when_possible(size: int, broken: list[int]) -> None:
    """When some chip has enough healthy candidates, the answer lies on one chip."""
    healthy = np.ones(N, dtype=bool)
    healthy[broken] = False
    out = preferred_cores(TOPO, np.arange(N), np.array([], np.int64), size, np.zeros(N), healthy)
    per_chip = np.bincount(TOPO.chip_of[healthy], minlength=TOPO.n_chips)
    if (per_chip >= size).any():
        assert len(set(TOPO.chip_of[out].tolist())) == 1


def test_preferred_cores_is_compact_and_avoids_deep_queues() -> None:
    """Four cores on an idle mesh form a 2x2 block of routers; a full queue pushes the block elsewhere."""
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4))
    n = topo.n_cores
    out = preferred_cores(topo, np.arange(n), np.array([], np.int64), 4, np.zeros(n), np.ones(n, bool))
    assert topo.hops(out[:, None], out[None, :]).max() == 2
    fill = np.zeros(n)
    fill[out] = 1.0
    moved = preferred_cores(topo, np.arange(n), np.array([], np.int64), 4, fill, np.ones(n, bool))
    assert not set(moved.tolist()) & set(out.tolist())


@settings(max_examples=200, deadline=None)
@given(core_requests(NB), st.lists(st.floats(0, 1e4), min_size=TOPO.n_chips, max_size=TOPO.n_chips))
def test_preferred_blocks_properties(req: CoreRequest, headroom: list[float]) -> None:
    """Blocks: same guarantees, one chip when one chip can hold the request, deterministic."""
    available, must, size, _, healthy = req
    out = preferred_blocks(BLOCKS, available, must, size, healthy, np.array(headroom))
    assert len(out) == len(set(out.tolist()))
    assert set(must.tolist()) <= set(out.tolist())
    others = set(out.tolist()) - set(must.tolist())
    assert all(healthy[i] and i in set(available.tolist()) for i in others)
    assert len(out) <= max(size, len(set(must.tolist())))
    assert np.array_equal(out, preferred_blocks(BLOCKS, available, must, size, healthy, np.array(headroom)))
    cand = np.array(sorted({int(i) for i in available if healthy[i]}), dtype=np.int64)
    if len(must) == 0 and size > 0 and len(cand):
        per_chip = np.bincount(BLOCKS.chip_of_block[cand], minlength=TOPO.n_chips)
        if (per_chip >= size).any():
            assert len(set(BLOCKS.chip_of_block[out].tolist())) == 1


def test_preferred_blocks_prefers_chip_with_most_headroom() -> None:
    """With room everywhere, blocks go to the chip with most measured headroom."""
    headroom = np.array([10.0, 50.0, 40.0, 0.0])
    out = preferred_blocks(BLOCKS, np.arange(NB), np.array([], np.int64), 2, np.ones(NB, bool), headroom)
    assert set(BLOCKS.chip_of_block[out].tolist()) == {1}


def test_validate_allocation_names_bad_ids() -> None:
    """Unknown, duplicate and unhealthy IDs raise typed errors listing every offender."""
    healthy = np.ones(N, dtype=bool)
    healthy[TOPO.index_of["chip0-core2"]] = False
    with pytest.raises(UnknownDeviceError) as unknown:
        validate_allocation(TOPO.index_of, ["chip0-core0", "nope", "chip99-core0"], healthy)
    assert unknown.value.ids == ("nope", "chip99-core0")
    with pytest.raises(UnknownDeviceError, match="duplicate"):
        validate_allocation(TOPO.index_of, ["chip0-core0", "chip0-core0"], healthy)
    with pytest.raises(UnhealthyDeviceError) as unhealthy:
        validate_allocation(TOPO.index_of, ["chip0-core1", "chip0-core2"], healthy)
    assert unhealthy.value.ids == ("chip0-core2",)
    assert isinstance(unhealthy.value, AllocationError)
    idx = validate_allocation(TOPO.index_of, ["chip1-core0", "chip0-core1"], healthy)
    assert idx.tolist() == [TOPO.index_of["chip1-core0"], 1]


def test_lookup_drops_unknown_ids() -> None:
    """Advisory lookups skip IDs the plugin does not know."""
    assert lookup(TOPO.index_of, ["chip0-core1", "x", "chip0-core0"]).tolist() == [1, 0]
