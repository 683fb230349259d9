"""The real-hardware backend: reads the sysfs-style tree a driver exports (docs/sysfs-interface.md).

Shape of the module: blocking file reads live in ``_read_*``/``_discover_sync`` methods that return data plus a
list of problems and touch no shared state, so they can run in a worker thread (``asyncio.to_thread``); the
coroutines apply their results (logging, counters, fan-out) on the event loop. Hard faults arrive through an
inotify watch on the tree's root whose fd sits in the event loop (``loop.add_reader``), so a fault line
appended by the driver reaches subscribers without polling.

Nothing read from the tree is trusted: after discovery, bad values become NaN with a warning and a count in
:attr:`SysfsBackend.read_errors`, never an exception, so one garbled file cannot stop the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import numpy as np
import structlog

from snnrm.backends import sysfs_format as fmt
from snnrm.backends import sysfs_watch
from snnrm.backends.base import BackendError
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import BoolArray, ChipGeometry, FloatArray, Topology

_REQUIRED_INT = ("cols", "rows", "cores_per_router", "board_col", "board_row")
_REQUIRED_FLOAT = ("nominal_keps", "queue_capacity")
_CHIP_ENTRIES = frozenset({fmt.INFO, fmt.CORE_TABLE, fmt.LINK_TABLE, "cores", "links"})
_CORE_ENTRIES = frozenset({"state", *fmt.CORE_COUNTERS})
_LINK_ENTRIES = frozenset({"state", "utilization"})
_ROOT_MASK = (
    sysfs_watch.IN_MODIFY
    | sysfs_watch.IN_CLOSE_WRITE
    | sysfs_watch.IN_CREATE
    | sysfs_watch.IN_MOVED_TO
    | sysfs_watch.IN_DELETE
    | sysfs_watch.IN_DELETE_SELF
    | sysfs_watch.IN_MOVE_SELF
    | sysfs_watch.IN_ONLYDIR
)
_ROOT_GONE = sysfs_watch.IN_DELETE_SELF | sysfs_watch.IN_MOVE_SELF | sysfs_watch.IN_IGNORED
_MAX_PENDING = 64 * 1024
"""An event line longer than this without a newline is garbage, not a line still being written."""
_CLOSED: Final = object()


@dataclass(slots=True)
class _Reading:
    """What one pass over the tree found (built in a worker thread, applied on the loop)."""

    counters: dict[str, FloatArray]
    link_utilization: FloatArray
    core_failed: BoolArray
    link_failed: BoolArray
    problems: list[tuple[str, str]] = field(default_factory=list)
    """(path, reason) for every value that could not be read."""
    vanished: list[int] = field(default_factory=list)
    """Chips whose directory is gone."""


class FaultSubscription(AsyncIterator[HardFault]):
    """One subscriber's stream of hard faults; registered from creation, so nothing after it is missed.

    Use it as ``async with backend.hard_faults() as faults: async for f in faults: ...`` or call
    :meth:`aclose`; a subscription that is simply dropped unregisters itself when garbage-collected.
    """

    def __init__(self, maxsize: int, on_close: Callable[[FaultSubscription], None]) -> None:
        self._queue: asyncio.Queue[HardFault | object] = asyncio.Queue(maxsize)
        self._closed = False
        self._on_close = on_close

    def offer(self, fault: HardFault) -> bool:
        """Queue ``fault``; False if this subscriber is too far behind (the fault is dropped for it)."""
        if self._closed:
            return True
        try:
            self._queue.put_nowait(fault)
        except asyncio.QueueFull:
            return False
        return True

    def __aiter__(self) -> FaultSubscription:
        return self

    async def __anext__(self) -> HardFault:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED or not isinstance(item, HardFault):
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        """Stop receiving; a task waiting in ``__anext__`` ends its iteration."""
        if not self._closed:
            self._closed = True
            self._on_close(self)
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_CLOSED)

    async def __aenter__(self) -> FaultSubscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class SysfsBackend:
    """:class:`snnrm.backends.base.HardwareBackend` over a driver's sysfs-style tree rooted at ``root``."""

    name = "sysfs"

    def __init__(
        self,
        root: Path,
        *,
        logger: Any = None,
        inline_read_max_cores: int = 64,
        fallback_poll_interval: float = 0.5,
        rearm_interval: float = 1.0,
        subscriber_queue_size: int = 4096,
    ) -> None:
        """``inline_read_max_cores``: trees up to this size are read on the loop (a few small files cost less
        than a thread hop); larger ones in a worker thread. ``fallback_poll_interval``: how often the events
        file is checked when inotify is unavailable (non-Linux). ``rearm_interval``: how often a vanished root
        is looked for again. ``subscriber_queue_size``: faults a slow subscriber may fall behind by before
        further ones are dropped for it (counted in :attr:`faults_dropped`)."""
        self.root = Path(root)
        self._log: Any = logger if logger is not None else structlog.get_logger("snnrm.backends.sysfs")
        self._inline_max = inline_read_max_cores
        self._poll_interval = fallback_poll_interval
        self._rearm_interval = rearm_interval
        self._queue_size = subscriber_queue_size
        self.read_errors = 0
        """Values (cells, files, event lines) that could not be read since start."""
        self.events_lost = 0
        """Event sequence numbers skipped by the driver's log (ring overrun); each triggers a resync."""
        self.faults_dropped = 0
        """Faults not delivered to a subscriber whose queue was full."""
        self._topology: Topology | None = None
        self._chip_dirs: list[Path] = []
        self._chip_by_n: dict[int, int] = {}
        self._link_names: list[str] = []
        self._link_slices: list[slice] = []
        self._link_index: dict[tuple[int, str], int] = {}
        self._known_core_failed: BoolArray = np.zeros(0, dtype=bool)
        self._known_link_failed: BoolArray = np.zeros(0, dtype=bool)
        self._bad_paths: set[str] = set()
        self._vanished: set[int] = set()
        self._ignored: set[str] = set()
        self._subscribers: weakref.WeakSet[FaultSubscription] = weakref.WeakSet()
        self._running = False
        self._root_warned = False
        self.watching = asyncio.Event()
        """Set while :meth:`run` has a live watch on the events file (lines after this are delivered)."""
        # Events-file cursor: identity (dev, inode) of the file read last, bytes consumed, incomplete tail.
        self._ev_ident: tuple[int, int] | None = None
        self._ev_offset = 0
        self._ev_pending = b""
        self._last_seq: int | None = None

    @property
    def topology(self) -> Topology:
        if self._topology is None:
            raise BackendError("discover() has not run yet")
        return self._topology

    # ---- discovery ------------------------------------------------------------------------------------------

    async def discover(self) -> Topology:
        """Read every chip's ``info``, check they agree, and build the topology (BackendError if unusable)."""
        topology, ignored = await asyncio.to_thread(self._discover_sync)
        for name in ignored:
            self._ignore(name)
        # The first reading is the baseline against which resyncs (after lost events) find what changed.
        reading = await asyncio.to_thread(self._read_sync)
        self._apply(reading)
        self._known_core_failed = reading.core_failed.copy()
        self._known_link_failed = reading.link_failed.copy()
        self._log.info(
            "sysfs backend discovered hardware",
            root=str(self.root),
            chips=topology.n_chips,
            cores=topology.n_cores,
            links=topology.n_links,
            failed_cores=int(reading.core_failed.sum()),
        )
        return topology

    def _discover_sync(self) -> tuple[Topology, list[str]]:
        root = self.root
        if not root.is_dir():
            raise BackendError(f"sysfs root {root} does not exist or is not a directory (driver not loaded?)")
        version_file = root / fmt.VERSION
        if version_file.exists():
            version = _read_text(version_file).strip()
            if version.split(".")[0] != str(fmt.INTERFACE_VERSION):
                raise BackendError(
                    f"{version_file}: interface version {version!r}, this snnrm speaks {fmt.INTERFACE_VERSION}"
                )
        ignored: list[str] = []
        chips: list[tuple[int, Path]] = []
        for entry in sorted(root.iterdir()):
            m = fmt.CHIP_DIR.match(entry.name)
            if m and entry.is_dir():
                chips.append((int(m.group(1)), entry))
            elif entry.name not in (fmt.EVENTS, fmt.VERSION) and not entry.name.startswith("."):
                ignored.append(str(entry))
        if not chips:
            raise BackendError(f"sysfs root {root} holds no chip<N> directories: no hardware to manage")
        chips.sort()
        infos = [self._chip_info(path) for _, path in chips]
        geometries = {(i["cols"], i["rows"], i["cores_per_router"]) for i in infos}
        if len(geometries) > 1:
            shown = ", ".join(
                f"{path.name}: {i['cols']:g}x{i['rows']:g}x{i['cores_per_router']:g}"
                for (_, path), i in zip(chips, infos, strict=True)
            )
            raise BackendError(
                f"chips under {root} disagree on geometry (cols x rows x cores_per_router): {shown}; "
                "snnrm needs every chip of a node to share one geometry"
            )
        positions = [(int(i["board_col"]), int(i["board_row"])) for i in infos]
        if len(set(positions)) != len(positions):
            raise BackendError(f"chips under {root} share a board position: {positions}")
        cols, rows, cpr = (int(v) for v in next(iter(geometries)))
        geometry = ChipGeometry(cols=cols, rows=rows, cores_per_router=cpr)
        try:
            topology = Topology(
                geometry=geometry,
                chip_pos=np.asarray(positions, dtype=np.int64).reshape(len(chips), 2),
                chip_numa=np.asarray([int(i["numa_node"]) for i in infos], dtype=np.int64),
                core_nominal_keps=np.repeat([i["nominal_keps"] for i in infos], geometry.cores).astype(np.float64),
                core_queue_capacity=np.repeat([i["queue_capacity"] for i in infos], geometry.cores).astype(np.float64),
            )
        except ValueError as e:
            raise BackendError(f"chips under {root} do not form a valid topology: {e}") from e
        numbers = [n for n, _ in chips]
        if numbers != list(range(len(numbers))):
            self._log.info("sysfs chip numbering has gaps; topology chips follow directory order", chips=numbers)
        self._topology = topology
        self._chip_dirs = [path for _, path in chips]
        self._chip_by_n = {n: k for k, n in enumerate(numbers)}
        self._link_names = fmt.link_names(topology)
        owner = fmt.link_chip(topology)
        starts = np.searchsorted(owner, np.arange(topology.n_chips + 1))
        self._link_slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(starts.tolist())]
        self._link_index = {
            (int(k), name): i for i, (k, name) in enumerate(zip(owner.tolist(), self._link_names, strict=True))
        }
        for k, path in enumerate(self._chip_dirs):
            ignored += self._scan_chip(k, path)
        return topology, ignored

    def _chip_info(self, chip_dir: Path) -> dict[str, float]:
        path = chip_dir / fmt.INFO
        try:
            raw = fmt.parse_info(path.read_text(errors="replace"))
        except OSError as e:
            raise BackendError(f"{path}: cannot read chip info: {e.strerror or e}") from e
        info: dict[str, float] = {}
        for key in (*_REQUIRED_INT, *_REQUIRED_FLOAT):
            value = fmt.parse_number(raw[key]) if key in raw else None
            if value is None:
                got = f"{raw[key]!r}" if key in raw else "missing"
                raise BackendError(f"{path}: required key {key} is {got}")
            if key in _REQUIRED_INT and (not value.is_integer() or value < 0):
                raise BackendError(f"{path}: {key}={raw[key]!r} must be a non-negative integer")
            info[key] = value
        for key in ("cols", "rows", "cores_per_router", "nominal_keps", "queue_capacity"):
            if info[key] <= 0:
                raise BackendError(f"{path}: {key}={raw[key]!r} must be positive")
        numa = fmt.parse_number(raw.get("numa_node", "-1"))
        info["numa_node"] = numa if numa is not None and numa.is_integer() else -1.0
        self._log.debug(
            "sysfs chip", chip=chip_dir.name, firmware=raw.get("firmware"), generation=raw.get("generation")
        )
        return info

    def _scan_chip(self, k: int, chip_dir: Path) -> list[str]:
        """Names under a chip that this backend will not read (reported once, at debug level)."""
        topo = self.topology
        ignored = [str(e) for e in chip_dir.iterdir() if e.name not in _CHIP_ENTRIES and not e.name.startswith(".")]
        cores_dir = chip_dir / "cores"
        if cores_dir.is_dir():
            for entry in cores_dir.iterdir():
                m = fmt.CORE_DIR.match(entry.name)
                if not m or int(m.group(1)) >= topo.geometry.cores:
                    ignored.append(str(entry))
                elif entry.is_dir():
                    ignored += [str(f) for f in entry.iterdir() if f.name not in _CORE_ENTRIES]
        links_dir = chip_dir / "links"
        if links_dir.is_dir():
            for entry in links_dir.iterdir():
                if (k, entry.name) not in self._link_index:
                    ignored.append(str(entry))
                elif entry.is_dir():
                    ignored += [str(f) for f in entry.iterdir() if f.name not in _LINK_ENTRIES]
        return ignored

    def _ignore(self, path: str) -> None:
        if path not in self._ignored:
            self._ignored.add(path)
            self._log.debug("sysfs entry ignored (not part of the interface)", path=path)

    # ---- telemetry ------------------------------------------------------------------------------------------

    async def read_frame(self) -> TelemetryFrame:
        """Sample every core and link; unreadable values are NaN (see :attr:`read_errors`)."""
        topo = self.topology
        timestamp = time.monotonic()
        if topo.n_cores <= self._inline_max:
            reading = self._read_sync()
        else:
            reading = await asyncio.to_thread(self._read_sync)
        self._apply(reading)
        c = reading.counters
        return TelemetryFrame(
            timestamp=timestamp,
            queue_depth=c["queue_depth"],
            events_in=c["events_in"],
            events_processed=c["events_processed"],
            events_dropped=c["events_dropped"],
            spikes_sent=c["spikes_sent"],
            spikes_delivered=c["spikes_delivered"],
            link_utilization=reading.link_utilization,
            core_failed=reading.core_failed,
            link_failed=reading.link_failed,
        )

    def _read_sync(self) -> _Reading:
        """One pass over every chip (blocking; touches no shared state)."""
        topo = self.topology
        per_chip = topo.geometry.cores
        counters = {name: np.full(topo.n_cores, np.nan) for name in fmt.CORE_COUNTERS}
        core_failed = np.zeros(topo.n_cores, dtype=bool)
        link_util = np.full(topo.n_links, np.nan)
        link_failed = np.zeros(topo.n_links, dtype=bool)
        reading = _Reading(counters, link_util, core_failed, link_failed)
        keys = [str(m) for m in range(per_chip)]
        for k, chip_dir in enumerate(self._chip_dirs):
            cores = slice(k * per_chip, (k + 1) * per_chip)
            links = self._link_slices[k]
            if not chip_dir.is_dir():
                reading.vanished.append(k)
                core_failed[cores] = True
                link_failed[links] = True
                continue
            values = self._read_table(chip_dir / fmt.CORE_TABLE, keys, fmt.CORE_TABLE_COLUMNS, reading)
            if values is None:
                values = self._read_units(
                    [chip_dir / "cores" / f"core{m}" for m in range(per_chip)], fmt.CORE_COUNTERS, reading
                )
            for name in fmt.CORE_COUNTERS:
                counters[name][cores] = values[name]
            core_failed[cores] = values["failed"] > 0
            names = self._link_names[links]
            values = self._read_table(chip_dir / fmt.LINK_TABLE, names, fmt.LINK_TABLE_COLUMNS, reading)
            if values is None:
                values = self._read_units([chip_dir / "links" / n for n in names], ("utilization",), reading)
            link_util[links] = values["utilization"]
            link_failed[links] = values["failed"] > 0
        return reading

    @staticmethod
    def _read_table(
        path: Path, keys: list[str], columns: tuple[str, ...], reading: _Reading
    ) -> dict[str, FloatArray] | None:
        """A snapshot table's columns, or None when absent/unusable (then the per-unit files are read)."""
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        except OSError as e:
            reading.problems.append((str(path), f"unreadable: {e.strerror or e}"))
            return None
        table = fmt.parse_table(text, keys, columns)
        reading.problems += [(str(path), reason) for reason in table.errors]
        return table.values if table.usable else None

    @staticmethod
    def _read_units(dirs: list[Path], numeric: tuple[str, ...], reading: _Reading) -> dict[str, FloatArray]:
        """The per-core (or per-link) files: ``state`` plus one file per numeric attribute."""
        n = len(dirs)
        out = {name: np.full(n, np.nan) for name in numeric}
        failed = np.zeros(n)
        for i, unit in enumerate(dirs):
            text = _read_value(unit / "state", reading)
            state = fmt.parse_state(text) if text is not None else None
            if state is None and text is not None:
                reading.problems.append((str(unit / "state"), f"{text.strip()[:32]!r} is neither ok nor failed"))
            failed[i] = 1.0 if state else 0.0
            for name in numeric:
                text = _read_value(unit / name, reading)
                if text is None:
                    continue
                value = fmt.parse_number(text)
                if value is None:
                    reading.problems.append((str(unit / name), f"{text.strip()[:32]!r} is not a number"))
                else:
                    out[name][i] = value
        out["failed"] = failed
        return out

    def _apply(self, reading: _Reading) -> None:
        """Log and count what a reading could not read; warn once per path until it reads fine again."""
        self.read_errors += len(reading.problems)
        bad: dict[str, str] = {}
        for path, reason in reading.problems:
            bad.setdefault(path, reason)
        for path, reason in bad.items():
            if path not in self._bad_paths:
                self._log.warning("sysfs value unreadable, reported as NaN", path=path, reason=reason)
        for path in self._bad_paths - bad.keys():
            self._log.info("sysfs value readable again", path=path)
        self._bad_paths = set(bad)
        vanished = set(reading.vanished)
        for k in vanished - self._vanished:
            self._log.warning(
                "sysfs chip directory vanished; its cores and links read as failed",
                path=str(self._chip_dirs[k]),
            )
        for k in self._vanished - vanished:
            self._log.info("sysfs chip directory is back", path=str(self._chip_dirs[k]))
        self._vanished = vanished

    # ---- hard faults ----------------------------------------------------------------------------------------

    def hard_faults(self) -> FaultSubscription:
        """A new, independent subscription; faults flow while :meth:`run` is running."""
        sub = FaultSubscription(self._queue_size, self._subscribers.discard)
        self._subscribers.add(sub)
        return sub

    def _publish(self, fault: HardFault) -> None:
        if fault.kind is FaultKind.CORE:
            self._known_core_failed[fault.index] = fault.failed
        else:
            self._known_link_failed[fault.index] = fault.failed
        for sub in list(self._subscribers):
            if not sub.offer(fault):
                self.faults_dropped += 1
                self._log.warning("hard-fault subscriber is too slow; fault dropped for it", fault=str(fault))

    async def run(self) -> None:
        """Watch ``<root>/events`` until cancelled; re-arm the watch if the root vanishes and comes back."""
        if self._running:
            raise RuntimeError("SysfsBackend.run() is already running")
        if self._topology is None:
            await self.discover()
        self._running = True
        baseline = True
        try:
            while True:
                if await self._watch(baseline=baseline):
                    baseline = False
                await asyncio.sleep(self._rearm_interval)
        finally:
            self._running = False

    async def _watch(self, *, baseline: bool) -> bool:
        """One watch session; returns (True if it got going) when the root is gone."""
        if not sysfs_watch.available():
            return await self._poll(baseline=baseline)
        loop = asyncio.get_running_loop()
        inotify = sysfs_watch.Inotify()
        try:
            try:
                root_wd = inotify.add_watch(self.root, _ROOT_MASK)
            except OSError as e:
                if not self._root_warned:
                    self._root_warned = True
                    self._log.warning("sysfs root cannot be watched; retrying", path=str(self.root), reason=str(e))
                return False
            self._root_warned = False
            wake = asyncio.Event()
            gone = False

            def on_readable() -> None:
                nonlocal gone
                for event in inotify.read():
                    if event.wd == root_wd and event.mask & _ROOT_GONE:
                        gone = True
                    if gone or event.name == fmt.EVENTS or event.mask & sysfs_watch.IN_Q_OVERFLOW:
                        wake.set()

            loop.add_reader(inotify.fileno(), on_readable)
            try:
                # Watch first, then read: a line appended in between is seen by this drain or the next.
                await self._drain(baseline=baseline)
                self.watching.set()
                while not gone:
                    await wake.wait()
                    wake.clear()
                    await self._drain(baseline=False)
            finally:
                self.watching.clear()
                loop.remove_reader(inotify.fileno())
            self._log.warning("sysfs root vanished (driver unloaded?); waiting for it", path=str(self.root))
            return True
        finally:
            inotify.close()

    async def _poll(self, *, baseline: bool) -> bool:
        """Fallback without inotify: check the events file every ``fallback_poll_interval`` seconds."""
        self._log.warning("inotify unavailable; polling the sysfs events file", interval=self._poll_interval)
        await self._drain(baseline=baseline)
        self.watching.set()
        try:
            while self.root.is_dir():
                await asyncio.sleep(self._poll_interval)
                await self._drain(baseline=False)
        finally:
            self.watching.clear()
        return True

    def _read_events_sync(self) -> tuple[tuple[int, int], bool, bytes] | str | None:
        """New bytes of the events file: (identity, rewound, data); None if there is no file; str if unreadable."""
        path = self.root / fmt.EVENTS
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                # Shrunk, size 0 (sysfs binary attributes report it) or replaced: read from the start.
                rewound = ident != self._ev_ident or st.st_size < self._ev_offset or st.st_size == 0
                f.seek(0 if rewound else self._ev_offset)
                return ident, rewound, f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            return f"unreadable: {e.strerror or e}"

    async def _drain(self, *, baseline: bool) -> None:
        """Deliver the complete event lines appended since the last drain."""
        got = await asyncio.to_thread(self._read_events_sync)
        if got is None:
            return
        if isinstance(got, str):
            self._problem(fmt.EVENTS, got)
            return
        ident, rewound, data = got
        if rewound:
            self._ev_offset, self._ev_pending = 0, b""
        self._ev_ident = ident
        self._ev_offset += len(data)
        data = self._ev_pending + data
        complete, _, self._ev_pending = data.rpartition(b"\n")
        if len(self._ev_pending) > _MAX_PENDING:
            self._problem(fmt.EVENTS, f"{len(self._ev_pending)} bytes without a newline; discarded")
            self._ev_pending = b""
        events: list[fmt.RawEvent] = []
        for line in complete.decode(errors="replace").splitlines():
            if not line.strip():
                continue
            parsed = fmt.parse_event(line)
            if isinstance(parsed, str):
                self._problem(fmt.EVENTS, f"{parsed}: {line[:80]!r}")
            else:
                events.append(parsed)
        if baseline:
            # Lines already there at start are history, reflected in the state files read at discovery.
            # An empty log means the driver's first event will be seq 1, so a later jump shows as a gap.
            self._last_seq = max((e.seq for e in events), default=0)
            return
        resync = False
        if rewound and events and self._last_seq is not None and events[-1].seq < self._last_seq:
            self._log.warning("sysfs events log restarted (driver reloaded?); resynchronising")
            self._last_seq, resync = None, True
        for event in events:
            last = self._last_seq
            if last is not None and event.seq <= last:
                if rewound:
                    continue  # a ring re-read: seen already
                self._log.warning("sysfs event sequence went backwards; resynchronising", seq=event.seq, last=last)
                resync = True
            elif last is not None and event.seq > last + 1:
                self.events_lost += event.seq - last - 1
                self._log.warning("sysfs events lost (log overran); resynchronising", seq=event.seq, last=last)
                resync = True
            self._last_seq = event.seq
            fault = self._to_fault(event)
            if fault is not None:
                self._publish(fault)
        if resync:
            await self._resync()

    def _to_fault(self, event: fmt.RawEvent) -> HardFault | None:
        topo = self.topology
        k = self._chip_by_n.get(event.chip)
        index: int | None = None
        if k is not None and event.kind is FaultKind.CORE:
            local = int(event.unit.removeprefix("core"))
            index = k * topo.geometry.cores + local if local < topo.geometry.cores else None
        elif k is not None:
            index = self._link_index.get((k, event.unit))
        if index is None:
            self._problem(fmt.EVENTS, f"event {event.seq} names unknown {event.kind.value} {event.chip}/{event.unit}")
            return None
        return HardFault(kind=event.kind, index=index, failed=event.failed, timestamp=event.timestamp)

    async def _resync(self) -> None:
        """Emit a fault for every core/link whose state file disagrees with what the events told us."""
        reading = await asyncio.to_thread(self._read_sync)
        self._apply(reading)
        now = time.monotonic()
        for kind, seen, known in (
            (FaultKind.CORE, reading.core_failed, self._known_core_failed),
            (FaultKind.LINK, reading.link_failed, self._known_link_failed),
        ):
            for i in np.flatnonzero(seen != known).tolist():
                self._publish(HardFault(kind=kind, index=i, failed=bool(seen[i]), timestamp=now))

    def _problem(self, name: str, reason: str) -> None:
        self.read_errors += 1
        self._log.warning("sysfs value unreadable", path=str(self.root / name), reason=reason)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        raise BackendError(f"{path}: {e.strerror or e}") from e


def _read_value(path: Path, reading: _Reading) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError as e:
        reading.problems.append((str(path), "missing" if isinstance(e, FileNotFoundError) else str(e)))
        return None
