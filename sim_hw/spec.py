"""Machine descriptions: what a chip looks like and how fast its parts are.

A :class:`MachineSpec` is plain, frozen data read from a YAML preset in ``sim_hw/presets/`` (each preset cites the
published figures it uses and marks derived or assumed ones). The geometry fields (``cols``, ``rows``,
``cores_per_router``, ``board_cols``) follow the same index conventions as ``snnrm.core.topology`` so that the
daemon's simulator backend maps cores, routers and links 1:1 without translation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
"""Where the shipped YAML presets live (package data)."""


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """Static description of a node's neuromorphic machine: identical chips tiled on a board grid."""

    name: str
    """Preset name (``loihi2``, ``spinnaker2``, ``akida`` or a custom one)."""
    chips: int
    """Chips on the node."""
    cols: int
    """Routers along x on one chip."""
    rows: int
    """Routers along y on one chip."""
    cores_per_router: int
    """Cores sharing one router (a core group); 1 on Loihi 2, 4 on a SpiNNaker 2 quad-PE or an Akida node."""
    core_service_rate: float
    """Events (incoming spike messages) per second one core can process."""
    core_queue_capacity: float
    """Depth of a core's event input queue, in events; what happens beyond it is ``overflow``."""
    link_capacity: float
    """Spike messages per second one directed on-chip mesh link carries."""
    inter_chip_link_capacity: float
    """Spike messages per second one directed chip-to-chip link carries."""
    hop_latency: float
    """Seconds per on-chip router hop."""
    inter_chip_hop_latency: float
    """Seconds per chip-to-chip hop."""
    neurons_per_core: int = 256
    """Neurons a workload maps onto one core (used by :mod:`sim_hw.networks` to size stages)."""
    synapses_per_core: int = 0
    """Synapses one core stores (0: not published); ``snnrm job plan`` sizes a stage by neurons or synapses,
    whichever binds."""
    board_cols: int = 0
    """Chip columns on the board grid; 0 means ``ceil(sqrt(chips))`` (row-major tiling, as snnrm's topology)."""
    overflow: str = "drop"
    """What a full input queue does: ``drop`` (the router discards what does not fit, as SpiNNaker's router after
    a wait) or ``backpressure`` (flow control: the senders stall and nothing is lost, as on Loihi's mesh)."""
    synops_per_event: float = 0.0
    """Synaptic operations one incoming event triggers on its core (the fan-out into the core's neurons);
    0: not modelled, synaptic energy reported as 0."""
    energy_per_synop: float = 0.0
    """Joules per synaptic operation (0: not published for this chip)."""
    energy_per_hop: float = 0.0
    """Joules per spike message per on-chip router hop (0: not published)."""
    energy_per_inter_chip_hop: float = 0.0
    """Joules per spike message per chip-to-chip hop (0: not published)."""
    barrier_latency: float = 0.0
    """Seconds of the barrier that closes each timestep on chips whose cores synchronise timesteps (Loihi);
    0 where cores run unsynchronised (SpiNNaker's per-core timer ticks, Akida's event flow)."""

    def __post_init__(self) -> None:
        for name in ("chips", "cols", "rows", "cores_per_router", "neurons_per_core"):
            if getattr(self, name) < 1:
                raise ValueError(f"MachineSpec.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in sorted(_FLOAT_FIELDS):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"MachineSpec.{name} must be a finite number > 0, got {v!r}")
        if self.synapses_per_core < 0:
            raise ValueError("MachineSpec.synapses_per_core must be >= 0")
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"MachineSpec.overflow must be one of {', '.join(OVERFLOW_MODES)}, got {self.overflow!r}")
        for name in (*sorted(_ENERGY_FIELDS), "barrier_latency"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"MachineSpec.{name} must be a finite number >= 0, got {v!r}")
        if self.board_cols < 0:
            raise ValueError("MachineSpec.board_cols must be >= 0")
        if self.board_cols == 0:
            object.__setattr__(self, "board_cols", math.ceil(math.sqrt(self.chips)))

    @property
    def routers_per_chip(self) -> int:
        """Routers on one chip."""
        return self.cols * self.rows

    @property
    def cores_per_chip(self) -> int:
        """Neuron cores on one chip."""
        return self.cols * self.rows * self.cores_per_router

    @property
    def n_cores(self) -> int:
        """Neuron cores on the node."""
        return self.chips * self.cores_per_chip

    @property
    def n_routers(self) -> int:
        """Routers on the node."""
        return self.chips * self.routers_per_chip

    @property
    def board_rows(self) -> int:
        """Chip rows on the board grid (the last one may be partly filled)."""
        return -(-self.chips // self.board_cols)


OVERFLOW_MODES = ("drop", "backpressure")
"""Values of :attr:`MachineSpec.overflow`."""

_FLOAT_FIELDS = frozenset(
    {
        "core_service_rate",
        "core_queue_capacity",
        "link_capacity",
        "inter_chip_link_capacity",
        "hop_latency",
        "inter_chip_hop_latency",
    }
)


_ENERGY_FIELDS = frozenset({"synops_per_event", "energy_per_synop", "energy_per_hop", "energy_per_inter_chip_hop"})


def factorise(routers: int, aspect: float) -> tuple[int, int]:
    """``(cols, rows)`` with ``cols * rows == routers`` whose cols/rows ratio is closest to ``aspect``.

    Ratios are compared on a log scale; ties go to the squarer shape (128 at aspect 2 -> 16x8, 64 -> 8x8,
    32 -> 8x4, 16 -> 4x4); a prime count becomes ``n x 1``.
    """
    if routers < 1:
        raise ValueError(f"need at least one router, got {routers}")
    target = math.log(aspect)
    best: tuple[float, float, int, int] | None = None
    for rows in range(1, routers + 1):
        if routers % rows:
            continue
        cols = routers // rows
        r = math.log(cols / rows)
        key = (round(abs(r - target), 9), abs(r), cols, rows)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[2], best[3]


def preset_names() -> tuple[str, ...]:
    """Names of the presets shipped in ``sim_hw/presets``."""
    return tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


def _read_preset(name: str) -> dict[str, Any]:
    if name.endswith((".yaml", ".yml")) or "/" in name:
        text = Path(name).read_text(encoding="utf-8")
    else:
        res = PRESET_DIR / f"{name}.yaml"
        if not res.is_file():
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
        text = res.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"preset {name!r} is not a YAML mapping")  # noqa: TRY004 (bad file content)
    return data


def load_preset(name: str, chips: int | None = None, cores_per_chip: int | None = None) -> MachineSpec:
    """Load a preset by name (or from a YAML path) and optionally override the chip count and chip size.

    With ``cores_per_chip``, the chip keeps the preset's ``cores_per_router`` when it divides the count (else 1)
    and the routers are laid out by :func:`factorise` at the preset's aspect ratio.
    """
    data = _read_preset(name)
    known = {f.name for f in fields(MachineSpec)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"preset {name!r} has unknown keys: {', '.join(unknown)}")
    data.setdefault("name", Path(name).stem)
    for key in (_FLOAT_FIELDS | _ENERGY_FIELDS | {"barrier_latency"}) & set(data):
        try:
            data[key] = float(data[key])
        except (TypeError, ValueError):
            raise ValueError(f"preset {name!r}: {key} must be a number, got {data[key]!r}") from None
    try:
        spec = MachineSpec(**data)
    except TypeError as e:
        raise ValueError(f"preset {name!r} is incomplete: {e}") from e
    if chips is not None:
        if chips < 1:
            raise ValueError(f"chips must be >= 1, got {chips}")
        spec = replace(spec, chips=chips, board_cols=0)  # re-tile the new chip count near-square
    if cores_per_chip is not None:
        if cores_per_chip < 1:
            raise ValueError(f"cores_per_chip must be >= 1, got {cores_per_chip}")
        cpr = spec.cores_per_router if cores_per_chip % spec.cores_per_router == 0 else 1
        cols, rows = factorise(cores_per_chip // cpr, spec.cols / spec.rows)
        spec = replace(spec, cols=cols, rows=rows, cores_per_router=cpr)
    return spec
