"""Measures: confidence intervals over seeds, latency percentiles, SLO recovery, energy per timestep, and the
resource manager's own cost (CPU seconds and memory of the decision code).

All functions are pure except :class:`DecisionMeter`, which reads the process CPU clock and, when asked,
``tracemalloc``.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Two-sided 95% Student t quantiles, t(0.975, df) for df = 1..30 (beyond that the normal 1.96 is within 2%).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True, slots=True)
class Estimate:
    """Mean over seeds with the half-width of its 95% confidence interval (t distribution)."""

    mean: float
    half: float
    n: int
    """Seeds with a finite value."""
    of: int
    """Seeds in total."""

    @property
    def lo(self) -> float:
        return self.mean - self.half

    @property
    def hi(self) -> float:
        return self.mean + self.half

    def fmt(self, digits: int = 2, *, scale: float = 1.0) -> str:
        if self.n == 0:
            return "n/a"
        m = self.mean * scale
        text = f"{m:.{digits}f}"
        if self.n > 1 and math.isfinite(self.half):
            text += f" ± {self.half * scale:.{digits}f}"
        if self.n < self.of:
            text += f" ({self.n}/{self.of})"
        return text


def mean_ci(values: Sequence[float]) -> Estimate:
    """Mean and 95% CI half-width of the finite values (NaN marks "did not happen in this seed")."""
    a = np.asarray(values, dtype=np.float64)
    ok = a[np.isfinite(a)]
    n = len(ok)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, len(a))
    m = float(ok.mean())
    if n == 1:
        return Estimate(m, math.nan, 1, len(a))
    half = t975(n - 1) * float(ok.std(ddof=1)) / math.sqrt(n)
    return Estimate(m, half, n, len(a))


def percentile(samples: FloatArray, q: float) -> float:
    """``q``-th percentile of the finite samples (NaN when there are none)."""
    ok = samples[np.isfinite(samples)]
    return float(np.percentile(ok, q)) if len(ok) else math.nan


@dataclass(slots=True)
class EnergyMeter:
    """Energy of the jobs, integrated from sampled power (:class:`sim_hw.StageMetrics` synaptic and NoC power).

    Reported per *timestep* of a job (one inference step of the SNN: the workloads' 1 ms step), which is what a
    chip's energy per inference is quoted in, and the NoC part per spike (it depends on placement only: hops).
    All zero on a preset without published per-operation energy.
    """

    synaptic_j: float = 0.0
    noc_j: float = 0.0
    job_s: float = 0.0
    """Job-seconds integrated (sum over jobs of the time each ran)."""
    spikes: float = 0.0
    """Spikes sent between stages, integrated."""

    def add(self, synaptic_w: float, noc_w: float, spikes_per_s: float, seconds: float) -> None:
        """One job over one sample interval."""
        self.synaptic_j += synaptic_w * seconds
        self.noc_j += noc_w * seconds
        self.spikes += spikes_per_s * seconds
        self.job_s += seconds

    def metrics(self, step_s: float) -> dict[str, float]:
        """``energy_uj_per_step`` (synaptic + NoC, per job and timestep ``step_s``), ``noc_energy_uj_per_step``,
        ``noc_pj_per_spike`` and the run's total ``energy_j``."""
        per_step = step_s / self.job_s if self.job_s > 0 else math.nan
        return {
            "energy_uj_per_step": (self.synaptic_j + self.noc_j) * per_step * 1e6,
            "noc_energy_uj_per_step": self.noc_j * per_step * 1e6,
            "noc_pj_per_spike": self.noc_j / self.spikes * 1e12 if self.spikes > 0 else math.nan,
            "energy_j": self.synaptic_j + self.noc_j,
        }


def recovery_time(times: FloatArray, violating: BoolArray, start: float, hold: float) -> float:
    """Seconds from ``start`` until the first moment after which the SLO holds for ``hold`` seconds without a
    break (0 if it never broke after ``start``; NaN if it never held that long before the run ended).

    ``times`` are sample times, ``violating`` the SLO verdict of each sample.
    """
    mask = times >= start - 1e-9
    t = times[mask]
    v = violating[mask]
    if len(t) == 0:
        return math.nan
    if not v.any():
        return 0.0
    good_from: float | None = None
    for ti, vi in zip(t.tolist(), v.tolist(), strict=True):
        if vi:
            good_from = None
            continue
        if good_from is None:
            good_from = ti
        if ti - good_from >= hold - 1e-9:
            return max(good_from - start, 0.0)
    return math.nan


def paired_ratio(numer: Sequence[float], denom: Sequence[float]) -> Estimate:
    """Per-seed ratios numer/denom (same seed, paired), with their 95% CI."""
    out = []
    for a, b in zip(numer, denom, strict=True):
        out.append(a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan)
    return mean_ci(out)


class DecisionMeter:
    """CPU seconds (process clock) spent in the resource manager's decision code, and with ``trace`` the memory
    it holds (state allocated while ``state()`` is open) plus the highest transient peak of any one decision."""

    def __init__(self, *, trace: bool = False) -> None:
        self.cpu = 0.0
        self.calls = 0
        self.trace = trace
        self.state_bytes = 0
        self.peak_transient = 0
        if trace and not tracemalloc.is_tracing():
            tracemalloc.start()

    @contextmanager
    def state(self) -> Iterator[None]:
        """Count what is allocated inside as the decision code's persistent state."""
        before = tracemalloc.get_traced_memory()[0] if self.trace else 0
        try:
            yield
        finally:
            if self.trace:
                self.state_bytes += max(tracemalloc.get_traced_memory()[0] - before, 0)

    @contextmanager
    def decide(self) -> Iterator[None]:
        """Time one decision (and, when tracing, its transient memory peak)."""
        cur0 = 0
        if self.trace:
            cur0 = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        t0 = time.process_time()
        try:
            yield
        finally:
            self.cpu += time.process_time() - t0
            self.calls += 1
            if self.trace:
                self.peak_transient = max(self.peak_transient, tracemalloc.get_traced_memory()[1] - cur0)

    def close(self) -> None:
        if self.trace and tracemalloc.is_tracing():
            tracemalloc.stop()

    @property
    def memory_bytes(self) -> int:
        """State plus the largest transient peak (0 unless tracing)."""
        return self.state_bytes + self.peak_transient
