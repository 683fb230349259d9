"""Kubernetes Events (``events.k8s.io/v1``) on stage pods: every placement and reallocation decision is recorded.

Recording never fails the caller: an apiserver that refuses an Event is logged and counted. Repeats of the same
(pod, reason, note) within ``dedup_seconds`` are dropped, so a job waiting for capacity does not flood the pod's
event list with one Event per planning round.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from snnrm.core.types import JSON
from snnrm.kube.api import EVENTS, ClusterApi, KubeError

log = structlog.get_logger(__name__)

CONTROLLER = "snnrm.io/placement-controller"


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    uid: str = ""


@dataclass(eq=False)
class EventRecorder:
    api: ClusterApi
    instance: str
    """Who reports (the controller's pod or host name): ``reportingInstance``."""
    controller: str = CONTROLLER
    dedup_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    recorded: int = 0
    _last: dict[tuple[str, str, str, str], float] = field(default_factory=dict)

    async def record(self, pod: PodRef, *, reason: str, note: str, action: str, warning: bool = False) -> None:
        key = (pod.namespace, pod.name, reason, note)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.dedup_seconds:
            return
        self._last[key] = now
        if len(self._last) > 10_000:  # forget the oldest half: a bounded memory of what was said
            for k, _ in sorted(self._last.items(), key=lambda kv: kv[1])[:5_000]:
                del self._last[k]
        body: JSON = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            # client-go's naming: "<object>.<unique hex>" (a generateName ending in "." is not a valid name).
            "metadata": {"name": f"{pod.name[:236]}.{uuid.uuid4().hex[:16]}", "namespace": pod.namespace},
            "eventTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingController": self.controller,
            "reportingInstance": self.instance[:128],
            "action": action[:128],
            "reason": reason[:128],
            "note": note[:1024],
            "type": "Warning" if warning else "Normal",
            "regarding": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace}
            | ({"uid": pod.uid} if pod.uid else {}),
        }
        try:
            await self.api.create(EVENTS, body, namespace=pod.namespace)
        except KubeError as e:
            self.failures += 1
            log.warning("event_not_recorded", pod=pod.name, reason=reason, error=str(e), failures=self.failures)
        else:
            self.recorded += 1
