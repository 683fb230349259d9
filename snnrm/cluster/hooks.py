"""Alert-driven autoscaling hooks, the I/O part: carry out what :class:`snnrm.core.hooks.HookPlanner` decides.

For each decision the runner talks to the Kubernetes API (through the :class:`~snnrm.kube.api.ClusterApi` the app
injects) or to an outgoing webhook, then records the result with the planner. Every action is logged, counted
(``snnrm_hook_actions_total``) and, when it touched a Kubernetes object, recorded as an Event on that object.

Replica changes are read-modify-write with the object's ``resourceVersion`` as precondition, retried on conflict,
so a concurrent HPA/KEDA/kubectl write is never silently overwritten. Transient failures (network, 5xx, 429,
persistent conflicts) are reported as ``retry`` so the HTTP answer is 5xx and Alertmanager re-sends; the planner's
dedup makes the re-send safe for the alerts that did succeed. Permanent failures (403, 404, 422) are logged and
counted as ``failed`` and not retried by us.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from snnrm.core.hooks import (
    Alert,
    Decision,
    HookPlanner,
    HookSpec,
    Notification,
    Outcome,
    Skip,
    Target,
    bounded,
)
from snnrm.kube.api import CORE_EVENTS, JSON, ClusterApi, KubeError, Resource

log = structlog.get_logger(__name__)

CONFLICT_RETRIES = 3
FIELD_DEFAULTS = {"replicas": 0, "minReplicaCount": 0, "maxReplicaCount": 100, "minReplicas": 1, "maxReplicas": 1}
"""What an absent spec field means (scale omits replicas=0; KEDA's and HPA's documented defaults)."""
_PLURALS = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "ScaledObject": "scaledobjects",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
}


def target_resource(t: Target) -> tuple[Resource, str | None]:
    """The resource the hook reads and patches, and the subresource: ``scale`` for workloads, none for KEDA/HPA."""
    group, _, version = t.api_version.rpartition("/")
    return Resource(group, version, _PLURALS[t.kind]), ("scale" if t.field == "replicas" else None)


@dataclass(frozen=True, slots=True)
class HookResult:
    """What one (hook, alert) pair came to; the HTTP answer lists these."""

    hook: str
    alertname: str
    fingerprint: str
    status: str
    outcome: Outcome
    detail: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "hook": self.hook,
            "alertname": self.alertname,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "outcome": self.outcome.value,
            "detail": self.detail,
        }


class _TransientError(Exception):
    """A failure worth retrying: the notification is answered 5xx so Alertmanager re-sends it."""


@dataclass(eq=False)
class HookRunner:
    """Carries out hook decisions. Notifications that touch the same hook run one at a time (plan, act and record
    stay consistent per hook); unrelated hooks never wait for each other, and at most ``max_outgoing`` webhook
    calls are in flight at once."""

    planner: HookPlanner
    kube: ClusterApi | None
    """None when no hook needs the Kubernetes API (or none is reachable: scaling hooks then fail loudly)."""
    http: aiohttp.ClientSession | None = None
    """Session for outgoing webhooks (created on first use if None)."""
    node: str = ""
    webhook_tokens: dict[str, Path] = field(default_factory=dict)
    """Hook name -> file holding the bearer token sent to its outgoing webhook."""
    webhook_timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic
    actions: Counter[tuple[str, str, str]] = field(default_factory=Counter, init=False)
    """(hook, action, outcome) -> count."""
    notifications: Counter[str] = field(default_factory=Counter, init=False)
    """HTTP-level result -> count (``ok``, ``retry``, ``unauthorized``, ``bad-request``, ``too-large``, ...)."""
    max_outgoing: int = 8
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)
    _outgoing: asyncio.Semaphore | None = field(default=None, init=False)
    _own_http: bool = field(default=False, init=False)

    async def aclose(self) -> None:
        if self._own_http and self.http is not None:
            await self.http.close()
            self.http = None

    async def handle(self, n: Notification) -> list[HookResult]:
        """Plan and carry out every (hook, alert) pair of ``n``."""
        async with contextlib.AsyncExitStack() as held:
            # Locks of every hook this notification touches, in name order (two notifications never deadlock).
            for name in sorted(self.planner.involved(n)):
                await held.enter_async_context(self._locks.setdefault(name, asyncio.Lock()))
            results = []
            for item in self.planner.plan(n, self.clock()):
                result = await self._carry_out(item, n) if isinstance(item, Decision) else self._skipped(item)
                results.append(result)
            return results

    def _skipped(self, skip: Skip) -> HookResult:
        hook = self.planner.by_name.get(skip.hook_name)
        action = hook.action.value if hook is not None else "none"
        name = skip.hook_name if hook is not None else "(unknown)"
        self.actions[(name, action, skip.outcome.value)] += 1
        log_fn = log.warning if skip.outcome is Outcome.UNKNOWN_HOOK else log.info
        log_fn(
            "hook_skipped",
            hook=skip.hook_name,
            alert=skip.alert.name,
            fingerprint=skip.alert.fingerprint,
            status=skip.alert.status,
            outcome=skip.outcome.value,
        )
        return HookResult(skip.hook_name, skip.alert.name, skip.alert.fingerprint, skip.alert.status, skip.outcome)

    async def _carry_out(self, d: Decision, n: Notification) -> HookResult:
        hook, alert = d.hook, d.alert
        try:
            if hook.action.scales:
                applied, detail = await self._scale(d)
                outcome = (Outcome.UNDONE if d.undo else Outcome.APPLIED) if applied else Outcome.AT_BOUND
            else:
                applied, detail = 0, await self._webhook(hook, alert, n)
                outcome = Outcome.APPLIED
        except _TransientError as e:
            outcome, detail = Outcome.RETRY, str(e)
        except (KubeError, OSError, ValueError) as e:
            outcome, detail = Outcome.FAILED, str(e)
        else:
            self.planner.record(d, applied_delta=applied, now=self.clock())
        self.actions[(hook.name, hook.action.value, outcome.value)] += 1
        failed = outcome in (Outcome.FAILED, Outcome.RETRY)
        (log.error if failed else log.info)(
            "hook_action",
            hook=hook.name,
            action=hook.action.value,
            alert=alert.name,
            status=alert.status,
            fingerprint=alert.fingerprint,
            outcome=outcome.value,
            detail=detail,
        )
        # An Event per change or permanent failure; not per retry (Alertmanager may retry many times) or no-op.
        if hook.target is not None and self.kube is not None and outcome not in (Outcome.AT_BOUND, Outcome.RETRY):
            await self._event(hook, alert, outcome, detail)
        return HookResult(hook.name, alert.name, alert.fingerprint, alert.status, outcome, detail)

    # -- actions ---------------------------------------------------------------------------------------------

    async def _scale(self, d: Decision) -> tuple[int, str]:
        """Read-modify-write the target's field within bounds; returns (change applied, description)."""
        hook = d.hook
        t = hook.target
        assert t is not None
        if self.kube is None:
            raise ValueError("no Kubernetes API configured (hooks.kubeconfig, or run in a cluster)")
        res, sub = target_resource(t)
        delta = -d.delta if d.undo else d.delta
        for _ in range(CONFLICT_RETRIES):
            try:
                obj = await self.kube.get(res, t.name, namespace=t.namespace, subresource=sub)
                spec = obj.get("spec") or {}
                current = int(spec.get(t.field, FIELD_DEFAULTS[t.field]))
                new = bounded(current, delta, hook.min_replicas, hook.max_replicas)
                if new == current:
                    return 0, f"{t} stays {current} (bounds {hook.min_replicas}..{hook.max_replicas})"
                version = (obj.get("metadata") or {}).get("resourceVersion")
                patch: JSON = {"spec": {t.field: new}}
                if version:
                    patch["metadata"] = {"resourceVersion": version}
                await self.kube.merge_patch(res, t.name, patch, namespace=t.namespace, subresource=sub)
            except KubeError as e:
                if e.status == 409:
                    continue  # someone else wrote in between: read again
                if e.retryable:
                    raise _TransientError(str(e)) from e
                raise
            return new - current, f"{t} {current} -> {new}"
        raise _TransientError(f"{t}: {CONFLICT_RETRIES} write conflicts in a row")

    async def _webhook(self, hook: HookSpec, alert: Alert, n: Notification) -> str:
        if self._outgoing is None:
            self._outgoing = asyncio.Semaphore(self.max_outgoing)
        async with self._outgoing:
            return await self._post_webhook(hook, alert, n)

    async def _post_webhook(self, hook: HookSpec, alert: Alert, n: Notification) -> str:
        if self.http is None:
            self.http = aiohttp.ClientSession()
            self._own_http = True
        headers = {"User-Agent": "snnrm-hooks"}
        token_file = self.webhook_tokens.get(hook.name)
        if token_file is not None:
            try:  # re-read on every POST: a mounted Secret rotates under us
                token = (await asyncio.to_thread(token_file.read_text, encoding="utf-8")).strip()
            except (OSError, UnicodeDecodeError) as e:
                raise ValueError(f"token_file {token_file}: cannot read it ({e})") from None
            if not token:
                raise ValueError(f"token_file {token_file} is empty")
            headers["Authorization"] = f"Bearer {token}"
        body: dict[str, Any] = {
            "hook": hook.name,
            "receiver": n.receiver,
            "groupKey": n.group_key,
            "alert": {
                "status": alert.status,
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": alert.starts_at,
                "endsAt": alert.ends_at,
                "fingerprint": alert.fingerprint,
            },
        }
        try:
            async with self.http.post(
                hook.url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=self.webhook_timeout)
            ) as r:
                if r.status >= 500 or r.status == 429:
                    raise _TransientError(f"POST {hook.url} -> {r.status}")
                if r.status >= 300:
                    raise ValueError(f"POST {hook.url} -> {r.status}: {(await r.text())[:200]}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _TransientError(f"POST {hook.url}: {e!r}") from e
        return f"POST {hook.url} -> {r.status}"

    async def _event(self, hook: HookSpec, alert: Alert, outcome: Outcome, detail: str) -> None:
        """A core/v1 Event on the target (``kubectl describe`` shows it); failures to record are only logged."""
        t = hook.target
        assert t is not None
        assert self.kube is not None
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ok = outcome in (Outcome.APPLIED, Outcome.UNDONE)
        event: JSON = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{t.name}.snnrm-hook-", "namespace": t.namespace},
            "involvedObject": {"apiVersion": t.api_version, "kind": t.kind, "namespace": t.namespace, "name": t.name},
            "reason": {Outcome.APPLIED: "SnnrmHookScaled", Outcome.UNDONE: "SnnrmHookUndone"}.get(
                outcome, "SnnrmHookFailed"
            ),
            "message": f"hook {hook.name} on {alert.status} alert {alert.name} ({alert.fingerprint}): {detail}"[:1024],
            "type": "Normal" if ok else "Warning",
            "source": {"component": "snnrm", "host": self.node},
            "reportingComponent": "snnrm.io/hooks",
            "reportingInstance": self.node or "snnrm",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(KubeError):
            await self.kube.create(CORE_EVENTS, event, namespace=t.namespace)
            return
        log.warning("hook_event_not_recorded", hook=hook.name, target=str(t))


class HookCollector(Collector):
    """``snnrm_hook_*`` series from the runner's counters (read at scrape time, nothing kept here)."""

    def __init__(self, runner: HookRunner, *, node: str) -> None:
        self._runner = runner
        self._node = node

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        r = self._runner
        notes = CounterMetricFamily(
            "snnrm_hook_notifications",
            "Alertmanager notifications received on /hooks/alertmanager, by result.",
            labels=["node", "result"],
        )
        for result, count in sorted(r.notifications.items()):
            notes.add_metric([self._node, result], count)
        yield notes
        actions = CounterMetricFamily(
            "snnrm_hook_actions",
            "Hook decisions per configured hook, by action and outcome.",
            labels=["node", "hook", "action", "outcome"],
        )
        for (hook, action, outcome), count in sorted(r.actions.items()):
            actions.add_metric([self._node, hook, action, outcome], count)
        yield actions
        episodes = GaugeMetricFamily(
            "snnrm_hook_remembered_alerts", "Firing episodes remembered for dedup and undo.", labels=["node"]
        )
        episodes.add_metric([self._node], len(r.planner))
        yield episodes
