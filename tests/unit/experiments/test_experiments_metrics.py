"""Confidence intervals, percentiles and SLO recovery: the arithmetic every result table rests on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.experiments.metrics import DecisionMeter, mean_ci, paired_ratio, percentile, recovery_time, t975


def test_t_quantiles_match_the_textbook_and_fall_back_to_normal() -> None:
    assert t975(1) == pytest.approx(12.706)
    assert t975(4) == pytest.approx(2.776)
    assert t975(9) == pytest.approx(2.262)
    assert t975(100) == pytest.approx(1.96)
    assert math.isnan(t975(0))


def test_mean_ci_is_the_t_interval_of_the_finite_values() -> None:
    e = mean_ci([1.0, 2.0, 3.0, math.nan])
    assert e.mean == pytest.approx(2.0)
    assert e.half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert (e.n, e.of) == (3, 4)
    assert e.lo < 2.0 < e.hi
    assert "(3/4)" in e.fmt(2)


def test_mean_ci_of_one_or_no_value() -> None:
    one = mean_ci([5.0])
    assert one.mean == 5.0
    assert math.isnan(one.half)
    assert one.fmt(1) == "5.0"
    none = mean_ci([math.nan, math.inf])
    assert none.n == 0
    assert none.fmt() == "n/a"


def test_percentile_ignores_outages() -> None:
    samples = np.array([1.0, 2.0, 3.0, math.inf, math.nan])
    assert percentile(samples, 50) == pytest.approx(2.0)
    assert math.isnan(percentile(np.array([math.inf]), 99))


def test_paired_ratio_pairs_by_seed_and_skips_zero_denominators() -> None:
    e = paired_ratio([1.0, 2.0, 3.0], [2.0, 4.0, 0.0])
    assert e.mean == pytest.approx(0.5)
    assert e.n == 2


@pytest.mark.parametrize(
    ("violating", "expected"),
    [
        ([False] * 10, 0.0),  # never broke
        ([True, True, False, False, False, False, False, False, False, False], 0.2),
        ([True] * 10, math.nan),  # never recovered
        ([True, False, True, False, False, False, True, False, False, False], math.nan),  # never held 0.5 s
    ],
)
def test_recovery_time(violating: list[bool], expected: float) -> None:
    times = (np.arange(10) * 0.1 + 1.0).astype(np.float64)
    got = recovery_time(times, np.array(violating), start=1.0, hold=0.5)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected)


def test_decision_meter_counts_calls_and_traces_memory_only_when_asked() -> None:
    meter = DecisionMeter()
    with meter.decide():
        sum(range(1000))
    assert meter.calls == 1
    assert meter.cpu >= 0.0
    assert meter.memory_bytes == 0
    traced = DecisionMeter(trace=True)
    try:
        with traced.state():
            kept = np.zeros(100_000)
        with traced.decide():
            np.ones(200_000).sum()
        assert traced.state_bytes >= kept.nbytes
        assert traced.peak_transient >= 200_000 * 8
    finally:
        traced.close()
