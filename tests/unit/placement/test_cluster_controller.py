"""The controller's shell against the in-memory apiserver fake: cache, gang planner, leader election, native gang
detection and the eviction side of reallocation."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from snnrm.cluster.cache import ClusterCache
from snnrm.cluster.controller import ControllerSettings, PlacementController
from snnrm.cluster.events import EventRecorder
from snnrm.cluster.leader import LeaderElector
from snnrm.cluster.native import detect, ensure_group
from snnrm.cluster.planner import GangPlanner
from snnrm.cluster.reallocation import ReallocationController, ReallocationMetrics
from snnrm.core.cluster import ClusterIndex, StageKey
from snnrm.core.jobs import GATE, PLANNED_CORES, PLANNED_NODE, STAGE_HEALTH, StageHealth
from snnrm.core.reallocation import ReallocationSettings, hot_neighbourhood
from snnrm.core.summary import ANNOTATION
from snnrm.kube.api import LEASES, NODES, PODS, KubeError
from snnrm.testing.fake_cluster import SMALL_TOPOLOGY, FakeClusterApi, node_summary, stage_pod

NOW = 1_800_000_000.0  # 2027: after the fake pods' creation timestamps


def put_node(api: FakeClusterApi, name: str, **summary: Any) -> None:
    s = node_summary(NOW, **summary)
    api.put(NODES, {"metadata": {"name": name, "annotations": {ANNOTATION: s.encode()}}})


def put_pod(api: FakeClusterApi, pod: dict[str, Any]) -> dict[str, Any]:
    pod["metadata"].pop("uid", None)
    return api.put(PODS, pod)


@contextlib.asynccontextmanager
async def running_cache(api: FakeClusterApi) -> AsyncIterator[ClusterCache]:
    cache = ClusterCache(api, ClusterIndex(stale_after=1e9), clock=lambda: NOW)
    task = asyncio.create_task(cache.run())
    await asyncio.wait_for(cache.synced.wait(), 5)
    try:
        yield cache
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def gated(pod: dict[str, Any]) -> bool:
    return any(g.get("name") == GATE for g in pod["spec"].get("schedulingGates") or [])


# -- cache and planner ----------------------------------------------------------------------------------------------


async def test_planner_releases_a_whole_job_with_affinity_and_plan() -> None:
    """Every gated stage gets the plan, a required node affinity and its gate removed; cores are reserved."""
    api = FakeClusterApi()
    put_node(api, "n1", free=8)
    put_node(api, "n2")
    for i, c in enumerate([8, 6, 6]):
        put_pod(api, stage_pod("j", i, 3, c, gated=True))
    async with running_cache(api) as cache:
        planner = GangPlanner(api, cache, EventRecorder(api, instance="t"), clock=lambda: NOW)
        await planner.reconcile()
        await settle()
        for i in range(3):
            pod = api.get_obj(PODS, f"j-{i}")
            assert pod is not None
            assert not gated(pod)
            assert pod["metadata"]["annotations"][PLANNED_NODE] == "n2"
            terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"] == [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n2"]}]}
            ]
            assert len(pod["metadata"]["annotations"][PLANNED_CORES].split(",")) == [8, 6, 6][i]
            assert StageKey("default", "j", i) in cache.index.reservations
        assert cache.index.available("n2") == 32 - 20
        assert {e["reason"] for e in api.events_for("j-0")} >= {"Planned"}


async def test_planner_keeps_existing_affinity_terms_and_other_gates() -> None:
    api = FakeClusterApi()
    put_node(api, "n1")
    pod = stage_pod("j", 0, 1, 4, gated=True)
    pod["spec"]["schedulingGates"].append({"name": "someone.else/gate"})
    term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    pod["spec"]["affinity"] = {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
    }
    put_pod(api, pod)
    async with running_cache(api) as cache:
        await GangPlanner(api, cache, EventRecorder(api, instance="t"), clock=lambda: NOW).reconcile()
    got = api.get_obj(PODS, "j-0")
    assert got is not None
    assert got["spec"]["schedulingGates"] == [{"name": "someone.else/gate"}]
    (t,) = got["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert t["matchExpressions"] == term["matchExpressions"]
    assert t["matchFields"][0]["values"] == ["n1"]


async def test_planner_waits_for_every_stage_and_for_capacity() -> None:
    """Missing stages or too little room: nothing is patched, the pods say why (Events)."""
    api = FakeClusterApi()
    put_node(api, "n1", free=10)
    put_pod(api, stage_pod("j", 0, 2, 8, gated=True))
    async with running_cache(api) as cache:
        planner = GangPlanner(api, cache, EventRecorder(api, instance="t"), clock=lambda: NOW)
        await planner.reconcile()
        assert gated(api.get_obj(PODS, "j-0") or {})
        assert any(e["reason"] == "WaitingForStages" for e in api.events_for("j-0"))
        put_pod(api, stage_pod("j", 1, 2, 8, gated=True))
        await settle()
        await planner.reconcile()
        assert gated(api.get_obj(PODS, "j-0") or {})
        assert gated(api.get_obj(PODS, "j-1") or {})
        assert any(e["reason"] == "WaitingForCapacity" for e in api.events_for("j-1"))
        assert not cache.index.reservations


async def test_dry_run_planner_changes_nothing() -> None:
    api = FakeClusterApi()
    put_node(api, "n1")
    put_pod(api, stage_pod("j", 0, 1, 4, gated=True))
    async with running_cache(api) as cache:
        await GangPlanner(api, cache, EventRecorder(api, instance="t"), dry_run=True, clock=lambda: NOW).reconcile()
        assert gated(api.get_obj(PODS, "j-0") or {})
        assert not cache.index.reservations
        assert any(e["reason"] == "WouldPlace" for e in api.events_for("j-0"))


async def test_a_restarted_controller_rebuilds_reservations_from_the_pods() -> None:
    """Plans live on the pods: a fresh cache holds the same cores, committed for bound pods."""
    api = FakeClusterApi()
    put_node(api, "n1")
    pod = stage_pod(
        "j", 0, 1, 3, node="n1", annotations={PLANNED_NODE: "n1", PLANNED_CORES: "chip0-core0,chip0-core1,chip0-core2"}
    )
    put_pod(api, pod)
    async with running_cache(api) as cache:
        r = cache.index.reservations[StageKey("default", "j", 0)]
        assert r.committed
        assert sorted(r.cores.tolist()) == [0, 1, 2]
        assert cache.index.available("n1") == 29
        api.delete_obj(PODS, "j-0")
        await settle()
        assert not cache.index.reservations


async def test_garbled_summaries_are_counted_and_the_node_dropped() -> None:
    api = FakeClusterApi()
    api.put(NODES, {"metadata": {"name": "bad", "annotations": {ANNOTATION: "{]"}}})
    put_node(api, "good")
    async with running_cache(api) as cache:
        assert cache.bad_summaries == 1
        assert cache.index.node_names() == ["good"]


# -- leader election ------------------------------------------------------------------------------------------------


async def test_only_one_replica_holds_the_lease_and_a_dead_leader_is_replaced() -> None:
    api = FakeClusterApi()
    t = [0.0]
    a = LeaderElector(api, namespace="ns", identity="a", clock=lambda: t[0])
    b = LeaderElector(api, namespace="ns", identity="b", clock=lambda: t[0])
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    t[0] += 5
    assert await a.try_acquire_or_renew()  # renewal
    assert not await b.try_acquire_or_renew()
    # a stops renewing: b takes over only after seeing the same record for a whole lease duration.
    t[0] += 10
    assert not await b.try_acquire_or_renew()
    t[0] += 6
    assert await b.try_acquire_or_renew()
    lease = api.get_obj(LEASES, "snnrm-placement-controller", "ns")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not await a.try_acquire_or_renew()


async def test_leader_work_stops_when_renewal_fails() -> None:
    api = FakeClusterApi()
    t = [0.0]
    e = LeaderElector(
        api, namespace="ns", identity="a", clock=lambda: t[0], lease_duration=3, renew_deadline=2, retry_period=0.01
    )
    stopped = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = asyncio.create_task(e.run(work))
    await asyncio.wait_for(e.leading.wait(), 2)
    # The apiserver becomes unreachable: renewals fail until the renew deadline passes.
    api.fail_next.extend(KubeError(0, "connection refused") for _ in range(10_000))
    async with asyncio.timeout(2):
        while len(api.fail_next) > 10_000 - 2:  # noqa: ASYNC110 - the fake apiserver has no event; two renewals failed
            await asyncio.sleep(0.01)
    assert e.leading.is_set()  # within the renew deadline a failed renewal is retried and the work goes on
    assert not stopped.is_set()
    t[0] += 5
    await asyncio.wait_for(stopped.wait(), 2)
    assert not e.leading.is_set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# -- native gang API ------------------------------------------------------------------------------------------------


async def test_native_gang_api_is_detected_when_served() -> None:
    api = FakeClusterApi()
    assert await detect(api) is None
    api.served["scheduling.k8s.io"] = {"v1": ["priorityclasses"], "v1alpha2": ["workloads", "podgroups"]}
    gang = await detect(api)
    assert gang is not None
    assert (gang.version, gang.resource.plural) == ("v1alpha2", "podgroups")
    assert await ensure_group(api, gang, "default", "j", 3)
    assert await ensure_group(api, gang, "default", "j", 3)  # exists: still fine
    (group,) = api.all(gang.resource)
    assert group["spec"]["schedulingPolicy"]["gang"]["minCount"] == 3


async def test_the_controller_runs_the_planner_only_while_leading() -> None:
    api = FakeClusterApi()
    put_node(api, "n1")
    put_pod(api, stage_pod("j", 0, 1, 4, gated=True))
    ctl = PlacementController(api, ControllerSettings(identity="me", retry_period=0.01), clock=lambda: NOW)
    task = asyncio.create_task(ctl.run())
    try:
        for _ in range(200):
            pod = api.get_obj(PODS, "j-0")
            if pod is not None and not gated(pod):
                break
            await asyncio.sleep(0.01)
        assert ctl.elector.leading.is_set()
        assert not gated(api.get_obj(PODS, "j-0") or {})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- reallocation: the eviction side -------------------------------------------------------------------------------


def degraded(reasons: tuple[str, ...], remap: str = "unavailable", cost: float = 1e6) -> dict[str, str]:
    return {STAGE_HEALTH: StageHealth("degraded", reasons, NOW, remap, cost).encode()}


def realloc(api: FakeClusterApi, cache: ClusterCache, clock: list[float], **kw: Any) -> ReallocationController:
    settings = ReallocationSettings(min_age=0.0, cooldown=60.0)
    return ReallocationController(
        api,
        cache,
        EventRecorder(api, instance="t"),
        metrics=ReallocationMetrics(CollectorRegistry()),
        settings=settings,
        confirm=1.0,
        clock=lambda: clock[0],
        **kw,
    )


def placed_job(api: FakeClusterApi, job: str, *, stage1: dict[str, str] | None = None) -> None:
    cores = ["chip0-core0,chip0-core1", "chip0-core2,chip0-core3"]
    for i in range(2):
        ann = {PLANNED_NODE: "n1", PLANNED_CORES: cores[i]} | (stage1 if i == 1 and stage1 else {})
        put_pod(api, stage_pod(job, i, 2, 2, node="n1", annotations=ann))


def count(ctl: ReallocationController, reason: str, action: str) -> float:
    return ctl.metrics.value(reason, action)


@contextlib.asynccontextmanager
async def reconciled(
    api: FakeClusterApi, *, wait: float, **kw: Any
) -> AsyncIterator[tuple[ReallocationController, ClusterCache]]:
    """A controller that has seen the cluster once, then again ``wait`` seconds later (past the 1 s confirm window
    when ``wait`` > 1)."""
    clock = [NOW]
    async with running_cache(api) as cache:
        ctl = realloc(api, cache, clock, **kw)
        await ctl.reconcile()
        clock[0] += wait
        await ctl.reconcile()
        yield ctl, cache


async def test_a_failed_stage_is_evicted_after_the_confirm_window() -> None:
    api = FakeClusterApi()
    put_node(api, "n1", healthy=30)
    put_node(api, "n2")
    placed_job(api, "j", stage1=degraded(("failed-core",)))
    clock = [NOW]
    async with running_cache(api) as cache:
        ctl = realloc(api, cache, clock)
        await ctl.reconcile()
        assert api.evictions == []  # just seen: not yet confirmed
        clock[0] += 1.5
        await ctl.reconcile()
        assert api.evictions == [("default", "j-1", False)]
        assert count(ctl, "failed-core", "evict") == 1
        assert any(e["reason"] == "Evicted" for e in api.events_for("j-1"))
        r = cache.index.reservations[StageKey("default", "j", 1)]
        assert not r.committed
        assert r.pod_uid == ""  # held for the replacement pod


async def test_a_pdb_refusal_is_recorded_and_nothing_moves() -> None:
    api = FakeClusterApi()
    put_node(api, "n1", healthy=30)
    placed_job(api, "j", stage1=degraded(("failed-core",)))
    api.blocked_evictions.add(("default", "j-1"))
    async with reconciled(api, wait=2) as (ctl, cache):
        assert api.get_obj(PODS, "j-1") is not None
        assert count(ctl, "failed-core", "blocked") == 1
        assert any(e["reason"] == "EvictionBlocked" for e in api.events_for("j-1"))
        assert (
            StageKey("default", "j", 1) not in cache.index.reservations
            or cache.index.reservations[StageKey("default", "j", 1)].committed
        )


async def test_dry_run_evicts_nothing() -> None:
    api = FakeClusterApi()
    put_node(api, "n1", healthy=30)
    placed_job(api, "j", stage1=degraded(("failed-core",)))
    async with reconciled(api, wait=2, dry_run=True) as (ctl, _):
        assert api.evictions == []
        assert count(ctl, "failed-core", "dry-run") == 1
        assert any(e["reason"] == "WouldEvict" for e in api.events_for("j-1"))


async def test_a_report_that_clears_before_confirmation_moves_nothing() -> None:
    """Hysteresis on the controller side: a degraded report that is gone within the window is ignored."""
    api = FakeClusterApi()
    put_node(api, "n1", healthy=30)
    placed_job(api, "j", stage1=degraded(("failed-core",)))
    clock = [NOW]
    async with running_cache(api) as cache:
        ctl = realloc(api, cache, clock)
        await ctl.reconcile()
        await api.merge_patch(PODS, "j-1", {"metadata": {"annotations": {STAGE_HEALTH: StageHealth("ok").encode()}}})
        await settle()
        clock[0] += 5
        await ctl.reconcile()
        assert api.evictions == []


@pytest.mark.parametrize(("remap", "evicted"), [("unavailable", True), ("not-opted-in", True), ("none", False)])
async def test_a_condition_the_node_holds_only_by_hysteresis_is_not_evicted(remap: str, evicted: bool) -> None:
    """The node reports a stage whose signals read good again as degraded with ``remap: none`` (its condition
    clears after 5 s of good readings): nothing to do, in the cluster either, however long it stands and however
    high its reported cost. A stage the node cannot fix itself is evicted."""
    api = FakeClusterApi()
    put_node(api, "n1", healthy=30)
    put_node(api, "n2")
    placed_job(api, "j", stage1=degraded(("queue-saturated",), remap=remap))
    async with reconciled(api, wait=4.0):
        assert api.evictions == ([("default", "j-1", False)] if evicted else [])


async def test_cooldown_and_not_worth_it_defer_moves() -> None:
    """A job moved recently waits out its cooldown; a soft degradation whose fix costs more than it saves stays."""
    api = FakeClusterApi()
    put_node(api, "n1")
    placed_job(api, "j", stage1=degraded(("queue-saturated",), cost=1.0))
    clock = [NOW]
    async with running_cache(api) as cache:
        ctl = realloc(api, cache, clock)
        await ctl.reconcile()
        clock[0] += 2
        await ctl.reconcile()
        assert api.evictions == []
        assert count(ctl, "queue-saturated", "not-worth-it") == 1
        ctl.budget.record(("default", "j"), clock[0])
        clock[0] += 2
        await ctl.reconcile()
        assert any(e["reason"] == "ReallocationDeferred" for e in api.events_for("j-1"))


async def test_one_stage_in_flight_per_pipeline() -> None:
    """While one stage of a job is being re-created, no other stage of it is evicted."""
    api = FakeClusterApi()
    put_node(api, "n1", healthy=30)
    put_node(api, "n2")
    cores = ["chip0-core0,chip0-core1", "chip0-core2,chip0-core3", "chip0-core4,chip0-core5"]
    for i in range(3):
        ann = {PLANNED_NODE: "n1", PLANNED_CORES: cores[i]} | (degraded(("failed-core",)) if i else {})
        put_pod(api, stage_pod("j", i, 3, 2, node="n1", annotations=ann))
    clock = [NOW]
    async with running_cache(api) as cache:
        ctl = realloc(api, cache, clock)
        ctl.settings = ReallocationSettings(min_age=0.0, cooldown=0.0)
        ctl.budget.settings = ctl.settings
        await ctl.reconcile()
        clock[0] += 2
        await ctl.reconcile()
        await settle()
        clock[0] += 2
        await ctl.reconcile()
        assert [e[1] for e in api.evictions] == ["j-1"]
        assert any(e["reason"] == "ReallocationDeferred" for e in api.events_for("j-2"))


@pytest.mark.parametrize("raw", ["", "{", '{"state": "weird"}', '{"state": "degraded", "since": "x"}'])
def test_garbled_stage_health_is_no_report(raw: str) -> None:
    assert StageHealth.decode(raw) is None


async def test_a_saturated_stage_is_not_re_placed_in_its_hot_region() -> None:
    """A hot spot's idle cores look free in the node's summary (per-chip means): the replacement of a stage the
    node reports saturated is reserved outside one router hop of where it ran, where the nearest free cores (its
    own among them) would otherwise take it straight back."""
    api = FakeClusterApi()
    put_node(api, "n1")
    placed_job(api, "j", stage1=degraded(("queue-saturated",)))
    clock = [NOW]
    async with running_cache(api) as cache:
        ctl = realloc(api, cache, clock)
        await ctl.reconcile()
        clock[0] += 1.5
        await ctl.reconcile()
        assert api.evictions == [("default", "j-1", False)]
        r = cache.index.reservations[StageKey("default", "j", 1)]
        region = hot_neighbourhood(SMALL_TOPOLOGY, np.array([2, 3]))
        assert region.sum() < SMALL_TOPOLOGY.n_cores - 4  # room outside it
        assert not region[r.cores].any()
