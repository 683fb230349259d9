"""What one experiment run is made of: machine, workload, faults, policies, seeds, and how it is measured.

Every number an experiment depends on lives in :class:`ExperimentConfig`, is recorded with the results
(``benchmarks/results/config.json``), and has a short reason next to it. :data:`DEFAULT` (10 seeds, 540 runs) takes
~21 min on two shared cores; :data:`FULL` is the longer set (20 seeds, three times the
simulated time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    """One experiment set. All times are simulated seconds."""

    name: str = "default"
    preset: str = "loihi2"
    """sim_hw machine preset (Loihi 2-like: 128 cores per chip, 1 core per router, XY mesh)."""
    chips: int = 8
    """Chips on the node: a Kapoho-Point-like board of 8 chips = 1,024 cores."""
    dt: float = 0.01
    """Simulator step (10 ms, the resolution the simulator's speed target is stated at)."""
    duration: float = 60.0
    """Simulated seconds per run; faults start at ``duration * fault_at``."""
    fault_at: float = 1.0 / 3.0
    """Faults are injected at T/3 (the experiment design in the hardware reference, section 5)."""
    seeds: tuple[int, ...] = tuple(range(10))
    scenarios: tuple[str, ...] = ()
    """Scenario names to run (empty: all of :data:`benchmarks.experiments.scenarios.SCENARIOS`)."""
    policies: tuple[str, ...] = ()
    """Policy names to run (empty: :data:`benchmarks.experiments.policies.DEFAULT_POLICIES`)."""

    # -- workload (jobs run at their networks' measured rates: the load is how many there are and how big)
    occupancy: float = 0.6
    """Share of the node's cores the long-running jobs hold together (room is left for re-placements)."""
    churn: float = 0.3
    """Probability that a job is short-lived and leaves before the fault (fragments the free cores)."""
    arrival_window: float = 0.25
    """Jobs arrive over the first ``arrival_window * duration`` seconds."""
    max_jobs: int = 40
    """Jobs drawn per seed (with churn, ~30 long-running): at their measured rates the three networks take 2-10
    Loihi 2 cores each, so ~20 % of the board's cores are held at the fault and the rest is room to move into."""

    # -- faults
    fail_cores: int = 4
    """Cores lost in a core failure (the design's k = 1, 4 or 16), capped at the victim stage's size."""
    hot_divisor: float = 4.0
    """Service-rate divisor of a hot spot (the design: one core's rate / 4), at least; see ``hot_overload``."""
    hot_overload: float = 2.0
    """A hot spot leaves the victim stage's cores at most 1 / this of its load's service: the divisor is
    max(hot_divisor, hot_overload / utilisation). At the networks' measured sparsity (busiest stages 0.2-31 %
    busy) a fixed 4x throttle left most victims under capacity and the fault tested nothing (6 of 10 seeds of the
    2026-12-03 default set: victim p99 unchanged at one hop); link congestion is sized to its load the same way."""
    hot_radius: int = 1
    """Router hops around the victim stage's cores that a hot spot throttles (the same chip). 1 by default, which is
    also how far the daemon's reallocator avoids around saturated cores (snnrm.core.reallocation.hot_neighbourhood):
    the sensitivity sweep widens the fault beyond what the daemon infers."""
    link_overload: float = 3.0
    """A congested link carries a third of its load at the time of the fault (other traffic saturates it)."""
    burst_factor: float = 5.0
    burst_duration: float = 2.0
    """Event-queue saturation: a 5x burst lasting 2 s (the design: 3-10x for 2 s)."""
    glitch_duration: float = 5.0
    """Telemetry glitch: the victim stage's counters read NaN for 5 s (the hardware runs on)."""
    flaky_share: float = 0.02
    flaky_period: float = 0.5
    flaky_duration: float = 1.0
    """Flaky telemetry: every 0.5 s a fresh 2% of all cores read NaN for 1 s, longer than the health machine's
    0.5 s before Unknown, so every glitch that lands on a stage is seen."""

    # -- the resource manager
    sample_period: float = 0.1
    """Seconds between telemetry frames into NodeMonitor (the daemon's default --sample-period), every policy."""
    telemetry_noise: float = 0.05
    """Relative standard deviation of every counter increment, queue depth and link load a frame reports
    (assumed: sampled hardware counters read over the host interface are not exact)."""
    telemetry_delay: float = 0.1
    """Seconds between a frame's sample time and the monitor seeing it (assumed: one sample period of transport
    and read-out); pushed hard faults are not delayed (the backend pushes them)."""
    realloc_period: float = 0.5
    """Seconds between the reactive baseline's descheduler passes (generous: the descheduler's default interval is
    minutes). snnrm's reallocator runs as in the daemon: a pass on each telemetry frame folded in."""
    weight_bytes_per_synapse: float = 1.0
    """Bytes of weight state per synapse reloaded on a move (assumed: 8-bit weights)."""
    weight_load_bandwidth: float = 1.0e9
    """Bytes per second the host writes into a chip's synapse memory on a move (assumed; no published figure).
    A moved stage stalls for cores x synapses_per_core x bytes / bandwidth: ~0.94 ms per Loihi 2 core."""
    pod_restart: float = 6.0
    """Seconds a rescheduled stage is down besides its weight load: ~1 s graceful stop + 5 s pod start-up (the
    Kubernetes pod start-up SLO, p99, images pre-pulled). A live remap pays only the weight load."""

    # -- measurement
    metric_stride: int = 10
    """Steps between stage_metrics samples (latency, SLO, hops): every 100 ms at dt = 10 ms, the telemetry period
    (sampling each of ~40 jobs every step costs more than the simulation itself)."""
    slo_loss: float = 0.01
    """A sample also violates the SLO when more than this share of the job's events is lost."""
    recovered_for: float = 1.0
    """A victim has recovered once it meets its SLO for this long without a break."""
    settle: float = 5.0
    """"Settled" latency percentiles start this long after the fault: they show where a policy left the victim,
    without the reaction time (which the plain post-fault percentiles and the SLO time include)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.duration <= 0 or not 0 < self.fault_at < 1:
            raise ValueError("duration must be > 0 and fault_at in (0, 1)")
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        if self.metric_stride < 1:
            raise ValueError("metric_stride must be >= 1")

    @property
    def fault_time(self) -> float:
        return round(self.duration * self.fault_at / self.dt) * self.dt

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        d["scenarios"] = list(self.scenarios)
        d["policies"] = list(self.policies)
        d["fault_time"] = self.fault_time
        return d

    def with_(self, **changes: Any) -> ExperimentConfig:
        return replace(self, **changes)


DEFAULT = ExperimentConfig()
FULL = ExperimentConfig(name="full", duration=180.0, seeds=tuple(range(20)))
