"""Placement quality on the simulator: snnrm's planner against count-based first-fit, same machine, same seed.

A Kapoho-Point-like board (8 Loihi-2-like chips) already runs other work on a random share of its cores (the
fragmentation a busy node has); a DVS-Gesture CSNN cut into 4 stages is placed by each policy on the cores left,
the simulator runs it for two simulated seconds, and the table shows what its spikes experienced: traffic-
weighted mean hops between consecutive stages, and the end-to-end spike latency (the sum over stages of hop
latency plus queueing delay into the stage). No wall-clock timing is involved; the numbers are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import sim_hw
from snnrm.backends.sim import topology_of
from snnrm.core.placement import JobPlan, PlacementView, StageDemand, first_fit_plan, plan_job


@dataclass(frozen=True, slots=True)
class Outcome:
    policy: str
    cost: float
    hops: float
    """Traffic-weighted mean hops over all stage transitions (simulated)."""
    e2e_latency_s: float
    dropped_per_s: float


def demands(job: sim_hw.networks.Job) -> list[StageDemand]:
    """The job contract's numbers for each stage: cores and outgoing spike rate in KEPS."""
    return [
        StageDemand(
            cores=s.cores,
            out_keps=s.spike_rate / 1e3 if i + 1 < len(job.stages) else 0.0,
            in_keps=job.input_rate / 1e3 if i == 0 else 0.0,
        )
        for i, s in enumerate(job.stages)
    ]


def run_policy(policy: str, *, seed: int, chips: int, busy: float, stages: int = 4, seconds: float = 2.0) -> Outcome:
    spec = sim_hw.load_preset("loihi2", chips=chips)
    sim = sim_hw.Simulator(spec, seed=seed)
    topo = topology_of(sim)
    rng = np.random.default_rng(seed)
    free = rng.random(topo.n_cores) >= busy
    job = sim_hw.networks.dvs_gesture_csnn(stages=stages, seed=seed)
    # A chip crossing costs what its latency says, in on-chip hops (about 19 on this preset).
    view = PlacementView.idle(topo, free, inter_chip_weight=spec.inter_chip_hop_latency / spec.hop_latency)
    plan: JobPlan | None = plan_job(view, demands(job)) if policy == "snnrm" else first_fit_plan(view, demands(job))
    if plan is None:
        raise RuntimeError(f"{policy}: the job does not fit")
    sim.add_job(job, list(plan.stages))
    sim.advance_to(seconds)
    metrics = sim.stage_metrics(job.name)
    weights = np.array([s.spike_rate for s in job.stages[:-1]])
    hops = np.array([m.hops_mean for m in metrics[1:]])
    return Outcome(
        policy=policy,
        cost=plan.total_cost,
        hops=float((weights * hops).sum() / weights.sum()),
        e2e_latency_s=float(sum(m.latency_s for m in metrics)),
        dropped_per_s=float(sum(m.events_dropped_per_s for m in metrics)),
    )


def main() -> None:
    print(f"{'seed':>4} {'busy':>5} {'policy':>9} {'cost':>10} {'hops':>6} {'e2e latency us':>15} {'dropped/s':>10}")
    ratios = []
    for busy in (0.0, 0.3, 0.6):
        for seed in (0, 1, 2):
            out = [run_policy(p, seed=seed, chips=8, busy=busy) for p in ("first-fit", "snnrm")]
            for o in out:
                print(
                    f"{seed:>4} {busy:>5.1f} {o.policy:>9} {o.cost:>10.0f} {o.hops:>6.2f} "
                    f"{o.e2e_latency_s * 1e6:>15.3f} {o.dropped_per_s:>10.1f}"
                )
            ratios.append(out[1].hops / out[0].hops)
    print(f"snnrm / first-fit traffic-weighted hops: mean {np.mean(ratios):.2f} (min {min(ratios):.2f})")


if __name__ == "__main__":
    main()
