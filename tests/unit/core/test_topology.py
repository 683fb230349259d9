"""Topology: index conventions, links and hop distances."""

import numpy as np
import pytest

from snnrm.core.topology import ChipGeometry, Topology


def test_core_index_maps_to_chip_router_and_mesh_coordinates() -> None:
    """Global index = chip * cores_per_chip + router_local * cores_per_router + k; mesh coords tile chips."""
    t = Topology.grid(chips=4, geometry=ChipGeometry(cols=4, rows=2, cores_per_router=2))
    assert t.n_cores == 4 * 16
    i = 1 * 16 + (1 * 4 + 3) * 2 + 1  # chip 1, router (3, 1), second core
    assert t.chip_of[i] == 1
    assert t.router[i] == 1 * 8 + 7
    assert (t.gx[i], t.gy[i]) == (4 + 3, 1)  # chip 1 sits at board (1, 0)
    assert t.ids[i] == "chip1-core15"
    assert t.index_of["chip1-core15"] == i


def test_links_are_directed_neighbours_in_canonical_order() -> None:
    """Each router links to its E, W, N, S neighbours, chip boundaries included, in that order."""
    t = Topology.grid(chips=2, geometry=ChipGeometry(cols=2, rows=1), board_cols=2)
    # Routers 0,1 on chip 0 and 2,3 on chip 1 form one 4x1 row.
    assert list(zip(t.link_src.tolist(), t.link_dst.tolist(), strict=True)) == [
        (0, 1),
        (1, 2),
        (1, 0),
        (2, 3),
        (2, 1),
        (3, 2),
    ]
    assert t.link_inter_chip.tolist() == [False, True, False, False, True, False]


def test_hops_weight_chip_crossings() -> None:
    """Crossing a chip boundary costs the inter-chip weight instead of one hop."""
    t = Topology.grid(chips=2, geometry=ChipGeometry(cols=2, rows=1), board_cols=2)
    assert t.hops(0, 1) == 1.0
    assert t.hops(1, 2, inter_chip_weight=4.0) == 4.0
    assert t.hops(0, 3, inter_chip_weight=4.0) == 6.0
    np.testing.assert_array_equal(t.hops(np.array([0, 0]), np.array([0, 1])), [0.0, 1.0])


def test_unknown_ids_are_named() -> None:
    t = Topology.grid(chips=1, geometry=ChipGeometry(cols=2, rows=2))
    with pytest.raises(KeyError, match="chip9-core0"):
        t.indices(["chip0-core0", "chip9-core0"])


def test_rejects_inconsistent_arrays() -> None:
    with pytest.raises(ValueError, match="shape"):
        Topology(
            geometry=ChipGeometry(cols=2, rows=2),
            chip_pos=np.zeros((1, 2), dtype=np.int64),
            chip_numa=np.zeros(1, dtype=np.int64),
            core_nominal_keps=np.ones(3),
            core_queue_capacity=np.ones(4),
        )
