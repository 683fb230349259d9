"""Ablations: each of snnrm's seed claims switched off on its own, through the product's own code paths.

* **Sparsity-aware reporting** (``snnrm-whole-chips``): the node reports whole chips instead of cores, so the
  kubelet hands each stage whole free chips; measured on the default machine (8 Loihi 2 chips) with the default
  workload: how many jobs the node admits, how much of what it hands out runs, and what the admitted jobs get.
* **Asynchronous-unit awareness** (``snnrm-no-units``): snnrm's planner with the shared-unit price at zero
  (:attr:`snnrm.core.placement.PlacementView.shared_unit_hops`), on the presets whose routers serve several
  cores (SpiNNaker 2 quad-PEs, Akida nodes of four NPs): with no fault and under a congested link.
* **Live remap** (``snnrm-evict``): the same stages without the live-remap opt-in, so the cluster's eviction path
  (:mod:`benchmarks.experiments.eviction`) answers instead: under a failed core and under a hot spot.
* **Event-driven scheduling** (``snnrm-count``): jobs sized and admitted by core count only, where snnrm sizes a
  stage by its events as well (``snnrm job plan``: a stage gets the cores its measured event rate needs at
  :data:`snnrm.job.plan.MAX_CORE_LOAD` of a core's rate) and the node admits a job only while its healthy
  ``snnrm.io/event-throughput`` devices cover the job's request. Measured on Akida (8 chips), where stages of the
  networks run at up to 93 % of one NP's event rate at their measured rates, with the default load and with a node
  filled to 95 % of its cores (oversubscription by events). On Loihi 2 the busiest stage runs at 31 % of a core
  and the two arms are the same jobs (:func:`keps_note`).

Each ablation runs the same seeds, workloads and faults for snnrm and its ablation (paired by seed) through
:func:`benchmarks.experiments.suite.run_suite`, and the report gives the paired differences with 95% bootstrap
intervals.

    python -m benchmarks.experiments ablations [--seeds 10] [--duration 60] [--out benchmarks/results/ablations]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Changes to the base config for this ablation (a fuller node)."""
    label: str = ""
    """How the report names the load when ``overrides`` change it."""


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
    "peak_core_load": ("busiest stage's load per core, share of its event rate", ".2f"),
    "refused_keps": ("jobs refused for event throughput", ".1f"),
    "slo_met_job_s": ("job-seconds within the SLO", ".0f"),
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

KEPS_NOTE = (
    "What the two arms differ in: the busiest stages (DVS-Gesture's last stage of a 3-stage cut, N-MNIST's middle "
    "ones) take 61-93 % of one Akida NP's event rate (1 M events/s, assumed) at their measured rates. Counted by "
    "neurons they get one NP; sized by events at 70 % they get two, and the jobs take more of the node. The "
    "event-throughput devices themselves (one per 1 MEPS, at least one per stage) never ran out before the NPs "
    "did in these runs (`jobs refused for event throughput` is 0): what refuses jobs in the full node is their "
    "larger core count. The simulator's input varies 10 % per 10 ms step (CV, assumed), which is what a stage at "
    "93 % of its rate cannot absorb. Victims of a fault are the busiest stage of each arm, so they differ between "
    "the arms."
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
    Ablation(
        "event-driven scheduling (KEPS), default load",
        "snnrm-count",
        "akida",
        8,
        ("none", "queue-saturation"),
        ("jobs", "peak_core_load", "slo_violation_pct", "slo_met_job_s", "dropped_pct", "victim_step_p99_ms"),
        "stages sized by neurons only and jobs admitted by core count",
        KEPS_NOTE,
    ),
    Ablation(
        "event-driven scheduling (KEPS), full node",
        "snnrm-count",
        "akida",
        8,
        ("none", "hot-spot"),
        ("jobs", "rejected", "refused_keps", "peak_core_load", "slo_violation_pct", "slo_met_job_s", "dropped_pct"),
        "stages sized by neurons only and jobs admitted by core count",
        KEPS_NOTE,
        overrides={"occupancy": 0.95, "max_jobs": 200},
        label="up to 200 jobs drawn until 95 % of the NPs are held",
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


def keps_note() -> str:
    """Why event-driven scheduling is measured on Akida and not on Loihi 2, with the loads that decide it."""
    loads = ", ".join(f"{busiest_core_load(p):.0%} on {load_preset(p).name}" for p in KEPS_PRESETS)
    return (
        "**Event-driven scheduling on Loihi 2** (not run): at the networks' measured rates the busiest stage's cores "
        f"run at most {loads} of their event rate (every network, every stage cut the workloads draw). Under the "
        "planner's 70 % no Loihi 2 stage gets a core more for its events, so there the two arms run the same jobs; "
        "they would differ only with the networks at more than twice their measured activity, and these "
        "experiments do not rescale rates."
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
        **ab.overrides,
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


HIGHER_IS_BETTER = frozenset({"jobs", "slo_met_job_s"})


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
    elif float(one(d.lo)) == 0.0 == float(one(d.hi)):
        word = "no difference at this precision"  # e.g. 1e-6 % more drops: real, but not worth a verdict
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
            f"{spec.chips} {spec.name} chips ({spec.n_cores} cores, {spec.cores_per_router} per router)"
            f"{'; ' + ab.label if ab.label else ''}; {ab.why}.",
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
    lines += [keps_note(), ""]
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
