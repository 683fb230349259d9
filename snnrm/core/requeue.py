"""Pods the extender turned away for lack of free cores, to hand back to the scheduler when a node has room again.

The kube-scheduler retries an unschedulable pod only when a cluster event could make it schedulable. A pod the
extender rejected is retried on the next Node event; when the cores come back, two arrive close together: the
kubelet's new allocatable and the node summary's annotation. If the scheduler's retry on the annotation event
reaches the extender before the controller's own watch has applied that annotation (both watch the same Node),
the extender answers from the old summary, the pod goes back to the unschedulable queue, and no further event
comes: the scheduler flushes it only after ``podMaxInUnschedulablePodsDuration`` (5 min). That happened in the
real-node tests (a pod stayed Pending for the whole minute after every core had come back).

So the extender records whom it turned away for lack of cores on which nodes (:meth:`TurnedAway.record`), and
when a newer summary of one of those nodes has room for a pod (:meth:`TurnedAway.due`), the controller touches the
pod (an annotation), which is a Pod update: the scheduler moves it back to its active queue. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

REQUESTED_AT = "snnrm.io/requeued-at"
"""Annotation the controller sets on a pod it hands back to the scheduler (the time, Unix seconds)."""
REQUEUE_TTL_S = 300.0
"""After the scheduler's ``podMaxInUnschedulablePodsDuration`` (5 min) it retries the pod by itself."""
MAX_PODS = 10_000
"""Bound on remembered pods (the oldest go first): a flood of unschedulable pods must not grow the controller."""


@dataclass(frozen=True, slots=True)
class Turned:
    """One pod the extender turned away for lack of free cores."""

    namespace: str
    name: str
    uid: str
    cores: int
    nodes: frozenset[str]
    """Nodes it failed on for lack of cores (not for a stale summary or a plan elsewhere)."""
    at: float


@dataclass(slots=True)
class TurnedAway:
    """The pods to hand back to the scheduler when a node they were turned away from has room (see the module)."""

    ttl: float = REQUEUE_TTL_S
    max_pods: int = MAX_PODS
    _pods: dict[tuple[str, str], Turned] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._pods)

    def record(self, namespace: str, name: str, uid: str, cores: int, nodes: Iterable[str], now: float) -> None:
        """The extender turned the pod away on ``nodes`` for lack of ``cores`` free cores (replaces any earlier
        record of it; no nodes forgets it: it passed somewhere)."""
        key = (namespace, name)
        self._pods.pop(key, None)  # re-inserted last: dict order is age order
        short = frozenset(nodes)
        if not short or cores <= 0:
            return
        self._pods[key] = Turned(namespace, name, uid, cores, short, now)
        while len(self._pods) > self.max_pods:
            del self._pods[next(iter(self._pods))]

    def due(self, node: str, available: int, now: float) -> list[Turned]:
        """Pods turned away on ``node`` that its ``available`` cores would now fit, oldest first; they are
        forgotten (the scheduler will ask the extender again). Records older than ``ttl`` are dropped."""
        out: list[Turned] = []
        for key, t in list(self._pods.items()):
            if now - t.at > self.ttl:
                del self._pods[key]
            elif node in t.nodes and t.cores <= available:
                del self._pods[key]
                out.append(t)
        return out

    def forget(self, namespace: str, name: str) -> None:
        self._pods.pop((namespace, name), None)
