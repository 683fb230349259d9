"""Rate tracking: bad telemetry is rejected per core, counted, and never propagated."""

import numpy as np

from snnrm.core.rates import RateSettings, RateTracker
from snnrm.core.telemetry import TelemetryFrame


def frame(
    t: float,
    n: int = 3,
    *,
    processed: list[float] | None = None,
    depth: list[float] | None = None,
    sent: list[float] | None = None,
    delivered: list[float] | None = None,
) -> TelemetryFrame:
    p = np.asarray(processed if processed is not None else [0.0] * n, dtype=float)
    s = np.asarray(sent if sent is not None else [0.0] * n, dtype=float)
    return TelemetryFrame(
        timestamp=t,
        queue_depth=np.asarray(depth if depth is not None else [0.0] * n, dtype=float),
        events_in=p.copy(),
        events_processed=p,
        events_dropped=np.zeros(n),
        spikes_sent=s,
        spikes_delivered=np.asarray(delivered if delivered is not None else s, dtype=float),
        link_utilization=np.zeros(0),
        core_failed=np.zeros(n, dtype=bool),
        link_failed=np.zeros(0, dtype=bool),
    )


def tracker(n: int = 3) -> RateTracker:
    return RateTracker(nominal_keps=np.full(n, 1000.0), settings=RateSettings(ewma_alpha=1.0))


def test_rates_are_per_second_deltas() -> None:
    rt = tracker()
    rt.update(frame(0.0, processed=[0, 0, 0]))
    ok = rt.update(frame(0.1, processed=[100, 200, 0]))
    assert ok.all()
    np.testing.assert_allclose(rt.rates.events_processed_rate, [1000, 2000, 0])


def test_nan_negative_and_impossible_samples_are_rejected_and_counted() -> None:
    rt = tracker()
    rt.update(frame(0.0, processed=[0, 0, 0]))
    rt.update(frame(0.1, processed=[100, 100, 100]))
    # core 0 NaN, core 1 negative, core 2 jumps far beyond 20x of 1,000 KEPS in 0.1 s
    ok = rt.update(frame(0.2, processed=[np.nan, -5, 1e9]))
    assert not ok.any()
    assert rt.rejected_samples.tolist() == [1, 1, 1]
    np.testing.assert_allclose(rt.rates.events_processed_rate, [1000, 1000, 1000])
    assert (rt.rates.last_valid == 0.1).all()
    # The next good sample differences against the last accepted one, over the real interval.
    ok = rt.update(frame(0.3, processed=[300, 300, 300]))
    assert ok[[0, 2]].all()
    np.testing.assert_allclose(rt.rates.events_processed_rate[[0, 2]], [1000, 1000])


def test_frozen_counters_with_waiting_work_are_stale() -> None:
    rt = tracker(2)
    rt.update(frame(0.0, 2, processed=[0, 0], depth=[0, 5]))
    ok = rt.update(frame(0.1, 2, processed=[0, 0], depth=[0, 5]))
    assert ok.tolist() == [True, False]  # idle core is fine; core with queued work and no progress is stuck


def test_counter_reset_rebaselines_without_a_rate_spike() -> None:
    rt = tracker(1)
    rt.update(frame(0.0, 1, processed=[1000]))
    rt.update(frame(0.1, 1, processed=[1100]))
    assert not rt.update(frame(0.2, 1, processed=[10]))[0]  # firmware reset
    assert rt.update(frame(0.3, 1, processed=[110]))[0]
    np.testing.assert_allclose(rt.rates.events_processed_rate, [1000])


def test_a_lasting_jump_rebaselines_instead_of_rejecting_forever() -> None:
    """A flood beyond what a core can do is rejected, but once the counters move on from the new level the core
    is tracked again (issue 16: a cleared 1e308 hot spot left the core "stale" forever)."""
    rt = tracker(1)
    rt.update(frame(0.0, 1, processed=[0]))
    rt.update(frame(0.1, 1, processed=[100]))
    assert not rt.update(frame(0.2, 1, processed=[1e12]))[0]
    assert not rt.update(frame(0.3, 1, processed=[1e12 + 100]))[0]  # second jump in a row: new baseline
    assert rt.update(frame(0.4, 1, processed=[1e12 + 200]))[0]
    np.testing.assert_allclose(rt.rates.events_processed_rate, [1000])
    assert rt.rejected_samples.tolist() == [2]


def test_efficiency_is_delivered_over_sent() -> None:
    rt = tracker(2)
    rt.update(frame(0.0, 2))
    rt.update(frame(0.1, 2, sent=[100, 0], delivered=[80, 0]))
    np.testing.assert_allclose(rt.rates.efficiency, [0.8, 1.0])


def test_out_of_order_frame_changes_nothing() -> None:
    rt = tracker(1)
    rt.update(frame(1.0, 1, processed=[0]))
    rt.update(frame(1.1, 1, processed=[100]))
    before = rt.rates.events_processed_rate.copy()
    assert not rt.update(frame(0.5, 1, processed=[50]))[0]
    np.testing.assert_array_equal(rt.rates.events_processed_rate, before)
