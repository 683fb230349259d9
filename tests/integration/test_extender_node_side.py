"""The node side of placement with real gRPC PodResources (fake kubelet server) and the in-memory apiserver:
the published summary, plan hints for admissions, and remap recovery after a daemon restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from snnrm.backends.sim import SimBackend
from snnrm.cluster.events import EventRecorder
from snnrm.cluster.hints import PlanHints
from snnrm.cluster.node_agent import NodeAgent
from snnrm.cluster.remap import LocalStage, RemapLedger
from snnrm.core.devices import NEURON_CORE
from snnrm.core.jobs import PLANNED_CORES, PLANNED_NODE
from snnrm.core.placement import StageDemand
from snnrm.core.summary import ANNOTATION, NodeSummary, PublishPolicy
from snnrm.core.topology import INTER_CHIP_WEIGHT
from snnrm.kube.api import NODES, PODS
from snnrm.kubelet.podresources import PodResourcesClient
from snnrm.node import NodeService
from snnrm.testing.fake_cluster import FakeClusterApi, stage_pod
from snnrm.testing.fake_podresources import FakePodResourcesLister


@contextlib.asynccontextmanager
async def node_side(
    tmp: Path,
) -> AsyncIterator[tuple[FakeClusterApi, NodeService, FakePodResourcesLister, PodResourcesClient]]:
    backend = SimBackend(chips=2, cores_per_chip=16, seed=0)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.1)
    node.monitor.observe(await backend.read_frame())
    api = FakeClusterApi()
    api.put(NODES, {"metadata": {"name": "n1"}})
    sock = tmp / "pr.sock"
    async with (
        FakePodResourcesLister(sock) as kubelet,
        PodResourcesClient(sock, cache_seconds=0.0, backoff_seconds=0.0) as pr,
    ):
        yield api, node, kubelet, pr


def agent(api: FakeClusterApi, node: NodeService, pr: PodResourcesClient, state: Path, hints: PlanHints) -> NodeAgent:
    return NodeAgent(
        api,
        "n1",
        node,
        RemapLedger(state, node.topology),
        hints,
        pr,
        EventRecorder(api, instance="n1"),
        policy=PublishPolicy(min_interval=0.0, max_interval=60.0),
        inter_chip_weight=INTER_CHIP_WEIGHT,
    )


def published(api: FakeClusterApi) -> NodeSummary:
    obj = api.get_obj(NODES, "n1", None)
    assert obj is not None
    return NodeSummary.decode(obj["metadata"]["annotations"][ANNOTATION])


async def start(a: NodeAgent) -> asyncio.Task[None]:
    task = asyncio.create_task(a.run())
    for _ in range(100):
        if a.publications:
            break
        await asyncio.sleep(0.01)
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_summary_hints_and_admission(tmp_path: Path) -> None:
    """The summary shows every core free; a planned pod bound here is what the next admission of its size
    gets; once PodResources lists it, its cores are no longer free in the summary."""
    async with node_side(tmp_path) as (api, node, kubelet, pr):
        hints = PlanHints()
        a = agent(api, node, pr, tmp_path / "state", hints)
        task = await start(a)
        try:
            assert published(api).free_count == 32
            planned = "chip1-core0,chip1-core1,chip1-core2"
            api.put(PODS, stage_pod("j", 0, 1, 3, node="n1", annotations={PLANNED_NODE: "n1", PLANNED_CORES: planned}))
            await asyncio.sleep(0.1)
            await a.sync_once()
            got = hints.planned(np.arange(32), 3)
            assert got is not None
            assert [node.topology.ids[i] for i in got] == planned.split(",")
            kubelet.assign("default", "j-0", "snn", NEURON_CORE, planned.split(","))
            await a.sync_once()
            s = published(api)
            assert s.free_count == 29
            assert not s.free[got].any()
        finally:
            await stop(task)


async def test_a_restarted_daemon_recovers_its_remaps_and_lends_no_core_twice(tmp_path: Path) -> None:
    """A remap recorded before the restart is recovered from its file and PodResources: its target cores are
    withheld from the kubelet and not free in the summary; when the pod ends, they come back."""
    state = tmp_path / "state"
    async with node_side(tmp_path) as (api, node, kubelet, pr):
        admitted = ("chip0-core0", "chip0-core1")
        ledger = RemapLedger(state, node.topology)
        stage = LocalStage("default", "j-0", "", "j", 0, (StageDemand(2),), admitted, np.array([0, 1]), True)
        ledger.record(stage, np.array([20, 21]), 1.0)  # written by the daemon before it restarted
        kubelet.assign("default", "j-0", "snn", NEURON_CORE, list(admitted))
        api.put(PODS, stage_pod("j", 0, 1, 2, node="n1"))

        a = agent(api, node, pr, state, PlanHints())  # the restarted daemon
        task = await start(a)
        try:
            assert ("default", "j-0") in a.ledger.records
            devices = node.feeds[NEURON_CORE].current
            assert devices is not None
            assert not devices.healthy[[20, 21]].any()  # lent to the remapped stage: never handed out
            s = published(api)
            assert not s.free[[0, 1, 20, 21]].any()
            assert s.free_count == 28
            (here,) = a.stages()
            assert here.cores.tolist() == [20, 21]
            # The pod ends: the kubelet frees its admitted cores, the remap record goes, the lent cores return.
            kubelet.remove_pod("default", "j-0")
            # A PodResources call already in flight (the agent's own loop) may still list the pod: the next one
            # does not. Bounded: a record that outlives a few refreshes is the bug this test is about.
            for _ in range(20):
                await a.sync_once()
                if not a.ledger.records:
                    break
                await asyncio.sleep(0.05)
            assert not a.ledger.records
            devices = node.feeds[NEURON_CORE].current
            assert devices is not None
            assert devices.healthy[[20, 21]].all()
        finally:
            await stop(task)


@pytest.mark.parametrize("holders", [{"chip0-core0": ("default", "other")}, {}])
def test_records_of_pods_that_no_longer_hold_their_cores_are_dropped(
    tmp_path: Path, holders: dict[str, tuple[str, str]]
) -> None:
    from snnrm.core.topology import ChipGeometry, Topology

    topo = Topology.grid(chips=1, geometry=ChipGeometry(cols=4, rows=2))
    ledger = RemapLedger(tmp_path, topo)
    stage = LocalStage(
        "default", "j-0", "", "j", 0, (StageDemand(2),), ("chip0-core0", "chip0-core1"), np.array([0, 1])
    )
    ledger.record(stage, np.array([4, 5]), 1.0)
    assert RemapLedger(tmp_path, topo).recover(holders) == []
