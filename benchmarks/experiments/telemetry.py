"""What the resource manager reads: the simulator's counters with noise, read out late.

Every policy that reads telemetry (snnrm, its ablation and the reactive baseline) gets the same treatment: each
core's counter increments are scaled by one factor ``1 + noise * N(0, 1)`` per core and frame (clipped at zero:
the counters of a core are read together, so a late read inflates all of them alike and ratios such as transfer
efficiency stay exact), each queue depth and link load by its own such factor, and a frame
reaches :meth:`snnrm.core.monitor.NodeMonitor.observe` ``delay`` seconds after its sample time. Readings the
hardware could not give (NaN from a telemetry glitch) stay NaN; a counter resumes from its last good value, so
the monitor sees a gap, not a jump.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from snnrm.core.telemetry import TelemetryFrame

FloatArray = npt.NDArray[np.float64]

_COUNTERS = ("events_in", "events_processed", "events_dropped", "spikes_sent", "spikes_delivered")


@dataclass(eq=False)
class NoisyTelemetry:
    """Noise on every reading and a fixed read-out delay (see the module docstring)."""

    noise: float
    delay: float
    rng: np.random.Generator
    _last: dict[str, FloatArray] = field(default_factory=dict)
    _out: dict[str, FloatArray] = field(default_factory=dict)
    _queue: deque[TelemetryFrame] = field(default_factory=deque)

    def _scale(self, shape: tuple[int, ...]) -> FloatArray:
        out: FloatArray = np.maximum(1.0 + self.noise * self.rng.standard_normal(shape), 0.0)
        return out

    def perturb(self, f: TelemetryFrame) -> TelemetryFrame:
        """The frame as read: noisy increments on cumulative counters, noisy gauges."""
        changes: dict[str, FloatArray] = {}
        jitter = self._scale(np.shape(f.events_in))
        for key in _COUNTERS:
            raw = np.asarray(getattr(f, key), dtype=np.float64)
            ok = np.isfinite(raw) & (raw >= 0)
            last = self._last.get(key)
            out = self._out.get(key)
            if last is None or out is None:
                last = np.where(ok, raw, 0.0)
                out = last.copy()
            else:
                delta = np.where(ok, np.maximum(raw - last, 0.0), 0.0)
                out = out + delta * jitter
                last = np.where(ok, raw, last)
            self._last[key], self._out[key] = last, out
            changes[key] = np.where(ok, out, raw)  # a glitched reading stays what the hardware gave
        q = np.asarray(f.queue_depth, dtype=np.float64)
        changes["queue_depth"] = q * self._scale(q.shape)
        u = np.asarray(f.link_utilization, dtype=np.float64)
        changes["link_utilization"] = np.clip(u * self._scale(u.shape), 0.0, 1.0)
        return replace(
            f,
            queue_depth=changes["queue_depth"],
            events_in=changes["events_in"],
            events_processed=changes["events_processed"],
            events_dropped=changes["events_dropped"],
            spikes_sent=changes["spikes_sent"],
            spikes_delivered=changes["spikes_delivered"],
            link_utilization=changes["link_utilization"],
        )

    def push(self, f: TelemetryFrame) -> None:
        """A frame sampled now (its timestamp is the sample time)."""
        self._queue.append(self.perturb(f))

    def due(self, now: float) -> list[TelemetryFrame]:
        """Frames whose read-out has completed by ``now``, oldest first."""
        out = []
        while self._queue and self._queue[0].timestamp + self.delay <= now + 1e-9:
            out.append(self._queue.popleft())
        return out
