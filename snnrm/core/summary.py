"""The compact node summary each daemon publishes for the cluster-side planner and scheduler extender.

The extender must answer within the scheduler's timeout without calling any node, so each node's daemon
publishes what placement needs to know about it as one annotation on its Node object (:data:`ANNOTATION`), and
the controller watches Nodes and caches the decoded summaries. The summary is small enough to be cheap to watch
(about 3 KB for 16,384 cores):

* the mesh geometry (chips, routers per chip, cores per router, board columns), from which the controller
  rebuilds the node's :class:`~snnrm.core.topology.Topology` and so plans at core level;
* a bitmap of the cores that are free *now* (healthy and not allocated), zlib-compressed and base64-encoded;
* per chip: mean event-queue fill, the busiest link's utilisation, and measured event-throughput headroom.

Publishing is rate-limited (:func:`should_publish`): at most every ``min_interval`` and only when something
a placement reads changed (free or healthy cores, the geometry, or a chip's load by ``fill_delta``), plus a
heartbeat every ``max_interval`` so the controller can tell a quiet node from a dead one. The chip loads are
smoothed first (:class:`LoadSmoother`): the busiest link's utilisation is a raw per-frame reading, and a noisy
reading crossing ``fill_delta`` would otherwise patch the Node every ``min_interval``. So a fleet's steady-state
write rate is ``nodes / max_interval`` plus real changes (5,000 nodes: 17 patches/s), and at most
``nodes / min_interval`` when every node changes at once. Everything decoded here is untrusted
(:class:`SummaryError` names what was wrong).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from snnrm.core.placement import PlacementView
from snnrm.core.topology import BoolArray, ChipGeometry, FloatArray, IntArray, Topology

ANNOTATION = "snnrm.io/summary"
VERSION = 1
MAX_CORES = 1 << 16
"""A summary claiming more cores than this is garbage (a node advertises at most 16,384 per resource)."""
MAX_BYTES = 64 * 1024
"""Encoded summaries above this are refused: annotations share a 256 KiB budget per object."""


class SummaryError(ValueError):
    """A summary that cannot be decoded or is inconsistent."""


@dataclass(frozen=True, slots=True, eq=False)
class NodeSummary:
    """One node's placement-relevant state at ``time`` (the publisher's wall clock, Unix seconds)."""

    time: float
    chips: int
    cols: int
    rows: int
    cores_per_router: int
    board_cols: int
    free: BoolArray
    """(n_cores,) healthy and not allocated."""
    healthy: int
    """Healthy cores (allocated or not)."""
    chip_fill: FloatArray
    """(chips,) mean event-queue fill of the chip's cores, 0..1."""
    chip_link: FloatArray
    """(chips,) utilisation of the chip's busiest mesh link, 0..1."""
    chip_headroom_keps: FloatArray
    """(chips,) measured usable event throughput, KEPS."""
    nominal_keps: float = 1000.0
    queue_capacity: float = 256.0
    inter_chip_weight: float = field(kw_only=True)
    """Hops a chip crossing costs on this node: the hardware's own, as its daemon plans and remaps with."""

    @property
    def n_cores(self) -> int:
        return self.chips * self.cols * self.rows * self.cores_per_router

    @property
    def free_count(self) -> int:
        return int(np.count_nonzero(self.free))

    @property
    def geometry_key(self) -> tuple[int, int, int, int, int, float, float]:
        """Everything that decides the topology: equal keys share one :class:`Topology` object."""
        return (
            self.chips,
            self.cols,
            self.rows,
            self.cores_per_router,
            self.board_cols,
            self.nominal_keps,
            self.queue_capacity,
        )

    def topology(self) -> Topology:
        """The node's topology, rebuilt from the geometry (cache it by :attr:`geometry_key`)."""
        return Topology.grid(
            chips=self.chips,
            geometry=ChipGeometry(cols=self.cols, rows=self.rows, cores_per_router=self.cores_per_router),
            board_cols=self.board_cols,
            nominal_keps=self.nominal_keps,
            queue_capacity=self.queue_capacity,
        )

    def view(self, topology: Topology, reserved: BoolArray | None = None) -> PlacementView:
        """A :class:`PlacementView` for planning: per-chip fill and link load spread over the chip's cores."""
        free = self.free if reserved is None else self.free & ~reserved
        return PlacementView(
            topology,
            free,
            self.chip_fill[topology.chip_of],
            self.chip_link[topology.chip_of],
            self.inter_chip_weight,
        )

    # -- wire format -------------------------------------------------------------------------------------------

    def encode(self) -> str:
        bits = np.packbits(self.free.astype(np.uint8)).tobytes()
        body = {
            "v": VERSION,
            "t": round(self.time, 3),
            "g": [self.chips, self.cols, self.rows, self.cores_per_router, self.board_cols],
            "k": self.nominal_keps,
            "q": self.queue_capacity,
            "w": self.inter_chip_weight,
            "h": self.healthy,
            "free": base64.b64encode(zlib.compress(bits, 6)).decode(),
            "fill": [round(float(x), 3) for x in self.chip_fill],
            "link": [round(float(x), 3) for x in self.chip_link],
            "head": [round(float(x), 1) for x in self.chip_headroom_keps],
        }
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str) -> NodeSummary:
        if len(raw) > MAX_BYTES:
            raise SummaryError(f"summary is {len(raw)} bytes, more than {MAX_BYTES}")
        try:
            d = json.loads(raw)
        except ValueError as e:
            raise SummaryError(f"summary is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise SummaryError("summary must be a JSON object")
        if d.get("v") != VERSION:
            raise SummaryError(f"unsupported summary version {d.get('v')!r} (expected {VERSION})")
        g = d.get("g")
        if not (isinstance(g, list) and len(g) == 5 and all(_is_int(x) and x >= 1 for x in g)):
            raise SummaryError(f"geometry must be five positive integers, got {g!r}")
        chips, cols, rows, cpr, bcols = (int(x) for x in g)
        n = chips * cols * rows * cpr
        if n > MAX_CORES:
            raise SummaryError(f"summary claims {n} cores, more than {MAX_CORES}")
        want = (n + 7) // 8
        try:
            inflater = zlib.decompressobj()
            # Bounded: a small compressed string must not inflate into megabytes.
            bits = inflater.decompress(base64.b64decode(str(d.get("free", "")), validate=True), want + 1)
        except (binascii.Error, zlib.error, ValueError) as e:
            raise SummaryError(f"free-core bitmap is not base64 zlib data: {e}") from None
        if len(bits) != want or inflater.unconsumed_tail:
            raise SummaryError(f"free-core bitmap holds {len(bits) * 8} bits for {n} cores")
        free = np.unpackbits(np.frombuffer(bits, dtype=np.uint8))[:n].astype(np.bool_)
        return cls(
            time=_num(d.get("t"), "t", lo=0.0),
            chips=chips,
            cols=cols,
            rows=rows,
            cores_per_router=cpr,
            board_cols=bcols,
            free=free,
            healthy=int(_num(d.get("h"), "h", lo=0.0, hi=float(n))),
            chip_fill=_per_chip(d.get("fill"), "fill", chips, hi=1.0),
            chip_link=_per_chip(d.get("link"), "link", chips, hi=1.0),
            chip_headroom_keps=_per_chip(d.get("head"), "head", chips, hi=1e12),
            nominal_keps=_num(d.get("k", 1000.0), "k", lo=1e-9, hi=1e12),
            queue_capacity=_num(d.get("q", 256.0), "q", lo=1e-9, hi=1e12),
            inter_chip_weight=_num(d.get("w"), "w", lo=1.0, hi=1e6),
        )


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _num(x: Any, what: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or not lo <= x <= hi:
        raise SummaryError(f"{what} must be a finite number in [{lo:g}, {hi:g}], got {x!r}")
    return float(x)


def _per_chip(x: Any, what: str, chips: int, *, hi: float) -> FloatArray:
    if not isinstance(x, list) or len(x) != chips:
        raise SummaryError(f"{what} must list one number per chip ({chips})")
    return np.array([_num(v, what, lo=0.0, hi=hi) for v in x], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class _Layout:
    """What :func:`summarize` derives from a topology alone, computed once per topology (agents summarise
    every second, thousands of them in the fleet benchmark)."""

    cores_per_chip: FloatArray
    link_order: IntArray
    """Links sorted by the chip of their source router."""
    link_starts: IntArray
    """Start of each chip's run in ``link_order`` (chips without links have none)."""
    link_chips: IntArray
    board_cols: int
    nominal: float
    qcap: float


_LAYOUTS: dict[int, tuple[Topology, _Layout]] = {}


def _layout(t: Topology) -> _Layout:
    hit = _LAYOUTS.get(id(t))
    if hit is not None and hit[0] is t:
        return hit[1]
    chip_of_link = t.router_chip[t.link_src] if t.n_links else np.zeros(0, dtype=np.int64)
    order = np.argsort(chip_of_link, kind="stable")
    chips, starts = np.unique(chip_of_link[order], return_index=True)
    layout = _Layout(
        cores_per_chip=np.maximum(np.bincount(t.chip_of, minlength=t.n_chips), 1).astype(np.float64),
        link_order=order,
        link_starts=starts.astype(np.int64),
        link_chips=chips.astype(np.int64),
        board_cols=int(t.chip_pos[:, 0].max()) + 1,
        nominal=float(np.median(t.core_nominal_keps)) if t.n_cores else 1000.0,
        qcap=float(np.median(t.core_queue_capacity)) if t.n_cores else 256.0,
    )
    if len(_LAYOUTS) > 64:  # a process sees a handful of topologies; never grow without bound
        _LAYOUTS.clear()
    _LAYOUTS[id(t)] = (t, layout)
    return layout


def summarize(
    topology: Topology,
    *,
    now: float,
    free: BoolArray,
    healthy: BoolArray,
    queue_fill: FloatArray,
    link_utilization: FloatArray,
    chip_headroom_keps: FloatArray,
    inter_chip_weight: float,
) -> NodeSummary:
    """A summary of one node from its per-core and per-link arrays (NaN fill or load counts as full)."""
    t = topology
    lay = _layout(t)
    fill = np.asarray(queue_fill, dtype=np.float64)
    fill = np.clip(np.where(np.isnan(fill), 1.0, fill), 0.0, 1.0)
    chip_fill = np.bincount(t.chip_of, weights=fill, minlength=t.n_chips) / lay.cores_per_chip
    link = np.asarray(link_utilization, dtype=np.float64)
    link = np.clip(np.where(np.isnan(link), 1.0, link), 0.0, 1.0)
    chip_link = np.zeros(t.n_chips)
    if t.n_links:
        chip_link[lay.link_chips] = np.maximum.reduceat(link[lay.link_order], lay.link_starts)
    head = np.clip(np.nan_to_num(np.asarray(chip_headroom_keps, dtype=np.float64), nan=0.0), 0.0, None)
    g = t.geometry
    return NodeSummary(
        time=float(now),
        chips=t.n_chips,
        cols=g.cols,
        rows=g.rows,
        cores_per_router=g.cores_per_router,
        board_cols=lay.board_cols,
        free=np.asarray(free, dtype=np.bool_) & np.asarray(healthy, dtype=np.bool_),
        healthy=int(np.count_nonzero(healthy)),
        chip_fill=chip_fill,
        chip_link=chip_link,
        chip_headroom_keps=head,
        nominal_keps=lay.nominal,
        queue_capacity=lay.qcap,
        inter_chip_weight=float(inter_chip_weight),
    )


@dataclass(frozen=True, slots=True)
class PublishPolicy:
    """When a daemon re-publishes its summary."""

    min_interval: float = 5.0
    """Seconds between two publications at least: a 1,000-node cluster then writes at most 200 Node patches per
    second to the apiserver even when every node changes constantly (a churn burst, not the steady state)."""
    max_interval: float = 300.0
    """Seconds after which a summary is re-published even if nothing changed (the heartbeat). The kubelet's own
    ``nodeStatusReportFrequency`` default is also 5 minutes; 5,000 nodes then heartbeat 17 patches/s. A dead
    daemon is also seen sooner through its device plugin: the kubelet stops advertising its cores."""
    fill_delta: float = 0.1
    """A chip's smoothed mean queue fill or link load must move this much to count as a change."""
    load_tau: float = 10.0
    """Time constant (seconds) of the exponential smoothing of the chip loads before they are compared and
    published: noise averages out, a sustained step shows within a few min_interval periods."""
    settle_after: float = 30.0
    """Seconds after a daemon's first publication at which it publishes once more, unconditionally: the first
    summary carries one noisy reading, and by now the smoothed loads have settled (3 ``load_tau``). Without it,
    a first reading that was off by nearly ``fill_delta`` makes a later write at a random time."""
    stale_after: float = 900.0
    """Seconds after which the controller treats a summary as unknown: three missed heartbeats."""


def should_publish(prev: NodeSummary | None, new: NodeSummary, policy: PublishPolicy) -> bool:
    """True when ``new`` is worth a Node patch given the last published ``prev``."""
    if prev is None:
        return True
    age = new.time - prev.time
    if age >= policy.max_interval or age < 0:
        return True
    if age < policy.min_interval:
        return False
    if prev.geometry_key != new.geometry_key or prev.healthy != new.healthy:
        return True
    if not np.array_equal(prev.free, new.free):
        return True
    return bool(
        np.abs(prev.chip_fill - new.chip_fill).max(initial=0.0) >= policy.fill_delta
        or np.abs(prev.chip_link - new.chip_link).max(initial=0.0) >= policy.fill_delta
    )


@dataclass(slots=True)
class LoadSmoother:
    """Exponential smoothing of a node's per-chip loads over irregular sample times (time constant ``tau``).

    The node agent summarises once a second from readings that are partly raw (the busiest link in the last
    frame); placement wants the sustained load, not the last frame's, and a noisy reading must not count as a
    change. The first reading, and any after a change of chip count or a clock step back, is taken as is.
    """

    tau: float
    max_step: float = 1.0
    """Seconds one reading counts for at most (the agent's sync period): the noise is per reading, so a reading
    that comes late, from an agent starved of CPU, must not weigh more than one on time."""
    time: float = math.nan
    fill: FloatArray | None = None
    link: FloatArray | None = None

    def update(self, now: float, fill: FloatArray, link: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Fold the readings at ``now`` in; returns the smoothed (fill, link)."""
        dt = now - self.time
        if self.fill is None or self.link is None or self.fill.shape != fill.shape or not dt >= 0 or self.tau <= 0:
            self.fill, self.link = fill.copy(), link.copy()
        else:
            a = 1.0 - math.exp(-min(dt, self.max_step) / self.tau)
            self.fill = self.fill + a * (fill - self.fill)
            self.link = self.link + a * (link - self.link)
        self.time = now
        return self.fill, self.link

    def smooth(self, summary: NodeSummary) -> NodeSummary:
        """``summary`` with its chip loads smoothed (folding them in)."""
        fill, link = self.update(summary.time, summary.chip_fill, summary.chip_link)
        return replace(summary, chip_fill=fill.copy(), chip_link=link.copy())
