"""Per-device health, taints and headroom buckets (with hysteresis) from the per-core health state machine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snnrm.core.dra.layout import DraLayout, HeadroomSettings
from snnrm.core.dra.names import (
    _EFFECT_NO_EXECUTE,
    _EFFECT_NO_SCHEDULE,
    _EFFECT_NONE,
    _NO_CAPACITY_CODE,
    _REASON_ORDER,
    _UNKNOWN_CODE,
    REASON_LABELS,
    THROUGHPUT,
)
from snnrm.core.health import Health, HealthReason
from snnrm.core.topology import FloatArray, IntArray


def reason_label(mask: int) -> str:
    """The most important reason in a :class:`HealthReason` mask, as a taint value (a valid label value)."""
    for flag, label in _REASON_ORDER:
        if mask & flag:
            return label
    return "unknown"


@dataclass(frozen=True, slots=True, eq=False)
class DeviceConditions:
    """Per device (layout order): health (:class:`Health` values), taint effect code (0 none, 1 NoSchedule,
    2 NoExecute) and the reason that decides the taint value and the health message."""

    health: IntArray
    effect: IntArray
    reason_code: IntArray
    """Index into :data:`REASON_LABELS`: the taint value (0 when untainted)."""
    bad_cores: IntArray
    """Cores of the device that are not Healthy (0 for a throughput device that still has capacity)."""

    @property
    def reason(self) -> tuple[str, ...]:
        return tuple(REASON_LABELS[c] for c in self.reason_code.tolist())

    def same_as(self, other: DeviceConditions | None) -> bool:
        return (
            other is not None
            and np.array_equal(self.health, other.health)
            and np.array_equal(self.effect, other.effect)
            and np.array_equal(self.reason_code, other.reason_code)
        )


def device_conditions(
    layout: DraLayout, core_state: IntArray, core_reasons: IntArray, healthy_blocks_per_chip: IntArray
) -> DeviceConditions:
    """Aggregate per-core health into per-device health and taints (vectorised over cores).

    A group or chip is Unhealthy if any core is, else Unknown if any core is, else Healthy; it is tainted when any
    core is not Healthy (exactly when the device plugin reports that core Unhealthy). A throughput device is
    tainted NoSchedule when its chip has no healthy throughput block left (the device plugin's measure), and
    NoExecute when every core of the chip hard-failed.
    """
    t = layout.topology
    state = np.asarray(core_state, dtype=np.int64)
    bad = state != Health.HEALTHY
    reasons = np.where(bad, np.asarray(core_reasons, dtype=np.int64), 0)
    failed = bad & ((reasons & HealthReason.FAILED) != 0)

    def per(unit: IntArray, n: int) -> tuple[IntArray, IntArray, IntArray, IntArray, IntArray]:
        unhealthy = np.bincount(unit, weights=state == Health.UNHEALTHY, minlength=n) > 0
        unknown = np.bincount(unit, weights=state == Health.UNKNOWN, minlength=n) > 0
        n_bad = np.bincount(unit, weights=bad, minlength=n).astype(np.int64)
        n_failed = np.bincount(unit, weights=failed, minlength=n).astype(np.int64)
        mask = np.zeros(n, dtype=np.int64)
        np.bitwise_or.at(mask, unit, reasons)
        health = np.where(unhealthy, Health.UNHEALTHY, np.where(unknown, Health.UNKNOWN, Health.HEALTHY))
        effect = np.where(n_failed > 0, _EFFECT_NO_EXECUTE, np.where(n_bad > 0, _EFFECT_NO_SCHEDULE, _EFFECT_NONE))
        return health.astype(np.int64), effect.astype(np.int64), mask, n_bad, n_failed

    gh, ge, gm, gb, _ = per(layout.group_of_core, layout.n_groups)
    ch, ce, cm, cb, cf = per(t.chip_of, t.n_chips)
    blocks = np.asarray(healthy_blocks_per_chip, dtype=np.int64)
    all_failed = cf >= layout.chip_cores
    no_capacity = blocks <= 0
    eh = np.where(no_capacity, Health.UNHEALTHY, Health.HEALTHY).astype(np.int64)
    ee = np.where(all_failed, _EFFECT_NO_EXECUTE, np.where(no_capacity, _EFFECT_NO_SCHEDULE, _EFFECT_NONE))
    effects = np.concatenate([ge, ce])
    codes = np.where(effects != _EFFECT_NONE, _reason_codes(np.concatenate([gm, cm])), 0)
    ev_codes = np.where(all_failed, _reason_codes(cm), np.where(no_capacity, _NO_CAPACITY_CODE, 0))
    return DeviceConditions(
        health=np.concatenate([gh, ch, eh]),
        effect=np.concatenate([effects, ee.astype(np.int64)]),
        reason_code=np.concatenate([codes, ev_codes]).astype(np.int64),
        bad_cores=np.concatenate([gb, cb, np.where(no_capacity, layout.chip_cores, 0)]),
    )


def _reason_codes(masks: IntArray) -> IntArray:
    """Code of the most important reason in each :class:`HealthReason` mask (``unknown`` when none is set)."""
    conditions = [(masks & int(flag)) != 0 for flag, _ in _REASON_ORDER]
    out: IntArray = np.select(conditions, list(range(1, len(_REASON_ORDER) + 1)), default=_UNKNOWN_CODE)
    return out.astype(np.int64)


@dataclass(slots=True, eq=False)
class LevelTracker:
    """Integer levels ``0..levels`` of a measured fraction, with a slack, a margin and dwell times (vectorised).

    The same shape of hysteresis as the device plugin's throughput blocks (:mod:`snnrm.core.capacity`): move
    down after ``shrink_dwell`` below the published level, up after ``grow_dwell`` clear of the next level plus
    ``margin``, jumping straight to what the measurement supports. The first update sets the level directly.
    """

    settings: HeadroomSettings
    level: IntArray | None = None
    _below_since: FloatArray | None = None
    _above_since: FloatArray | None = None

    def update(self, fraction: FloatArray, *, now: float) -> bool:
        s = self.settings
        x = np.clip(np.nan_to_num(np.asarray(fraction, dtype=np.float64), nan=0.0), 0.0, 1.0) * s.levels
        supported = np.clip(np.floor(x + s.slack + 1e-9).astype(np.int64), 0, s.levels)
        grow_to = np.where(supported >= s.levels, s.levels, np.floor(x + s.slack - s.margin + 1e-9)).astype(np.int64)
        grow_to = np.clip(grow_to, 0, s.levels)
        if self.level is None or self.level.shape != supported.shape:
            self.level = supported
            self._below_since = np.full(supported.shape, np.nan)
            self._above_since = np.full(supported.shape, np.nan)
            return True
        assert self._below_since is not None
        assert self._above_since is not None
        cur = self.level
        below, above = supported < cur, grow_to > cur
        self._below_since = np.where(below, np.where(np.isnan(self._below_since), now, self._below_since), np.nan)
        self._above_since = np.where(above, np.where(np.isnan(self._above_since), now, self._above_since), np.nan)
        shrink = below & (now - self._below_since >= s.shrink_dwell)
        grow = above & (now - self._above_since >= s.grow_dwell)
        new = np.where(shrink, supported, np.where(grow, grow_to, cur))
        moved = new != cur
        self._below_since = np.where(moved, np.nan, self._below_since)
        self._above_since = np.where(moved, np.nan, self._above_since)
        self.level = new
        return bool(moved.any())


@dataclass(frozen=True, slots=True, eq=False)
class DraSnapshot:
    """Everything a slice or a health report is built from, at one moment."""

    conditions: DeviceConditions
    headroom_level: IntArray
    """Per device (layout order), 0..levels."""
    levels: int


@dataclass(slots=True, eq=False)
class DraState:
    """The node's DRA device state between telemetry ticks; :meth:`update` says what changed."""

    layout: DraLayout
    headroom: HeadroomSettings = field(default_factory=HeadroomSettings)
    conditions: DeviceConditions | None = field(init=False, default=None)
    _tracker: LevelTracker = field(init=False)

    def __post_init__(self) -> None:
        self._tracker = LevelTracker(self.headroom)

    def update(
        self,
        *,
        core_state: IntArray,
        core_reasons: IntArray,
        effective_keps: FloatArray,
        healthy_blocks_per_chip: IntArray,
        now: float,
    ) -> tuple[bool, bool]:
        """Fold in the monitor's current per-core view; returns (health or taints changed, headroom changed)."""
        lay = self.layout
        cond = device_conditions(lay, core_state, core_reasons, healthy_blocks_per_chip)
        eff = np.nan_to_num(np.asarray(effective_keps, dtype=np.float64), nan=0.0)
        group = np.bincount(lay.group_of_core, weights=eff, minlength=lay.n_groups)
        chip = np.bincount(lay.topology.chip_of, weights=eff, minlength=lay.n_chips)
        nominal = np.concatenate([lay.group_nominal, lay.chip_nominal, lay.chip_nominal])
        measured = np.concatenate([group, chip, chip])
        fraction = np.divide(measured, nominal, out=np.zeros_like(measured), where=nominal > 0)
        headroom_changed = self._tracker.update(fraction, now=now)
        health_changed = not cond.same_as(self.conditions)
        self.conditions = cond
        return health_changed, headroom_changed

    def snapshot(self) -> DraSnapshot:
        if self.conditions is None or self._tracker.level is None:
            raise RuntimeError("DraState.snapshot() before the first update()")
        return DraSnapshot(self.conditions, self._tracker.level.copy(), self.headroom.levels)


def health_message(snapshot: DraSnapshot, layout: DraLayout, i: int) -> str:
    """One line for the kubelet's resource health (and pod status): what is wrong, in at most 1024 chars."""
    c = snapshot.conditions
    if c.health[i] == Health.HEALTHY and not c.effect[i]:
        return ""
    if layout.kinds[i] == THROUGHPUT:
        return f"event throughput of chip{layout.chip_of_device(i)}: {c.reason[i]}"
    total = len(layout.cores_of(i))
    return f"{int(c.bad_cores[i])} of {total} cores not healthy ({c.reason[i]})"
