"""From raw cumulative counter frames to validated, smoothed per-core rates.

Hardware telemetry is untrusted: a counter can read NaN, go negative, run backwards after a firmware reset,
jump by more than the core could physically process, or simply stop advancing. Each such sample is rejected
per core, counted, and never propagated: the core keeps its last good smoothed values and its *sample age*
grows, which the health state machine turns into Unknown and then Unhealthy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snnrm.core.telemetry import TelemetryFrame
from snnrm.core.topology import BoolArray, FloatArray, IntArray

_COUNTERS = ("events_in", "events_processed", "events_dropped", "spikes_sent", "spikes_delivered")


@dataclass(frozen=True, slots=True)
class RateSettings:
    """How frames become rates."""

    ewma_alpha: float = 0.3
    """Weight of the newest sample; 0.3 at 100 ms smooths over roughly the last 0.3 s."""
    max_rate_factor: float = 20.0
    """A per-second rate above this multiple of the core's nominal throughput is physically impossible."""


@dataclass(slots=True, eq=False)
class CoreRates:
    """Smoothed per-core state after the latest frame (all arrays indexed by core)."""

    events_in_rate: FloatArray
    events_processed_rate: FloatArray
    events_dropped_rate: FloatArray
    spikes_sent_rate: FloatArray
    spikes_delivered_rate: FloatArray
    queue_depth: FloatArray
    efficiency: FloatArray
    """Spike-transfer efficiency: delivered / sent spikes over the smoothing window (1.0 when nothing sent)."""
    last_valid: FloatArray
    """Backend time of each core's last accepted sample (-inf before the first)."""
    counters: dict[str, FloatArray] = field(default_factory=dict)
    """Last accepted cumulative counters (for the Prometheus ``_total`` series)."""


@dataclass(slots=True, eq=False)
class RateTracker:
    """Keeps the previous frame and folds each new one into :class:`CoreRates`. Pure, no I/O."""

    nominal_keps: FloatArray
    settings: RateSettings = field(default_factory=RateSettings)
    rejected_samples: IntArray = field(init=False)
    """Per-core count of rejected samples (exported as a counter)."""
    rates: CoreRates = field(init=False)
    _prev: dict[str, FloatArray] = field(init=False, default_factory=dict)
    _prev_t: FloatArray = field(init=False)
    """Per-core time of the accepted baseline the next delta is taken against (-inf: none yet)."""
    _jumps: IntArray = field(init=False)
    """Per-core run of consecutive impossible forward jumps (one is a glitch, two in a row a discontinuity)."""

    def __post_init__(self) -> None:
        n = len(self.nominal_keps)
        z = np.zeros(n)
        self.rejected_samples = np.zeros(n, dtype=np.int64)
        self._prev = {c: z.copy() for c in _COUNTERS}
        self._prev_t = np.full(n, -np.inf)
        self._jumps = np.zeros(n, dtype=np.int64)
        self.rates = CoreRates(
            events_in_rate=z.copy(),
            events_processed_rate=z.copy(),
            events_dropped_rate=z.copy(),
            spikes_sent_rate=z.copy(),
            spikes_delivered_rate=z.copy(),
            queue_depth=z.copy(),
            efficiency=np.ones(n),
            last_valid=np.full(n, -np.inf),
            counters={c: z.copy() for c in _COUNTERS},
        )

    def update(self, frame: TelemetryFrame) -> BoolArray:
        """Fold ``frame`` in; returns the mask of cores whose sample was accepted."""
        t = float(frame.timestamp)
        cur = {c: np.asarray(getattr(frame, c), dtype=np.float64) for c in _COUNTERS}
        depth = np.asarray(frame.queue_depth, dtype=np.float64)
        plausible = np.isfinite(depth) & (depth >= 0)
        for v in cur.values():
            plausible &= np.isfinite(v) & (v >= 0)
        have_base = np.isfinite(self._prev_t)
        dt = t - self._prev_t  # inf where there is no baseline yet
        forward = dt > 0
        deltas = {c: cur[c] - self._prev[c] for c in _COUNTERS}
        in_range = np.ones_like(plausible)
        limit = self.nominal_keps * 1e3 * self.settings.max_rate_factor * np.where(have_base, dt, 0.0)
        went_back = np.zeros_like(plausible)
        frozen = np.ones_like(plausible)
        for d in deltas.values():
            in_range &= (d >= 0) & (d <= limit)
            went_back |= d < 0
            frozen &= d == 0
        # Stale: counters frozen while work waits means the core (or its telemetry) is stuck.
        stuck = frozen & (depth > 0)
        ok = plausible & have_base & forward & in_range & ~stuck
        # A baseline is (re)taken for the first plausible sample, after a counter reset (values went backwards)
        # and after a second impossible jump forward in a row; such samples give no rate and are not "accepted"
        # as fresh evidence of health. One jump is a glitch (the next sample differences against the old
        # baseline); without the rebase after a lasting one, every later delta would still contain the jump and
        # the core would stay rejected (stale) forever.
        jumped = plausible & have_base & forward & ~went_back & ~in_range
        self._jumps = np.where(jumped, self._jumps + 1, 0)
        rebase = plausible & forward & (~have_base | went_back | (self._jumps >= 2))
        self.rejected_samples += ~(ok | (rebase & ~have_base))
        r = self.rates
        a = self.settings.ewma_alpha
        safe_dt = np.where(ok, dt, 1.0)
        for c in _COUNTERS:
            name = f"{c}_rate"
            old = getattr(r, name)
            setattr(r, name, np.where(ok, (1 - a) * old + a * (deltas[c] / safe_dt), old))
        sent = deltas["spikes_sent"]
        inst_eff = np.divide(deltas["spikes_delivered"], sent, out=np.ones_like(sent), where=ok & (sent > 0)).clip(
            0.0, 1.0
        )
        r.efficiency = np.where(ok, (1 - a) * r.efficiency + a * inst_eff, r.efficiency)
        first = rebase & ~have_base
        r.queue_depth = np.where(ok, (1 - a) * r.queue_depth + a * depth, np.where(first, depth, r.queue_depth))
        fresh = ok | first
        r.last_valid = np.where(fresh, t, r.last_valid)
        take = ok | rebase
        for c in _COUNTERS:
            self._prev[c] = np.where(take, cur[c], self._prev[c])
            r.counters[c] = np.where(fresh, cur[c], r.counters[c])
        self._prev_t = np.where(take, t, self._prev_t)
        return ok
