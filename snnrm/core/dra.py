"""Pure decisions of the DRA driver: which devices a node publishes, with which attributes and taints, in which
ResourceSlices, and what to write to the apiserver to get there.

Devices (``resource.k8s.io/v1``, one pool per node, named after the node):

* **core groups** (``chip0-g5``): the cores behind one router (a router domain, or a tile of ``WxH`` routers),
  the asynchronous unit a split-SNN stage runs on;
* **chips** (``chip0``): a whole chip as a *partitionable* device. Each chip has a counter set (``chip0``:
  ``cores``) in the pool; a group consumes its cores from it and the chip consumes all of them, so the scheduler
  never hands out a chip together with one of its groups (KEP-4815). Groups are disjoint and each is allocated
  at most once, so one aggregate counter is exact for these two levels;
* **event throughput** (``chip0-ev``): a chip's event throughput as *consumable capacity* (KEP-5075):
  ``allowMultipleAllocations`` and a ``keps`` capacity with a ``requestPolicy``, shared by many claims.

Attributes are what SNN workloads select on (CEL) and align (``matchAttribute``): ``chip``, board position,
``chipPair`` (chips ``2k`` and ``2k+1`` of a board row are neighbours, so matching it keeps stages on one chip
or two adjacent ones), mesh coordinates, ``routerDomain``, NUMA node, model/generation, and measured headroom
(``headroomPct``, ``kepsHeadroom``) in coarse buckets with hysteresis so that noise never rewrites slices.

Health becomes device taints (KEP-5055) from the same per-core health state machine as the device plugin's
``Healthy``/``Unhealthy`` (so the same dwell and hysteresis): a device with any core that is not Healthy gets
``snnrm.io/unhealthy``; ``NoExecute`` when a core hard-failed (work there is broken), else ``NoSchedule``.

Slices respect the API limits (≤64 devices when counters or taints are used, ≤8 counter sets per slice, devices
and counters in separate slices) and the pool generation follows the rules of the upstream ResourceSlice
controller (k8s.io/dynamic-resource-allocation/resourceslice): it is bumped whenever more than one slice must be
written or a slice is added, and every slice of the pool is rewritten with it.

Everything here takes data and returns data (JSON-ready dicts); :mod:`snnrm.dra` does the I/O.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from snnrm.core.devices import CDI_VERSION
from snnrm.core.health import Health, HealthReason
from snnrm.core.topology import FloatArray, IntArray, Topology
from snnrm.core.types import JSON

DRIVER: Final = "snnrm.io"
"""DRA driver name (a DNS subdomain ≤63): ``device.driver`` in CEL, unqualified attributes live in its domain."""
TAINT_KEY: Final = "snnrm.io/unhealthy"
NO_SCHEDULE: Final = "NoSchedule"
NO_EXECUTE: Final = "NoExecute"
GROUP: Final = "core-group"
CHIP: Final = "chip"
THROUGHPUT: Final = "event-throughput"
CLAIM_CDI_KIND: Final = "snnrm.io/claim"

KEPS: Final = f"{DRIVER}/keps"
"""Capacity names are fully qualified: a claim's ``capacity.requests`` key must equal the device's capacity key
exactly (the allocator does not add the driver's domain the way CEL and ``matchAttribute`` do for attributes)."""
CORES: Final = f"{DRIVER}/cores"

MAX_DEVICES: Final = 128
MAX_DEVICES_ADVANCED: Final = 64
"""A slice with any device using taints or counters holds at most 64 devices (``ResourceSliceMaxDevicesWith…``)."""
MAX_COUNTER_SETS: Final = 8
SLICE_NAME_MAX: Final = 253

_EFFECT_NONE, _EFFECT_NO_SCHEDULE, _EFFECT_NO_EXECUTE = 0, 1, 2
EFFECTS: Final = (None, NO_SCHEDULE, NO_EXECUTE)
_REASON_ORDER: Final = (
    (HealthReason.FAILED, "failed"),
    (HealthReason.STALE, "stale"),
    (HealthReason.QUEUE_SATURATED, "queue-saturated"),
    (HealthReason.LOW_EFFICIENCY, "low-efficiency"),
    (HealthReason.LINK_CONGESTED, "link-congested"),
)
REASON_LABELS: Final = ("", *(label for _, label in _REASON_ORDER), "unknown", "no-capacity")
"""Taint values by reason code (0: no taint)."""
_UNKNOWN_CODE, _NO_CAPACITY_CODE = len(_REASON_ORDER) + 1, len(_REASON_ORDER) + 2


class ClaimError(ValueError):
    """A ResourceClaim cannot be prepared on this node; the message says why (it goes back to the kubelet)."""


# --- settings and static layout -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DraFeatures:
    """What the cluster's apiserver keeps of what we send (fields of disabled features are silently dropped)."""

    partitionable: bool = True
    """``sharedCounters``/``consumesCounters`` (DRAPartitionableDevices): without it, chips are not published."""
    consumable: bool = True
    """``allowMultipleAllocations`` + ``requestPolicy`` (DRAConsumableCapacity): without it, no throughput devices."""
    taints: bool = True
    """Device ``taints`` (DRADeviceTaints): without it, degraded devices are withheld from the slices instead."""


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    """What the node knows about its chips beyond topology (published as attributes when known)."""

    model: str | None = None
    """e.g. ``loihi2`` (a sim preset or a driver's chip model)."""
    generation: int | None = None
    driver_version: str | None = None
    """snnrm's version (a semver, published as a ``version`` attribute)."""


@dataclass(frozen=True, slots=True)
class HeadroomSettings:
    """Buckets of measured headroom; the defaults keep a slice stable under normal telemetry noise."""

    levels: int = 4
    """Buckets of nominal throughput: 4 gives 0/25/50/75/100 %."""
    slack: float = 0.2
    """Fraction of a bucket forgiven when deciding the supported bucket: an idle core at 99 % efficiency is 100 %."""
    margin: float = 0.5
    """Extra fraction of a bucket a device must clear before it moves up (with ``slack``: 70-82.5 % band at 75 %)."""
    shrink_dwell: float = 2.0
    """Seconds below the published bucket before moving down (longer than health's: an attribute is a hint)."""
    grow_dwell: float = 10.0
    """Seconds above the next bucket before moving up: attribute churn rewrites slices, so recover slowly."""


def parse_tile(text: str) -> tuple[int, int]:
    """``"2x2"`` -> (2, 2): routers along x and y per core-group device."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"expected a tile like 1x1 or 2x2 (routers along x and y), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass(frozen=True, slots=True, eq=False)
class DraLayout:
    """The node's DRA devices in publishing order: every core group, then every chip, then every chip's
    throughput device. Built once from the topology; device ``i``'s cores are ``cores_of(i)``."""

    topology: Topology
    tile: tuple[int, int]
    group_of_core: IntArray
    group_chip: IntArray
    group_local: IntArray
    group_router: IntArray
    """Global router index of the group's origin router (its router domain when the tile is 1x1)."""
    group_gx: IntArray
    group_gy: IntArray
    group_cores: IntArray
    group_nominal: FloatArray
    chip_cores: IntArray
    chip_nominal: FloatArray
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    index_of: dict[str, int]
    _members: tuple[IntArray, ...] = field(repr=False)

    @classmethod
    def build(cls, topology: Topology, *, tile: tuple[int, int] = (1, 1)) -> DraLayout:
        g = topology.geometry
        tw, th = max(1, min(tile[0], g.cols)), max(1, min(tile[1], g.rows))
        gcols, grows = math.ceil(g.cols / tw), math.ceil(g.rows / th)
        per_chip = gcols * grows
        router_local = topology.local // g.cores_per_router
        rx, ry = router_local % g.cols, router_local // g.cols
        local_group = (ry // th) * gcols + rx // tw
        group_of_core = (topology.chip_of * per_chip + local_group).astype(np.int64)
        n_groups = topology.n_chips * per_chip
        group_chip = np.arange(n_groups, dtype=np.int64) // per_chip
        group_local = np.arange(n_groups, dtype=np.int64) % per_chip
        ox, oy = (group_local % gcols) * tw, (group_local // gcols) * th
        group_router = group_chip * topology.routers_per_chip + oy * g.cols + ox
        group_gx = topology.chip_pos[group_chip, 0] * g.cols + ox
        group_gy = topology.chip_pos[group_chip, 1] * g.rows + oy
        group_cores = np.bincount(group_of_core, minlength=n_groups).astype(np.int64)
        group_nominal = np.bincount(group_of_core, weights=topology.core_nominal_keps, minlength=n_groups).astype(
            np.float64
        )
        chip_cores = np.bincount(topology.chip_of, minlength=topology.n_chips).astype(np.int64)
        chip_nominal = np.bincount(
            topology.chip_of, weights=topology.core_nominal_keps, minlength=topology.n_chips
        ).astype(np.float64)
        chips = range(topology.n_chips)
        names = (
            *(f"chip{c}-g{k}" for c, k in zip(group_chip.tolist(), group_local.tolist(), strict=True)),
            *(f"chip{c}" for c in chips),
            *(f"chip{c}-ev" for c in chips),
        )
        kinds = (GROUP,) * n_groups + (CHIP,) * topology.n_chips + (THROUGHPUT,) * topology.n_chips
        order = np.argsort(group_of_core, kind="stable")
        bounds = np.cumsum(group_cores)[:-1]
        group_members = tuple(np.split(order, bounds))
        chip_members = tuple(np.flatnonzero(topology.chip_of == c) for c in chips)
        return cls(
            topology=topology,
            tile=(tw, th),
            group_of_core=group_of_core,
            group_chip=group_chip,
            group_local=group_local,
            group_router=group_router,
            group_gx=group_gx,
            group_gy=group_gy,
            group_cores=group_cores,
            group_nominal=group_nominal,
            chip_cores=chip_cores,
            chip_nominal=chip_nominal,
            names=names,
            kinds=kinds,
            index_of={n: i for i, n in enumerate(names)},
            _members=group_members + chip_members + chip_members,
        )

    @property
    def n_groups(self) -> int:
        return len(self.group_chip)

    @property
    def n_chips(self) -> int:
        return self.topology.n_chips

    @property
    def n_devices(self) -> int:
        return len(self.names)

    def chip_of_device(self, i: int) -> int:
        if i < self.n_groups:
            return int(self.group_chip[i])
        return (i - self.n_groups) % self.n_chips

    def cores_of(self, i: int) -> IntArray:
        """Global core indices behind device ``i``."""
        return self._members[i]

    def nominal_keps(self, i: int) -> float:
        return float(self.group_nominal[i]) if i < self.n_groups else float(self.chip_nominal[self.chip_of_device(i)])


# --- per-device health, taints and headroom ----------------------------------------------------------------


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


# --- ResourceSlices -----------------------------------------------------------------------------------------


def quantity(n: int) -> str:
    """Canonical ``resource.Quantity`` text of a non-negative integer (what the apiserver stores: ``256000`` is
    ``256k``), so what we send compares equal to what we read back."""
    if n < 0:
        raise ValueError(f"negative quantity {n}")
    suffix = ("", "k", "M", "G", "T", "P", "E")
    i = 0
    while n and n % 1000 == 0 and i < len(suffix) - 1:
        n //= 1000
        i += 1
    return f"{n}{suffix[i]}"


def _attrs(values: Mapping[str, int | str | bool | None], versions: Mapping[str, str | None] | None = None) -> JSON:
    out: JSON = {}
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            out[k] = {"bool": v}
        elif isinstance(v, int):
            out[k] = {"int": v}
        else:
            out[k] = {"string": v[:64]}
    for k, ver in (versions or {}).items():
        if ver:
            out[k] = {"version": ver}
    return out


@dataclass(frozen=True, slots=True)
class SliceSettings:
    """How devices are cut into slices and what the throughput device's request policy is."""

    throughput_step_keps: int = 1000
    """Granularity of event-throughput requests (KEPS): requests round up to a multiple (the device plugin's
    block size, so both APIs sell throughput in the same unit)."""


def device_body(
    layout: DraLayout, snapshot: DraSnapshot, i: int, *, info: HardwareInfo, features: DraFeatures, step_keps: int
) -> JSON | None:
    """The ``Device`` of layout index ``i`` (``None`` if it is not published under ``features``)."""
    kind = layout.kinds[i]
    if (kind == CHIP and not features.partitionable) or (kind == THROUGHPUT and not features.consumable):
        return None
    cond = snapshot.conditions
    effect = EFFECTS[int(cond.effect[i])]
    if effect is not None and not features.taints:
        return None  # no taints in this cluster: a degraded device is withheld, as the device plugin would
    t = layout.topology
    c = layout.chip_of_device(i)
    nominal = layout.nominal_keps(i)
    level = int(snapshot.headroom_level[i])
    pct = level * 100 // snapshot.levels
    g = t.geometry
    if kind == GROUP:
        mesh_x, mesh_y = int(layout.group_gx[i]), int(layout.group_gy[i])
        router: int | None = int(layout.group_router[i])
        cores = int(layout.group_cores[i])
    else:
        mesh_x, mesh_y = int(t.chip_pos[c, 0]) * g.cols, int(t.chip_pos[c, 1]) * g.rows
        router = None
        cores = int(layout.chip_cores[c])
    attrs = _attrs(
        {
            "type": kind,
            "chip": c,
            "chipX": int(t.chip_pos[c, 0]),
            "chipY": int(t.chip_pos[c, 1]),
            "chipPair": int(t.chip_pos[c, 1]) * 1_000_000 + int(t.chip_pos[c, 0]) // 2,
            "meshX": mesh_x,
            "meshY": mesh_y,
            "routerDomain": router,
            "numaNode": int(t.chip_numa[c]),
            "cores": cores,
            "model": info.model,
            "generation": info.generation,
            "headroomPct": pct,
            "kepsHeadroom": int(nominal * level / snapshot.levels),
        },
        {"driverVersion": info.driver_version},
    )
    body: JSON = {"name": layout.names[i], "attributes": attrs}
    keps = round(nominal)
    if kind == THROUGHPUT:
        step = max(1, min(step_keps, keps))
        body["allowMultipleAllocations"] = True
        body["capacity"] = {
            KEPS: {
                "value": quantity(keps),
                "requestPolicy": {
                    "default": quantity(step),
                    "validRange": {"min": quantity(step), "step": quantity(step)},
                },
            }
        }
    else:
        body["capacity"] = {CORES: {"value": quantity(cores)}, KEPS: {"value": quantity(keps)}}
        if features.partitionable:
            body["consumesCounters"] = [{"counterSet": f"chip{c}", "counters": {"cores": {"value": quantity(cores)}}}]
    if effect is not None:
        body["taints"] = [{"key": TAINT_KEY, "value": cond.reason[i], "effect": effect}]
    return body


def counter_sets(layout: DraLayout) -> list[JSON]:
    return [
        {"name": f"chip{c}", "counters": {"cores": {"value": quantity(int(n))}}}
        for c, n in enumerate(layout.chip_cores.tolist())
    ]


def build_slices(
    layout: DraLayout,
    snapshot: DraSnapshot,
    *,
    info: HardwareInfo,
    features: DraFeatures,
    settings: SliceSettings | None = None,
) -> list[JSON]:
    """The pool's slice specs in order (``devices`` or ``sharedCounters``; ``driver``/``nodeName``/``pool`` are
    added by :func:`plan_pool`). One-shot form of :class:`SliceBuilder`."""
    return SliceBuilder(layout, info=info, features=features, settings=settings or SliceSettings()).build(snapshot)


@dataclass(slots=True, eq=False)
class SliceBuilder:
    """Builds the pool's slice specs, remembering what it built: a device's body is rebuilt only when its taint,
    taint reason or headroom bucket changed, and a slice only when one of its devices did (at 16k cores a full
    build takes ~250 ms, a typical update well under a millisecond; unchanged slices are the same objects).

    Devices are chunked by their position in the layout, not by what is published, so withholding a device (no
    taint support) or tainting one changes exactly one slice and never moves devices between slices.
    """

    layout: DraLayout
    info: HardwareInfo
    features: DraFeatures
    settings: SliceSettings = field(default_factory=SliceSettings)
    _signature: IntArray | None = field(init=False, default=None)
    _bodies: list[JSON | None] = field(init=False, default_factory=list)
    _chunks: list[list[int]] = field(init=False, default_factory=list)
    _slice_of: dict[int, int] = field(init=False, default_factory=dict)
    _slices: list[JSON] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        f, lay = self.features, self.layout
        counters: list[JSON] = []
        if f.partitionable:
            sets = counter_sets(lay)
            counters = [
                {"sharedCounters": sets[k : k + MAX_COUNTER_SETS]} for k in range(0, len(sets), MAX_COUNTER_SETS)
            ]
        per_slice = MAX_DEVICES_ADVANCED if (f.partitionable or f.taints) else MAX_DEVICES
        kinds = {GROUP} | ({CHIP} if f.partitionable else set()) | ({THROUGHPUT} if f.consumable else set())
        indices = [i for i in range(lay.n_devices) if lay.kinds[i] in kinds]
        self._chunks = [indices[k : k + per_slice] for k in range(0, len(indices), per_slice)]
        self._slice_of = {i: len(counters) + n for n, chunk in enumerate(self._chunks) for i in chunk}
        self._slices = [*counters, *({"devices": []} for _ in self._chunks)]
        self._bodies = [None] * lay.n_devices

    def build(self, snapshot: DraSnapshot) -> list[JSON]:
        c = snapshot.conditions
        signature = c.effect + 4 * c.reason_code + 64 * snapshot.headroom_level
        if self._signature is None:
            changed = list(self._slice_of)
        else:
            changed = [i for i in np.flatnonzero(signature != self._signature).tolist() if i in self._slice_of]
        dirty: set[int] = set()
        step = self.settings.throughput_step_keps
        for i in changed:
            self._bodies[i] = device_body(
                self.layout, snapshot, i, info=self.info, features=self.features, step_keps=step
            )
            dirty.add(self._slice_of[i])
        offset = len(self._slices) - len(self._chunks)
        for s in dirty:
            self._slices[s] = {"devices": [b for i in self._chunks[s - offset] if (b := self._bodies[i]) is not None]}
        self._signature = signature
        return list(self._slices)


def slice_name(node: str, driver: str, index: int) -> str:
    """Deterministic slice name ``<node>-<driver>-<index>`` (a DNS subdomain ≤253; long node names are hashed)."""
    suffix = f"-{driver}-{index:03d}"
    base = node
    if len(base) + len(suffix) > SLICE_NAME_MAX:
        digest = hashlib.sha256(node.encode()).hexdigest()[:10]
        base = node[: SLICE_NAME_MAX - len(suffix) - 11].rstrip("-.") + "-" + digest
    return base + suffix


def _strip_time(devices: Iterable[JSON]) -> list[JSON]:
    out = []
    for d in devices:
        if "taints" in d:
            d = {**d, "taints": [{k: v for k, v in t.items() if k != "timeAdded"} for t in d["taints"]]}
        out.append(d)
    return out


def comparable_spec(spec: Mapping[str, Any]) -> JSON:
    """The parts of a slice spec we own, in a form where sent and read-back specs compare equal."""
    out: JSON = {k: spec[k] for k in ("driver", "nodeName", "pool") if k in spec}
    if spec.get("devices"):
        out["devices"] = _strip_time(spec["devices"])
    if spec.get("sharedCounters"):
        out["sharedCounters"] = list(spec["sharedCounters"])
    for k in ("nodeSelector", "allNodes", "perDeviceNodeSelection"):
        if spec.get(k):
            out[k] = spec[k]
    return out


def _keep_time_added(desired: list[JSON], current: list[JSON]) -> list[JSON]:
    """Carry ``timeAdded`` of taints that are still there (same key, value, effect), as upstream does."""
    seen = {
        (d["name"], t.get("key"), t.get("value"), t.get("effect")): t["timeAdded"]
        for d in current
        for t in d.get("taints", ())
        if t.get("timeAdded")
    }
    out = []
    for d in desired:
        if "taints" in d:
            taints = []
            for t in d["taints"]:
                key = (d["name"], t.get("key"), t.get("value"), t.get("effect"))
                taints.append({**t, "timeAdded": seen[key]} if key in seen else t)
            d = {**d, "taints": taints}
        out.append(d)
    return out


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """API writes that take the pool from what exists to what is desired, in the order to apply them."""

    generation: int
    deletes: tuple[tuple[str, str], ...]
    """(name, resourceVersion) of obsolete slices."""
    updates: tuple[JSON, ...]
    """Full objects (with ``metadata.resourceVersion``) to PUT."""
    creates: tuple[JSON, ...]

    @property
    def empty(self) -> bool:
        return not (self.deletes or self.updates or self.creates)


def plan_pool(
    existing: Sequence[Mapping[str, Any]],
    desired: Sequence[JSON],
    *,
    driver: str,
    node: str,
    pool: str,
    last_generation: int = 0,
    owner: JSON | None = None,
    unchanged: Collection[int] = (),
) -> PoolPlan:
    """Plan the writes for one pool, with the upstream ResourceSlice controller's generation rules, relaxed for
    in-place updates (see :func:`_moves`).

    ``existing`` are the slices the apiserver has for (node, driver); ``desired`` the specs of
    :func:`build_slices`; ``last_generation`` the highest generation this process wrote, so that a pool whose
    slices were wiped (the kubelet does that) comes back with a higher generation than any consumer saw.
    Slices of a lower generation than the highest, or whose names are not the desired ones, are obsolete.
    ``unchanged`` lists desired indices the caller knows equal what is stored (it wrote exactly that object and
    the stored resourceVersion is still the one it got back), so they are not compared again.
    """
    names = [slice_name(node, driver, i) for i in range(len(desired))]
    index = {n: i for i, n in enumerate(names)}
    top = max((int(s.get("spec", {}).get("pool", {}).get("generation", 0)) for s in existing), default=0)
    matched: dict[int, Mapping[str, Any]] = {}
    obsolete: list[Mapping[str, Any]] = []
    for s in existing:
        spec = s.get("spec", {})
        i = index.get(s.get("metadata", {}).get("name", ""), -1)
        if int(spec.get("pool", {}).get("generation", 0)) < top or i < 0 or i in matched:
            obsolete.append(s)
        else:
            matched[i] = s

    def spec_for(i: int, generation: int) -> JSON:
        return {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": pool, "generation": generation, "resourceSliceCount": len(desired)},
            **desired[i],
        }

    changed = {
        i
        for i, s in matched.items()
        if i not in unchanged and comparable_spec(s.get("spec", {})) != comparable_spec(spec_for(i, top))
    }
    new = [i for i in range(len(desired)) if i not in matched]
    if last_generation > top:
        generation, bumped = last_generation + 1, True
    elif not new and (len(changed) <= 1 or not _moves(matched, desired, changed)):
        generation, bumped = top, False
    else:
        generation, bumped = top + 1, True
    generation = max(generation, 1)
    bumped = bumped or (generation != top and bool(matched))

    def obj(i: int, current: Mapping[str, Any] | None) -> JSON:
        spec = spec_for(i, generation)
        meta: JSON = {"name": names[i]}
        if owner is not None:
            meta["ownerReferences"] = [owner]
        if current is not None:
            meta["resourceVersion"] = current.get("metadata", {}).get("resourceVersion", "")
            if "devices" in spec:
                spec["devices"] = _keep_time_added(spec["devices"], current.get("spec", {}).get("devices") or [])
        return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": meta, "spec": spec}

    return PoolPlan(
        generation=generation,
        deletes=tuple(
            (str(s.get("metadata", {}).get("name", "")), str(s.get("metadata", {}).get("resourceVersion", "")))
            for s in obsolete
        ),
        updates=tuple(obj(i, s) for i, s in sorted(matched.items()) if bumped or i in changed),
        creates=tuple(obj(i, None) for i in new),
    )


def _moves(matched: Mapping[int, Mapping[str, Any]], desired: Sequence[JSON], changed: set[int]) -> bool:
    """Whether the changed slices move a device or a counter set from one slice to another.

    The upstream controller bumps the generation whenever two or more slices change, so that no consumer combines
    an old slice with a new one. Combining is only harmful when something moves (a consumer would see a device or
    counter set twice, or not at all); in-place changes of devices that stay in their slice (taints, headroom,
    a withheld device) are safe to see in any mix. Keeping the generation for those matters at scale: a bump
    rewrites every slice of the pool (276 at 16k cores) and leaves the pool incomplete, so unallocatable, until
    the last write lands.
    """

    def names(spec: Mapping[str, Any]) -> set[str]:
        return {str(d.get("name")) for d in spec.get("devices") or ()} | {
            f"counters:{c.get('name')}" for c in spec.get("sharedCounters") or ()
        }

    before = {i: names(s.get("spec", {})) for i, s in matched.items()}
    for i in changed:
        added = names(desired[i]) - before[i]
        if any(added & before[j] for j in before if j != i):
            return True
    return False


def probe_slice(node: str, driver: str) -> JSON:
    """A slice using every optional feature, for a dry-run create: what comes back shows what the cluster keeps."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": slice_name(node, driver, 999)},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "probe-partition",
                    "consumesCounters": [{"counterSet": "probe", "counters": {"cores": {"value": "1"}}}],
                    "taints": [{"key": TAINT_KEY, "value": "probe", "effect": NO_SCHEDULE}],
                },
                {
                    "name": "probe-shared",
                    "allowMultipleAllocations": True,
                    "capacity": {
                        KEPS: {
                            "value": "2",
                            "requestPolicy": {"default": "1", "validRange": {"min": "1", "step": "1"}},
                        }
                    },
                },
            ],
        },
    }


def detect_features(returned: Mapping[str, Any]) -> DraFeatures:
    """Which optional fields of :func:`probe_slice` survived the apiserver's dropping of disabled fields."""
    devices = {d.get("name"): d for d in returned.get("spec", {}).get("devices") or []}
    part = devices.get("probe-partition", {})
    shared = devices.get("probe-shared", {})
    return DraFeatures(
        partitionable=bool(part.get("consumesCounters")),
        consumable=bool(shared.get("allowMultipleAllocations"))
        and "requestPolicy" in shared.get("capacity", {}).get(KEPS, {}),
        taints=bool(part.get("taints")),
    )


# --- claims and CDI -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One allocation result of ours in a ResourceClaim."""

    request: str
    pool: str
    device: str
    share_id: str | None = None
    consumed: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[JSON, ...] = ()


def allocated_devices(claim: Mapping[str, Any], *, driver: str, uid: str) -> list[AllocatedDevice]:
    """Our devices in a claim's ``status.allocation`` (raises :class:`ClaimError` if it cannot be prepared)."""
    meta = claim.get("metadata", {})
    if meta.get("uid") != uid:
        raise ClaimError(
            f"ResourceClaim {meta.get('namespace')}/{meta.get('name')} has UID {meta.get('uid')!r}, "
            f"the kubelet asked for {uid!r} (deleted and recreated?)"
        )
    allocation = claim.get("status", {}).get("allocation")
    if not allocation:
        raise ClaimError(f"ResourceClaim {meta.get('namespace')}/{meta.get('name')} is not allocated")
    out = []
    for r in allocation.get("devices", {}).get("results") or []:
        if r.get("driver") != driver:
            continue
        out.append(
            AllocatedDevice(
                request=str(r.get("request", "")),
                pool=str(r.get("pool", "")),
                device=str(r.get("device", "")),
                share_id=r.get("shareID") or None,
                consumed=tuple(sorted((str(k), str(v)) for k, v in (r.get("consumedCapacity") or {}).items())),
                tolerations=tuple(r.get("tolerations") or ()),
            )
        )
    return out


def tolerates(tolerations: Iterable[Mapping[str, Any]], *, key: str, value: str, effect: str) -> bool:
    """Whether a device request's tolerations tolerate a taint (core/v1 toleration semantics, no time limit)."""
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        if t.get("key") not in (None, "", key):
            continue
        if not t.get("key") and t.get("operator") != "Exists":
            continue
        if t.get("operator", "Equal") == "Exists" or t.get("value", "") == value:
            return True
    return False


def _env_name(text: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", text.upper())


def claim_cdi_device(uid: str, device: AllocatedDevice) -> str:
    """CDI device name inside a claim's spec: ``<claim uid>-<device>[-<share id>]`` (alphanumeric at both ends)."""
    name = f"{uid}-{device.device}"
    return f"{name}-{device.share_id}" if device.share_id else name


def claim_cdi_spec(uid: str, devices: Sequence[tuple[AllocatedDevice, Sequence[str]]]) -> JSON:
    """The CDI spec of one prepared claim: a device per allocation result whose edits tell the container which
    cores (or how much shared throughput) it got. Env names are per device, so claims never conflict."""
    out = []
    for dev, cores in devices:
        key = _env_name(dev.device if not dev.share_id else f"{dev.device}_{dev.share_id[:8]}")
        consumed = ",".join(f"{k.rsplit('/', 1)[-1]}={v}" for k, v in dev.consumed)
        value = consumed or ",".join(cores)
        out.append(
            {
                "name": claim_cdi_device(uid, dev),
                "containerEdits": {"env": [f"SNNRM_DRA_{key}={value}", f"SNNRM_DRA_CLAIM_{key}={uid}"]},
            }
        )
    return {"cdiVersion": CDI_VERSION, "kind": CLAIM_CDI_KIND, "devices": out}
