"""Matching a kubelet admission to the planned pod it is for, so GetPreferredAllocation follows the plan.

The device plugin API carries no pod identity: GetPreferredAllocation gets the candidate IDs and a size, Allocate
the chosen IDs. The node knows the plans of the stage pods bound to it (``snnrm.io/planned-cores``) and guesses:

* candidates are planned pods bound here that the kubelet has not admitted yet, whose planned core count equals
  the request's size and whose planned cores are all among the available IDs;
* the earliest-created candidate wins (the kubelet admits pods in creation order within a sync batch), and is
  *claimed* for ``claim_ttl`` seconds so a second admission in the same batch takes the next one;
* Allocate confirms: the pod whose planned cores equal the allocated set is marked admitted.

Where this guess can fail (all fail safe: the kubelet still gets valid, healthy, free cores): two pending planned
pods of the same size admitted out of creation order swap plans (each still gets a compact, planned set); a
planned core taken meanwhile by another pod makes the plan unmatchable, and the ordinary policy chooses near the
rest; a kubelet that restarts mid-admission may admit again and the claim only expires. DRA removes the guess:
there the claim names the pod.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import structlog

from snnrm.core.topology import IntArray

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class PlannedPod:
    namespace: str
    pod: str
    created: str
    cores: IntArray
    """Planned global core indices, ascending."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.pod)


@dataclass(eq=False)
class PlanHints:
    """:class:`snnrm.kubelet.allocator.PlacementHints` over the plans of the pods bound to this node."""

    claim_ttl: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _plans: dict[tuple[str, str], PlannedPod] = field(default_factory=dict)
    _claimed: dict[tuple[str, str], float] = field(default_factory=dict)
    _admitted: set[tuple[str, str]] = field(default_factory=set)
    matched: int = 0
    mismatched: int = 0
    _update: asyncio.Event = field(default_factory=asyncio.Event)

    def set_plans(self, plans: Iterable[PlannedPod], *, admitted: Iterable[tuple[str, str]] = ()) -> None:
        """The pending plans now (pods bound here with a plan); ``admitted`` are pods the kubelet already
        admitted (from PodResources)."""
        self._plans = {p.key: p for p in plans}
        self._admitted = {k for k in self._admitted if k in self._plans} | set(admitted)
        self._claimed = {k: t for k, t in self._claimed.items() if k in self._plans}
        # Wake admissions waiting for the watch to catch up (refreshed), then arm a new event for the next refresh.
        self._update.set()
        self._update = asyncio.Event()

    async def refreshed(self) -> None:
        """Return when the plans are next refreshed (callers bound the wait with ``asyncio.timeout``)."""
        await self._update.wait()

    def matches(self, available: IntArray, size: int) -> bool:
        """A pending, unclaimed plan of ``size`` cores lies within ``available`` (claims nothing)."""
        return self._candidate(np.asarray(available, dtype=np.int64), size) is not None

    def _candidate(self, avail: IntArray, size: int) -> PlannedPod | None:
        now = self.clock()
        for p in sorted(self._plans.values(), key=lambda p: (p.created, p.namespace, p.pod)):
            if p.key in self._admitted or now - self._claimed.get(p.key, -np.inf) < self.claim_ttl:
                continue
            if len(p.cores) == size and np.isin(p.cores, avail).all():
                return p
        return None

    def planned(self, available: IntArray, size: int) -> IntArray | None:
        avail = np.asarray(available, dtype=np.int64)
        best = self._candidate(avail, size)
        if best is None:
            pending = [p for p in self._plans.values() if p.key not in self._admitted and len(p.cores) == size]
            if pending:  # a plan of this size waits, but some of its cores are not available to the kubelet
                missing = min(int((~np.isin(p.cores, avail)).sum()) for p in pending)
                log.info("admission_plan_unmatchable", cores=size, pending_plans=len(pending), missing=missing)
            return None
        self._claimed[best.key] = self.clock()
        log.info("admission_matched_plan", pod=f"{best.namespace}/{best.pod}", cores=size)
        return best.cores

    def admitted(self, cores: IntArray) -> None:
        got = np.sort(np.asarray(cores, dtype=np.int64))
        for p in self._plans.values():
            if p.key not in self._admitted and np.array_equal(p.cores, got):
                self._admitted.add(p.key)
                self.matched += 1
                return
        if any(k not in self._admitted for k in self._claimed):
            self.mismatched += 1
