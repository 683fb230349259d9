"""ResourceSlice bodies: each device with its attributes, capacities, counters and taints, packed into slices."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from snnrm.core.dra.conditions import DraSnapshot
from snnrm.core.dra.layout import DraFeatures, DraLayout, HardwareInfo
from snnrm.core.dra.names import (
    CHIP,
    CORES,
    EFFECTS,
    GROUP,
    KEPS,
    MAX_COUNTER_SETS,
    MAX_DEVICES,
    MAX_DEVICES_ADVANCED,
    SLICE_NAME_MAX,
    TAINT_KEY,
    THROUGHPUT,
)
from snnrm.core.topology import IntArray
from snnrm.core.types import JSON


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
