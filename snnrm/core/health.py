"""Per-core health as a vectorised state machine with hysteresis.

A core is Healthy, Unknown (its telemetry went quiet) or Unhealthy. Soft conditions (a saturated event queue,
falling spike-transfer efficiency, a congested link at its router) must hold for ``enter_dwell`` seconds before
the core turns Unhealthy, and their recovery thresholds are stricter than their entry thresholds and must hold
for ``recover_dwell`` seconds; so a core hovering around a threshold never flaps. Hard failures reported by the
hardware act at once. Every decision records its reasons as a bit mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

import numpy as np

from snnrm.core.topology import BoolArray, FloatArray, IntArray


class Health(IntEnum):
    HEALTHY = 0
    UNKNOWN = 1
    UNHEALTHY = 2


class HealthReason(IntFlag):
    NONE = 0
    FAILED = 1
    STALE = 2
    QUEUE_SATURATED = 4
    LOW_EFFICIENCY = 8
    LINK_CONGESTED = 16

    @classmethod
    def names(cls, mask: int) -> list[str]:
        """Reason labels for a mask, e.g. ``["queue-saturated", "stale"]``."""
        return [r.name.lower().replace("_", "-") for r in cls if r.value and mask & r.value and r.name]


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """Thresholds and dwell times; each default is chosen to catch real degradation within a second or two."""

    queue_enter: float = 0.8
    """Queue fill (depth / capacity) above which a core is saturated: beyond 80% bursts overflow and drop."""
    queue_exit: float = 0.5
    efficiency_enter: float = 0.9
    """Spike-transfer efficiency below which spikes are being lost on the way."""
    efficiency_exit: float = 0.97
    link_enter: float = 0.95
    """Utilisation of any link at the core's router above which it is congested."""
    link_exit: float = 0.8
    enter_dwell: float = 0.5
    """Seconds a soft condition must hold before Unhealthy: five 100 ms samples, so one noisy sample is ignored."""
    recover_dwell: float = 2.0
    """Seconds of good readings before Healthy again; longer than enter_dwell, so recovery is never premature."""
    stale_unknown: float = 0.5
    """Seconds without an accepted sample before the core is Unknown."""
    stale_unhealthy: float = 2.0
    """Seconds without an accepted sample before the core is Unhealthy (capacity we cannot see, we don't sell)."""


@dataclass(frozen=True, slots=True, eq=False)
class Observation:
    """What the health machine needs for one tick, all arrays indexed by core."""

    now: float
    failed: BoolArray
    last_valid: FloatArray
    queue_fill: FloatArray
    efficiency: FloatArray
    router_link_utilization: FloatArray
    """Highest utilisation of the links leaving each core's router (0 when none)."""


@dataclass(frozen=True, slots=True, eq=False)
class HealthStep:
    """One tick computed from the state as it was (:meth:`HealthMachine.propose`), not yet applied."""

    version: int
    """:attr:`HealthMachine.version` it was computed at: a pushed fault applied since makes it stale."""
    state: IntArray
    reasons: IntArray
    bad_since: FloatArray
    good_since: FloatArray
    pushed: FloatArray
    changed: BoolArray
    """Cores whose state the step changes."""
    healthy_changed: bool
    """Whether any core turns Healthy or stops being Healthy."""


@dataclass(slots=True, eq=False)
class HealthMachine:
    """Holds per-core state between ticks; :meth:`step` is pure apart from that state.

    A tick can be computed away from where faults are applied (:meth:`propose` reads the state and changes
    nothing; the shell runs it in a worker thread) and applied later (:meth:`commit`), unless a pushed fault was
    applied in between (:attr:`version`): then it is computed again, so a fault is never undone by a tick computed
    before it.
    """

    n_cores: int
    settings: HealthSettings = field(default_factory=HealthSettings)
    state: IntArray = field(init=False)
    reasons: IntArray = field(init=False)
    _bad_since: FloatArray = field(init=False)
    _good_since: FloatArray = field(init=False)
    _pushed: FloatArray = field(init=False)
    """Backend time of a pushed hard failure per core (NaN: none); frames newer than it take over."""
    version: int = field(init=False, default=0)
    """Pushed faults applied so far (:meth:`fail`)."""

    def __post_init__(self) -> None:
        self.state = np.full(self.n_cores, int(Health.HEALTHY), dtype=np.int64)
        self.reasons = np.zeros(self.n_cores, dtype=np.int64)
        self._bad_since = np.full(self.n_cores, np.nan)
        self._good_since = np.full(self.n_cores, np.nan)
        self._pushed = np.full(self.n_cores, np.nan)

    @property
    def healthy(self) -> BoolArray:
        out: BoolArray = self.state == Health.HEALTHY
        return out

    def fail(self, cores: IntArray, *, failed: bool, now: float) -> None:
        """Apply a pushed hard fault at once (no dwell): the kubelet must stop placing work there now."""
        self.version += 1
        if failed:
            self.state[cores] = Health.UNHEALTHY
            self.reasons[cores] |= HealthReason.FAILED
            self._good_since[cores] = np.nan
            self._pushed[cores] = now
        else:
            self.reasons[cores] &= ~HealthReason.FAILED
            self._pushed[cores] = np.nan
            # The recovered core must still show good telemetry for recover_dwell before it is sold again.
            self._good_since[cores] = np.nan

    def step(self, obs: Observation) -> BoolArray:
        """Advance one tick; returns the mask of cores whose state changed."""
        changed = self.commit(self.propose(obs))
        assert changed is not None  # nothing ran between the two
        return changed

    def commit(self, step: HealthStep) -> BoolArray | None:
        """Apply ``step``; None (and nothing changed) when a pushed fault was applied since it was proposed."""
        if step.version != self.version:
            return None
        self.state, self.reasons = step.state, step.reasons
        self._bad_since, self._good_since, self._pushed = step.bad_since, step.good_since, step.pushed
        return step.changed

    def propose(self, obs: Observation) -> HealthStep:
        """The tick ``obs`` makes, from the state now; changes nothing (safe beside :meth:`fail`: see
        :meth:`commit`)."""
        version = self.version  # first: a fault applied while the arrays are read makes the step stale
        s = self.settings
        age = obs.now - obs.last_valid
        # NaN (untrusted telemetry) as the harmless value; where(isnan) is a third of nan_to_num's work, and
        # only comparisons follow, for which an infinity needs no replacing. This runs per frame on 16k cores.
        fill = np.where(np.isnan(obs.queue_fill), 0.0, obs.queue_fill)
        eff = np.where(np.isnan(obs.efficiency), 1.0, obs.efficiency)
        link = np.where(np.isnan(obs.router_link_utilization), 0.0, obs.router_link_utilization)
        previously_bad = self.reasons & (
            HealthReason.QUEUE_SATURATED | HealthReason.LOW_EFFICIENCY | HealthReason.LINK_CONGESTED
        )
        # Hysteresis on each soft condition: enter above the entry threshold, leave only below the exit one.
        q = np.where(self.reasons & HealthReason.QUEUE_SATURATED, fill > s.queue_exit, fill > s.queue_enter)
        e = np.where(self.reasons & HealthReason.LOW_EFFICIENCY, eff < s.efficiency_exit, eff < s.efficiency_enter)
        ln = np.where(self.reasons & HealthReason.LINK_CONGESTED, link > s.link_exit, link > s.link_enter)
        soft = (
            (q * int(HealthReason.QUEUE_SATURATED))
            | (e * int(HealthReason.LOW_EFFICIENCY))
            | (ln * int(HealthReason.LINK_CONGESTED))
        )
        soft = soft.astype(np.int64)
        stale = age > s.stale_unknown
        # A pushed failure holds until a frame sampled after it says otherwise (a frame read before the event
        # but folded in after it must not undo it).
        pushed = np.where(~obs.failed & (obs.now > self._pushed), np.nan, self._pushed)
        hard = obs.failed | ~np.isnan(pushed)

        any_soft = soft != 0
        bad_since = np.where(any_soft, np.where(np.isnan(self._bad_since), obs.now, self._bad_since), np.nan)
        bad_long = any_soft & (obs.now - bad_since >= s.enter_dwell)
        good_now = ~any_soft & ~stale & ~hard
        good_since = np.where(good_now, np.where(np.isnan(self._good_since), obs.now, self._good_since), np.nan)
        good_long = good_now & (obs.now - good_since >= s.recover_dwell)

        old = self.state
        new = old.copy()
        unhealthy = hard | (age > s.stale_unhealthy) | bad_long
        new[unhealthy] = Health.UNHEALTHY
        unknown = ~unhealthy & stale
        new[unknown & (old != Health.UNHEALTHY)] = Health.UNKNOWN
        new[good_long] = Health.HEALTHY
        # A soft condition that has not lasted enter_dwell leaves a healthy core healthy (no flapping).
        reasons = soft | (stale * int(HealthReason.STALE)) | (hard * int(HealthReason.FAILED))
        # Keep a soft reason flagged while its exit threshold is not yet met, even if the core is still healthy.
        reasons = np.where(any_soft | stale | hard | (previously_bad != 0), reasons, 0)
        # An Unhealthy core keeps the reasons that put it there until it has recovered.
        reasons = np.where((new != Health.HEALTHY) & (reasons == 0), self.reasons, reasons).astype(np.int64)
        changed: BoolArray = new != old
        healthy_changed = bool(((old == Health.HEALTHY) != (new == Health.HEALTHY)).any())
        return HealthStep(version, new, reasons, bad_since, good_since, pushed, changed, healthy_changed)
