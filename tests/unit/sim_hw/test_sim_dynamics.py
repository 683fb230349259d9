"""Queues, conservation, determinism, routing-dependent latency and congestion."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sim_helpers import cores, small_spec, two_stage_job

from sim_hw import Job, LinkCongestion, Simulator, Stage, networks


def _run(seed: int) -> Simulator:
    sim = Simulator(small_spec(), seed=seed)
    job = networks.nmnist_classifier(3, neurons_per_core=2048)
    start, placement = 0, []
    for stage in job.stages:
        placement.append(np.arange(start, start + stage.cores))
        start += stage.cores
    sim.add_job(job, placement)
    sim.set_background(core_rate=1.0e4)
    sim.advance(50)
    return sim


def test_same_seed_and_calls_give_identical_arrays() -> None:
    """Two runs with seed 7 agree bit for bit; seed 8 differs."""
    a, b, c = _run(7).counters(), _run(7).counters(), _run(8).counters()
    for field in dataclasses.fields(a):
        assert np.array_equal(getattr(a, field.name), getattr(b, field.name)), field.name
    assert not np.array_equal(a.events_in, c.events_in)


def test_events_are_conserved_per_core() -> None:
    """events_in = processed + dropped + queued, core by core, also under overload."""
    sim = Simulator(small_spec(), seed=1)
    sim.add_job(two_stage_job(input_rate=5.0e6), [cores(0), cores(1)])  # 2.5x the core's service rate
    sim.advance(200)
    c = sim.counters()
    np.testing.assert_allclose(c.events_in, c.events_processed + c.events_dropped + c.queue_depth, rtol=1e-6, atol=1e-3)
    assert c.events_dropped[0] > 0


def test_queue_overflow_drops_the_excess_and_caps_the_queue() -> None:
    """A core fed at 2.5x its service rate processes at its rate, holds a full queue and drops the rest."""
    sim = Simulator(small_spec(), seed=1)
    sim.add_job(two_stage_job(input_rate=5.0e6), [cores(0), cores(1)])
    sim.advance(100)
    c = sim.counters()
    rate = sim.core_service_rate[0]
    assert c.events_processed[0] == pytest.approx(rate * sim.time, rel=1e-6)
    assert c.queue_depth[0] == pytest.approx(sim.core_queue_capacity[0])
    assert c.events_dropped[0] / c.events_in[0] == pytest.approx(0.6, abs=0.02)


def test_light_load_drops_nothing_and_delivers_every_spike() -> None:
    """Below capacity the whole pipeline keeps up: no drops, efficiency 1."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(), [cores(0, 1), cores(2, 3)])
    sim.advance(100)
    c = sim.counters()
    assert c.events_dropped.sum() == 0
    assert c.spikes_sent[:2].sum() == pytest.approx(1.0e5 * sim.time, rel=0.05)
    assert c.spikes_delivered.sum() == pytest.approx(c.spikes_sent.sum())
    assert c.events_in[2:4].sum() > 0


def test_far_placement_costs_more_hops_and_latency() -> None:
    """Stages on neighbouring cores are closer than stages on opposite corners of the board."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job("near"), [cores(0), cores(1)])
    far_core = sim.n_cores - 1
    sim.add_job(two_stage_job("far"), [cores(16), cores(far_core)])
    sim.advance(10)
    near, far = sim.stage_metrics("near")[1], sim.stage_metrics("far")[1]
    assert near.hops_mean == 1
    assert near.inter_chip_hops_mean == 0
    on, inter = sim.mesh.hops(16, far_core)
    assert far.hops_mean == pytest.approx(on + inter)
    assert far.inter_chip_hops_mean == pytest.approx(inter)
    assert far.hop_latency_s > near.hop_latency_s
    assert far.latency_s > near.latency_s


def test_moving_a_stage_changes_its_route() -> None:
    """move_stage re-routes: moving stage 1 next to stage 0 shortens the path."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(), [cores(0), cores(63)])
    sim.advance(5)
    before = sim.stage_metrics("job")[1].hops_mean
    sim.move_stage("job", 1, cores(1))
    sim.advance(5)
    assert sim.stage_metrics("job")[1].hops_mean == 1 < before
    assert sim.busy_cores().nonzero()[0].tolist() == [0, 1]


def test_congested_link_lowers_efficiency_only_of_flows_through_it() -> None:
    """A link at 1/1000 of its capacity drops spikes of the job routed over it, not of the other job."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job("through"), [cores(0), cores(3)])
    sim.add_job(two_stage_job("beside"), [cores(12), cores(15)])
    link = int(sim.route(0, 3)[1])
    assert link not in sim.route(12, 15).tolist()
    fid = sim.inject(LinkCongestion(links=(link,), capacity_divisor=1.0e4))
    sim.advance(50)
    c = sim.counters()
    assert c.spikes_delivered[0] < 0.5 * c.spikes_sent[0]
    assert c.spikes_delivered[12] == pytest.approx(c.spikes_sent[12])
    assert c.link_utilization[link] == 1.0
    assert sim.stage_metrics("through")[0].transfer_efficiency < 0.5
    assert sim.stage_metrics("beside")[0].transfer_efficiency == pytest.approx(1.0)
    sim.clear(fid)
    sim.advance(1)
    assert sim.stage_metrics("through")[0].transfer_efficiency == pytest.approx(1.0)


def test_overlapping_placements_are_rejected() -> None:
    """A core holds one stage of one job."""
    sim = Simulator(small_spec())
    sim.add_job(two_stage_job("a"), [cores(0), cores(1)])
    with pytest.raises(ValueError, match="core 1 is already used by job 'a'"):
        sim.add_job(two_stage_job("b"), [cores(1), cores(2)])
    with pytest.raises(ValueError, match="more than one stage"):
        sim.add_job(two_stage_job("c"), [cores(5), cores(5)])
    with pytest.raises(ValueError, match="core indices must be in"):
        sim.add_job(two_stage_job("d"), [cores(5), cores(9999)])
    with pytest.raises(ValueError, match="2 stages but 1 placements"):
        sim.add_job(two_stage_job("e"), [cores(5)])


def test_remove_job_frees_cores_and_drops_its_queue() -> None:
    """Removing an overloaded job counts its queued events as dropped; its cores become free."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(input_rate=5.0e6), [cores(0), cores(1)])
    sim.advance(10)
    sim.remove_job("job")
    c = sim.counters()
    assert not sim.busy_cores().any()
    assert c.queue_depth[0] == 0
    np.testing.assert_allclose(c.events_in, c.events_processed + c.events_dropped, rtol=1e-6)
    with pytest.raises(KeyError, match="no job named 'job'"):
        sim.stage_metrics("job")


def test_background_load_reaches_every_core() -> None:
    """set_background puts events on idle cores."""
    sim = Simulator(small_spec(), seed=0)
    sim.set_background(core_rate=1.0e5)
    sim.advance(100)
    c = sim.counters()
    assert (c.events_in > 0).all()
    assert c.events_in.mean() == pytest.approx(1.0e5 * sim.time, rel=0.05)


def test_published_networks_come_from_the_measured_nir_graphs() -> None:
    """The builders read the checked-in measurements: published layer sizes, the planner's cuts, measured rates."""
    for n in (3, 4, 5):
        job = networks.dvs_gesture_csnn(n)
        assert len(job.stages) == n
        # SLAYER's DVS-Gesture CSNN: 32x32x2 + 32x32x16 + 16x16x16 + 16x16x32 + 8x8x32 + 512 + 11 neurons
        assert sum(s.neurons for s in job.stages) == 2048 + 16384 + 4096 + 8192 + 2048 + 512 + 11
        for s in job.stages:
            assert s.spike_rate > 0
    assert networks.dvs_gesture_csnn(4).input_rate == pytest.approx(_rate("dvs-gesture", "input"), rel=1e-5)
    # more stages than the graph has spiking layers are clamped; SHD's recurrent layer stays in one stage
    assert len(networks.dvs_gesture_csnn(9).stages) == 7
    shd = networks.shd_recurrent(3)
    assert [s.neurons for s in shd.stages] == [200, 20]
    assert shd.stages[0].internal_rate == pytest.approx(_rate("shd", "hidden_lif"), rel=1e-5)
    assert isinstance(networks.nmnist_classifier().stages[0], Stage)
    assert isinstance(shd.scaled(2.0), Job)
    assert shd.scaled(2.0).input_rate == pytest.approx(2 * shd.input_rate)
    # at another machine's neurons per core, cores follow the neurons
    assert networks.nmnist_classifier(3, neurons_per_core=2048).stages[0].cores == 16384 // 2048


def _rate(network: str, node: str) -> float:
    rate: float = networks.measurements()["networks"][network]["node_rates_hz"][node]
    return rate
