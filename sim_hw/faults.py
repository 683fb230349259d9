"""Faults the simulator can inject, as plain frozen data, plus a validating parser for JSON requests.

Every fault is reversible: the simulator keeps the set of active faults and recomputes its effective per-core
and per-link arrays from that set whenever a fault starts or ends, so overlapping faults combine (divisors and
factors multiply, failures OR) and clearing one restores exactly what the others leave.

Hard faults (:class:`CoreFailure`, :class:`ChipFailure`, :class:`LinkFailure`) change what hardware reports as
failed; the simulator pushes those changes to subscribers at once. Soft faults degrade behaviour that the
daemon must notice from telemetry. :class:`TelemetryGlitch` corrupts only what :meth:`Simulator.counters`
returns, never the simulated state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

GlitchMode: TypeAlias = Literal["nan", "stale", "negative"]
GLITCH_MODES: tuple[GlitchMode, ...] = ("nan", "stale", "negative")


def _indices(values: Iterable[int], what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out:
        raise ValueError(f"{what} must not be empty")
    if min(out) < 0:
        raise ValueError(f"{what} must be non-negative indices, got {min(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} contains duplicates")
    return out


MAX_FACTOR = 1e6
"""Largest slow-down or congestion divisor a fault may apply: six orders of magnitude already stop any core or
link of the model; far beyond it (1e308) the float32 state overflows to infinity, and a fault that cannot be
cleared back to the exact prior state is not a fault model but damage."""
MAX_SURGE = 1e3
"""Largest input surge (``load_factor``, ``burst_factor``): a core's input is bounded by its router's links, so a
thousand times its own service rate is already beyond any physical input, and keeps the cumulative counters
exact in float64 for years of simulated time."""
_BOUNDS = {"load_factor": MAX_SURGE, "burst_factor": MAX_SURGE}
MAX_SECONDS = 1e7
"""Largest ``at`` / ``duration`` in simulated seconds (about 116 days): past it the step arithmetic overflows."""


def _positive(value: float, what: str) -> float:
    v = float(value)
    top = _BOUNDS.get(what, MAX_FACTOR)
    if not (math.isfinite(v) and 0 < v <= top):
        raise ValueError(f"{what} must be a number in (0, {top:g}], got {value!r}")
    return v


@dataclass(frozen=True, slots=True)
class CoreFailure:
    """Cores stop: they process nothing, their queued and arriving events are dropped, they send no spikes."""

    cores: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cores", _indices(self.cores, "cores"))


@dataclass(frozen=True, slots=True)
class ChipFailure:
    """Whole chips are lost: every core on them fails and every link touching their routers fails."""

    chips: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "chips", _indices(self.chips, "chips"))


@dataclass(frozen=True, slots=True)
class HotSpot:
    """Cores get ``load_factor`` times their arrivals (input surge) and/or run ``service_divisor`` times slower."""

    cores: tuple[int, ...]
    load_factor: float = 1.0
    service_divisor: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cores", _indices(self.cores, "cores"))
        object.__setattr__(self, "load_factor", _positive(self.load_factor, "load_factor"))
        object.__setattr__(self, "service_divisor", _positive(self.service_divisor, "service_divisor"))


@dataclass(frozen=True, slots=True)
class LinkCongestion:
    """Links carry ``capacity_divisor`` times fewer spike messages per second; the excess is dropped."""

    links: tuple[int, ...]
    capacity_divisor: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", _indices(self.links, "links"))
        object.__setattr__(self, "capacity_divisor", _positive(self.capacity_divisor, "capacity_divisor"))


@dataclass(frozen=True, slots=True)
class LinkFailure:
    """Links are cut: every spike routed over them is lost (routes are static, as with XY routing)."""

    links: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "links", _indices(self.links, "links"))


@dataclass(frozen=True, slots=True)
class QueueSaturation:
    """An input burst: cores receive ``burst_factor`` x their nominal service rate in extra events."""

    cores: tuple[int, ...]
    burst_factor: float = 5.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cores", _indices(self.cores, "cores"))
        object.__setattr__(self, "burst_factor", _positive(self.burst_factor, "burst_factor"))


@dataclass(frozen=True, slots=True)
class TelemetryGlitch:
    """The counters read from these cores are NaN, negative, or frozen ("stale"); the hardware runs on."""

    cores: tuple[int, ...]
    mode: GlitchMode = "nan"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cores", _indices(self.cores, "cores"))
        if self.mode not in GLITCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(GLITCH_MODES)}, got {self.mode!r}")


Fault: TypeAlias = (
    CoreFailure | ChipFailure | HotSpot | LinkCongestion | LinkFailure | QueueSaturation | TelemetryGlitch
)

FAULT_KINDS: dict[str, type[Fault]] = {
    "core_failure": CoreFailure,
    "chip_failure": ChipFailure,
    "hot_spot": HotSpot,
    "link_congestion": LinkCongestion,
    "link_failure": LinkFailure,
    "queue_saturation": QueueSaturation,
    "telemetry_glitch": TelemetryGlitch,
}
"""JSON ``kind`` -> fault class."""

# Fields each kind accepts besides its index list, with their JSON type check.
_INDEX_FIELD = {
    CoreFailure: "cores",
    ChipFailure: "chips",
    HotSpot: "cores",
    LinkCongestion: "links",
    LinkFailure: "links",
    QueueSaturation: "cores",
    TelemetryGlitch: "cores",
}
_NUMBER_FIELDS = {
    HotSpot: ("load_factor", "service_divisor"),
    LinkCongestion: ("capacity_divisor",),
    QueueSaturation: ("burst_factor",),
}


def index_field(kind: str) -> str | None:
    """The JSON field listing what a fault of ``kind`` hits (``cores``, ``chips`` or ``links``); None if unknown."""
    cls = FAULT_KINDS.get(kind)
    return None if cls is None else _INDEX_FIELD[cls]


def fault_kind(fault: Fault) -> str:
    """The JSON ``kind`` of a fault object."""
    for kind, cls in FAULT_KINDS.items():
        if type(fault) is cls:
            return kind
    raise TypeError(f"not a fault: {fault!r}")


@dataclass(frozen=True, slots=True)
class FaultRequest:
    """A validated fault plus when to start it and for how long (``None``: now / until cleared)."""

    fault: Fault
    at: float | None = None
    duration: float | None = None


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def fault_from_dict(
    d: Mapping[str, Any],
    *,
    n_cores: int | None = None,
    n_chips: int | None = None,
    n_links: int | None = None,
) -> FaultRequest:
    """Parse an untrusted JSON object such as ``{"kind": "core_failure", "cores": [3], "at": 1.5}``.

    Checks the kind, field names and types, and (when the sizes are given) that indices are in range. Raises
    :class:`ValueError` with a message naming the offending field.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a fault must be a JSON object, got {type(d).__name__}")  # noqa: TRY004 (API contract: ValueError)
    kind = d.get("kind")
    if not isinstance(kind, str):
        raise ValueError(f"'kind' must be a string, one of: {', '.join(FAULT_KINDS)}")  # noqa: TRY004
    cls = FAULT_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of: {', '.join(FAULT_KINDS)}")
    index_field = _INDEX_FIELD[cls]
    numbers = _NUMBER_FIELDS.get(cls, ())
    allowed = {"kind", "at", "duration", index_field, *numbers}
    if cls is TelemetryGlitch:
        allowed.add("mode")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) for {kind}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")

    raw = d.get(index_field)
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"'{index_field}' must be a non-empty list of integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        raise ValueError(f"'{index_field}' must contain only integers")
    limit = {"cores": n_cores, "chips": n_chips, "links": n_links}[index_field]
    bad = [v for v in raw if v < 0 or (limit is not None and v >= limit)]
    if bad:
        rng = f"0..{limit - 1}" if limit is not None else ">= 0"
        raise ValueError(f"'{index_field}' index {bad[0]} out of range ({rng})")
    if len(set(raw)) != len(raw):
        raise ValueError(f"'{index_field}' contains duplicate indices")

    kwargs: dict[str, Any] = {index_field: tuple(raw)}
    for name in numbers:
        if name in d:
            v = d[name]
            top = _BOUNDS.get(name, MAX_FACTOR)
            if not _is_number(v) or not math.isfinite(v) or not 0 < v <= top:
                raise ValueError(f"'{name}' must be a number in (0, {top:g}], got {v!r}")
            kwargs[name] = float(v)
    if cls is TelemetryGlitch and "mode" in d:
        if d["mode"] not in GLITCH_MODES:
            raise ValueError(f"'mode' must be one of {', '.join(GLITCH_MODES)}, got {d['mode']!r}")
        kwargs["mode"] = d["mode"]

    at = d.get("at")
    if at is not None and (not _is_number(at) or not math.isfinite(at) or not 0 <= at <= MAX_SECONDS):
        raise ValueError(f"'at' must be simulated seconds in [0, {MAX_SECONDS:g}], got {at!r}")
    duration = d.get("duration")
    if duration is not None and (
        not _is_number(duration) or not math.isfinite(duration) or not 0 < duration <= MAX_SECONDS
    ):
        raise ValueError(f"'duration' must be seconds in (0, {MAX_SECONDS:g}], got {duration!r}")
    fault = cls(**kwargs)
    return FaultRequest(
        fault=fault,
        at=None if at is None else float(at),
        duration=None if duration is None else float(duration),
    )
