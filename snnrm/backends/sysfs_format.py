"""The text formats of the sysfs driver interface (docs/sysfs-interface.md): names, parsers and writers.

Pure functions over strings and numpy arrays, shared by the backend that reads the tree and by
:mod:`snnrm.testing.fake_sysfs` that writes it, so the two cannot drift apart. Parsers never raise on bad
content: they return what they could read (NaN for the rest) plus a list of human-readable reasons, and the
caller decides how to log and count them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from snnrm.core.telemetry import FaultKind
from snnrm.core.topology import FloatArray, IntArray, Topology

INTERFACE_VERSION = 1

CORE_COUNTERS = (
    "queue_depth",
    "events_in",
    "events_processed",
    "events_dropped",
    "spikes_sent",
    "spikes_delivered",
)
"""Per-core numeric attributes, in the order of :class:`snnrm.core.telemetry.TelemetryFrame`."""
CORE_TABLE_COLUMNS = ("core", "failed", *CORE_COUNTERS)
LINK_TABLE_COLUMNS = ("link", "failed", "utilization")

CORE_TABLE = "counters"
LINK_TABLE = "link_counters"
EVENTS = "events"
VERSION = "version"
INFO = "info"

DIRECTIONS = ("E", "W", "N", "S")
"""Same order as the canonical link order of :class:`Topology` (+x, -x, +y, -y)."""
_STEP = {(1, 0): "E", (-1, 0): "W", (0, 1): "N", (0, -1): "S"}

CHIP_DIR = re.compile(r"^chip(\d+)$")
CORE_DIR = re.compile(r"^core(\d+)$")
LINK_DIR = re.compile(r"^r(\d+)-([EWNS])$")

STATE_OK = "ok"
STATE_FAILED = "failed"


def link_names(topology: Topology) -> list[str]:
    """Chip-local name (``r<router>-<dir>``) of every link, in canonical (global link index) order."""
    x, y = topology.router_xy()
    src, dst = topology.link_src, topology.link_dst
    local = src % topology.routers_per_chip
    dx = (x[dst] - x[src]).tolist()
    dy = (y[dst] - y[src]).tolist()
    return [f"r{r}-{_STEP[(a, b)]}" for r, a, b in zip(local.tolist(), dx, dy, strict=True)]


def link_chip(topology: Topology) -> IntArray:
    """Chip that owns (exports) each link: the chip of its source router."""
    return topology.link_src // topology.routers_per_chip


def parse_info(text: str) -> dict[str, str]:
    """``key=value`` lines; blank lines, ``#`` comments and lines without ``=`` are skipped."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip()
    return out


def format_info(values: Mapping[str, object]) -> str:
    return "".join(f"{k}={v}\n" for k, v in values.items())


def parse_state(text: str) -> bool | None:
    """``failed`` → True, ``ok`` → False, anything else → None (unreadable)."""
    word = text.strip()
    if word == STATE_FAILED:
        return True
    if word == STATE_OK:
        return False
    return None


def parse_number(text: str) -> float | None:
    """A decimal number, or None if ``text`` is not one (NaN/inf spelled out count as not numbers)."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True, slots=True, eq=False)
class Table:
    """What :func:`parse_table` could read: one float array per wanted column, NaN where unreadable."""

    values: dict[str, FloatArray]
    errors: list[str]
    """Why some values are NaN (one reason per bad row or cell)."""
    usable: bool
    """False when the header is missing or lacks a wanted column (then ``values`` is all NaN)."""


def parse_table(text: str, keys: Sequence[str], columns: Sequence[str]) -> Table:
    """Parse a snapshot table (header line, then one row per key) into arrays ordered like ``keys``.

    ``columns[0]`` names the key column; the rest are numeric. The fast path (rows complete and in ``keys``
    order, the common case) converts whole columns with numpy; otherwise rows are matched by key one by one.
    """
    n = len(keys)
    key_col, wanted = columns[0], columns[1:]
    nan = {c: np.full(n, np.nan) for c in wanted}
    lines = text.splitlines()
    if not lines:
        return Table(nan, ["empty (no header line)"], usable=False)
    header = lines[0].split()
    missing = [c for c in columns if c not in header]
    if missing:
        return Table(nan, [f"header lacks column(s) {', '.join(missing)}"], usable=False)
    width = len(header)
    pos = {c: header.index(c) for c in columns}
    body = lines[1:]
    tokens = " ".join(body).split()
    if len(body) == n and len(tokens) == n * width and tokens[pos[key_col] :: width] == list(keys):
        errors: list[str] = []
        values = {c: _column(tokens[pos[c] :: width], keys, c, errors) for c in wanted}
        return Table(values, errors, usable=True)
    return _parse_rows(body, keys, header, columns)


def _column(cells: list[str], keys: Sequence[str], name: str, errors: list[str]) -> FloatArray:
    try:
        return np.array(cells, dtype=np.float64)
    except ValueError:
        pass
    out = np.full(len(cells), np.nan)
    for i, cell in enumerate(cells):
        value = parse_number(cell)
        if value is None:
            errors.append(f"row {keys[i]}: {name}={cell!r} is not a number")
        else:
            out[i] = value
    return out


def _parse_rows(body: list[str], keys: Sequence[str], header: list[str], columns: Sequence[str]) -> Table:
    n, width = len(keys), len(header)
    key_pos = header.index(columns[0])
    row_of = {k: i for i, k in enumerate(keys)}
    values = {c: np.full(n, np.nan) for c in columns[1:]}
    seen = np.zeros(n, dtype=bool)
    errors: list[str] = []
    for lineno, line in enumerate(body, start=2):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != width:
            errors.append(f"line {lineno}: {len(cells)} fields, header has {width} (truncated?)")
            continue
        i = row_of.get(cells[key_pos])
        if i is None:
            errors.append(f"line {lineno}: unknown {columns[0]} {cells[key_pos]!r}")
            continue
        seen[i] = True
        for c in columns[1:]:
            cell = cells[header.index(c)]
            value = parse_number(cell)
            if value is None:
                errors.append(f"row {keys[i]}: {c}={cell!r} is not a number")
            else:
                values[c][i] = value
    absent = np.flatnonzero(~seen)
    if len(absent):
        shown = ", ".join(str(keys[i]) for i in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        errors.append(f"missing row(s) for {columns[0]} {shown}{more}")
    return Table(values, errors, usable=True)


def format_table(columns: Sequence[str], keys: Sequence[str], values: Mapping[str, FloatArray]) -> str:
    """Inverse of :func:`parse_table`; integral values are written without a fractional part."""
    rows = [" ".join(columns)]
    cols = [[format_value(v) for v in values[c].tolist()] for c in columns[1:]]
    for i, key in enumerate(keys):
        rows.append(" ".join([str(key), *(col[i] for col in cols)]))
    return "\n".join(rows) + "\n"


def format_value(value: float) -> str:
    if math.isnan(value):
        return "nan"
    return str(int(value)) if value.is_integer() else repr(value)


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One parsed line of the events file, still in chip-local terms."""

    seq: int
    timestamp: float
    kind: FaultKind
    chip: int
    unit: str
    failed: bool


def parse_event(line: str) -> RawEvent | str:
    """Parse ``<seq> <timestamp> core|link <chip> <unit> failed|recovered``; a string says what is wrong."""
    fields = line.split()
    if len(fields) != 6:
        return f"expected 6 fields, got {len(fields)}"
    seq_s, ts_s, kind_s, chip_s, unit, state = fields
    # ASCII first: isdigit alone takes other scripts' digits and superscripts.
    if not (seq_s.isascii() and seq_s.isdigit() and chip_s.isascii() and chip_s.isdigit()):
        return "seq and chip must be non-negative integers"
    ts = parse_number(ts_s)
    if ts is None:
        return f"timestamp {ts_s!r} is not a number"
    try:
        kind = FaultKind(kind_s)
    except ValueError:
        return f"kind {kind_s!r} is not core or link"
    if state not in ("failed", "recovered"):
        return f"state {state!r} is not failed or recovered"
    pattern = CORE_DIR if kind is FaultKind.CORE else LINK_DIR
    if not pattern.match(unit):
        return f"unit {unit!r} is not a {kind.value} name"
    return RawEvent(int(seq_s), ts, kind, int(chip_s), unit, state == "failed")


def format_event(event: RawEvent) -> str:
    state = "failed" if event.failed else "recovered"
    return f"{event.seq} {event.timestamp:.6f} {event.kind.value} {event.chip} {event.unit} {state}\n"
