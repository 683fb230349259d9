"""Leader election on a ``coordination.k8s.io/v1`` Lease, so only one controller replica plans and moves stages.

The algorithm is client-go's ``leaderelection`` (the one kube-scheduler and kube-controller-manager use):

* a replica holds the Lease while it renews it at least every ``renew_deadline``; writes go through ``replace``
  with the observed ``resourceVersion``, so two replicas can never both win a race (the loser gets 409);
* another replica may take the Lease over only when it has seen the same record unchanged for
  ``lease_duration`` of *its own* clock (a monotonic one): no replica compares its clock with another's;
* a leader that cannot renew within ``renew_deadline`` stops leading (cancels the work it runs) before its Lease
  can expire for the others: renew_deadline < lease_duration is enforced.

:meth:`LeaderElector.run` runs ``lead()`` while leading and cancels it on loss, then tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from snnrm.core.types import JSON
from snnrm.kube.api import LEASES, ClusterApi, ConflictError, KubeError, NotFoundError

log = structlog.get_logger(__name__)


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(eq=False)
class LeaderElector:
    api: ClusterApi
    namespace: str
    identity: str
    name: str = "snnrm-placement-controller"
    lease_duration: float = 15.0
    """Seconds another replica waits on an unchanged record before taking over (client-go's default)."""
    renew_deadline: float = 10.0
    """Seconds the leader keeps trying to renew before it gives up leading (client-go's default)."""
    retry_period: float = 2.0
    """Seconds between attempts (client-go's default)."""
    clock: Callable[[], float] = time.monotonic
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    transitions: int = 0
    """Times this replica became the leader."""
    _observed: tuple[str, str] | None = field(default=None, init=False)
    """(holder, renewTime) of the last record seen, and when we first saw it."""
    _observed_at: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs 0 < renew_deadline < lease_duration")

    def _record(self, lease: JSON | None) -> tuple[str, str]:
        spec = (lease or {}).get("spec") or {}
        return (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))

    def _body(self, lease: JSON | None, *, acquire: bool) -> JSON:
        spec = dict((lease or {}).get("spec") or {})
        now = _micro_time()
        if acquire:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if lease else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_duration), renewTime=now)
        meta: JSON = {"name": self.name, "namespace": self.namespace}
        if lease is not None:
            meta["resourceVersion"] = (lease.get("metadata") or {}).get("resourceVersion")
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this replica holds the Lease afterwards."""
        try:
            lease: JSON | None = await self.api.get(LEASES, self.name, namespace=self.namespace)
        except NotFoundError:
            lease = None
        if lease is None:
            try:
                await self.api.create(LEASES, self._body(None, acquire=True), namespace=self.namespace)
            except ConflictError:
                return False
            self._observed, self._observed_at = None, self.clock()
            return True
        record = self._record(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        holder = record[0]
        expired = self.clock() - self._observed_at >= self.lease_duration
        if holder and holder != self.identity and not expired:
            return False
        try:
            await self.api.replace(
                LEASES, self.name, self._body(lease, acquire=holder != self.identity), namespace=self.namespace
            )
        except ConflictError:
            return False
        return True

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Forever: wait to acquire, run ``lead()`` while renewing, stop it when renewal fails."""
        while True:
            await self._acquire()
            self.transitions += 1
            self.leading.set()
            log.info("leader_elected", identity=self.identity, lease=f"{self.namespace}/{self.name}")
            task = asyncio.create_task(lead(), name="leader-work")
            try:
                await self._renew_until_lost(task)
            finally:
                self.leading.clear()
                task.cancel()
                # The work's own end (cancelled here, or failed) is not ours: a failure was re-raised above.
                await asyncio.gather(task, return_exceptions=True)
            log.warning("leader_lost", identity=self.identity)

    async def _acquire(self) -> None:
        while True:
            try:
                if await self.try_acquire_or_renew():
                    return
            except KubeError as e:
                log.warning("leader_election_error", error=str(e))
            await asyncio.sleep(self.retry_period)

    async def _renew_until_lost(self, work: asyncio.Task[None]) -> None:
        last_ok = self.clock()
        while not work.done():
            done, _ = await asyncio.wait({work}, timeout=self.retry_period)
            if done:
                work.result()  # a failure of the leader's work propagates
                return
            try:
                ok = await self.try_acquire_or_renew()
            except KubeError as e:
                log.warning("leader_renew_failed", error=str(e))
                ok = False
            if ok:
                last_ok = self.clock()
            elif self.clock() - last_ok >= self.renew_deadline:
                return
