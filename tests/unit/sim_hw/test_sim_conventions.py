"""Index conventions, link order and XY routes match snnrm's topology exactly."""

from __future__ import annotations

import numpy as np
import pytest
from sim_helpers import small_spec

from sim_hw import Simulator, factorise, load_preset
from snnrm.core.topology import ChipGeometry, Topology

# 2x2 chips of 2x1 routers with 2 cores each: routers 0..7 at (gx, gy) =
# r0 (0,0) r1 (1,0) | r2 (2,0) r3 (3,0)
# r4 (0,1) r5 (1,1) | r6 (2,1) r7 (3,1)
HAND_LINKS = [
    (0, 1),
    (0, 4),
    (1, 2),
    (1, 0),
    (1, 5),
    (2, 3),
    (2, 1),
    (2, 6),
    (3, 2),
    (3, 7),
    (4, 5),
    (4, 0),
    (5, 6),
    (5, 4),
    (5, 1),
    (6, 7),
    (6, 5),
    (6, 2),
    (7, 6),
    (7, 3),
]
HAND_INTER = {(1, 2), (2, 1), (0, 4), (4, 0), (1, 5), (5, 1), (2, 6), (6, 2), (3, 7), (7, 3), (5, 6), (6, 5)}


def test_links_of_a_2x2_chip_board_match_hand_computed_order() -> None:
    """Links run by source router, then E, W, N, S; chip-boundary links are inter-chip."""
    sim = Simulator(small_spec(chips=4, cols=2, rows=1, cores_per_router=2))
    got = list(zip(sim.link_src.tolist(), sim.link_dst.tolist(), strict=True))
    assert got == HAND_LINKS
    assert sim.link_src.dtype == np.int64
    assert sim.link_dst.dtype == np.int64
    inter = {pair for pair, flag in zip(got, sim.mesh.link_inter_chip.tolist(), strict=True) if flag}
    assert inter == HAND_INTER
    assert sim.chip_pos.tolist() == [[0, 0], [1, 0], [0, 1], [1, 1]]


def test_core_to_router_mapping_of_a_2x2_chip_board() -> None:
    """Core = chip * cores_per_chip + router_local * cores_per_router + k."""
    sim = Simulator(small_spec(chips=4, cols=2, rows=1, cores_per_router=2))
    assert sim.mesh.core_router.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
    assert sim.mesh.core_chip.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert sim.mesh.router_x.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert sim.mesh.router_y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize(("chips", "cols", "rows", "cpr"), [(4, 2, 1, 2), (3, 4, 2, 1), (5, 16, 8, 1), (7, 3, 2, 4)])
def test_same_arrays_as_snnrm_topology(chips: int, cols: int, rows: int, cpr: int) -> None:
    """The daemon's Topology and the simulator agree on routers, coordinates and links (also partial boards)."""
    sim = Simulator(small_spec(chips=chips, cols=cols, rows=rows, cores_per_router=cpr))
    topo = Topology.grid(chips=chips, geometry=ChipGeometry(cols, rows, cpr))
    assert np.array_equal(sim.link_src, topo.link_src)
    assert np.array_equal(sim.link_dst, topo.link_dst)
    assert np.array_equal(sim.mesh.link_inter_chip, topo.link_inter_chip)
    assert np.array_equal(sim.mesh.core_router, topo.router)
    assert np.array_equal(sim.chip_pos, topo.chip_pos)
    rx, ry = topo.router_xy()
    assert np.array_equal(sim.mesh.router_x, rx)
    assert np.array_equal(sim.mesh.router_y, ry)


def test_xy_route_goes_x_first_then_y() -> None:
    """Router 0 -> router 7 is E, E, E then N: 4 hops, two of them across chips."""
    sim = Simulator(small_spec(chips=4, cols=2, rows=1, cores_per_router=2))
    index = {pair: i for i, pair in enumerate(HAND_LINKS)}
    route = sim.route(0, 15)
    assert route.tolist() == [index[(0, 1)], index[(1, 2)], index[(2, 3)], index[(3, 7)]]
    on, inter = sim.mesh.hops(0, 15)
    assert (int(on), int(inter)) == (2, 2)
    assert sim.route(0, 1).size == 0  # two cores behind one router


def test_routes_on_a_partly_filled_board_exist_and_are_shortest() -> None:
    """With 3 chips the XY path from chip 2 to chip 1 would leave the board; it goes Y first instead."""
    sim = Simulator(small_spec(chips=3, cols=2, rows=2))
    src, dst = int(sim.chip_cores(2)[3]), int(sim.chip_cores(1)[0])
    route = sim.route(src, dst)
    on, inter = sim.mesh.hops(src, dst)
    assert route.size == int(on + inter)
    assert (route >= 0).all()
    path = [int(sim.link_src[route[0]]), *sim.link_dst[route].tolist()]
    assert path[0] == sim.mesh.core_router[src]
    assert path[-1] == sim.mesh.core_router[dst]
    assert all(sim.link_src[route[k + 1]] == sim.link_dst[route[k]] for k in range(len(route) - 1))


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(128, (16, 8)), (64, (8, 8)), (32, (8, 4)), (16, (4, 4)), (1, (1, 1)), (7, (7, 1)), (13, (13, 1))],
)
def test_cores_per_chip_override_picks_a_shape_near_the_preset_aspect(cores: int, expected: tuple[int, int]) -> None:
    """load_preset(cores_per_chip=n) lays n routers out close to Loihi 2's 16x8 aspect."""
    spec = load_preset("loihi2", chips=2, cores_per_chip=cores)
    assert (spec.cols, spec.rows, spec.cores_per_router) == (*expected, 1)
    assert spec.cores_per_chip == cores
    assert spec.chips == 2
    assert factorise(cores, 2.0) == expected


def test_cores_per_router_is_kept_only_when_it_divides() -> None:
    """Akida's 4 NPs per node survive 16 cores per chip but not 6."""
    assert load_preset("akida", cores_per_chip=16).cores_per_router == 4
    six = load_preset("akida", cores_per_chip=6)
    assert six.cores_per_router == 1
    assert six.cols * six.rows == 6


def test_chips_override_retiles_the_board() -> None:
    """Chips are tiled ceil(sqrt(n)) columns wide."""
    spec = load_preset("loihi2", chips=5)
    assert spec.board_cols == 3
    assert spec.board_rows == 2
    assert Simulator(spec).chip_pos.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1]]
