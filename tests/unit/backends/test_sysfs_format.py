"""The sysfs interface's text formats: tables, event lines and link names (pure functions)."""

from __future__ import annotations

import numpy as np

from snnrm.backends import sysfs_format as fmt
from snnrm.core.telemetry import FaultKind
from snnrm.core.topology import ChipGeometry, Topology

COLUMNS = ("core", "failed", "events_in")


def test_table_round_trips_and_ignores_extra_columns_in_any_order() -> None:
    """Columns are found by header name, so a driver may reorder or add them."""
    text = "events_in temp core failed\n5 40 0 0\n7.5 41 1 1\n"
    table = fmt.parse_table(text, ["0", "1"], COLUMNS)
    assert table.usable
    assert table.errors == []
    np.testing.assert_array_equal(table.values["events_in"], [5.0, 7.5])
    np.testing.assert_array_equal(table.values["failed"], [0.0, 1.0])
    values = {"failed": np.array([0.0, 1.0]), "events_in": np.array([5.0, 7.5])}
    again = fmt.parse_table(fmt.format_table(COLUMNS, ["0", "1"], values), ["0", "1"], COLUMNS)
    np.testing.assert_array_equal(again.values["events_in"], values["events_in"])


def test_table_rows_out_of_order_missing_or_short_are_matched_by_key() -> None:
    """The slow path matches rows by key; short rows and absent keys become NaN with a reason each."""
    text = "core failed events_in\n2 0 9\n0 0 oops\n1 0\n"
    table = fmt.parse_table(text, ["0", "1", "2", "3"], COLUMNS)
    assert table.usable
    ev = table.values["events_in"]
    assert ev[2] == 9.0
    assert np.isnan(ev[[0, 1, 3]]).all()
    assert len(table.errors) == 3


def test_table_without_a_usable_header_is_unusable() -> None:
    """No header (or one missing a wanted column) tells the caller to fall back to per-unit files."""
    assert not fmt.parse_table("", ["0"], COLUMNS).usable
    assert not fmt.parse_table("core events_in\n0 1\n", ["0"], COLUMNS).usable


def test_event_lines_parse_and_bad_ones_say_why() -> None:
    """A good line parses to chip-local terms; every malformed field gets its own reason."""
    event = fmt.parse_event("17 5.25 link 1 r5-E recovered")
    assert event == fmt.RawEvent(17, 5.25, FaultKind.LINK, 1, "r5-E", failed=False)
    assert fmt.parse_event(fmt.format_event(event)) == event
    for bad in (
        "",
        "x 1 core 0 core1 failed",
        "1 t core 0 core1 failed",
        "1 1 cpu 0 core1 failed",
        "1 1 core 0 r1-E failed",
        "1 1 core 0 core1 broken",
    ):
        assert isinstance(fmt.parse_event(bad), str)


def test_link_names_follow_the_canonical_link_order() -> None:
    """Names are chip-local router + direction, listed in the topology's global link order."""
    topo = Topology.grid(chips=2, geometry=ChipGeometry(cols=2, rows=1))
    # Chips side by side: routers 0,1 on chip 0 and 2,3 on chip 1, all on one row.
    assert fmt.link_names(topo) == ["r0-E", "r1-E", "r1-W", "r0-E", "r0-W", "r1-W"]
    assert fmt.link_chip(topo).tolist() == [0, 0, 0, 1, 1, 1]
