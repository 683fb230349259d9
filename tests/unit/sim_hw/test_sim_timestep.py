"""Timestep semantics: how long one SNN timestep of a job takes on barrier-synchronised cores (sim_hw.step_time)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from sim_helpers import cores, small_spec, two_stage_job

from sim_hw import CoreFailure, HotSpot, Simulator, load_preset, step_time

TIMESTEP = 1e-3


def _sim(barrier: float = 0.0) -> Simulator:
    spec = dataclasses.replace(small_spec(), overflow="backpressure", barrier_latency=barrier)
    sim = Simulator(spec, seed=5)
    sim.add_job(two_stage_job(), [cores(0), cores(3)])
    return sim


def test_a_job_that_keeps_up_finishes_its_timestep_within_real_time() -> None:
    """Stage 0 takes 2e5 events/s on a 2e6 events/s core: a tenth of each 1 ms step is work, no backlog."""
    sim = _sim()
    sim.advance(200)
    ms = sim.stage_metrics("job")
    assert ms[0].utilisation_max == pytest.approx(0.1, rel=0.05)
    assert ms[0].backlog_max_s < 1e-4
    step = step_time(ms, TIMESTEP, 0.0)
    assert 0.05 * TIMESTEP < step < 0.5 * TIMESTEP
    # The barrier adds once per step.
    assert step_time(ms, TIMESTEP, 1.8e-6) == pytest.approx(step + 1.8e-6)


def test_a_slowed_core_makes_the_timestep_overrun_real_time() -> None:
    """Stage 1's core 40x slower than its arrivals need: its backlog grows, and so does the job's step."""
    sim = _sim()
    sim.inject(HotSpot(cores=(3,), service_divisor=40.0))
    sim.advance(100)
    early = step_time(sim.stage_metrics("job"), TIMESTEP, 0.0)
    sim.advance(200)
    ms = sim.stage_metrics("job")
    # Flow control admits no more than the core serves, so the busy core runs flat out with a full queue behind it.
    assert ms[1].utilisation_max == pytest.approx(1.0)
    assert ms[1].backlog_max_s > TIMESTEP
    late = step_time(ms, TIMESTEP, 0.0)
    assert late > TIMESTEP
    assert late > early


def test_a_stage_with_every_core_failed_never_finishes_its_step() -> None:
    sim = _sim()
    sim.advance(50)
    sim.inject(CoreFailure(cores=(3,)))
    sim.advance(5)
    ms = sim.stage_metrics("job")
    assert math.isinf(ms[1].utilisation_max)
    assert math.isinf(step_time(ms, TIMESTEP, 0.0))


def test_only_loihi_synchronises_timesteps() -> None:
    """Loihi's barrier is published (0.3-1.8 us, upper end); SpiNNaker 2 and Akida run unsynchronised."""
    assert load_preset("loihi2").barrier_latency == pytest.approx(1.8e-6)
    assert load_preset("spinnaker2").barrier_latency == 0.0
    assert load_preset("akida").barrier_latency == 0.0


def test_a_negative_barrier_is_rejected() -> None:
    with pytest.raises(ValueError, match="barrier_latency"):
        dataclasses.replace(small_spec(), barrier_latency=-1e-6)
