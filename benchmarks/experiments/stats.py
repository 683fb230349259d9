"""Paired statistics over seeds: bootstrap confidence intervals (numpy, fixed seed) and counts.

Every policy runs the same seeds, so comparisons are paired by seed: the quantity is computed per resample of
seeds on both policies at once. A seed where either side has no value is not silently dropped: it is reported
(``n`` of ``of``), and metrics that can be missing are defined so that they never are (a victim that never
recovers counts at the end of the run, not as a gap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

BOOT = 10_000
"""Bootstrap resamples."""
BOOT_SEED = 14
"""The bootstrap's generator seed (fixed: the same runs.csv always gives the same intervals)."""


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with a 95% percentile-bootstrap interval over seeds."""

    value: float
    lo: float
    hi: float
    n: int
    """Seeds (pairs) with a value."""
    of: int

    def fmt(self, digits: int = 2) -> str:
        if self.n == 0 or not math.isfinite(self.value):
            return "n/a"
        text = f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"
        if self.n < self.of:
            text += f" ({self.n}/{self.of} seeds)"
        return text

    def as_json(self) -> dict[str, object]:
        def num(v: float) -> float | None:
            return round(v, 6) if math.isfinite(v) else None

        return {"value": num(self.value), "ci95": [num(self.lo), num(self.hi)], "n": self.n, "of": self.of}


def _finite_pairs(a: Sequence[float], b: Sequence[float] | None) -> tuple[FloatArray, FloatArray | None, int]:
    x = np.asarray(a, dtype=np.float64)
    if b is None:
        ok = np.isfinite(x)
        return x[ok], None, len(x)
    y = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok], len(x)


def bootstrap(
    a: Sequence[float],
    stat: Callable[[FloatArray, FloatArray | None], float],
    b: Sequence[float] | None = None,
) -> Interval:
    """``stat`` on the seeds, with a 95% percentile interval from resampling seeds (pairs kept together)."""
    x, y, of = _finite_pairs(a, b)
    n = len(x)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, of)
    point = stat(x, y)
    if n == 1:
        return Interval(point, math.nan, math.nan, 1, of)
    rng = np.random.default_rng(BOOT_SEED)
    idx = rng.integers(0, n, size=(BOOT, n))
    with np.errstate(all="ignore"):
        vals = np.array([stat(x[i], None if y is None else y[i]) for i in idx], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return Interval(point, math.nan, math.nan, n, of)
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return Interval(point, float(lo), float(hi), n, of)


def mean_of(a: Sequence[float]) -> Interval:
    """Mean over seeds."""
    return bootstrap(a, lambda x, _: float(np.mean(x)))


def median_of(a: Sequence[float]) -> Interval:
    """Median over seeds (for times with a long tail, censored at the end of the run)."""
    return bootstrap(a, lambda x, _: float(np.median(x)))


def paired_diff(ours: Sequence[float], theirs: Sequence[float]) -> Interval:
    """Mean over seeds of ours - theirs (same seed)."""
    return bootstrap(ours, lambda x, y: float(np.mean(x - y)) if y is not None else math.nan, theirs)


def paired_reduction(ours: Sequence[float], theirs: Sequence[float]) -> Interval:
    """Percent by which ours is lower than theirs: 100 * (1 - mean(ours) / mean(theirs)), seeds paired."""

    def stat(x: FloatArray, y: FloatArray | None) -> float:
        if y is None:
            return math.nan
        d = float(np.mean(y))
        return 100.0 * (1.0 - float(np.mean(x)) / d) if d > 0 else math.nan

    return bootstrap(ours, stat, theirs)


@dataclass(frozen=True, slots=True)
class Count:
    """A binary outcome over runs: k of n."""

    k: int
    n: int

    def fmt(self) -> str:
        return f"{self.k} of {self.n}"


def count(values: Sequence[float], pred: Callable[[float], bool]) -> Count:
    """Runs whose value satisfies ``pred`` (a missing value is a run where it did not)."""
    vals = list(values)
    return Count(sum(1 for v in vals if math.isfinite(v) and pred(v)), len(vals))
