"""Workloads: split SNN jobs of published networks at their measured spike rates, arriving (and some leaving).

Each seed draws a sequence of jobs from the three networks of :mod:`sim_hw.networks` (SLAYER's DVS128-Gesture
CSNN and N-MNIST CSNN, the SHD recurrent net), each cut into 2-6 stages (SHD: 2). Layer sizes, stage cuts and
stage rates are measured: ``scripts/make-nir-workloads.py`` runs the networks' NIR graphs on generated event input
through ``snnrm job plan``'s interpreter and planner and caches the result in ``sim_hw/nir/workloads.json`` (how,
on what input, with which weights: ``snnrm/job/workloads.py``). Every job runs at those measured rates: nothing is
rescaled to a target utilisation, so a stage's load is its network's real activity over the cores its neurons
need, and the node's load comes from how many jobs run and how big they are (``ExperimentConfig.occupancy`` and
``max_jobs``). Jobs arrive uniformly over the first part of the run; a share of them (``churn``) leave again
before the faults start, so later arrivals land in a fragmented node, as on a busy cluster. Arrivals that would not
fit a count-based check are dropped from the workload up front, so every policy sees exactly the same jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from benchmarks.experiments.config import ExperimentConfig
from sim_hw import Job, MachineSpec, networks
from snnrm.core.placement import StageDemand
from snnrm.job.plan import budget_of, event_throughput_devices

NetworkMaker = Callable[..., Job]

NETWORKS: dict[str, tuple[NetworkMaker, int, int, float]] = {
    # name: (maker, min stages, max stages, draw weight)
    "dvs-gesture": (networks.dvs_gesture_csnn, 3, 6, 0.3),
    "nmnist": (networks.nmnist_classifier, 2, 5, 0.35),
    "shd": (networks.shd_recurrent, 2, 2, 0.35),  # the recurrent layer stays whole: input+hidden | readout
}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of a workload: what it is, when it comes and goes, and what it asks of the node."""

    job: Job
    network: str
    arrival: float
    departure: float | None
    """None: runs to the end of the experiment."""
    demands: tuple[StageDemand, ...]

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def long_running(self) -> bool:
        return self.departure is None


def stage_utilisation(job: Job, service_rate: float) -> np.ndarray:
    """Per-core utilisation of each stage at the job's nominal rates (events in / cores / service rate)."""
    return np.array([ev / s.cores / service_rate for s, ev in zip(job.stages, stage_events(job), strict=True)])


def demands_of(job: Job) -> tuple[StageDemand, ...]:
    """The job contract's numbers for each stage: cores, spikes to the next stage and sensor input, in KEPS."""
    n = len(job.stages)
    return tuple(
        StageDemand(
            cores=s.cores,
            out_keps=s.spike_rate / 1e3 if i + 1 < n else 0.0,
            in_keps=job.input_rate / 1e3 if i == 0 else 0.0,
        )
        for i, s in enumerate(job.stages)
    )


def stage_events(job: Job) -> list[float]:
    """Events per second each stage processes at the job's nominal rates (arriving and inside)."""
    return [job.stage_input_rate(i) + s.internal_rate for i, s in enumerate(job.stages)]


def sized_for_events(spec: JobSpec, machine: MachineSpec) -> JobSpec:
    """The job as ``snnrm job plan`` sizes it: a stage whose events need more cores than its neurons (at the
    planner's :data:`snnrm.job.plan.MAX_CORE_LOAD` of a core's event rate) gets them, through the planner's
    own :meth:`snnrm.core.split.CoreBudget.cores_for`."""
    budget = budget_of(machine)
    job = spec.job
    stages = tuple(
        replace(s, cores=max(s.cores, budget.cores_for(s.neurons, 0, ev)))
        for s, ev in zip(job.stages, stage_events(job), strict=True)
    )
    if all(a.cores == b.cores for a, b in zip(stages, job.stages, strict=True)):
        return spec
    resized = replace(job, stages=stages)
    return replace(spec, job=resized, demands=demands_of(resized))


def throughput_devices(job: Job) -> int:
    """``snnrm.io/event-throughput`` devices the job's pods request together (as ``snnrm job plan`` writes them)."""
    return sum(event_throughput_devices(ev / 1e3) for ev in stage_events(job))


def _draw_job(rng: np.random.Generator, k: int, spec: MachineSpec) -> tuple[str, Job]:
    names = list(NETWORKS)
    weights = np.array([NETWORKS[n][3] for n in names])
    network = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    maker, lo, hi, _ = NETWORKS[network]
    stages = int(rng.integers(lo, hi + 1))
    job = maker(stages, name=f"{network}-{k}", neurons_per_core=spec.neurons_per_core, seed=int(rng.integers(2**31)))
    return network, job


def make_workload(seed: int, cfg: ExperimentConfig, spec: MachineSpec) -> tuple[JobSpec, ...]:
    """The jobs of one seed, in arrival order (identical for every policy)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    window = cfg.arrival_window * cfg.duration
    fault = cfg.fault_time
    budget = cfg.occupancy * spec.n_cores
    drawn: list[tuple[str, Job, bool]] = []
    long_cores = 0
    for k in range(cfg.max_jobs * 4):
        if long_cores >= budget or len(drawn) >= cfg.max_jobs:
            break
        network, job = _draw_job(rng, k, spec)
        short = bool(rng.random() < cfg.churn)
        if not short and long_cores + job.cores_needed > budget:
            continue
        drawn.append((network, job, short))
        if not short:
            long_cores += job.cores_needed
    arrivals = np.sort(rng.uniform(0.0, window, len(drawn)))
    out: list[JobSpec] = []
    for (network, job, short), t in zip(drawn, arrivals, strict=True):
        t = round(float(t) / cfg.dt) * cfg.dt
        departure = None
        if short:
            lo, hi = t + 2.0, fault - 1.0
            departure = round(float(rng.uniform(lo, hi)) / cfg.dt) * cfg.dt if hi > lo else None
            if departure is None:
                continue  # no time to come and go before the fault: leave it out
        out.append(JobSpec(job, network, t, departure, demands_of(job)))
    return _feasible(out, spec.n_cores)


def _feasible(jobs: list[JobSpec], n_cores: int) -> tuple[JobSpec, ...]:
    """Drop arrivals that a count-based check rejects (not enough free cores at that moment)."""
    kept: list[JobSpec] = []
    for j in jobs:
        in_use = sum(k.job.cores_needed for k in kept if k.departure is None or k.departure > j.arrival)
        if in_use + j.job.cores_needed <= n_cores:
            kept.append(j)
    return tuple(kept)


def cores_needed(jobs: tuple[JobSpec, ...]) -> int:
    """Cores the long-running jobs hold together."""
    return sum(j.job.cores_needed for j in jobs if j.long_running)


def describe(jobs: tuple[JobSpec, ...]) -> str:
    """One line per job, for logs and the recorded config."""
    lines = []
    for j in jobs:
        dep = "end" if j.departure is None else f"{j.departure:.1f}s"
        lines.append(
            f"{j.name}: {len(j.job.stages)} stages {[s.cores for s in j.job.stages]} cores, "
            f"arrives {j.arrival:.1f}s, leaves {dep}"
        )
    return "\n".join(lines)


__all__ = [
    "NETWORKS",
    "JobSpec",
    "cores_needed",
    "demands_of",
    "describe",
    "make_workload",
    "sized_for_events",
    "stage_events",
    "stage_utilisation",
    "throughput_devices",
]
