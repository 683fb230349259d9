"""Energy accounting, and the two overflow behaviours: backpressure (Loihi's mesh) and drops (SpiNNaker's router)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from sim_helpers import cores, small_spec, two_stage_job

from sim_hw import HotSpot, LinkCongestion, MachineSpec, QueueSaturation, Simulator, load_preset, networks
from sim_hw.simulator import INPUT_HOLD_S

ENERGY = {"synops_per_event": 1000.0, "energy_per_synop": 24e-12, "energy_per_hop": 3.6e-12}


def _spec(overflow: str = "drop", energy: Mapping[str, float] | None = None) -> MachineSpec:
    """small_spec() with ``overflow`` and the named energy fields (names chosen at run time, hence the Any dict)."""
    changes: dict[str, Any] = {"overflow": overflow, **(energy or {})}
    return dataclasses.replace(small_spec(), **changes)


def test_energy_counts_synaptic_ops_and_hops() -> None:
    """Synaptic energy = events processed x synops x J per synop; NoC energy = spikes sent x hops x J per hop."""
    sim = Simulator(_spec(energy=ENERGY), seed=0)
    hops = len(sim.route(0, 3))
    assert hops == 3
    sim.add_job(two_stage_job(), [cores(0), cores(3)])
    sim.advance(100)
    syn, noc = sim.energy()
    c = sim.counters()
    np.testing.assert_allclose(syn, c.events_processed * 1000 * 24e-12)
    assert noc[0] == pytest.approx(c.spikes_sent[0] * hops * 3.6e-12, rel=1e-6)
    assert noc[3] == 0.0  # the last stage's output leaves the chip: no mesh hops
    assert syn.sum() > 0
    m0, m1 = sim.stage_metrics("job")
    assert m0.synaptic_power_w == pytest.approx(m0.events_processed_per_s * 1000 * 24e-12)
    assert m0.noc_power_w == pytest.approx(m0.spikes_sent_per_s * hops * 3.6e-12)
    assert m1.noc_power_w == 0.0


def test_chip_to_chip_hops_are_priced_apart() -> None:
    """A route crossing a chip boundary pays the inter-chip energy for that hop."""
    spec = _spec(energy={**ENERGY, "energy_per_inter_chip_hop": 36e-12})
    sim = Simulator(spec, seed=0)
    dst = spec.cores_per_chip  # first core of chip 1
    sim.add_job(two_stage_job(), [cores(0), cores(dst)])
    sim.advance(50)
    m0 = sim.stage_metrics("job")[1]
    per_spike = (m0.hops_mean - m0.inter_chip_hops_mean) * 3.6e-12 + m0.inter_chip_hops_mean * 36e-12
    assert m0.inter_chip_hops_mean >= 1
    _, noc = sim.energy()
    assert noc[0] == pytest.approx(sim.counters().spikes_sent[0] * per_spike, rel=1e-6)


def test_no_published_figures_means_zero_energy() -> None:
    """A preset without energy figures reports 0, not an invented number."""
    spec = load_preset("spinnaker2", chips=1)
    assert spec.energy_per_synop == 0.0
    assert spec.energy_per_hop == 0.0
    sim = Simulator(spec, seed=0)
    sim.add_job(two_stage_job(), [cores(0), cores(5)])
    sim.advance(20)
    syn, noc = sim.energy()
    assert syn.sum() == 0.0
    assert noc.sum() == 0.0


def test_presets_declare_their_overflow() -> None:
    """Loihi 2's mesh is flow-controlled; SpiNNaker 2 and Akida drop."""
    assert load_preset("loihi2").overflow == "backpressure"
    assert load_preset("spinnaker2").overflow == "drop"
    assert load_preset("akida").overflow == "drop"
    assert load_preset("loihi2").energy_per_synop == pytest.approx(24e-12)


@pytest.mark.parametrize("bad", ["stall", "", "DROP"])
def test_unknown_overflow_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="overflow"):
        _spec(overflow=bad)


@pytest.mark.parametrize("field", ["energy_per_synop", "energy_per_hop", "synops_per_event"])
def test_negative_energy_is_rejected(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _spec(energy={field: -1.0})


def _slow_second_stage(overflow: str) -> Simulator:
    """Stage 1 (core 1) runs 40x slower: 5e4 events/s against 1e5 spikes/s from stage 0."""
    sim = Simulator(_spec(overflow), seed=3)
    sim.add_job(two_stage_job(), [cores(0), cores(1)])
    sim.inject(HotSpot(cores=(1,), service_divisor=40.0))
    sim.advance(300)
    return sim


def test_drop_mode_drops_at_the_saturated_stage() -> None:
    c = _slow_second_stage("drop").counters()
    assert c.events_dropped[1] > 0.3 * c.events_in[1]
    assert c.queue_depth[1] == pytest.approx(small_spec().core_queue_capacity)


def test_backpressure_stalls_the_sender_and_drops_nothing() -> None:
    """Flow control: the slow stage's queue stays bounded, stage 0 slows to its pace, nothing is lost."""
    sim = _slow_second_stage("backpressure")
    c = sim.counters()
    cap = small_spec().core_queue_capacity
    svc1 = small_spec().core_service_rate / 40.0
    assert c.events_dropped.sum() == 0.0
    assert c.queue_depth[1] <= cap + svc1 * sim.dt + 1.0
    # Stage 0 (gain 0.5 spikes per event) processes only what stage 1 can take: ~2 x 5e4 events/s, not 2e5.
    m0, _m1 = sim.stage_metrics("job")
    assert m0.events_processed_per_s == pytest.approx(2 * svc1, rel=0.1)
    assert c.queue_depth[0] > cap  # the backlog moved upstream into the input
    np.testing.assert_allclose(c.events_in, c.events_processed + c.events_dropped + c.queue_depth, rtol=1e-5)
    # ...and shows up as latency: the input waits far longer than the same load without the slow stage.
    assert m0.queue_delay_s > 0.05


def test_backpressure_keeps_spikes_a_congested_link_cannot_carry() -> None:
    """Link overload under flow control delays spikes instead of losing them; drop mode loses them."""
    out = {}
    for mode in ("drop", "backpressure"):
        sim = Simulator(_spec(mode), seed=0)
        sim.add_job(two_stage_job(input_rate=1.0e6, spike_rate=5.0e5), [cores(0), cores(2)])
        link = int(sim.route(0, 2)[0])
        sim.inject(LinkCongestion(links=(link,), capacity_divisor=sim.spec.link_capacity / 2.0e5))
        sim.advance(200)
        c = sim.counters()
        out[mode] = (c.spikes_sent[0], c.spikes_delivered[0], sim.stage_metrics("job")[0].transfer_efficiency)
        if mode == "backpressure":
            # The sender slowed to what the link carries (2e5 spikes/s at 0.5 spikes per event): its input waits.
            assert sim.stage_metrics("job")[0].events_processed_per_s == pytest.approx(4.0e5, rel=0.15)
            assert c.queue_depth[0] > sim.spec.core_queue_capacity
            assert c.events_dropped.sum() == 0.0
    sent, deliv, eff = out["drop"]
    assert deliv < 0.5 * sent
    assert eff < 0.5
    sent, deliv, eff = out["backpressure"]
    assert deliv == pytest.approx(sent, rel=1e-6)
    assert eff == 1.0


def test_backpressure_bounds_what_the_host_holds_so_a_burst_ends() -> None:
    """Input from outside the mesh waits at most INPUT_HOLD_S of service; a cleared burst drains within it.

    Without the bound one second of the largest allowed burst (1,000x the service rate) left the core saturated for
    ~1,000 s after the fault was cleared; the daemon reported a stale Unhealthy core long after DELETE.
    """
    sim = Simulator(_spec("backpressure"), seed=0)
    svc = float(sim.core_service_rate[4])
    fid = sim.inject(QueueSaturation(cores=(4,), burst_factor=1e3))
    sim.advance(round(1.0 / sim.dt))
    c = sim.counters()
    assert c.queue_depth[4] <= svc * INPUT_HOLD_S * (1 + 1e-6)
    assert c.events_dropped[4] > 0.9 * (c.events_in[4] - svc * 1.0 - svc * INPUT_HOLD_S)  # the rest was shed
    sim.clear(fid)
    sim.advance(round(1.1 * INPUT_HOLD_S / sim.dt))
    assert sim.counters().queue_depth[4] < small_spec().core_queue_capacity


def test_a_throttled_core_holds_at_most_a_second_of_its_present_service() -> None:
    """The input of a core slowed 100x waits at most ~INPUT_HOLD_S, not 100 x INPUT_HOLD_S (the host sheds)."""
    sim = Simulator(_spec("backpressure"), seed=0)
    svc = float(sim.core_service_rate[4]) / 100.0
    sim.inject(HotSpot(cores=(4,), service_divisor=100.0))
    sim.inject(QueueSaturation(cores=(4,), burst_factor=1.0))
    sim.advance(round(3.0 / sim.dt))
    c = sim.counters()
    assert c.queue_depth[4] <= max(small_spec().core_queue_capacity, svc * INPUT_HOLD_S) * (1 + 1e-6)
    assert c.events_dropped[4] > 0


def _stall_reference(sim: Simulator, q: np.ndarray) -> np.ndarray:
    """Backpressure's per-step service evaluated over every transition (what ``_stalled_service`` must equal)."""
    dst, src = sim._dst_cores, sim._src_cores
    q_dst = q[dst]
    room = sim._bp_room_dt[dst] - q_dst
    room += np.minimum(q_dst, sim._svc_dt[dst])
    np.maximum(room, 0.0, out=room)
    room_t = np.maximum(np.add.reduceat(room, sim._dst_starts).astype(np.float64) - sim._carry, 0.0)
    want_t = sim._trans_gain * np.add.reduceat(np.minimum(q[src], sim._svc_dt[src]), sim._src_starts)
    frac = np.divide(room_t, want_t, out=np.ones(sim._n_trans), where=want_t > 0)
    svc = sim._svc_dt.copy()
    svc[src] *= np.minimum(frac, 1.0)[sim._src_trans].astype(np.float32)
    return svc


def test_backpressure_evaluates_only_transitions_that_can_stall_and_gives_the_full_answer() -> None:
    """The stall filter skips transitions with room for everything their senders can send; the service it returns
    is bit for bit the one every transition evaluated gives, through hot spots, bursts and a congested link."""
    spec = load_preset("loihi2", chips=4, cores_per_chip=64)
    sim = Simulator(spec, seed=3, dt=0.01)
    for job, placement in networks.mixed_in_core_order(sim.n_cores, 0.8):
        sim.add_job(job, placement)
    sim.set_background(core_rate=2.0e4, link_fraction=0.05)
    first = sim.jobs()["dvs-0"]
    sim.schedule(HotSpot(cores=tuple(int(c) for c in first[1]), service_divisor=20.0), at=0.2, duration=0.5)
    sim.schedule(QueueSaturation(cores=tuple(range(8)), burst_factor=5.0), at=0.4, duration=0.3)
    link = int(sim.route(int(first[0][0]), int(first[1][0]))[0])
    sim.schedule(LinkCongestion(links=(link,), capacity_divisor=1000.0), at=0.3, duration=0.5)
    stalled = skipped = 0
    for _ in range(100):
        sim.advance(1)
        q = sim._q
        got, want = sim._stalled_service(q), _stall_reference(sim, q)
        np.testing.assert_array_equal(got, want)
        stalled += int((want < sim._svc_dt).any())
        evaluated = np.unique(sim._core_dst_trans[q > sim._stall_free_q]).size + int((sim._carry > 0).sum())
        skipped += int(evaluated < sim._n_trans)
    # Both sides of the filter ran, often in the same step.
    assert stalled > 0
    assert skipped > 0
    assert stalled + skipped > 100
