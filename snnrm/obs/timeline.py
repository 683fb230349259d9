"""What happened on this node, in order: health transitions and stage decisions with their reasons.

The status page's timeline (``GET /api/v1/events``) reads one :class:`Timeline` per daemon. It is filled by the
components that decide, never by the page: :class:`~snnrm.obs.transitions.HealthTransitions` records each change
of the device lists the kubelet sees (with the reasons of the cores that turned unhealthy), and the node's
reallocator records, through :class:`~snnrm.cluster.timeline.TimelineReporter`, each stage that degraded,
recovered, was remapped (from which cores to which, and why) or could not be moved.

Memory is bounded: the newest :attr:`Timeline.capacity` entries are kept. A decision repeated while nothing
changes (a remap deferred by the job's cooldown, every half second) updates the entry it repeats instead of
pushing older history out: the entry counts ``repeats`` and carries the ``last`` time it was seen.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Literal, NotRequired, TypedDict

Kind = Literal["health", "stage", "reallocation", "fault"]
"""``health``: devices the kubelet sees turned unhealthy or healthy; ``stage``: a stage's cores degraded or
recovered; ``reallocation``: a live remap, or why none happened; ``fault``: an injected simulator fault."""

MAX_IDS: Final = 16
"""Device IDs spelled out per entry; ``count`` still says how many there were."""
_MERGE_LOOKBACK: Final = 32
"""How far back a repeated entry is looked for (health changes may interleave with a repeating decision)."""


class TimelineEntryJSON(TypedDict):
    """One entry as ``GET /api/v1/events`` carries it (keys in this order; absent optional fields left out)."""

    seq: int
    time: float
    kind: Kind
    action: str
    message: str
    reasons: list[str]
    count: int
    repeats: int
    last: float
    resource: NotRequired[str]
    job: NotRequired[str]
    stage: NotRequired[int]
    pod: NotRequired[str]
    devices: NotRequired[list[str]]
    from_devices: NotRequired[list[str]]


class EventsBody(TypedDict):
    """``GET /api/v1/events``."""

    capacity: int
    dropped: int
    events: list[TimelineEntryJSON]


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One thing that happened."""

    seq: int
    """Increasing number of the entry (a client asks for what is newer than the last it saw)."""
    time: float
    """Unix seconds when it first happened."""
    kind: Kind
    action: str
    """What happened, one word: ``unhealthy``, ``healthy``, ``degraded``, ``recovered``, ``remapped``,
    ``deferred``, ``unavailable``, ``not-opted-in``, ``would-remap``, ``injected``."""
    message: str
    """A sentence for a person."""
    reasons: tuple[str, ...] = ()
    """Why: health reason names with counts (``failed=2``) or stage reasons (``queue-saturated``)."""
    resource: str | None = None
    devices: tuple[str, ...] = ()
    """Devices concerned (up to :data:`MAX_IDS`): the cores that changed, or a remapped stage's new cores."""
    count: int = 0
    """How many devices changed (``devices`` may be truncated)."""
    job: str | None = None
    stage: int | None = None
    pod: str | None = None
    from_devices: tuple[str, ...] = ()
    """A remap's cores before the move (up to :data:`MAX_IDS`)."""
    repeats: int = 1
    last: float = 0.0
    """Unix seconds when it was last seen (equal to ``time`` unless it repeated)."""

    def as_json(self) -> TimelineEntryJSON:
        """The entry as ``/api/v1/events`` carries it (absent optional fields are left out)."""
        out: TimelineEntryJSON = {
            "seq": self.seq,
            "time": round(self.time, 3),
            "kind": self.kind,
            "action": self.action,
            "message": self.message,
            "reasons": list(self.reasons),
            "count": self.count,
            "repeats": self.repeats,
            "last": round(self.last, 3),
        }
        if self.resource is not None:
            out["resource"] = self.resource
        if self.job is not None:
            out["job"] = self.job
        if self.stage is not None:
            out["stage"] = self.stage
        if self.pod is not None:
            out["pod"] = self.pod
        if self.devices:
            out["devices"] = list(self.devices)
        if self.from_devices:
            out["from_devices"] = list(self.from_devices)
        return out


@dataclass(slots=True, eq=False)
class Timeline:
    """A bounded, ordered record of :class:`TimelineEntry` (see the module docstring)."""

    capacity: int = 200
    """Entries kept: a demo's whole story, or the last hours of a quiet node."""
    clock: Callable[[], float] = time.time
    _entries: deque[TimelineEntry] = field(init=False)
    _seq: int = field(init=False, default=0)
    dropped: int = field(init=False, default=0)
    """Entries pushed out by newer ones since start."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("a timeline keeps at least one entry")
        self._entries = deque(maxlen=self.capacity)

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        kind: Kind,
        action: str,
        message: str,
        *,
        reasons: Sequence[str] = (),
        resource: str | None = None,
        devices: Sequence[str] = (),
        count: int | None = None,
        job: str | None = None,
        stage: int | None = None,
        pod: str | None = None,
        from_devices: Sequence[str] = (),
        at: float | None = None,
    ) -> TimelineEntry:
        """Record something that happened now (or ``at``); a repeat of a recent identical entry is folded into it."""
        now = self.clock() if at is None else at
        # Only the latest entry about the same subject (stage, or resource) can be repeated: if that subject did
        # something else since, this is news (a flap), not a repeat.
        subject = (job, stage, pod, resource)
        for i in range(len(self._entries) - 1, max(-1, len(self._entries) - 1 - _MERGE_LOOKBACK), -1):
            e = self._entries[i]
            if (e.job, e.stage, e.pod, e.resource) != subject:
                continue
            if (e.kind, e.action, e.message) == (kind, action, message):
                merged = replace(e, repeats=e.repeats + 1, last=now)
                self._entries[i] = merged
                return merged
            break
        self._seq += 1
        if len(self._entries) == self.capacity:
            self.dropped += 1
        entry = TimelineEntry(
            seq=self._seq,
            time=now,
            kind=kind,
            action=action,
            message=message,
            reasons=tuple(reasons),
            resource=resource,
            devices=tuple(devices[:MAX_IDS]),
            count=len(devices) if count is None else count,
            job=job,
            stage=stage,
            pod=pod,
            from_devices=tuple(from_devices[:MAX_IDS]),
            last=now,
        )
        self._entries.append(entry)
        return entry

    def entries(self) -> list[TimelineEntry]:
        """The kept entries, oldest first."""
        return list(self._entries)

    def body(self) -> EventsBody:
        """``GET /api/v1/events``: the kept entries oldest first, with how many were pushed out."""
        return {
            "capacity": self.capacity,
            "dropped": self.dropped,
            "events": [e.as_json() for e in self._entries],
        }
