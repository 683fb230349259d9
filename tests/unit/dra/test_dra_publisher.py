"""The ResourceSlice publisher against the in-memory apiserver: first publish, quiet resyncs, taints at once,
headroom rate-limited, recovery from deletions and conflicts, and cluster feature detection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from snnrm.core.dra import DRIVER, NO_EXECUTE, DraFeatures, DraLayout, DraSnapshot, HardwareInfo
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.dra.publisher import SlicePublisher
from snnrm.dra.view import DraView
from snnrm.kube.api import NODES, RESOURCE_SLICES, KubeError
from snnrm.kube.dra import DraApi
from snnrm.testing.fake_cluster import FakeClusterApi
from snnrm.testing.fake_telemetry import StaticTelemetry

NODE = "node-a"
SLICES = RESOURCE_SLICES.path()


class CountingTelemetry(StaticTelemetry):
    """Counts the view's folds (each reads :meth:`now` first), so a test can wait until the view has seen a change
    instead of sleeping and hoping it did."""

    def __init__(self, topology: Topology) -> None:
        super().__init__(topology)
        self.reads = 0

    def now(self) -> float:
        self.reads += 1
        return super().now()


@dataclass
class Rig:
    kube: FakeClusterApi
    telemetry: CountingTelemetry
    view: DraView
    publisher: SlicePublisher
    layout: DraLayout

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["name"]: d for s in self.kube.pool_slices(NODE, DRIVER) for d in s["spec"].get("devices", [])}

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in self.kube.calls if c[0] in ("POST", "PUT", "DELETE") and c[1].startswith(SLICES)]

    def watching(self) -> bool:
        return ("WATCH", SLICES) in self.kube.calls

    async def folded(self, n: int) -> None:
        """Wait until the view has read the telemetry ``n`` more times (it sees whatever the test set before)."""
        target = self.telemetry.reads + n
        await until(lambda: self.telemetry.reads >= target)


async def until(pred: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not pred():  # noqa: ASYNC110 - the condition is the fake apiserver's state, which has no event
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def rig(*, features: DraFeatures | None = None, attribute_interval: float = 0.2) -> AsyncIterator[Rig]:
    t = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4, cores_per_router=1), nominal_keps=1000.0)
    layout = DraLayout.build(t)
    kube = FakeClusterApi(dra_features=features or DraFeatures())
    kube.add_node(NODE)
    tel = CountingTelemetry(t)
    view = DraView(layout, tel, period=0.02)
    pub = SlicePublisher(
        DraApi(kube),
        view,
        driver=DRIVER,
        node=NODE,
        info=HardwareInfo(model="loihi2"),
        attribute_interval=attribute_interval,
    )
    tasks = [asyncio.create_task(view.run()), asyncio.create_task(pub.run())]
    try:
        await asyncio.wait_for(pub.synced.wait(), 5)
        yield Rig(kube, tel, view, pub, layout)
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_first_publish_creates_the_pool_owned_by_the_node() -> None:
    async with rig() as r:
        slices = r.kube.pool_slices(NODE, DRIVER)
        assert len(slices) == 2  # one counter slice, 32 groups + 2 chips + 2 throughput devices in one
        assert {s["spec"]["pool"]["generation"] for s in slices} == {1}
        assert all(s["spec"]["pool"]["resourceSliceCount"] == 2 for s in slices)
        owner = slices[0]["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "Node"
        assert owner["uid"] == (r.kube.get_obj(NODES, NODE) or {})["metadata"]["uid"]
        assert len(r.devices()) == 36
        assert r.publisher.features == DraFeatures(True, True, True)
        assert ("POST?dryRun", SLICES) in r.kube.calls  # the probe: learn which fields the cluster keeps
        assert slices[0]["metadata"]["name"].replace("-000", "-999") not in r.kube.slices


async def test_nothing_is_written_while_nothing_changes() -> None:
    async with rig() as r:
        before, version = len(r.writes()), r.view.version
        r.publisher.request_sync()
        await until(lambda: r.publisher.syncs >= 2)
        assert len(r.writes()) == before  # a forced sync of an unchanged pool writes nothing
        # The view keeps folding the same telemetry: it must report no change, so the publisher stays idle.
        await r.folded(3)
        assert r.view.version == version
        assert len(r.writes()) == before


async def test_a_failed_core_taints_its_devices_with_one_slice_update() -> None:
    async with rig(attribute_interval=60.0) as r:
        before = len(r.writes())
        lists = r.kube.calls.count(("LIST", SLICES))
        r.telemetry.fail(5)
        await until(lambda: "taints" in r.devices()["chip0-g5"])
        assert r.devices()["chip0-g5"]["taints"][0]["effect"] == NO_EXECUTE
        assert r.devices()["chip0"]["taints"][0]["effect"] == NO_EXECUTE
        assert len(r.writes()) == before + 1  # both devices live in one slice: one PUT, no generation bump
        assert {s["spec"]["pool"]["generation"] for s in r.kube.pool_slices(NODE, DRIVER)} == {1}
        assert r.kube.calls.count(("LIST", SLICES)) == lists  # planned against the cache: no LIST
        r.telemetry.recover(5)
        await until(lambda: "taints" not in r.devices()["chip0-g5"])


async def test_headroom_changes_are_bucketed_and_rate_limited() -> None:
    async with rig(attribute_interval=0.5) as r:
        syncs, version = r.publisher.syncs, r.view.version
        r.telemetry.keps[:16] *= 0.96  # noise inside a bucket: nothing to publish
        await r.folded(3)  # the view has read the noisy telemetry: no new version, so no sync can follow
        assert r.view.version == version
        assert r.publisher.syncs == syncs
        r.telemetry.keps[:16] *= 0.2
        r.telemetry.time = 100.0  # well past the shrink dwell
        await r.folded(1)  # the view saw the drop at t=100 (where the dwell starts)
        r.telemetry.time = 103.0
        await until(lambda: r.devices()["chip0-g0"]["attributes"]["headroomPct"] == {"int": 0}, within=5)
        assert r.devices()["chip0"]["attributes"]["headroomPct"] == {"int": 0}
        assert r.devices()["chip1"]["attributes"]["headroomPct"] == {"int": 100}


async def test_a_deleted_slice_comes_back_through_the_watch() -> None:
    async with rig() as r:
        await until(r.watching)
        name = sorted(r.kube.slices)[1]
        r.kube.delete_obj(RESOURCE_SLICES, name)
        await until(lambda: name in r.kube.slices)
        # Recreated with a higher generation, and every other slice moved to it.
        assert {s["spec"]["pool"]["generation"] for s in r.kube.pool_slices(NODE, DRIVER)} == {2}


async def test_all_slices_wiped_come_back_with_a_higher_generation() -> None:
    async with rig() as r:
        await until(r.watching)
        for name in list(r.kube.slices):
            r.kube.delete_obj(RESOURCE_SLICES, name)
        await until(lambda: len(r.kube.pool_slices(NODE, DRIVER)) == 2)
        await until(lambda: {s["spec"]["pool"]["generation"] for s in r.kube.pool_slices(NODE, DRIVER)} == {2})


async def test_a_slice_changed_by_someone_else_is_put_back() -> None:
    async with rig() as r:
        await until(r.watching)
        name = sorted(r.kube.slices)[1]
        tampered = r.kube.pool_slices(NODE, DRIVER)[1]
        assert tampered["metadata"]["name"] == name
        tampered["spec"]["devices"] = tampered["spec"]["devices"][:3]
        await DraApi(r.kube).update_slice(tampered)
        await until(lambda: len(r.kube.slices[name]["spec"]["devices"]) == 36)


async def test_write_errors_are_retried_from_a_fresh_list() -> None:
    async with rig(attribute_interval=60.0) as r:
        r.kube.fail_next = [KubeError(500, "etcd hiccup")]
        r.telemetry.fail(3)
        await until(lambda: "taints" in r.devices()["chip0-g3"])
        assert "etcd hiccup" not in r.publisher.last_error


@pytest.mark.parametrize(
    ("features", "kinds"),
    [
        (DraFeatures(partitionable=False), {"core-group", "event-throughput"}),
        (DraFeatures(consumable=False), {"core-group", "chip"}),
        (DraFeatures(False, False, False), {"core-group"}),
    ],
)
async def test_the_cluster_decides_which_devices_are_published(features: DraFeatures, kinds: set[str]) -> None:
    async with rig(features=features) as r:
        assert r.publisher.features == features
        published = {d["attributes"]["type"]["string"] for d in r.devices().values()}
        assert published == kinds
        if not features.taints:
            r.telemetry.fail(0)
            await until(lambda: "chip0-g0" not in r.devices())


async def test_the_view_only_reports_real_changes() -> None:
    t = Topology.grid(chips=1, geometry=ChipGeometry(cols=2, rows=2))
    tel = StaticTelemetry(t)
    view = DraView(DraLayout.build(t), tel)
    tel.time = float("nan")
    assert not view.fold()
    assert view.snapshot is None
    tel.time = 1.0
    assert view.fold()
    assert not view.fold()
    tel.fail(0)
    assert view.fold()
    assert view.health_version == 2
    snap = _snapshot(view)  # read again: mypy would keep the narrowing to None from above
    assert snap is not None
    assert np.count_nonzero(snap.conditions.effect) == 2  # its group and its chip


def _snapshot(view: DraView) -> DraSnapshot | None:
    return view.snapshot
