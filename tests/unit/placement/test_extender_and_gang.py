"""Extender filter/prioritize and the gang planner over a ClusterIndex: reasons, scores, reservations, splits."""

from __future__ import annotations

import numpy as np
from placement_helpers import TOPO, index_with, stage_pod, summary

from snnrm.core.cluster import ClusterIndex, Reservation, StageKey
from snnrm.core.extender import demand_of, filter_nodes, prioritize
from snnrm.core.gang import Placed, plan_gang
from snnrm.core.jobs import stage_of
from snnrm.core.placement import StageDemand

NOW = 1000.0
N = TOPO.n_cores  # 32


def test_filter_gives_a_reason_for_every_failed_node() -> None:
    """Unknown nodes are unresolvable; stale and full ones fail with numbers; the rest pass."""
    idx = index_with({"ok": summary(NOW), "full": summary(NOW, free=3), "stale": summary(NOW - 1000)})
    pod = stage_pod("j", 0, 2, 4)
    res = filter_nodes(idx, demand_of(pod), ["ok", "full", "stale", "ghost"], now=NOW)
    assert res.passed == ["ok"]
    assert "needs 4 free healthy snnrm.io/neuron-core, node has 3" in res.failed["full"]
    assert "old" in res.failed["stale"]
    assert "no snnrm summary" in res.unresolvable["ghost"]


def test_filter_counts_other_stages_reservations_but_not_its_own() -> None:
    """Cores reserved for another job are not available; a stage's own reservation is its pass."""
    idx = index_with({"a": summary(NOW, free=8), "b": summary(NOW)})
    idx.reserve(Reservation(StageKey("default", "other", 0), "a", np.arange(6), expires_at=NOW + 60))
    pod = stage_pod("j", 0, 2, 4)
    res = filter_nodes(idx, demand_of(pod), ["a", "b"], now=NOW)
    assert res.passed == ["b"]
    assert "2 reserved" not in res.failed["a"]
    assert "6 reserved" in res.failed["a"]
    idx.reserve(Reservation(StageKey("default", "j", 0), "a", np.arange(6, 8), expires_at=NOW + 60))
    pod2 = stage_pod("j", 0, 2, 2)
    res = filter_nodes(idx, demand_of(pod2), ["a", "b"], now=NOW)
    assert res.passed == ["a"]
    assert "planned on node a" in res.unresolvable["b"]


def test_broken_contract_fails_every_node_with_the_message() -> None:
    idx = index_with({"a": summary(NOW)})
    pod = stage_pod("j", 0, 2, 4)
    del pod["metadata"]["labels"]["snnrm.io/stage"]
    res = filter_nodes(idx, demand_of(pod), ["a"], now=NOW)
    assert res.passed == []
    assert "snnrm.io/stage" in res.unresolvable["a"]


def test_prioritize_prefers_the_node_of_the_neighbouring_stage() -> None:
    """Stage 1 scores highest where stage 0 runs, even if another node has more headroom."""
    stage0 = stage_pod("j", 0, 2, 4, keps=500, node="busy")
    idx = index_with({"busy": summary(NOW, free=20, fill=0.4), "idle": summary(NOW)}, [stage0])
    scores = prioritize(idx, demand_of(stage_pod("j", 1, 2, 4)), ["busy", "idle"], now=NOW)
    assert scores[0] > scores[1]
    assert all(0 <= s <= 10 for s in scores)
    # Without a neighbour, headroom decides.
    lone = prioritize(idx, demand_of(stage_pod("k", 0, 1, 4)), ["busy", "idle"], now=NOW)
    assert lone[1] > lone[0]


def test_prioritize_scores_unknown_stale_or_full_nodes_zero() -> None:
    idx = index_with({"full": summary(NOW, free=1), "stale": summary(NOW - 1000)})
    assert prioritize(idx, demand_of(stage_pod("j", 0, 1, 4)), ["full", "stale", "ghost"], now=NOW) == [0, 0, 0]


def test_gang_plan_places_the_whole_job_on_one_node_when_it_fits() -> None:
    idx = index_with({"a": summary(NOW, free=10), "b": summary(NOW)})
    demands = [StageDemand(8, out_keps=500), StageDemand(8, out_keps=50), StageDemand(8)]
    plan = plan_gang(idx, ("default", "j"), demands, {}, now=NOW)
    assert plan is not None
    assert {p.node for p in plan.stages.values()} == {"b"}
    cores = np.concatenate([p.cores for p in plan.stages.values()])
    assert len(np.unique(cores)) == 24


def test_gang_plan_splits_only_when_no_node_can_hold_the_job() -> None:
    idx = index_with({"a": summary(NOW, free=20), "b": summary(NOW, free=20)})
    demands = [StageDemand(12, out_keps=500), StageDemand(12)]
    plan = plan_gang(idx, ("default", "j"), demands, {}, now=NOW)
    assert plan is not None
    assert {p.node for p in plan.stages.values()} == {"a", "b"}


def test_gang_plan_is_all_or_nothing() -> None:
    """When the job cannot fit in total, no stage gets a plan."""
    idx = index_with({"a": summary(NOW, free=10), "b": summary(NOW, free=10)})
    assert plan_gang(idx, ("default", "j"), [StageDemand(8), StageDemand(8), StageDemand(8)], {}, now=NOW) is None


def test_gang_plan_respects_reservations_of_other_jobs() -> None:
    """Two jobs that each fill a node: the second plan never reuses the first one's reserved cores."""
    idx = index_with({"a": summary(NOW)})
    demands = [StageDemand(10, out_keps=100), StageDemand(10)]
    first = plan_gang(idx, ("default", "j1"), demands, {}, now=NOW)
    assert first is not None
    for i, p in first.stages.items():
        idx.reserve(Reservation(StageKey("default", "j1", i), p.node, p.cores, expires_at=NOW + 60))
    assert plan_gang(idx, ("default", "j2"), demands, {}, now=NOW) is None
    assert plan_gang(idx, ("default", "j2"), [StageDemand(6), StageDemand(6)], {}, now=NOW) is not None
    # Expiry gives the cores back.
    assert len(idx.expire(NOW + 61)) == 2
    assert plan_gang(idx, ("default", "j2"), demands, {}, now=NOW) is not None


def test_gang_plan_keeps_placed_stages_and_plans_next_to_them() -> None:
    """A re-created stage is planned on the node (and beside the cores) of the stages still running."""
    idx = index_with({"a": summary(NOW, free=20), "b": summary(NOW)})
    held0 = np.arange(20, 26)
    plan = plan_gang(
        idx,
        ("default", "j"),
        [StageDemand(6, out_keps=500), StageDemand(6)],
        {0: Placed("a", held0)},
        now=NOW,
    )
    assert plan is not None
    assert list(plan.stages) == [1]
    assert plan.stages[1].node == "a"
    assert not np.isin(plan.stages[1].cores, held0).any()


def test_committed_reservations_do_not_expire() -> None:
    idx = ClusterIndex()
    idx.set_summary("a", summary(NOW))
    key = StageKey("default", "j", 0)
    idx.reserve(Reservation(key, "a", np.arange(4), expires_at=NOW + 1))
    assert idx.commit(key, "uid")
    assert idx.expire(NOW + 100) == []
    assert idx.available("a") == N - 4


def test_stage_of_stage_pod_helper_is_consistent() -> None:
    ref = stage_of(stage_pod("j", 1, 3, 5, node="n1"))
    assert ref is not None
    assert ref.node == "n1"
