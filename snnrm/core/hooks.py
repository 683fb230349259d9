"""Alert-driven autoscaling hooks, the pure part: Alertmanager payloads, label matchers, and what to do about them.

Alertmanager's webhook (v4 payload, reference §5.1) re-sends a group on every ``group_interval`` change and every
``repeat_interval``, and retries on 5xx; so a receiver that acts must be idempotent. The :class:`HookPlanner`
decides, per configured hook and alert, whether to act, and remembers what it did:

* **dedup**: an alert acts on a hook once per *firing episode*, keyed by Alertmanager's group key, the alert's
  fingerprint and its ``startsAt`` (an alert that resolves and fires again is a new episode and acts again);
* **cooldown**: after a hook acted on a target it does not act on that target again for ``cooldown`` seconds. A
  skipped alert is not remembered, so a later delivery after the cooldown can still act on it;
* **undo**: when a hook has ``undo_on_resolve``, the resolved notification of an alert it scaled reverts exactly the
  delta it applied (bounded again), once;
* **resolved forwarding**: a ``webhook`` hook with ``send_resolved`` also forwards the resolved notification of each
  alert it matches, once per episode and never held back by a cooldown (the target must learn that it is over);
  without it resolved alerts are ignored.

Only hooks in the configuration exist; an alert may narrow its routing to one of them with the ``snnrm_hook``
label, and naming an unconfigured hook is reported as such (never guessed). Memory is bounded (entries expire and
the oldest are evicted), because the input is untrusted.

Everything here takes data and returns data; the I/O (Kubernetes API, outgoing webhooks, the HTTP endpoint) lives
in :mod:`snnrm.cluster.hooks` and :mod:`snnrm.http.hooks`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

HOOK_LABEL = "snnrm_hook"
"""An alert label that restricts the alert to the hook of that name (set it in the rule's ``labels``)."""
MAX_ALERTS = 1000
"""Alerts accepted in one notification; Alertmanager's ``max_alerts`` should be set well below this."""
MAX_LABELS = 64
MAX_STRING = 4096
"""Longest label/annotation value accepted; real ones are tens of bytes, anything near this is abuse."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')


class PayloadError(ValueError):
    """The request body is not an Alertmanager webhook payload; the message names the offending field."""


# -- the payload ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert of a notification (only the fields the hooks use are kept)."""

    status: Literal["firing", "resolved"]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True, slots=True)
class Notification:
    """An Alertmanager webhook payload, version 4."""

    receiver: str
    status: Literal["firing", "resolved"]
    group_key: str
    alerts: tuple[Alert, ...]
    group_labels: Mapping[str, str]
    common_labels: Mapping[str, str]
    truncated_alerts: int = 0


def _str(obj: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise PayloadError(f"{where}{key}: expected a string, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise PayloadError(f"{where}{key}: longer than {MAX_STRING} characters")
    return value


def _labels(obj: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise PayloadError(f"{where}{key}: expected an object of strings, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise PayloadError(f"{where}{key}: more than {MAX_LABELS} entries")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(v, str):
            raise PayloadError(f"{where}{key}.{k}: expected a string, got {type(v).__name__}")
        if len(k) > MAX_STRING or len(v) > MAX_STRING:
            raise PayloadError(f"{where}{key}.{k}: longer than {MAX_STRING} characters")
        out[k] = v
    return out


def _status(obj: Mapping[str, Any], where: str) -> Literal["firing", "resolved"]:
    status = obj.get("status")
    if status == "firing":
        return "firing"
    if status == "resolved":
        return "resolved"
    raise PayloadError(f"{where}status: expected 'firing' or 'resolved', got {status!r}")


def parse_notification(body: object) -> Notification:
    """Validate a decoded JSON body as an Alertmanager webhook v4 payload; unknown keys are ignored."""
    if not isinstance(body, dict):
        raise PayloadError(f"body: expected a JSON object, got {type(body).__name__}")
    if body.get("version") != "4":
        raise PayloadError(f"version: expected '4' (Alertmanager webhook payload), got {body.get('version')!r}")
    alerts_raw = body.get("alerts")
    if not isinstance(alerts_raw, list):
        raise PayloadError("alerts: expected a list")
    if len(alerts_raw) > MAX_ALERTS:
        raise PayloadError(f"alerts: {len(alerts_raw)} alerts, more than {MAX_ALERTS} (set max_alerts)")
    alerts = []
    for i, a in enumerate(alerts_raw):
        where = f"alerts[{i}]."
        if not isinstance(a, dict):
            raise PayloadError(f"alerts[{i}]: expected an object, got {type(a).__name__}")
        fingerprint = _str(a, "fingerprint", where)
        if not fingerprint:
            raise PayloadError(f"{where}fingerprint: must not be empty")
        alerts.append(
            Alert(
                status=_status(a, where),
                labels=_labels(a, "labels", where),
                annotations=_labels(a, "annotations", where),
                starts_at=_str(a, "startsAt", where),
                ends_at=_str(a, "endsAt", where, required=False),
                fingerprint=fingerprint,
            )
        )
    truncated = body.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise PayloadError(f"truncatedAlerts: expected a non-negative integer, got {truncated!r}")
    return Notification(
        receiver=_str(body, "receiver", ""),
        status=_status(body, ""),
        group_key=_str(body, "groupKey", ""),
        alerts=tuple(alerts),
        group_labels=_labels(body, "groupLabels", ""),
        common_labels=_labels(body, "commonLabels", ""),
        truncated_alerts=truncated,
    )


# -- matchers ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Matcher:
    """A label matcher in Alertmanager's syntax: ``name="v"``, ``name!="v"``, ``name=~"re"``, ``name!~"re"``.

    Regexes are anchored (full match), as in Prometheus and Alertmanager; a missing label matches as ``""``.
    """

    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        m = _MATCHER.match(text)
        if m is None:
            raise ValueError(f'matcher {text!r}: expected name="value", name!="value", name=~"regex" or name!~"regex"')
        name, op, raw = m.group(1), m.group(2), m.group(3)
        value = re.sub(r"\\(.)", r"\1", raw)
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(value)
            except re.error as e:
                raise ValueError(f"matcher {text!r}: bad regex: {e}") from None
        return cls(name, op, value, regex)  # type: ignore[arg-type]  # op is one of the four by the regex

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None
        hit = self._regex.fullmatch(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


# -- hooks ------------------------------------------------------------------------------------------------------


class Action(StrEnum):
    SCALE = "scale"
    """Change a Deployment's or StatefulSet's replicas through the scale subresource."""
    KEDA = "keda"
    """Change a KEDA ScaledObject's replica bound (``minReplicaCount`` or ``maxReplicaCount``)."""
    HPA = "hpa"
    """Change a HorizontalPodAutoscaler's replica bound (``minReplicas`` or ``maxReplicas``)."""
    WEBHOOK = "webhook"
    """POST the alert to an outgoing URL."""

    @property
    def scales(self) -> bool:
        """Whether the action changes an integer replica field of a Kubernetes object (so bounds and undo apply)."""
        return self in (Action.SCALE, Action.KEDA, Action.HPA)


TARGET_KINDS: dict[Action, dict[str, tuple[str, str]]] = {
    Action.SCALE: {"Deployment": ("apps/v1", "replicas"), "StatefulSet": ("apps/v1", "replicas")},
    Action.KEDA: {"ScaledObject": ("keda.sh/v1alpha1", "minReplicaCount")},
    Action.HPA: {"HorizontalPodAutoscaler": ("autoscaling/v2", "minReplicas")},
}
"""Kinds each scaling action may target: kind -> (apiVersion, default field)."""
TARGET_FIELDS: dict[Action, tuple[str, ...]] = {
    Action.SCALE: ("replicas",),
    Action.KEDA: ("minReplicaCount", "maxReplicaCount"),
    Action.HPA: ("minReplicas", "maxReplicas"),
}


@dataclass(frozen=True, slots=True)
class Target:
    """The Kubernetes object a scaling hook changes, and the integer field of its spec it changes."""

    kind: str
    namespace: str
    name: str
    field: str

    @property
    def api_version(self) -> str:
        for kinds in TARGET_KINDS.values():
            if self.kind in kinds:
                return kinds[self.kind][0]
        raise ValueError(f"unknown target kind {self.kind!r}")

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}.spec.{self.field}"


@dataclass(frozen=True, slots=True)
class HookSpec:
    """One configured hook: which alerts it takes and what it does with them, within which bounds."""

    name: str
    matchers: tuple[Matcher, ...]
    action: Action
    target: Target | None = None
    step: int = 1
    """Added to the target field per firing alert (and subtracted again on undo)."""
    min_replicas: int = 0
    max_replicas: int = 10
    cooldown: float = 300.0
    """Seconds after an action on the target during which the hook does not act on it again."""
    undo_on_resolve: bool = False
    url: str = ""
    """Outgoing webhook URL (action webhook)."""
    send_resolved: bool = False
    """Action webhook: forward resolved alerts too (as Alertmanager's own ``send_resolved``); off, they are dropped."""

    def __post_init__(self) -> None:
        if self.action.scales and self.target is None:
            raise ValueError(f"hook {self.name}: action {self.action} needs a target")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"hook {self.name}: min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if not self.matchers:
            raise ValueError(f"hook {self.name}: needs at least one matcher (a hook that takes every alert is a trap)")
        if self.send_resolved and self.action is not Action.WEBHOOK:
            raise ValueError(f"hook {self.name}: send_resolved is for action webhook, not {self.action}")

    def matches(self, alert: Alert) -> bool:
        return all(m.matches(alert.labels) for m in self.matchers)

    def cooldown_key(self, alert: Alert) -> str:
        """Cooldown is per hook and what it acts on: its target, and for a webhook the alert itself (its
        fingerprint): an unrelated alert must not be swallowed by another's cooldown, since Alertmanager never
        resends a notification that was answered 200."""
        if self.target is not None:
            return f"{self.name}:{self.target}"
        return f"{self.name}:{alert.fingerprint}"


def bounded(current: int, delta: int, lo: int, hi: int) -> int:
    """``current + delta`` clamped to ``[lo, hi]``; a value already outside moves only towards the bounds."""
    wanted = current + delta
    if delta >= 0:
        return max(current, min(wanted, hi)) if current <= hi else current
    return min(current, max(wanted, lo)) if current >= lo else current


RESOLVED = "/resolved"
"""Appended to an episode's ``startsAt`` in the dedup key of its forwarded resolved notification."""


# -- decisions --------------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    """What happened to one (hook, alert) pair; also the ``result`` label of the actions counter."""

    APPLIED = "applied"
    UNDONE = "undone"
    AT_BOUND = "at-bound"
    DUPLICATE = "duplicate"
    COOLDOWN = "cooldown"
    NOTHING_TO_UNDO = "nothing-to-undo"
    UNKNOWN_HOOK = "unknown-hook"
    FAILED = "failed"
    RETRY = "retry"
    """A transient failure: the HTTP answer is 5xx so Alertmanager re-sends; dedup makes that safe."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Act: ``undo`` reverts ``delta`` (what the firing episode applied); otherwise apply ``hook.step``."""

    hook: HookSpec
    alert: Alert
    key: tuple[str, str, str, str]
    undo: bool = False
    delta: int = 0


@dataclass(frozen=True, slots=True)
class Skip:
    """Do nothing, and say why."""

    hook_name: str
    alert: Alert
    outcome: Outcome


@dataclass(slots=True)
class _Done:
    at: float
    delta: int


@dataclass(slots=True)
class HookPlanner:
    """Dedup, cooldown and undo bookkeeping for a fixed set of hooks. Not thread-safe: the caller serialises
    plan-to-record per hook (:meth:`involved` names the hooks a notification touches)."""

    hooks: tuple[HookSpec, ...]
    ttl: float = 7 * 24 * 3600.0
    """Seconds a firing episode is remembered: longer than any sane ``repeat_interval`` (default 4 h)."""
    max_entries: int = 10_000
    _done: OrderedDict[tuple[str, str, str, str], _Done] = field(default_factory=OrderedDict, init=False)
    _last_action: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        names = [h.name for h in self.hooks]
        if len(names) != len(set(names)):
            raise ValueError(f"hook names must be unique: {names}")

    @property
    def by_name(self) -> dict[str, HookSpec]:
        return {h.name: h for h in self.hooks}

    def _expire(self, now: float) -> None:
        while self._done:
            key, done = next(iter(self._done.items()))
            if now - done.at <= self.ttl and len(self._done) <= self.max_entries:
                break
            del self._done[key]

    def involved(self, n: Notification) -> set[str]:
        """Names of the hooks :meth:`plan` would consider for ``n`` (so a caller can serialise per hook)."""
        by_name = self.by_name
        names: set[str] = set()
        for alert in n.alerts:
            wanted = alert.labels.get(HOOK_LABEL)
            if wanted is not None:
                names.update({wanted} & by_name.keys())
            else:
                names.update(h.name for h in self.hooks if h.matches(alert))
        return names

    def plan(self, n: Notification, now: float) -> list[Decision | Skip]:
        """What to do with each (matching hook, alert) pair of ``n``, in payload order.

        Firing alerts act; resolved alerts undo what a scaling hook with ``undo_on_resolve`` applied for the same
        episode, or are forwarded by a ``webhook`` hook with ``send_resolved``, and are otherwise ignored.
        """
        self._expire(now)
        by_name = self.by_name
        out: list[Decision | Skip] = []
        for alert in n.alerts:
            wanted = alert.labels.get(HOOK_LABEL)
            if wanted is not None and wanted not in by_name:
                out.append(Skip(wanted, alert, Outcome.UNKNOWN_HOOK))
                continue
            candidates = (by_name[wanted],) if wanted is not None else self.hooks
            for hook in candidates:
                if not hook.matches(alert):
                    continue
                key = (hook.name, n.group_key, alert.fingerprint, alert.starts_at)
                out.append(self._decide(hook, alert, key, now))
        return out

    def _decide(self, hook: HookSpec, alert: Alert, key: tuple[str, str, str, str], now: float) -> Decision | Skip:
        done = self._done.get(key)
        if alert.status == "resolved" and hook.send_resolved:
            # The firing episode is over; forward its end once (Alertmanager re-sends a group's resolved alerts
            # until a notification succeeds). No cooldown: it would hide the end of an alert that was delivered.
            self._done.pop(key, None)
            resolved_key = (key[0], key[1], key[2], key[3] + RESOLVED)
            if resolved_key in self._done:
                return Skip(hook.name, alert, Outcome.DUPLICATE)
            return Decision(hook, alert, resolved_key)
        if alert.status == "resolved":
            if not (hook.undo_on_resolve and hook.action.scales) or done is None or done.delta == 0:
                # Nothing to revert: forget the episode (a new firing has a new startsAt anyway).
                self._done.pop(key, None)
                return Skip(hook.name, alert, Outcome.NOTHING_TO_UNDO)
            return Decision(hook, alert, key, undo=True, delta=done.delta)
        if done is not None:
            return Skip(hook.name, alert, Outcome.DUPLICATE)
        last = self._last_action.get(hook.cooldown_key(alert))
        if last is not None and now - last < hook.cooldown:
            return Skip(hook.name, alert, Outcome.COOLDOWN)
        return Decision(hook, alert, key, delta=hook.step)

    def record(self, decision: Decision, *, applied_delta: int, now: float) -> None:
        """The executor carried ``decision`` out (``applied_delta`` is what actually changed, after bounds).

        A firing decision is remembered (so repeats are duplicates, and a resolve can undo ``applied_delta``) and,
        if it changed something, starts the hook's cooldown. An undo forgets the episode.
        """
        if decision.undo:
            self._done.pop(decision.key, None)
            return
        self._done[decision.key] = _Done(at=now, delta=applied_delta)
        self._done.move_to_end(decision.key)
        if decision.alert.status == "resolved":
            pass  # a forwarded resolve starts no cooldown: it must not delay the next firing of anything
        elif applied_delta != 0 or not decision.hook.action.scales:
            self._last_action[decision.hook.cooldown_key(decision.alert)] = now
        self._expire(now)

    def __len__(self) -> int:
        return len(self._done)


def validate_label_name(name: str) -> str:
    """A Prometheus label name, or ValueError."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid label name")
    return name
