"""Each fault kind applies and reverses; hard faults reach subscribers as they happen; JSON is validated."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sim_helpers import cores, small_spec, two_stage_job

from sim_hw import (
    ChipFailure,
    CoreFailure,
    HotSpot,
    LinkCongestion,
    LinkFailure,
    QueueSaturation,
    Simulator,
    TelemetryGlitch,
    fault_from_dict,
)

Event = tuple[str, int, bool, float]


def _placed() -> Simulator:
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(), [cores(0, 1), cores(2, 3)])
    return sim


def _recorder(sim: Simulator) -> list[Event]:
    events: list[Event] = []
    sim.on_hard_fault(lambda kind, index, failed, t: events.append((kind, index, failed, t)))
    return events


def test_core_failure_stops_the_core_and_recovers() -> None:
    """A failed core processes nothing, loses its input, and runs again once cleared."""
    sim = _placed()
    sim.advance(10)
    fid = sim.inject(CoreFailure(cores=(0,)))
    before = sim.counters()
    sim.advance(10)
    during = sim.counters()
    assert during.core_failed[0]
    assert not during.core_failed[1]
    assert during.events_processed[0] == before.events_processed[0]
    assert during.events_dropped[0] > before.events_dropped[0]
    assert sim.stage_metrics("job")[0].n_failed == 1
    sim.clear(fid)
    sim.advance(10)
    after = sim.counters()
    assert not after.core_failed[0]
    assert after.events_processed[0] > during.events_processed[0]


def test_failed_destination_lowers_transfer_efficiency() -> None:
    """Spikes sent to a dead core are not delivered."""
    sim = _placed()
    sim.inject(CoreFailure(cores=(2,)))
    sim.advance(20)
    c = sim.counters()
    assert c.spikes_delivered[:2].sum() == pytest.approx(0.5 * c.spikes_sent[:2].sum(), rel=1e-5)


def test_hot_spot_slows_service_and_surges_load() -> None:
    """service_divisor divides the processing rate; load_factor multiplies arrivals; both reverse."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(input_rate=1.0e6), [cores(0), cores(1)])  # half the core's rate
    fid = sim.inject(HotSpot(cores=(0,), service_divisor=4.0))
    sim.advance(50)
    c = sim.counters()
    assert c.events_processed[0] == pytest.approx(sim.core_service_rate[0] / 4 * sim.time, rel=1e-5)
    assert c.events_dropped[0] > 0
    assert sim.stage_metrics("job")[0].queue_delay_s > 1e-3
    sim.clear(fid)
    surge = sim.inject(HotSpot(cores=(5,), load_factor=5.0, service_divisor=1.0))
    sim.set_background(core_rate=1.0e4)
    c0 = sim.counters()
    sim.advance(100)
    c1 = sim.counters()
    gained = c1.events_in - c0.events_in
    assert gained[5] == pytest.approx(5 * gained[6], rel=0.2)
    sim.clear(surge)
    assert not sim.active_faults()


def test_link_failure_drops_everything_routed_over_it() -> None:
    """A cut link on the only path delivers nothing; clearing it restores delivery; callbacks report both."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(), [cores(0), cores(3)])
    events = _recorder(sim)
    link = int(sim.route(0, 3)[0])
    fid = sim.inject(LinkFailure(links=(link,)))
    sim.advance(10)
    c = sim.counters()
    assert c.link_failed[link]
    assert c.spikes_delivered[0] == 0
    assert c.spikes_sent[0] > 0
    sim.clear(fid)
    sim.advance(10)
    assert sim.counters().spikes_delivered[0] > 0
    assert events == [("link", link, True, 0.0), ("link", link, False, pytest.approx(0.1))]


def test_link_congestion_reverses() -> None:
    """Clearing a congestion restores the link's full capacity."""
    sim = Simulator(small_spec(), seed=0)
    sim.add_job(two_stage_job(), [cores(0), cores(3)])
    link = int(sim.route(0, 3)[0])
    fid = sim.inject(LinkCongestion(links=(link,), capacity_divisor=1.0e5))
    sim.advance(5)
    assert sim.counters().link_utilization[link] == 1.0
    sim.clear(fid)
    sim.advance(5)
    assert sim.counters().link_utilization[link] < 0.01


def test_queue_saturation_fills_the_queue_for_its_duration() -> None:
    """A 5x burst for 0.5 s fills the queue and drops events, then the core drains and recovers."""
    sim = _placed()
    sim.schedule(QueueSaturation(cores=(0,), burst_factor=5.0), at=0.1, duration=0.5)
    sim.advance(30)
    c = sim.counters()
    assert c.queue_depth[0] == pytest.approx(sim.core_queue_capacity[0])
    assert c.events_dropped[0] > 0
    assert c.events_dropped[1] == 0
    sim.advance(40)
    c = sim.counters()
    assert c.queue_depth[0] == 0
    assert not sim.active_faults()


@pytest.mark.parametrize("mode", ["nan", "negative", "stale"])
def test_telemetry_glitch_corrupts_only_the_counters(mode: str) -> None:
    """Glitched cores read NaN / negative / frozen values while the simulation runs on untouched."""
    sim = _placed()
    sim.advance(10)
    frozen = sim.counters()
    fid = sim.inject(TelemetryGlitch(cores=(0,), mode=mode))  # type: ignore[arg-type]
    sim.advance(10)
    c = sim.counters()
    if mode == "nan":
        assert np.isnan(c.events_in[0])
        assert np.isnan(c.queue_depth[0])
    elif mode == "negative":
        assert c.events_in[0] < 0
        assert c.spikes_sent[0] < 0
    else:
        assert c.events_in[0] == frozen.events_in[0]
        assert c.spikes_sent[0] == frozen.spikes_sent[0]
    assert c.events_in[1] > frozen.events_in[1]  # other cores unaffected
    sim.clear(fid)
    truth = sim.counters()
    assert truth.events_in[0] > frozen.events_in[0]
    np.testing.assert_allclose(
        truth.events_in, truth.events_processed + truth.events_dropped + truth.queue_depth, rtol=1e-6
    )


def test_chip_failure_fails_its_cores_and_links() -> None:
    """Losing a chip fails every core on it and every link touching it, and reports each."""
    sim = Simulator(small_spec(), seed=0)
    events = _recorder(sim)
    fid = sim.inject(ChipFailure(chips=(1,)))
    c = sim.counters()
    assert c.core_failed.nonzero()[0].tolist() == sim.chip_cores(1).tolist()
    rchip = sim.mesh.router_chip
    touching = (rchip[sim.link_src] == 1) | (rchip[sim.link_dst] == 1)
    assert np.array_equal(c.link_failed, touching)
    assert len(events) == 16 + int(touching.sum())
    sim.clear(fid)
    assert not sim.counters().core_failed.any()
    assert len(events) == 2 * (16 + int(touching.sum()))


def test_hard_fault_callbacks_fire_on_inject() -> None:
    """inject reports the change synchronously, with the current simulated time."""
    sim = _placed()
    events = _recorder(sim)
    sim.advance(3)
    sim.inject(CoreFailure(cores=(4, 2)))
    assert [e[:3] for e in events] == [("core", 2, True), ("core", 4, True)]
    assert [e[3] for e in events] == pytest.approx([0.03, 0.03])


def test_hard_fault_callbacks_fire_on_scheduled_start_and_end() -> None:
    """A scheduled failure is reported when it starts and when its duration ends, inside advance."""
    sim = _placed()
    events = _recorder(sim)
    fid = sim.schedule(CoreFailure(cores=(7,)), at=0.05, duration=0.1)
    assert sim.fault_status(fid) == "pending"
    sim.advance(4)
    assert events == []
    sim.advance(1)
    assert [e[:3] for e in events] == [("core", 7, True)]
    assert [e[3] for e in events] == pytest.approx([0.05])
    assert sim.fault_status(fid) == "active"
    sim.advance(10)
    assert [e[:3] for e in events[1:]] == [("core", 7, False)]
    assert [e[3] for e in events[1:]] == pytest.approx([0.15])
    assert sim.fault_status(fid) == "ended"


def test_overlapping_failures_recover_only_when_both_end() -> None:
    """A core failed by two faults comes back once, when the last one is cleared."""
    sim = _placed()
    events = _recorder(sim)
    a = sim.inject(CoreFailure(cores=(1,)))
    b = sim.inject(CoreFailure(cores=(1,)))
    sim.clear(a)
    assert sim.counters().core_failed[1]
    sim.clear(b)
    assert [e[:3] for e in events] == [("core", 1, True), ("core", 1, False)]


def test_unsubscribe_and_cancel_pending() -> None:
    """An unsubscribed callback hears nothing; a cleared pending fault never starts."""
    sim = _placed()
    events: list[Event] = []
    stop = sim.on_hard_fault(lambda k, i, f, t: events.append((k, i, f, t)))
    fid = sim.schedule(CoreFailure(cores=(0,)), at=0.02)
    sim.clear(fid)
    sim.advance(5)
    assert not sim.counters().core_failed.any()
    stop()
    sim.inject(CoreFailure(cores=(0,)))
    assert events == []
    with pytest.raises(KeyError, match="no fault with id 999"):
        sim.clear(999)


def test_out_of_range_fault_is_rejected_by_the_simulator() -> None:
    """inject validates indices against the machine."""
    sim = _placed()
    with pytest.raises(ValueError, match=r"core index 64 out of range \(0..63\)"):
        sim.inject(CoreFailure(cores=(64,)))
    with pytest.raises(ValueError, match="link index"):
        sim.inject(LinkFailure(links=(sim.n_links,)))


def test_submit_parses_and_schedules_json() -> None:
    """The HTTP-facing entry point schedules a validated request."""
    sim = _placed()
    events = _recorder(sim)
    fid = sim.submit({"kind": "core_failure", "cores": [3], "at": 0.02, "duration": 0.03})
    sim.advance(10)
    assert sim.fault_status(fid) == "ended"
    assert [e[2] for e in events] == [True, False]


def test_fault_from_dict_accepts_every_kind() -> None:
    """Good requests of each kind parse into the matching dataclass."""
    ok: list[dict[str, Any]] = [
        {"kind": "core_failure", "cores": [1, 2]},
        {"kind": "chip_failure", "chips": [0]},
        {"kind": "hot_spot", "cores": [1], "load_factor": 5, "service_divisor": 4.0},
        {"kind": "link_congestion", "links": [0], "capacity_divisor": 10},
        {"kind": "link_failure", "links": [0], "at": 1.5, "duration": 2},
        {"kind": "queue_saturation", "cores": [0], "burst_factor": 3.0},
        {"kind": "telemetry_glitch", "cores": [0], "mode": "stale"},
    ]
    for d in ok:
        req = fault_from_dict(d, n_cores=8, n_chips=2, n_links=4)
        assert type(req.fault).__name__.lower().startswith(d["kind"].split("_")[0])
    req = fault_from_dict(ok[4])
    assert (req.at, req.duration) == (1.5, 2.0)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"cores": [1]}, "'kind' must be a string"),
        ({"kind": "meltdown", "cores": [1]}, "unknown fault kind 'meltdown'"),
        ({"kind": "core_failure", "cores": [1], "colour": "red"}, r"unknown field\(s\) for core_failure: colour"),
        ({"kind": "core_failure"}, "'cores' must be a non-empty list"),
        ({"kind": "core_failure", "cores": "1"}, "'cores' must be a non-empty list"),
        ({"kind": "core_failure", "cores": []}, "'cores' must be a non-empty list"),
        ({"kind": "core_failure", "cores": [1.5]}, "only integers"),
        ({"kind": "core_failure", "cores": [True]}, "only integers"),
        ({"kind": "core_failure", "cores": [8]}, r"index 8 out of range \(0..7\)"),
        ({"kind": "core_failure", "cores": [-1]}, "index -1 out of range"),
        ({"kind": "core_failure", "cores": [1, 1]}, "duplicate"),
        ({"kind": "link_failure", "links": [4]}, r"'links' index 4 out of range \(0..3\)"),
        ({"kind": "hot_spot", "cores": [1], "service_divisor": 0}, "'service_divisor' must be a number in"),
        ({"kind": "hot_spot", "cores": [1], "load_factor": "5"}, "'load_factor' must be a number in"),
        ({"kind": "hot_spot", "cores": [1], "load_factor": 1e308}, "'load_factor' must be a number in"),
        ({"kind": "core_failure", "cores": [0], "at": 1e308}, "'at' must be simulated seconds in"),
        ({"kind": "core_failure", "cores": [0], "duration": 1e308}, "'duration' must be seconds in"),
        ({"kind": "link_congestion", "links": [0], "capacity_divisor": float("nan")}, "'capacity_divisor'"),
        ({"kind": "telemetry_glitch", "cores": [0], "mode": "loud"}, "'mode' must be one of nan, stale, negative"),
        ({"kind": "core_failure", "cores": [0], "at": -1}, "'at' must be simulated seconds in"),
        ({"kind": "core_failure", "cores": [0], "at": "soon"}, "'at' must be simulated seconds in"),
        ({"kind": "core_failure", "cores": [0], "duration": 0}, "'duration' must be seconds in"),
        ({"kind": "core_failure", "cores": [0], "duration": float("inf")}, "'duration' must be seconds in"),
    ],
)
def test_fault_from_dict_rejects_bad_input(bad: Any, message: str) -> None:
    """Malformed requests raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        fault_from_dict(bad, n_cores=8, n_chips=2, n_links=4)


def test_ended_faults_do_not_accumulate() -> None:
    """Thousands of inject/clear cycles leave the live fault table empty and the step cost flat (issue 16)."""
    sim = _placed()
    ids = []
    for _ in range(3000):
        fid = sim.submit({"kind": "hot_spot", "cores": [1], "load_factor": 2.0})
        sim.clear(fid)
        ids.append(fid)
    short = sim.submit({"kind": "core_failure", "cores": [2], "duration": 0.01})
    sim.advance(5)
    assert sim.live_faults == 0
    assert sim.active_faults() == {}
    assert sim.fault_status(ids[0]) == "ended"  # pruned, still answered
    assert sim.fault_status(short) == "ended"
    assert sim.ended_at(ids[0]) is None
    assert sim.ended_at(short) is not None
    with pytest.raises(KeyError):
        sim.fault_status(10**6)
