"""How fast sim_hw runs against its target: >= 50x real time at 10 ms steps on a 16,384-core mesh.

Builds 128 Loihi 2-like chips x 128 cores, fills about three quarters of the cores with a mix of split SNN jobs
(DVS-Gesture CSNN, N-MNIST CSNN, SHD recurrent) placed stage by stage in core order, adds light background load
on every core and link, injects a few faults on the way (so the congested-link path is exercised too), and runs
10 s of simulated time three times. Prints sim-seconds per wall-second (and the ratio to the 50x
target) and ms per step, for the best and the median run.

Run: ``python benchmarks/sim_speed.py`` (or ``from benchmarks.sim_speed import main``).
"""

from __future__ import annotations

import statistics
import time

from benchmarks.verdict import verdict
from sim_hw import HotSpot, LinkCongestion, QueueSaturation, Simulator, load_preset, networks

TARGET_X_REAL_TIME = 50.0
"""The target (README, Results): the simulator runs >= 50x faster than real time at 10 ms resolution on 16,384 cores."""


def build(*, chips: int = 128, cores_per_chip: int = 128, fill: float = 0.75, seed: int = 0) -> Simulator:
    """A simulator with jobs on about ``fill`` of its cores, background load and a few scheduled faults."""
    spec = load_preset("loihi2", chips=chips, cores_per_chip=cores_per_chip)
    sim = Simulator(spec, seed=seed, dt=0.01)
    for job, placement in networks.mixed_in_core_order(sim.n_cores, fill):
        sim.add_job(job, placement)
    sim.set_background(core_rate=2.0e4, link_fraction=0.05)
    # A hot spot, a congested link under live traffic, and an input burst, spread over the run.
    sim.schedule(HotSpot(cores=(5, 6, 7), service_divisor=4.0), at=2.0, duration=3.0)
    busy_route = sim.route(0, int(sim.jobs()["dvs-0"][1][0]))
    if busy_route.size:
        sim.schedule(LinkCongestion(links=(int(busy_route[0]),), capacity_divisor=1000.0), at=3.0, duration=4.0)
    sim.schedule(QueueSaturation(cores=tuple(range(100, 116)), burst_factor=5.0), at=6.0, duration=2.0)
    return sim


def main(sim_seconds: float = 10.0, repeats: int = 3) -> None:
    """Build the 16,384-core machine, run ``sim_seconds`` of simulated time ``repeats`` times, print the speed."""
    t0 = time.perf_counter()
    sim = build()
    t_build = time.perf_counter() - t0
    busy = int(sim.busy_cores().sum())
    print(
        f"machine: {sim.n_chips} chips x {sim.spec.cores_per_chip} cores = {sim.n_cores} cores, "
        f"{sim.n_links} links; {len(sim.jobs())} jobs on {busy} cores; build {t_build * 1e3:.0f} ms"
    )
    n_steps = round(sim_seconds / sim.dt)
    sim.advance(10)  # warm-up
    # The machines this runs on are shared: repeat and report the best and the median run.
    walls = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sim.advance(n_steps)
        walls.append(time.perf_counter() - t0)
    for label, wall in (("best", min(walls)), ("median", statistics.median(walls))):
        ms_per_step = wall / n_steps * 1e3
        x_real = sim_seconds / wall
        print(
            f"{label:>6} of {repeats}: {sim_seconds:.1f} s simulated in {wall:.3f} s wall = "
            f"{ms_per_step:.3f} ms/step (dt {sim.dt * 1e3:.0f} ms), {x_real:.1f}x real time "
            f"= {x_real / TARGET_X_REAL_TIME:.2f}x the {TARGET_X_REAL_TIME:.0f}x target "
            f"({verdict(x_real >= TARGET_X_REAL_TIME)})"
        )
    print(f"target: <= {sim.dt / TARGET_X_REAL_TIME * 1e3:.2f} ms/step")
    c = sim.counters()
    dropped = float(c.events_dropped.sum()) / max(float(c.events_in.sum()), 1.0)
    eff = float(c.spikes_delivered.sum()) / max(float(c.spikes_sent.sum()), 1.0)
    print(
        f"workload: {float(c.events_in.sum()) / sim.time:.3g} events/s, dropped {dropped:.2%}, "
        f"spike-transfer efficiency {eff:.4f}"
    )
    t0 = time.perf_counter()
    for _ in range(20):
        sim.counters()
    print(f"counters() snapshot: {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
