"""SysfsBackend against FakeSysfsTree: discovery, frames, bad input, and hard faults pushed through inotify."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from snnrm.backends.base import BackendError, HardwareBackend
from snnrm.backends.sysfs import SysfsBackend
from snnrm.core.telemetry import FaultKind, HardFault
from snnrm.testing.fake_sysfs import FakeSysfsTree

TIMEOUT = 10.0  # generous: only bounds a hung test, never measures speed


def _tree(tmp_path: Path, **kw: object) -> FakeSysfsTree:
    opts: dict[str, object] = {"chips": 3, "cols": 3, "rows": 2, "cores_per_router": 2, "numa_nodes": 2}
    opts.update(kw)
    return FakeSysfsTree(tmp_path / "snn", **opts)  # type: ignore[arg-type]


def _fill(tree: FakeSysfsTree, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, links = tree.topology.n_cores, tree.topology.n_links
    values = {
        name: rng.integers(0, 10**9, n).astype(np.float64)
        for name in ("queue_depth", "events_in", "events_processed", "events_dropped", "spikes_sent")
    }
    values["spikes_delivered"] = values["spikes_sent"] // 2
    util = rng.random(links).round(4)
    tree.write_counters(link_utilization=util, **values)
    values["link_utilization"] = util
    return values


@contextlib.asynccontextmanager
async def _running(backend: SysfsBackend) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(backend.run(), name="sysfs-run")
    try:
        async with asyncio.timeout(TIMEOUT):
            await backend.watching.wait()
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _next(faults: AsyncIterator[HardFault]) -> HardFault:
    async with asyncio.timeout(TIMEOUT):
        return await anext(faults)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# ---- discovery ------------------------------------------------------------------------------------------------


async def test_discovery_matches_the_generated_tree(tmp_path: Path) -> None:
    """Chips, geometry, board positions, NUMA nodes, IDs and links come out as the fake driver wrote them."""
    tree = _tree(tmp_path, nominal_keps=750.0, queue_capacity=128.0)
    backend = SysfsBackend(tree.root)
    topo = await backend.discover()
    want = tree.topology
    assert isinstance(backend, HardwareBackend)
    assert backend.name == "sysfs"
    assert topo.geometry == want.geometry
    assert topo.ids == want.ids
    np.testing.assert_array_equal(topo.chip_pos, want.chip_pos)
    np.testing.assert_array_equal(topo.chip_numa, [0, 0, 1])
    np.testing.assert_array_equal(topo.core_nominal_keps, np.full(want.n_cores, 750.0))
    np.testing.assert_array_equal(topo.core_queue_capacity, np.full(want.n_cores, 128.0))
    np.testing.assert_array_equal(topo.link_src, want.link_src)
    np.testing.assert_array_equal(topo.link_dst, want.link_dst)


async def test_inconsistent_geometry_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    """Chips that disagree on their mesh cannot form one topology: BackendError naming both."""
    tree = _tree(tmp_path)
    info = tree.chip_dir(1) / "info"
    info.write_text(info.read_text().replace("cols=3", "cols=4"))
    with pytest.raises(BackendError, match=r"disagree on geometry.*chip0: 3x2x2.*chip1: 4x2x2"):
        await SysfsBackend(tree.root).discover()


@pytest.mark.parametrize("case", ["missing", "empty", "no-info", "bad-info"])
async def test_unusable_root_is_refused(tmp_path: Path, case: str) -> None:
    """A root with no usable chips fails discovery with BackendError, not a crash."""
    root = tmp_path / "snn"
    if case == "empty":
        root.mkdir()
    elif case in ("no-info", "bad-info"):
        tree = _tree(tmp_path)
        if case == "no-info":
            (tree.chip_dir(0) / "info").unlink()
        else:
            (tree.chip_dir(0) / "info").write_text("cols=three\nrows=2\n")
    with pytest.raises(BackendError, match=str(root)):
        await SysfsBackend(root).discover()


async def test_unknown_files_are_ignored_and_logged_once(tmp_path: Path) -> None:
    """Entries outside the interface (a real class device has many) change nothing and are logged once."""
    tree = _tree(tmp_path)
    (tree.root / "uevent").write_text("DRIVER=snn\n")
    (tree.chip_dir(0) / "temperature").write_text("41\n")
    (tree.core_dir(0) / "power_mw").write_text("3\n")
    (tree.chip_dir(0) / "links" / "r99-E").mkdir()
    values = _fill(tree)
    backend = SysfsBackend(tree.root)
    with capture_logs() as logs:
        await backend.discover()
        await backend.discover()
        frame = await backend.read_frame()
    ignored = sorted(e["path"] for e in logs if e["event"].startswith("sysfs entry ignored"))
    assert len(ignored) == 4
    assert ignored == sorted(set(ignored))
    np.testing.assert_array_equal(frame.events_in, values["events_in"])
    assert backend.read_errors == 0


# ---- frames ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot-table", "per-core-files"])
@pytest.mark.parametrize("inline_max", [10**6, 0], ids=["inline", "thread"])
async def test_frame_values_round_trip(tmp_path: Path, snapshot: bool, inline_max: int) -> None:
    """Counters, link utilisation and failure states read back exactly, from tables or per-unit files."""
    tree = _tree(tmp_path, snapshot=snapshot)
    values = _fill(tree)
    tree.fail_core(7)
    tree.fail_link(5)
    backend = SysfsBackend(tree.root, inline_read_max_cores=inline_max)
    await backend.discover()
    frame = await backend.read_frame()
    for name in ("queue_depth", "events_in", "events_processed", "events_dropped", "spikes_sent"):
        np.testing.assert_array_equal(getattr(frame, name), values[name])
    np.testing.assert_array_equal(frame.spikes_delivered, values["spikes_delivered"])
    np.testing.assert_array_equal(frame.link_utilization, values["link_utilization"])
    assert np.flatnonzero(frame.core_failed).tolist() == [7]
    assert np.flatnonzero(frame.link_failed).tolist() == [5]
    assert backend.read_errors == 0


async def test_per_core_files_are_the_fallback_when_the_table_goes(tmp_path: Path) -> None:
    """Deleting the snapshot tables at runtime switches to per-core files with no error."""
    tree = _tree(tmp_path)
    values = _fill(tree)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    for k in range(tree.topology.n_chips):
        tree.corrupt(f"chip{k}/counters", "delete")
        tree.corrupt(f"chip{k}/link_counters", "delete")
    frame = await backend.read_frame()
    np.testing.assert_array_equal(frame.events_processed, values["events_processed"])
    np.testing.assert_array_equal(frame.link_utilization, values["link_utilization"])
    assert backend.read_errors == 0


async def test_garbled_per_core_values_become_nan_and_are_counted(tmp_path: Path) -> None:
    """Garbage, empty and missing per-core files read as NaN with a warning naming the path; no exception."""
    tree = _tree(tmp_path, snapshot=False)
    values = _fill(tree)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    garbage = tree.corrupt(tree.core_dir(1) / "events_in", "garbage")
    tree.corrupt(tree.core_dir(2) / "queue_depth", "empty")
    tree.corrupt(tree.core_dir(3) / "spikes_sent", "delete")
    tree.corrupt(tree.core_dir(4) / "state", "garbage")
    with capture_logs() as logs:
        frame = await backend.read_frame()
    assert np.isnan(frame.events_in[1])
    assert np.isnan(frame.queue_depth[2])
    assert np.isnan(frame.spikes_sent[3])
    assert not frame.core_failed[4]  # an unreadable state is not a hard fault
    assert frame.events_in[0] == values["events_in"][0]
    assert np.isfinite(frame.events_in).sum() == tree.topology.n_cores - 1
    assert backend.read_errors == 4
    warned = {e["path"]: e["reason"] for e in logs if e["log_level"] == "warning"}
    assert str(garbage) in warned
    assert "not a number" in warned[str(garbage)]
    # Still bad next time: counted again but not warned again.
    with capture_logs() as logs:
        await backend.read_frame()
    assert backend.read_errors == 8
    assert not [e for e in logs if e["log_level"] == "warning"]


async def test_garbled_and_truncated_tables_lose_only_the_bad_values(tmp_path: Path) -> None:
    """A bad cell is one NaN; a table cut mid-line loses its tail rows; the rest of the frame is intact."""
    tree = _tree(tmp_path)
    values = _fill(tree)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    table = tree.chip_dir(0) / "counters"
    lines = table.read_text().splitlines()
    cells = lines[3].split()
    cells[3] = "12x4"  # events_in of chip0/core2
    lines[3] = " ".join(cells)
    table.write_text("\n".join(lines) + "\n")
    tree.corrupt("chip1/counters", "truncate")
    frame = await backend.read_frame()
    per_chip = tree.topology.geometry.cores
    assert np.isnan(frame.events_in[2])
    assert frame.events_processed[2] == values["events_processed"][2]
    chip1 = frame.events_in[per_chip : 2 * per_chip]
    assert np.isnan(chip1[-1])
    assert chip1[0] == values["events_in"][per_chip]
    np.testing.assert_array_equal(frame.events_in[2 * per_chip :], values["events_in"][2 * per_chip :])
    assert backend.read_errors >= 2


async def test_a_vanished_chip_reads_as_failed_and_nan(tmp_path: Path) -> None:
    """A chip directory that disappears makes its cores and links NaN and failed, with one warning."""
    tree = _tree(tmp_path)
    _fill(tree)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    tree.remove_chip(1)
    with capture_logs() as logs:
        frame = await backend.read_frame()
        await backend.read_frame()
    per_chip = tree.topology.geometry.cores
    chip1 = slice(per_chip, 2 * per_chip)
    assert frame.core_failed[chip1].all()
    assert np.isnan(frame.events_in[chip1]).all()
    assert not frame.core_failed[:per_chip].any()
    owned = tree.link_owner == 1
    assert frame.link_failed[owned].all()
    assert not frame.link_failed[~owned].any()
    assert len([e for e in logs if "vanished" in e["event"]]) == 1


# ---- hard faults ----------------------------------------------------------------------------------------------


async def test_hard_fault_reaches_every_subscriber(tmp_path: Path) -> None:
    """A core failure appended by the driver reaches two independent subscribers, in order."""
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    async with _running(backend):
        first, second = backend.hard_faults(), backend.hard_faults()
        tree.fail_core(9, timestamp=123.5)
        tree.recover_core(9, timestamp=124.0)
        for faults in (first, second):
            assert await _next(faults) == HardFault(FaultKind.CORE, 9, failed=True, timestamp=123.5)
            assert await _next(faults) == HardFault(FaultKind.CORE, 9, failed=False, timestamp=124.0)


async def test_link_fault_maps_to_the_canonical_link_index(tmp_path: Path) -> None:
    """A link event named ``chip<N> r<R>-<D>`` arrives as the topology's global link index."""
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    last = tree.topology.n_links - 1
    async with _running(backend):
        faults = backend.hard_faults()
        tree.fail_link(last)
        fault = await _next(faults)
    assert (fault.kind, fault.index, fault.failed) == (FaultKind.LINK, last, True)


async def test_history_is_not_replayed_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    """Events already in the file at start are not delivered; malformed lines are counted and skipped."""
    tree = _tree(tmp_path)
    tree.fail_core(1)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    async with _running(backend):
        faults = backend.hard_faults()
        tree.append_raw("not an event\n")
        tree.append_raw(f"{tree.seq + 1} 5.0 core 99 core0 failed\n")  # unknown chip
        tree.seq += 1
        tree.seq += 1
        line = f"{tree.seq} 5.0 core 0 core2 failed\n"
        tree.append_raw(line[:12])  # a line written in two pieces is parsed once complete
        await asyncio.sleep(0.05)
        tree.append_raw(line[12:])
        fault = await _next(faults)
    assert fault == HardFault(FaultKind.CORE, 2, failed=True, timestamp=5.0)
    assert backend.read_errors == 2


async def test_lost_events_trigger_a_resync_from_state_files(tmp_path: Path) -> None:
    """A jump in sequence numbers (the driver's ring overran) re-reads states and reports what changed."""
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    async with _running(backend):
        faults = backend.hard_faults()
        # The driver failed core 3 and link 2 but their events were lost; then core 5's event arrives.
        tree.core_failed[3] = True
        tree.link_failed[2] = True
        tree.write_counters()
        tree.seq += 2
        tree.fail_core(5)
        got = {(f.kind, f.index, f.failed) for f in [await _next(faults) for _ in range(3)]}
    assert got == {(FaultKind.CORE, 5, True), (FaultKind.CORE, 3, True), (FaultKind.LINK, 2, True)}
    assert backend.events_lost == 2


async def test_closing_a_subscription_ends_its_iteration(tmp_path: Path) -> None:
    """aclose() ends a pending ``async for`` and the backend stops feeding that subscriber."""
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    async with _running(backend):
        faults = backend.hard_faults()
        received: list[HardFault] = []
        got_one = asyncio.Event()

        async def consume() -> None:
            async for fault in faults:
                received.append(fault)
                got_one.set()

        consumer = asyncio.create_task(consume())
        tree.fail_core(0)
        async with asyncio.timeout(TIMEOUT):
            await got_one.wait()
        await faults.aclose()
        async with asyncio.timeout(TIMEOUT):
            await consumer
        assert len(backend._subscribers) == 0
    assert [f.index for f in received] == [0]


async def test_cancelling_run_releases_the_watch(tmp_path: Path) -> None:
    """Cancelling run() removes the inotify fd from the loop and closes it: no fd leaks across restarts."""
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root)
    await backend.discover()
    before = _open_fds()
    for _ in range(3):
        async with _running(backend):
            assert len(_open_fds() - before) >= 1
        assert not backend.watching.is_set()
    assert _open_fds() - before == set()


async def test_watch_survives_the_root_vanishing_and_returning(tmp_path: Path) -> None:
    """If the driver is unloaded and reloaded, the watch re-arms and later faults still arrive."""
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root, rearm_interval=0.05)
    await backend.discover()
    async with _running(backend):
        faults = backend.hard_faults()
        moved = tree.root.with_name("gone")
        tree.root.rename(moved)
        async with asyncio.timeout(TIMEOUT):
            while backend.watching.is_set():  # noqa: ASYNC110 -- the backend has no "unwatched" event to await
                await asyncio.sleep(0.01)
        moved.rename(tree.root)
        async with asyncio.timeout(TIMEOUT):
            await backend.watching.wait()
        tree.fail_core(4)
        fault = await _next(faults)
    assert (fault.index, fault.failed) == (4, True)


async def test_without_inotify_the_events_file_is_polled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On platforms without inotify the backend falls back to checking the file, and faults still arrive."""
    monkeypatch.setattr("snnrm.backends.sysfs_watch.available", lambda: False)
    tree = _tree(tmp_path)
    backend = SysfsBackend(tree.root, fallback_poll_interval=0.02)
    await backend.discover()
    async with _running(backend):
        faults = backend.hard_faults()
        tree.fail_link(0)
        fault = await _next(faults)
    assert (fault.kind, fault.index) == (FaultKind.LINK, 0)
