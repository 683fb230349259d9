"""Ablations: each of snnrm's seed claims switched off on its own, through the product's own code paths.

* **Sparsity-aware reporting** (``snnrm-whole-chips``): the node reports whole chips instead of cores, so the
  kubelet hands each stage whole free chips; measured on the default machine (8 Loihi 2 chips) with the default
  workload: how many jobs the node admits, how much of what it hands out runs, and what the admitted jobs get.
* **Asynchronous-unit awareness** (``snnrm-no-units``): snnrm's planner with the shared-unit price at zero
  (:attr:`snnrm.core.placement.PlacementView.shared_unit_hops`), on the presets whose routers serve several
  cores (SpiNNaker 2 quad-PEs, Akida nodes of four NPs): with no fault and under a congested link.
* **Live remap** (``snnrm-evict``): the same stages without the live-remap opt-in, so the cluster's eviction path
  (:mod:`benchmarks.experiments.eviction`) answers instead: under a failed core and under a hot spot.
* **KEPS-based admission** is not run, and the report says why (:func:`not_run_note`, with the loads computed from
  the workloads): it needs a workload whose event rate, not its core count, fills the node, and at the networks'
  measured rates no stage's cores run at their full event rate (rescaling rates to make one is what the
  experiments stopped doing).

Each ablation runs the same seeds, workloads and faults for snnrm and its ablation (paired by seed) through
:func:`benchmarks.experiments.suite.run_suite`, and the report gives the paired differences with 95% bootstrap
intervals.

    python -m benchmarks.experiments ablations [--seeds 10] [--duration 60] [--out benchmarks/results/ablations]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.experiments.config import DEFAULT, ExperimentConfig
from benchmarks.experiments.report import RESULTS_DIR
from benchmarks.experiments.stats import Interval, mean_of, paired_diff
from benchmarks.experiments.suite import SuiteResult, run_suite
from benchmarks.experiments.workloads import NETWORKS, stage_utilisation
from sim_hw import load_preset

SNNRM = "snnrm"


@dataclass(frozen=True, slots=True)
class Ablation:
    """One claim, the policy that switches it off, and where it is measured."""

    claim: str
    policy: str
    preset: str
    chips: int
    scenarios: tuple[str, ...]
    metrics: tuple[str, ...]
    why: str
    model_note: str = ""
    """What the simulator does and does not model that this claim rests on."""


METRICS: dict[str, tuple[str, str]] = {
    # metric: (label, format)
    "jobs": ("jobs admitted", ".1f"),
    "rejected": ("jobs refused", ".1f"),
    "hops_per_spike": ("hops per spike", ".2f"),
    "slo_violation_pct": ("SLO-violation time, %", ".3f"),
    "dropped_pct": ("dropped events, %", ".3f"),
    "victim_step_p99_ms": ("victim p99 per timestep, ms", ".3f"),
    "energy_uj_per_step": ("energy per job step, uJ", ".2f"),
    "realloc_s": ("fault -> victim's move, s", ".2f"),
    "victim_slo_s": ("victim outside its SLO, s", ".1f"),
}

UNITS_NOTE = (
    "What the simulator models of a shared unit: the cores behind one router share that router's links, and a "
    "spike between two of them takes no hop. It does not model what the claim is about, units that stall or "
    "slow each other (a shared router port, a node's shared memory or event scheduler), so here the shared-unit "
    "price can only show its cost (longer routes) and not its benefit; a result where the ablation does better is "
    "that cost, measured, not evidence against the claim on hardware."
)

EVICT_NOTE = (
    "Without live remap the node only reports, and the cluster's reallocation controller acts: the daemon's node "
    "agent, the node's reports on the pods, the controller's cache, its 1 s confirmation, plan_gang and the "
    "Eviction API, all on an in-memory apiserver (no request latency; the replacement pod lands on the cores "
    "the controller reserved, as the planner or the extender would place it). The move then costs a pod restart "
    "(6 s, assumed) besides the weight load, and the controller waits for a stage to be 10 s old (min_age)."
)

ABLATIONS: tuple[Ablation, ...] = (
    Ablation(
        "live remap on the node",
        "snnrm-evict",
        "loihi2",
        8,
        ("core-failure", "hot-spot"),
        ("realloc_s", "victim_slo_s", "slo_violation_pct", "dropped_pct", "victim_step_p99_ms"),
        "stages not opted in to live remap: the cluster's controller evicts a degraded stage and re-places it",
        EVICT_NOTE,
    ),
    Ablation(
        "sparsity-aware reporting",
        "snnrm-whole-chips",
        "loihi2",
        8,
        ("none", "core-failure"),
        ("jobs", "rejected", "hops_per_spike", "slo_violation_pct", "dropped_pct"),
        "cores reported as whole chips: a stage of 1-5 cores takes a 128-core chip",
        "Jobs refused at admission are not in the other rows: those describe the few jobs each policy admitted "
        "(under whole chips every stage boundary crosses chips, hence the hops; the steps still finish within "
        "1 ms with no fault, and a failed core costs them more SLO time than it costs snnrm's jobs).",
    ),
    Ablation(
        "asynchronous-unit awareness (SpiNNaker 2)",
        "snnrm-no-units",
        "spinnaker2",
        8,
        ("none", "link-congestion"),
        ("hops_per_spike", "slo_violation_pct", "dropped_pct", "victim_step_p99_ms"),
        "4 PEs share each quad-PE router; without the price two stages of a job may share one",
        UNITS_NOTE,
    ),
    Ablation(
        "asynchronous-unit awareness (Akida)",
        "snnrm-no-units",
        "akida",
        8,
        ("none", "link-congestion"),
        ("hops_per_spike", "slo_violation_pct", "dropped_pct", "victim_step_p99_ms"),
        "4 NPs share each node's mesh router; without the price two stages of a job may share one",
        UNITS_NOTE,
    ),
)

KEPS_PRESETS = ("loihi2", "akida")


def busiest_core_load(preset: str) -> float:
    """The highest event load on any stage's cores, as a share of their service rate, over every network and every
    stage cut the workloads draw (:data:`benchmarks.experiments.workloads.NETWORKS`) on ``preset``, at the
    networks' measured rates."""
    spec = load_preset(preset)
    loads = [
        float(
            stage_utilisation(
                maker(n, name=name, neurons_per_core=spec.neurons_per_core, seed=0), spec.core_service_rate
            ).max()
        )
        for name, (maker, lo, hi, _) in NETWORKS.items()
        for n in range(lo, hi + 1)
    ]
    return max(loads)


def not_run_note() -> str:
    """Why the KEPS-admission ablation is not run, with the loads that decide it computed from the workloads."""
    loads = ", ".join(f"{busiest_core_load(p):.0%} on {load_preset(p).name}" for p in KEPS_PRESETS)
    return (
        "**KEPS-based admission vs count only** (not run): admission by event throughput can only differ from a "
        "count of cores when a workload's events, not its neurons, fill the node. At the networks' measured rates "
        f"the busiest stage's cores run at most {loads} of their event rate (every network, every stage cut the "
        "workloads draw), and a stage takes at least one core, so the event-throughput devices (as many KEPS per "
        "core as the core serves) never run out before the cores do: an oversubscription scenario would need rates "
        "scaled up, which these experiments no longer do. What it would take: a workload of many input streams per "
        "job (the number of sensors, published rates), and the admission check on `snnrm.io/event-throughput` that "
        "`snnrm job plan` already requests."
    )


@dataclass(frozen=True, slots=True)
class Result:
    ablation: Ablation
    suite: SuiteResult


def config_for(ab: Ablation, base: ExperimentConfig) -> ExperimentConfig:
    """The base config on the ablation's machine, with snnrm and its ablation only."""
    return base.with_(
        name=f"ablation {ab.policy} {ab.preset}",
        preset=ab.preset,
        chips=ab.chips,
        scenarios=ab.scenarios,
        policies=(SNNRM, ab.policy),
    )


def run(base: ExperimentConfig, *, workers: int | None = None, verbose: bool = True) -> list[Result]:
    """Run every ablation on ``base``'s seeds and duration."""
    out = []
    for ab in ABLATIONS:
        cfg = config_for(ab, base)
        if verbose:
            where = f"{ab.chips} {ab.preset} chips, {', '.join(ab.scenarios)}"
            print(f"{ab.claim}: {ab.policy} vs {SNNRM} on {where}", flush=True)
        out.append(Result(ab, run_suite(cfg, workers=workers, measure_memory=False)))
    return out


HIGHER_IS_BETTER = frozenset({"jobs"})


def _cell(suite: SuiteResult, sc: str, metric: str, fmt: str) -> tuple[str, str, str, str]:
    """snnrm's mean, the ablation's mean and the paired difference (ablation - snnrm), each with its interval, and
    what the difference says: the claim helps (the ablation is worse), hurts, or makes no significant difference."""
    pol = next(p for p in suite.policies if p != SNNRM)
    ours, theirs = suite.values(sc, SNNRM, metric), suite.values(sc, pol, metric)

    def one(x: float) -> str:
        return format(x, fmt) if math.isfinite(x) else "n/a"

    def iv(e: Interval) -> str:
        return f"{one(e.value)} [{one(e.lo)}, {one(e.hi)}]" if math.isfinite(e.value) else "n/a"

    d = paired_diff(theirs, ours)
    if d.n < 2 or not (math.isfinite(d.lo) and math.isfinite(d.hi)) or d.lo <= 0 <= d.hi:
        word = "no significant difference"
    else:
        worse = (d.lo > 0) != (metric in HIGHER_IS_BETTER)
        word = "the claim helps" if worse else "the claim hurts"
    return iv(mean_of(ours)), iv(mean_of(theirs)), iv(d), word


def markdown(results: Sequence[Result]) -> list[str]:
    """The ablation tables: per claim and scenario, snnrm vs the ablation (means over seeds with 95% bootstrap
    intervals) and the paired difference (ablation - snnrm)."""
    lines = ["# snnrm ablations", ""]
    if results:
        cfg = results[0].suite.cfg
        lines += [
            f"Each seed claim switched off on its own (`python -m benchmarks.experiments ablations`): "
            f"{len(cfg.seeds)} seeds, {cfg.duration:.0f} s of simulated time per run, the default workload at its "
            f"measured rates and the default faults at T/3; seeds paired between snnrm and its ablation, 95% "
            f"percentile-bootstrap intervals over seeds.",
            "",
        ]
    for r in results:
        ab, suite = r.ablation, r.suite
        spec = load_preset(ab.preset, chips=ab.chips)
        lines += [
            f"## {ab.claim}: `{ab.policy}`",
            "",
            f"{spec.chips} {spec.name} chips ({spec.n_cores} cores, {spec.cores_per_router} per router); {ab.why}.",
            "",
            "| scenario | metric | snnrm | ablation | ablation - snnrm (paired) | reading |",
            "|---|---|---|---|---|---|",
        ]
        for sc in ab.scenarios:
            for m in ab.metrics:
                label, fmt = METRICS[m]
                a, b, d, word = _cell(suite, sc, m, fmt)
                lines.append(f"| {sc} | {label} | {a} | {b} | {d} | {word} |")
        lines += ["", ab.model_note, ""] if ab.model_note else [""]
    lines += [not_run_note(), ""]
    return lines


def csv_rows(results: Sequence[Result]) -> list[str]:
    rows = ["claim,policy,preset,scenario,seed," + ",".join(METRICS)]
    for r in results:
        for run_ in r.suite.runs:
            cells = [r.ablation.claim, run_.policy, r.ablation.preset, run_.scenario, str(run_.seed)]
            cells += [f"{run_.metrics.get(m, math.nan):.6g}" for m in METRICS]
            rows.append(",".join(f'"{c}"' if "," in c else c for c in cells))
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.experiments ablations", description=__doc__)
    p.add_argument("--seeds", type=int, default=len(DEFAULT.seeds), help="seeds 0..N-1 (default: the default set's)")
    p.add_argument("--duration", type=float, default=DEFAULT.duration, help="simulated seconds per run")
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(2, CPUs))")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "ablations", help="output directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ablations, print and write ``ablations.md`` and ``ablations.csv`` into ``--out``."""
    p = parser()
    a = p.parse_args(argv)
    if a.seeds < 1 or not (math.isfinite(a.duration) and a.duration > 0):
        p.error("--seeds must be >= 1 and --duration > 0")
    base = DEFAULT.with_(seeds=tuple(range(a.seeds)), duration=float(a.duration))
    results = run(base, workers=a.workers)
    md = markdown(results)
    print("\n".join(md))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "ablations.md").write_text("\n".join(md), encoding="utf-8")
    (a.out / "ablations.csv").write_text("\n".join(csv_rows(results)) + "\n", encoding="utf-8")
    print(f"written: {a.out / 'ablations.md'}, {a.out / 'ablations.csv'}")
    return 0
