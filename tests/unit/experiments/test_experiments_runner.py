"""Whole runs on a small machine (2 chips, 6 simulated seconds): reproducible, and the obvious outcomes hold."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.experiments.config import ExperimentConfig
from benchmarks.experiments.eviction import ClusterReallocator
from benchmarks.experiments.policies import DEFAULT_POLICIES, POLICIES, pod_name
from benchmarks.experiments.report import README_BEGIN, README_END, headlines, update_readme, write_all
from benchmarks.experiments.runner import Run, run_one
from benchmarks.experiments.scenarios import SCENARIOS, build_fault
from benchmarks.experiments.suite import run_suite
from sim_hw import HotSpot, Simulator, load_preset
from snnrm.core.jobs import PLANNED_CORES
from snnrm.kube.api import PODS

CFG = ExperimentConfig(name="test", chips=2, duration=6.0, seeds=(0,), max_jobs=4, metric_stride=5)
TIMING = {"decision_cpu_s", "decision_cpu_ms_per_s", "wall_s", "decision_mem_kib"}


def _stable(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING}


def test_a_run_is_reproducible() -> None:
    a = run_one(CFG, "combined", "snnrm", 0)
    b = run_one(CFG, "combined", "snnrm", 0)
    assert _stable(a.metrics) == pytest.approx(_stable(b.metrics), nan_ok=True)
    assert [(m.t, m.job, m.stage) for m in a.moves] == [(m.t, m.job, m.stage) for m in b.moves]
    assert a.victims == b.victims


def test_a_failed_core_is_answered_by_snnrm_and_not_by_first_fit() -> None:
    ff = run_one(CFG, "core-failure", "first-fit", 0)
    ours = run_one(CFG, "core-failure", "snnrm", 0)
    assert ff.victims == ours.victims  # the same job and stage are hit under both policies
    assert ff.metrics["moves"] == 0
    assert math.isnan(ff.metrics["realloc_s"])
    assert ours.metrics["realloc_s"] < 1.0
    assert ours.moves[0].reasons == ("failed-core",)
    assert ours.metrics["victim_dropped_pct"] < ff.metrics["victim_dropped_pct"]
    assert ours.metrics["victim_slo_s"] < ff.metrics["victim_slo_s"]
    assert ours.moves[0].degraded
    assert ours.metrics["false_moves"] == 0
    # The move is charged: the stage is down while its weights load (cores x synapses / bandwidth).
    assert ours.moves[0].stall >= ours.moves[0].cores * 937_500 / 1e9 - 1e-9


def test_the_reactive_baseline_restarts_the_victim_and_pays_the_pod_restart() -> None:
    r = run_one(CFG, "core-failure", "reactive", 0)
    victim = [m for m in r.moves if m.victim]
    assert victim
    assert victim[0].action == "reschedule"
    assert victim[0].degraded
    assert victim[0].stall >= CFG.pod_restart
    assert r.metrics["victim_outage_s"] > 0  # the restart is an outage of the victim, counted


def test_a_telemetry_glitch_moves_a_healthy_stage_only_as_a_false_move() -> None:
    r = run_one(CFG, "telemetry-glitch", "reactive", 0)
    assert r.metrics["false_moves"] == sum(1 for m in r.moves if not m.degraded)
    assert all(not m.degraded for m in r.moves)


def test_no_fault_no_move_and_snnrm_places_with_fewer_hops_than_first_fit() -> None:
    ours = run_one(CFG, "none", "snnrm", 0)
    ff = run_one(CFG, "none", "first-fit", 0)
    assert ours.metrics["moves"] == 0
    assert ours.metrics["slo_violation_pct"] == 0.0
    assert ours.metrics["hops_per_spike"] <= ff.metrics["hops_per_spike"]
    # Every job keeps real time: its timesteps finish within the 1 ms step, with room to spare.
    assert ours.metrics["late_step_pct"] == 0.0
    assert 0.0 < ours.metrics["victim_step_p99_ms"] < 1.0


def test_a_hot_spot_makes_the_victims_timesteps_overrun() -> None:
    """A saturated core carries a backlog of more than one timestep of work (sim_hw.step_time)."""
    r = run_one(CFG, "hot-spot", "first-fit", 0)
    assert r.metrics["late_step_pct"] > 0.0
    assert r.metrics["victim_step_p99_ms"] > 1.0


@pytest.mark.parametrize("scenario", list(SCENARIOS))
@pytest.mark.parametrize("policy", ["snnrm", "reactive"])
def test_every_scenario_runs_with_sane_accounting(scenario: str, policy: str) -> None:
    r = run_one(CFG, scenario, policy, 0)
    m = r.metrics
    assert m["jobs"] >= 1
    assert 0.0 <= m["dropped_pct"] <= 100.0
    assert 0.0 <= m["slo_violation_pct"] <= 100.0
    assert 0.0 <= m["late_step_pct"] <= 100.0
    assert 0.0 < m["alloc_pct"] <= 100.0
    assert m["hops_per_spike"] > 0
    assert len(r.times) == len(r.victim_latency)
    targeted = [k for k in SCENARIOS[scenario].faults if k != "flaky-telemetry"]
    assert len(r.victims) == len(targeted)


def test_suite_report_files_and_readme(tmp_path: Path) -> None:
    cfg = CFG.with_(scenarios=("none", "core-failure", "hot-spot"), policies=("first-fit", "reactive", "snnrm"))
    suite = run_suite(cfg, workers=1)
    assert len(suite.runs) == 9
    assert set(suite.memory_kib) == {"first-fit", "reactive", "snnrm"}
    assert suite.memory_kib["snnrm"] > suite.memory_kib["first-fit"] > 0
    items = write_all(suite, tmp_path, plots=None, readme=False)
    assert [h.name for h in items] == [
        "p99 latency under a hot spot vs reactive first-fit",
        "SLO-violation time under faults",
        "dropped events under faults",
        "failed core -> victim back within SLO",
        "spike hops vs first-fit",
    ]
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["scenario"], r["policy"]) for r in rows] == [(s, p) for s in cfg.scenarios for p in cfg.policies]
    with (tmp_path / "runs.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 9
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["config"]["seeds"] == [0]
    assert "numpy" in recorded["versions"]
    text = (tmp_path / "results.md").read_text()
    assert "Headline targets" in text
    assert "Where snnrm does not beat a baseline" in text
    assert "snnrm - reactive, paired by seed" in text
    assert "Where a target is missed, and why" in text
    assert headlines(suite)[0].verdict.split(" ")[0] in {"met", "MISSED", "n/a"}
    data = json.loads((tmp_path / "headlines.json").read_text())
    assert data["baseline"] == "reactive"
    assert all({"snnrm", "reactive", "verdict", "data"} <= set(h) for h in data["headlines"])
    # Rewritten later from the cache, the files still name when and from what code the runs were made.
    made = dataclasses.replace(suite, provenance={**suite.provenance, "generated": "then", "git_commit": "abc"})
    write_all(made, tmp_path, plots=None, readme=False)
    recorded = json.loads((tmp_path / "config.json").read_text())
    assert recorded["generated"] == "then"
    assert recorded["versions"]["git_commit"] == "abc"
    assert recorded["rendered"] != "then"
    assert json.loads((tmp_path / "headlines.json").read_text())["generated"] == "then"


def test_update_readme_appends_once_then_replaces_only_its_section(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nintro\n")
    update_readme(f"{README_BEGIN}\n## Experiments\nfirst\n{README_END}\n", readme)
    update_readme(f"{README_BEGIN}\n## Experiments\nsecond\n{README_END}\n", readme)
    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n")
    assert text.count(README_BEGIN) == 1
    assert "second" in text
    assert "first" not in text
    assert text.endswith(f"{README_END}\n")


def test_policies_and_scenarios_are_complete() -> None:
    assert set(DEFAULT_POLICIES) == {"first-fit", "reactive", "random", "static", "snnrm", "snnrm-no-hysteresis"}
    assert set(POLICIES) == {*DEFAULT_POLICIES, "snnrm-whole-chips", "snnrm-no-units", "snnrm-evict", "snnrm-count"}
    assert {
        "none",
        "core-failure",
        "hot-spot",
        "link-congestion",
        "queue-saturation",
        "telemetry-glitch",
        "combined",
    } <= set(SCENARIOS)


def test_the_default_results_quote_the_longer_set_and_say_how_the_comparison_is_fair(tmp_path: Path) -> None:
    from benchmarks.experiments.report import quoted_headlines

    cfg = CFG.with_(scenarios=("none", "core-failure", "telemetry-glitch"), policies=("reactive", "snnrm"))
    suite = run_suite(cfg, workers=1, measure_memory=False)
    write_all(suite, tmp_path / "full", plots=None, readme=False)
    lines = quoted_headlines(tmp_path / "full" / "headlines.json", "x/")
    assert lines[0].startswith("The longer set")
    assert any(line.startswith("| failed core -> victim back within SLO |") for line in lines)
    assert any(line.startswith("| false moves under telemetry glitches |") for line in lines)
    assert quoted_headlines(tmp_path / "missing.json", "x/") == []
    # The default set's page carries both, the quote linking the other set's page relative to its own.
    write_all(
        suite,
        tmp_path,
        plots=None,
        readme=False,
        notes=("Every policy sees the same faults.",),
        quote=tmp_path / "full",
    )
    text = (tmp_path / "results.md").read_text()
    assert "## How the comparison is kept fair\n\nEvery policy sees the same faults." in text
    assert "[all tables](full/results.md)" in text
    assert "| false moves under telemetry glitches |" in text.split("## How the comparison")[0]
    # Without notes or a set to quote, neither section appears.
    write_all(suite, tmp_path / "full", plots=None, readme=False)
    text = (tmp_path / "full" / "results.md").read_text()
    assert "The longer set" not in text
    assert "How the comparison is kept fair" not in text


@pytest.mark.parametrize(("utilisation", "divisor"), [(0.02, 100.0), (0.25, 8.0), (0.6, 4.0), (0.0, 4.0)])
def test_a_hot_spot_is_sized_to_overload_the_stage_it_hits(utilisation: float, divisor: float) -> None:
    """At real sparsity a fixed 4x throttle left most victims under capacity: the divisor is at least
    hot_overload / utilisation, so the stage gets at most half the service its load needs (never below 4x)."""
    sim = Simulator(load_preset("loihi2", chips=1), seed=0)
    placement = [np.arange(4, dtype=np.int64), np.arange(4, 8, dtype=np.int64)]
    for kind in ("hot-spot", "hot-core"):
        pf = build_fault(
            kind,
            sim=sim,
            job="j",
            placement=placement,
            stage=1,
            cfg=CFG,
            rng=np.random.default_rng(0),
            utilisation=utilisation,
        )
        assert isinstance(pf.fault, HotSpot)
        assert pf.fault.service_divisor == pytest.approx(divisor)


def test_without_live_remap_the_cluster_controller_evicts_and_the_stage_restarts_on_its_reservation() -> None:
    """``snnrm-evict`` runs the node agent, the node's reports, the controller's cache and its eviction decision
    on an in-memory apiserver: the victim is evicted through the Eviction API after the controller's confirm
    window, restarts (a pod restart, charged) on the cores the controller reserved, and its new pod holds them."""
    cfg = CFG.with_(duration=30.0)  # stages older than the controller's min_age (10 s) at the fault
    run = Run(cfg, "core-failure", "snnrm-evict", 0, trace_memory=False)
    result = run.run()
    victim = [m for m in run.moves if m.victim]
    assert victim
    mv = victim[0]
    assert (mv.action, mv.reasons) == ("reschedule", ("failed-core",))
    assert mv.t >= cfg.fault_time + 1.0  # reported by the node, confirmed by the controller for 1 s
    assert mv.stall >= cfg.pod_restart
    node = run.node
    assert isinstance(node, ClusterReallocator)
    assert ("default", pod_name(mv.job, mv.stage), False) in node.api.evictions
    stage = run.tracks[mv.job].running.stages[mv.stage]  # type: ignore[union-attr]
    pod = node.api.get_obj(PODS, pod_name(mv.job, mv.stage))
    assert pod is not None
    ids = sorted(run.topology.ids[c] for c in stage.cores.tolist())
    assert sorted(pod["metadata"]["annotations"][PLANNED_CORES].split(",")) == ids
    assert not run.hw_failed[stage.cores].any()
    assert result.metrics["false_moves"] == 0
