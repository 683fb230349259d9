"""What a backend reports: telemetry frames (arrays indexed by core) and hard-fault events."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True, eq=False)
class TelemetryFrame:
    """One sample of every core and link, as the hardware counters read at ``timestamp``.

    Counters are cumulative (like hardware counters) so that a missed sample loses no events; rates are
    derived downstream over windows. Values are *untrusted*: NaN, negative or stale entries are possible and
    are validated by the telemetry pipeline, never here.
    """

    timestamp: float
    """Seconds on the backend's clock (monotonic within one backend)."""
    queue_depth: FloatArray
    """(n_cores,) events waiting in each core's input queue at sample time."""
    events_in: FloatArray
    """(n_cores,) cumulative events that arrived at each core."""
    events_processed: FloatArray
    """(n_cores,) cumulative events each core processed."""
    events_dropped: FloatArray
    """(n_cores,) cumulative events dropped at each core (queue overflow or failure)."""
    spikes_sent: FloatArray
    """(n_cores,) cumulative spikes each core emitted towards other cores."""
    spikes_delivered: FloatArray
    """(n_cores,) cumulative spikes emitted by each core that reached their destination."""
    link_utilization: FloatArray
    """(n_links,) load of each directed mesh link over the last sample interval, 0..1 of capacity."""
    core_failed: BoolArray
    """(n_cores,) hardware reports the core as failed."""
    link_failed: BoolArray
    """(n_links,) hardware reports the link as failed."""


class FaultKind(Enum):
    """Hard faults that hardware pushes as events (not found by polling)."""

    CORE = "core"
    LINK = "link"


@dataclass(frozen=True, slots=True)
class HardFault:
    """A core or link failed (``failed=True``) or came back (``failed=False``)."""

    kind: FaultKind
    index: int
    """Global core index, or link index for link faults."""
    failed: bool
    timestamp: float
    """Backend clock at which the hardware raised it (for fault-to-report latency)."""
