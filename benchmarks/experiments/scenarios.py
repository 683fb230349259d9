"""Fault scenarios: what goes wrong at T/3, and where.

A fault is aimed at a *victim stage*: the busiest stage (highest per-core load) of a victim job drawn from the
long-running jobs with a generator seeded by the seed alone, never by the policy. Every policy therefore
sees the same job hit in the same stage with the same number of cores, wherever its placement put that stage;
what differs is how exposed the placement is and what the resource manager does about it.

Single faults follow the experiment design (hardware reference, section 5); ``combined`` starts four of them at
once on four different jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from benchmarks.experiments.config import ExperimentConfig
from sim_hw import CoreFailure, Fault, HotSpot, LinkCongestion, QueueSaturation, Simulator, TelemetryGlitch
from snnrm.core.topology import IntArray

FAULT_KINDS = ("core-failure", "hot-spot", "hot-core", "link-congestion", "queue-saturation", "telemetry-glitch")
NODE_WIDE = ("flaky-telemetry",)
"""Faults that hit random cores of the whole node rather than a victim stage."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    faults: tuple[str, ...]
    """Fault kinds, each on its own victim job (empty: no fault)."""
    description: str


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("none", (), "no fault: steady-state placement quality and false reallocations"),
        Scenario("core-failure", ("core-failure",), "k = 4 cores of the victim stage fail-stop (pushed hard fault)"),
        Scenario(
            "hot-spot",
            ("hot-spot",),
            "a throttled region: the victim stage's cores and every core one router hop around them on the same chip "
            "(other jobs' too) run slower: 4x, or enough that the victim stage can serve half its load",
        ),
        Scenario(
            "hot-core", ("hot-core",), "one core of the victim stage runs 4x slower, or enough to be overloaded 2x"
        ),
        Scenario(
            "link-congestion",
            ("link-congestion",),
            "the busiest link leaving the victim stage carries a third of its load (other traffic saturates it)",
        ),
        Scenario("queue-saturation", ("queue-saturation",), "a 5x input burst on the victim stage's cores for 2 s"),
        Scenario(
            "telemetry-glitch",
            ("telemetry-glitch",),
            "the victim stage's counters read NaN for 5 s (the hardware runs on)",
        ),
        Scenario(
            "flaky-telemetry",
            ("flaky-telemetry",),
            "from T/3 on, every 0.5 s a fresh random 2% of all cores read NaN for 1 s (no victim: flapping test)",
        ),
        Scenario(
            "combined",
            ("core-failure", "hot-spot", "link-congestion", "telemetry-glitch"),
            "core failure + hot spot + congested link + telemetry glitch on four different jobs",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class PlannedFault:
    """A fault built against the current placement, ready to inject."""

    kind: str
    job: str
    stage: int
    fault: Fault
    duration: float | None
    cores: IntArray
    """Cores the fault touches (for link faults: the cores of the router the link leaves)."""
    links: IntArray


def flaky_glitches(
    n_cores: int, start: float, end: float, cfg: ExperimentConfig, seed: int
) -> list[tuple[TelemetryGlitch, float, float]]:
    """Intermittent telemetry loss over the whole node: ``(glitch, at, duration)`` from ``start`` to ``end``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 6]))
    k = max(1, round(cfg.flaky_share * n_cores))
    out = []
    t = start
    while t < end - 1e-9:
        cores = np.sort(rng.choice(n_cores, size=k, replace=False))
        out.append((TelemetryGlitch(tuple(int(c) for c in cores), mode="nan"), t, cfg.flaky_duration))
        t += cfg.flaky_period
    return out


def busiest_stage(utilisation: np.ndarray) -> int:
    """The stage with the highest per-core load (lowest index on ties)."""
    return int(np.argmax(utilisation))


def pick_victims(long_running: list[str], n: int, seed: int) -> list[str]:
    """``n`` victim jobs (cycling when there are fewer jobs): the same for every policy and every scenario of a
    seed, so the single-fault scenarios hit the same job and ``combined`` adds three more."""
    if not long_running or n == 0:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    order = [long_running[i] for i in rng.permutation(len(long_running))]
    return [order[i % len(order)] for i in range(n)]


def _pick(cores: IntArray, k: int, rng: np.random.Generator) -> IntArray:
    """``k`` of a stage's cores, chosen by *position* in its sorted core list (policy-independent)."""
    srt = np.sort(np.asarray(cores, dtype=np.int64))
    pos = np.sort(rng.choice(len(srt), size=min(k, len(srt)), replace=False))
    out: IntArray = srt[pos]
    return out


def hot_region(sim: Simulator, cores: IntArray, radius: int = 1) -> IntArray:
    """``cores`` and every core within ``radius`` router hops of them on the same chip (ascending): the region a
    hot spot throttles. A hot spot is a place on the chip (heat, a traffic burst), not one stage; at published
    density most stages hold one core, and a region of that core alone made the hot spot the same fault as a hot
    core."""
    mesh = sim.mesh
    router = mesh.core_router
    cpc = sim.spec.cores_per_chip
    everyone = np.arange(len(router), dtype=np.int64)
    dx = np.abs(mesh.router_x[router][:, None] - mesh.router_x[router[cores]][None, :])
    dy = np.abs(mesh.router_y[router][:, None] - mesh.router_y[router[cores]][None, :])
    same_chip = (everyone // cpc)[:, None] == (np.asarray(cores) // cpc)[None, :]
    out: IntArray = np.flatnonzero(((dx + dy <= radius) & same_chip).any(axis=1)).astype(np.int64)
    return out


def busiest_link(sim: Simulator, placement: list[IntArray], stage: int) -> int | None:
    """The most loaded link leaving the stage's routers (or entering them, for the last stage of a job)."""
    routers = np.unique(sim.mesh.core_router[placement[stage]])
    outgoing = stage + 1 < len(placement)
    ends = sim.link_src if outgoing else sim.link_dst
    cand = np.flatnonzero(np.isin(ends, routers))
    if len(cand) == 0:
        return None
    loads = sim.link_loads()[cand]
    return int(cand[int(np.argmax(loads))])


def build_fault(
    kind: str,
    *,
    sim: Simulator,
    job: str,
    placement: list[IntArray],
    stage: int,
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    utilisation: float = 1.0,
) -> PlannedFault:
    """The fault of ``kind`` on stage ``stage`` of ``job`` as it is placed now; ``utilisation`` is the stage's
    per-core load at the job's nominal rates (it sizes a hot spot, policy-independently)."""
    cores = np.asarray(placement[stage], dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    hot = max(cfg.hot_divisor, cfg.hot_overload / utilisation) if utilisation > 0 else cfg.hot_divisor
    if kind == "core-failure":
        hit = _pick(cores, cfg.fail_cores, rng)
        return PlannedFault(kind, job, stage, CoreFailure(tuple(hit.tolist())), None, hit, none)
    if kind == "hot-spot":
        region = hot_region(sim, cores, cfg.hot_radius)
        return PlannedFault(kind, job, stage, HotSpot(tuple(region.tolist()), service_divisor=hot), None, region, none)
    if kind == "hot-core":
        hit = _pick(cores, 1, rng)
        return PlannedFault(kind, job, stage, HotSpot(tuple(hit.tolist()), service_divisor=hot), None, hit, none)
    if kind == "queue-saturation":
        burst = QueueSaturation(tuple(cores.tolist()), burst_factor=cfg.burst_factor)
        return PlannedFault(kind, job, stage, burst, cfg.burst_duration, cores, none)
    if kind == "telemetry-glitch":
        glitch = TelemetryGlitch(tuple(cores.tolist()), mode="nan")
        return PlannedFault(kind, job, stage, glitch, cfg.glitch_duration, cores, none)
    if kind == "link-congestion":
        link = busiest_link(sim, placement, stage)
        if link is None:  # a one-router pipeline has no link to congest: slow its routers' cores instead
            return build_fault(
                "hot-core",
                sim=sim,
                job=job,
                placement=placement,
                stage=stage,
                cfg=cfg,
                rng=rng,
                utilisation=utilisation,
            )
        load = float(sim.link_loads()[link])
        cap = float(sim.mesh.link_capacity[link])
        divisor = max(10.0, cfg.link_overload * cap / load) if load > 0 else 10.0
        router = int(sim.link_src[link])
        touched = np.flatnonzero(sim.mesh.core_router == router).astype(np.int64)
        congestion = LinkCongestion((link,), capacity_divisor=divisor)
        return PlannedFault(kind, job, stage, congestion, None, touched, np.array([link], dtype=np.int64))
    raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
