"""Paired bootstrap statistics: reproducible, paired by seed, honest about missing seeds."""

from __future__ import annotations

import math

from benchmarks.experiments.stats import count, mean_of, median_of, paired_diff, paired_reduction


def test_the_bootstrap_is_reproducible_and_brackets_the_point() -> None:
    a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    x, y = mean_of(a), mean_of(a)
    assert x == y
    assert x.value == 5.5
    assert x.lo < 5.5 < x.hi
    assert (x.n, x.of) == (10, 10)
    assert median_of(a).value == 5.5


def test_pairing_removes_the_between_seed_spread() -> None:
    """Seeds differ a lot, the policies by a steady 1: unpaired intervals overlap, the paired one excludes 0."""
    base = [10.0, 50.0, 90.0, 20.0, 70.0, 30.0, 80.0, 40.0, 60.0, 100.0]
    ours = [b - 1.0 for b in base]
    d = paired_diff(ours, base)
    assert d.value == -1.0
    assert d.hi < 0
    assert mean_of(ours).hi > mean_of(base).lo  # the unpaired intervals overlap
    red = paired_reduction(ours, base)
    assert math.isclose(red.value, 100.0 * (1.0 - sum(ours) / sum(base)))


def test_missing_seeds_are_reported_not_hidden_and_binary_outcomes_are_counts() -> None:
    d = paired_diff([1.0, math.nan, 3.0], [0.0, 1.0, 1.0])
    assert (d.n, d.of) == (2, 3)
    assert "(2/3 seeds)" in d.fmt()
    c = count([0.4, 0.9, 2.0, math.nan], lambda v: v < 1.0)
    assert c.fmt() == "2 of 4"
