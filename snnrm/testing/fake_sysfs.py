"""A fake driver: writes the sysfs-style tree of docs/sysfs-interface.md into any directory.

Tests (and benchmarks) point :class:`snnrm.backends.sysfs.SysfsBackend` at ``FakeSysfsTree(tmp_path).root``
and drive it like hardware: write counters from arrays, fail and recover cores and links (state file first,
then an event line, as the interface asks a driver to), and break files in the ways real trees break.
Formats come from :mod:`snnrm.backends.sysfs_format`, the same module the backend parses with.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from snnrm.backends import sysfs_format as fmt
from snnrm.core.telemetry import FaultKind
from snnrm.core.topology import ChipGeometry, FloatArray, Topology

Corruption = Literal["garbage", "truncate", "delete", "empty"]


class FakeSysfsTree:
    """A node of ``chips`` identical chips, laid out like :meth:`Topology.grid` (row-major, near-square)."""

    def __init__(
        self,
        root: Path,
        *,
        chips: int = 2,
        cols: int = 2,
        rows: int = 2,
        cores_per_router: int = 1,
        board_cols: int | None = None,
        numa_nodes: int = 1,
        nominal_keps: float = 1000.0,
        queue_capacity: float = 256.0,
        snapshot: bool = True,
        per_unit_files: bool = True,
        firmware: str = "0.0.0-fake",
    ) -> None:
        """``snapshot``: write the per-chip ``counters``/``link_counters`` tables. ``per_unit_files``: write
        the per-core/per-link files (turn off for very large trees in benchmarks)."""
        self.root = Path(root)
        self.topology = Topology.grid(
            chips=chips,
            geometry=ChipGeometry(cols=cols, rows=rows, cores_per_router=cores_per_router),
            board_cols=board_cols,
            nominal_keps=nominal_keps,
            queue_capacity=queue_capacity,
            numa_nodes=numa_nodes,
        )
        self.snapshot = snapshot
        self.per_unit_files = per_unit_files
        self.link_names = fmt.link_names(self.topology)
        self.link_owner = fmt.link_chip(self.topology)
        t = self.topology
        self.counters: dict[str, FloatArray] = {name: np.zeros(t.n_cores) for name in fmt.CORE_COUNTERS}
        self.link_utilization: FloatArray = np.zeros(t.n_links)
        self.core_failed = np.zeros(t.n_cores, dtype=bool)
        self.link_failed = np.zeros(t.n_links, dtype=bool)
        self.seq = 0
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / fmt.VERSION).write_text(f"{fmt.INTERFACE_VERSION}\n")
        (self.root / fmt.EVENTS).touch()
        for k in range(t.n_chips):
            info = {
                "cols": cols,
                "rows": rows,
                "cores_per_router": cores_per_router,
                "board_col": int(t.chip_pos[k, 0]),
                "board_row": int(t.chip_pos[k, 1]),
                "numa_node": int(t.chip_numa[k]),
                "nominal_keps": nominal_keps,
                "queue_capacity": queue_capacity,
                "firmware": firmware,
                "generation": "fake",
            }
            self.chip_dir(k).mkdir(exist_ok=True)
            (self.chip_dir(k) / fmt.INFO).write_text(fmt.format_info(info))
        self.write_counters()

    # ---- paths ----------------------------------------------------------------------------------------------

    def chip_dir(self, chip: int) -> Path:
        return self.root / f"chip{chip}"

    def core_dir(self, index: int) -> Path:
        """Directory of global core ``index``."""
        chip, local = divmod(index, self.topology.geometry.cores)
        return self.chip_dir(chip) / "cores" / f"core{local}"

    def link_dir(self, index: int) -> Path:
        """Directory of global link ``index``."""
        return self.chip_dir(int(self.link_owner[index])) / "links" / self.link_names[index]

    # ---- writing --------------------------------------------------------------------------------------------

    def write_counters(
        self,
        *,
        link_utilization: npt.ArrayLike | None = None,
        **counters: npt.ArrayLike,
    ) -> None:
        """Set per-core counters (``queue_depth=…, events_in=…``, arrays over global core index) and/or link
        utilisation, then rewrite every file. Omitted ones keep their previous values."""
        for name, values in counters.items():
            if name not in self.counters:
                raise TypeError(f"unknown counter {name!r}; expected one of {fmt.CORE_COUNTERS}")
            self.counters[name] = np.broadcast_to(np.asarray(values, dtype=np.float64), self.core_failed.shape).copy()
        if link_utilization is not None:
            self.link_utilization = np.broadcast_to(
                np.asarray(link_utilization, dtype=np.float64), self.link_failed.shape
            ).copy()
        for k in range(self.topology.n_chips):
            self._write_chip(k)

    def _write_chip(self, k: int) -> None:
        t = self.topology
        per_chip = t.geometry.cores
        cores = slice(k * per_chip, (k + 1) * per_chip)
        links = np.flatnonzero(self.link_owner == k)
        chip_dir = self.chip_dir(k)
        if self.snapshot:
            values = {name: arr[cores] for name, arr in self.counters.items()}
            values["failed"] = self.core_failed[cores].astype(np.float64)
            keys = [str(m) for m in range(per_chip)]
            _atomic_write(chip_dir / fmt.CORE_TABLE, fmt.format_table(fmt.CORE_TABLE_COLUMNS, keys, values))
            link_values = {
                "failed": self.link_failed[links].astype(np.float64),
                "utilization": self.link_utilization[links],
            }
            names = [self.link_names[i] for i in links]
            _atomic_write(chip_dir / fmt.LINK_TABLE, fmt.format_table(fmt.LINK_TABLE_COLUMNS, names, link_values))
        if self.per_unit_files:
            for i in range(cores.start, cores.stop):
                d = self.core_dir(i)
                d.mkdir(parents=True, exist_ok=True)
                (d / "state").write_text(_state(bool(self.core_failed[i])))
                for name, arr in self.counters.items():
                    (d / name).write_text(f"{fmt.format_value(float(arr[i]))}\n")
            for i in links.tolist():
                d = self.link_dir(i)
                d.mkdir(parents=True, exist_ok=True)
                (d / "state").write_text(_state(bool(self.link_failed[i])))
                (d / "utilization").write_text(f"{fmt.format_value(float(self.link_utilization[i]))}\n")

    # ---- faults ---------------------------------------------------------------------------------------------

    def fail_core(self, index: int, *, timestamp: float | None = None) -> int:
        """Mark global core ``index`` failed (state files, then an event line); returns the event's seq."""
        return self._set(FaultKind.CORE, index, failed=True, timestamp=timestamp)

    def recover_core(self, index: int, *, timestamp: float | None = None) -> int:
        return self._set(FaultKind.CORE, index, failed=False, timestamp=timestamp)

    def fail_link(self, index: int, *, timestamp: float | None = None) -> int:
        return self._set(FaultKind.LINK, index, failed=True, timestamp=timestamp)

    def recover_link(self, index: int, *, timestamp: float | None = None) -> int:
        return self._set(FaultKind.LINK, index, failed=False, timestamp=timestamp)

    def _set(self, kind: FaultKind, index: int, *, failed: bool, timestamp: float | None) -> int:
        if kind is FaultKind.CORE:
            self.core_failed[index] = failed
            chip = index // self.topology.geometry.cores
        else:
            self.link_failed[index] = failed
            chip = int(self.link_owner[index])
        self._write_chip(chip)
        return self.append_event(kind, index, failed=failed, timestamp=timestamp)

    def append_event(
        self, kind: FaultKind, index: int, *, failed: bool, timestamp: float | None = None, seq: int | None = None
    ) -> int:
        """Append one event line (without touching state files); ``seq`` defaults to the next number."""
        if kind is FaultKind.CORE:
            chip, local = divmod(index, self.topology.geometry.cores)
            unit = f"core{local}"
        else:
            chip, unit = int(self.link_owner[index]), self.link_names[index]
        self.seq = self.seq + 1 if seq is None else seq
        event = fmt.RawEvent(
            seq=self.seq,
            timestamp=time.monotonic() if timestamp is None else timestamp,
            kind=kind,
            chip=chip,
            unit=unit,
            failed=failed,
        )
        self.append_raw(fmt.format_event(event))
        return self.seq

    def append_raw(self, text: str) -> None:
        """Append ``text`` to the events file in one ``write`` (O_APPEND), as a driver would."""
        fd = os.open(self.root / fmt.EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    # ---- breaking things ------------------------------------------------------------------------------------

    def corrupt(self, relpath: str | Path, mode: Corruption = "garbage") -> Path:
        """Break ``root/relpath``: overwrite with garbage, cut it mid-line, delete it, or empty it."""
        path = self.root / relpath
        if mode == "delete":
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        elif mode == "empty":
            path.write_text("")
        elif mode == "garbage":
            path.write_bytes(b"\xff\xfezz not-a-number \x00\n")
        else:
            data = path.read_bytes()
            path.write_bytes(data[: max(len(data) // 2 - 1, 1)])
        return path

    def remove_chip(self, chip: int) -> None:
        """The chip's whole directory vanishes (hot-unplug, driver error)."""
        shutil.rmtree(self.chip_dir(chip))


def _state(failed: bool) -> str:
    return f"{fmt.STATE_FAILED if failed else fmt.STATE_OK}\n"


def _atomic_write(path: Path, text: str) -> None:
    """Readers must never see a half-written table, as with a driver's snapshot attribute."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
