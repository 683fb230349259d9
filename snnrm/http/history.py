"""A rolling window of node-level series for the status page's time plots (``GET /api/v1/history``).

The page wants "what happened over the last two minutes" without a Prometheus next to it, so the daemon keeps a
small ring buffer: one row per series, one column per second, in a single preallocated numpy array. Sampling
reduces the per-core arrays the telemetry pipeline already maintains to a handful of numbers, so it costs a few
vector reductions per second whatever the core count, and memory is fixed (10 series x 120 samples).

Beside the node-level series, :class:`HeatHistory` keeps the heat map's past (``GET /api/v1/heat``): per core, the
worst value of each heat-map metric in every ``bucket`` seconds of the last ``buckets`` buckets. A hot spot that a
remap ends within seconds stays visible there for minutes (its peak and the frames it shows in), where the live
frame is dark again at once.

:meth:`StatusHistory.run` is a root task: the daemon's TaskGroup owns it (``tg.create_task(history.run(),
name="status-history")``), like every other long-running loop; nothing here spawns tasks of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.topology import FloatArray
from snnrm.node import NodeService

SERIES: Final = (
    "healthy_cores",
    "allocatable_cores",
    "healthy_blocks",
    "effective_keps",
    "queue_fill_mean",
    "queue_fill_max",
    "efficiency_mean",
    "efficiency_min",
    "spike_transfer_ratio",
    "events_processed_per_s",
    "events_dropped_per_s",
)
"""Row order of the ring buffer. ``spike_transfer_ratio`` is node-wide delivered/sent spikes (traffic-weighted),
which shows a loss on a few busy cores that the per-core mean dilutes."""


def node_sample(node: NodeService) -> FloatArray:
    """One column of the ring buffer: the node's state now, reduced over cores (NaN-safe)."""
    m = node.monitor
    r = m.rates.rates
    fill = np.nan_to_num(m.queue_fill, nan=0.0)
    eff = np.nan_to_num(r.efficiency, nan=1.0)
    sent = float(np.nansum(r.spikes_sent_rate))
    delivered = float(np.nansum(r.spikes_delivered_rate))
    devices = node.devices()
    blocks = devices.get(EVENT_THROUGHPUT)
    cores = devices.get(NEURON_CORE)
    values = {
        "healthy_cores": int(np.count_nonzero(m.core_healthy)),
        "allocatable_cores": cores.healthy_count if cores is not None else np.nan,
        "healthy_blocks": blocks.healthy_count if blocks is not None else np.nan,
        "effective_keps": float(np.nansum(m.effective_keps())),
        "queue_fill_mean": float(fill.mean()) if fill.size else np.nan,
        "queue_fill_max": float(fill.max()) if fill.size else np.nan,
        "efficiency_mean": float(eff.mean()) if eff.size else np.nan,
        "efficiency_min": float(eff.min()) if eff.size else np.nan,
        "spike_transfer_ratio": min(delivered / sent, 1.0) if sent > 0 else 1.0,
        "events_processed_per_s": float(np.nansum(r.events_processed_rate)),
        "events_dropped_per_s": float(np.nansum(r.events_dropped_rate)),
    }
    return np.array([values[s] for s in SERIES], dtype=np.float64)


HeatMetric = Literal["queue_fill", "load", "efficiency"]
HEAT_METRICS: Final[tuple[HeatMetric, ...]] = ("queue_fill", "load", "efficiency")
"""What the heat map colours cores by, in the order :class:`HeatHistory` stores them."""
HEAT_WORST: Final[dict[HeatMetric, Literal["max", "min"]]] = {"queue_fill": "max", "load": "max", "efficiency": "min"}
"""Which end of each metric is the alarming one, kept per bucket: the fullest queue, the busiest core, the lowest
spike-transfer efficiency."""


def core_load(node: NodeService) -> FloatArray:
    """Per core: events processed per second over the core's nominal rate (0 where the nominal rate is 0)."""
    nominal = node.topology.core_nominal_keps * 1e3
    rate = node.monitor.rates.rates.events_processed_rate
    return np.divide(rate, nominal, out=np.zeros(node.topology.n_cores), where=nominal > 0)


def heat_sample(node: NodeService) -> dict[HeatMetric, FloatArray]:
    """The heat map's metrics per core now (what ``/api/v1/devices`` carries for the live frame)."""
    m = node.monitor
    return {"queue_fill": m.queue_fill, "load": core_load(node), "efficiency": m.rates.rates.efficiency}


@dataclass(frozen=True, slots=True, eq=False)
class HeatWindow:
    """One metric's past: the kept buckets oldest first, and the worst value per core over all of them."""

    t: FloatArray
    """(k,) Unix second at which each bucket starts."""
    frames: FloatArray
    """(k, n_cores) the worst value per core within each bucket (NaN: no reading in it)."""
    peak: FloatArray
    """(n_cores,) the worst value per core over every kept bucket."""


@dataclass(slots=True, eq=False)
class HeatHistory:
    """Per-core worst values of :data:`HEAT_METRICS`, one frame per ``bucket`` seconds, the last ``buckets`` kept.

    Memory is fixed: 3 metrics x ``buckets`` x cores float32 (6 MB at 16k cores and 30 buckets).
    """

    n_cores: int
    bucket: float = 10.0
    """Seconds per frame: a hot spot that lasts three seconds still owns a frame."""
    buckets: int = 30
    """Frames kept: five minutes at 10 s."""
    _start: FloatArray = field(init=False)
    _frames: npt.NDArray[np.float32] = field(init=False)
    _cur: int = field(init=False, default=-1)
    _count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.buckets < 1 or not self.bucket > 0:
            raise ValueError("heat history needs buckets >= 1 and bucket > 0")
        self._start = np.full(self.buckets, np.nan)
        self._frames = np.full((len(HEAT_METRICS), self.buckets, self.n_cores), np.nan, dtype=np.float32)

    def __len__(self) -> int:
        return self._count

    def add(self, t: float, values: dict[HeatMetric, FloatArray]) -> None:
        """Fold one reading per core into the bucket of ``t`` (opening a new bucket, over the oldest, when due)."""
        start = float(np.floor(t / self.bucket) * self.bucket)
        if self._cur < 0 or start > self._start[self._cur]:
            self._cur = (self._cur + 1) % self.buckets
            self._start[self._cur] = start
            self._frames[:, self._cur, :] = np.nan
            self._count = min(self._count + 1, self.buckets)
        for k, name in enumerate(HEAT_METRICS):
            worst = np.fmax if HEAT_WORST[name] == "max" else np.fmin
            row = self._frames[k, self._cur]
            # fmax/fmin ignore NaN: an unknown reading never hides a known one, and never counts as one.
            worst(row, np.asarray(values[name], dtype=np.float32), out=row)

    def window(self, metric: HeatMetric) -> HeatWindow:
        """A copy of ``metric``'s kept buckets, oldest first, with the per-core worst over all of them."""
        k = HEAT_METRICS.index(metric)
        order = (self._cur - self._count + 1 + np.arange(self._count)) % self.buckets
        frames = self._frames[k, order].astype(np.float64)
        worst = np.fmax if HEAT_WORST[metric] == "max" else np.fmin
        peak = worst.reduce(frames, axis=0) if self._count else np.full(self.n_cores, np.nan)
        return HeatWindow(t=self._start[order].copy(), frames=frames, peak=peak)


@dataclass(frozen=True, slots=True, eq=False)
class HistoryWindow:
    """The filled part of the ring, oldest first."""

    t: FloatArray
    """(n,) wall-clock time of each sample, Unix seconds (the browser turns it into "seconds ago")."""
    values: FloatArray
    """(len(SERIES), n) one row per series."""


@dataclass(slots=True, eq=False)
class StatusHistory:
    """Ring buffer of :data:`SERIES`, appended to once per ``period`` by :meth:`run`."""

    node: NodeService
    period: float = 1.0
    """Seconds between samples: one per second is what a person watching a plot can follow."""
    window: int = 120
    """Samples kept: two minutes at 1 s, long enough to see the baseline before a fault and the recovery after."""
    clock: Callable[[], float] = time.time
    heat: HeatHistory = field(init=False)
    """The heat map's past, sampled with the series."""
    _t: FloatArray = field(init=False)
    _values: FloatArray = field(init=False)
    _next: int = field(init=False, default=0)
    _count: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.window < 1 or not self.period > 0:
            raise ValueError("history needs window >= 1 and period > 0")
        self._t = np.full(self.window, np.nan)
        self._values = np.full((len(SERIES), self.window), np.nan)
        self.heat = HeatHistory(self.node.topology.n_cores)

    def __len__(self) -> int:
        return self._count

    def append(self, t: float, column: FloatArray) -> None:
        """Store one sample, overwriting the oldest once the ring is full."""
        self._t[self._next] = t
        self._values[:, self._next] = column
        self._next = (self._next + 1) % self.window
        self._count = min(self._count + 1, self.window)

    def sample(self) -> None:
        """Append the node's state now (series and heat map)."""
        now = self.clock()
        self.append(now, node_sample(self.node))
        self.heat.add(now, heat_sample(self.node))

    def snapshot(self) -> HistoryWindow:
        """A copy of the filled part, oldest first (safe to serialise after the ring moves on)."""
        start = (self._next - self._count) % self.window
        order = (start + np.arange(self._count)) % self.window
        return HistoryWindow(t=self._t[order], values=self._values[:, order])

    async def run(self) -> None:
        """Root task: sample every ``period`` until cancelled, starting once the first telemetry frame is in.

        Waiting for the node's ``ready`` event keeps the pre-telemetry defaults (every core healthy, zero
        rates) out of the plots. A slow tick is not caught up with a burst; the cadence resumes from now.
        """
        await self.node.ready.wait()
        next_due = time.monotonic()
        while True:
            self.sample()
            next_due += self.period
            delay = next_due - time.monotonic()
            if delay < 0:
                next_due = time.monotonic()
                delay = 0.0
            await asyncio.sleep(delay)
