"""The ``hooks:`` section of the daemon's configuration: which alert-driven autoscaling hooks exist, and their bounds.

Only hooks listed here can ever run (the allowlist); each is validated up front, so a typo in a kind, a field, a
matcher or a bound stops the daemon at start-up with the field named, never at 3 a.m. when the alert fires.
See docs/autoscaling-hooks.md for the format and examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from snnrm.core.hooks import TARGET_FIELDS, TARGET_KINDS, Action, HookSpec, Matcher, Target

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # no NaN/inf durations or sizes


class TargetConfig(BaseModel):
    """The object a scaling hook changes."""

    model_config = _FROZEN

    kind: str
    """Deployment or StatefulSet (action scale), ScaledObject (keda), HorizontalPodAutoscaler (hpa)."""
    namespace: str = Field(min_length=1, max_length=63)
    name: str = Field(min_length=1, max_length=253)
    field: str | None = None
    """Integer spec field to change: replicas (scale), minReplicaCount|maxReplicaCount (keda, default
    minReplicaCount: raising the floor is what an alert means), minReplicas|maxReplicas (hpa, default minReplicas)."""


class HookConfig(BaseModel):
    """One hook: which alerts it takes (all matchers must match) and what it does."""

    model_config = _FROZEN

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    match: list[str] = Field(min_length=1)
    """Alertmanager-style matchers, e.g. ``alertname="SnnrmEventQueueSaturated"``, ``severity=~"warning|critical"``."""
    action: Action
    target: TargetConfig | None = None
    step: int = Field(default=1, ge=1, le=1000)
    """Replicas added per firing alert (and removed again on undo)."""
    min_replicas: int = Field(default=1, ge=0)
    """Lower bound: an undo never goes below it. 1 keeps a scaled-down stage alive."""
    max_replicas: int = Field(default=10, ge=0, le=100_000)
    """Upper bound: the hook never scales beyond it, however many alerts fire."""
    cooldown: float = Field(default=300.0, ge=0.0)
    """Seconds between two actions of this hook on its target: 5 min, Alertmanager's default group_interval, so
    one burst of alerts scales once and the next group update sees its effect first."""
    undo_on_resolve: bool = False
    """When the alert resolves, revert what this hook applied for it (scaling hooks only)."""
    url: str | None = None
    """action webhook: where to POST (http or https)."""
    token_file: Path | None = None
    """action webhook: file holding a bearer token sent with the POST."""
    send_resolved: bool = False
    """action webhook: also POST when a matching alert resolves (``"status": "resolved"``), once per alert episode
    and never held back by the cooldown. Off: resolved alerts are ignored. Alertmanager must send them too (its
    ``send_resolved``, on by default for webhooks)."""

    @field_validator("match")
    @classmethod
    def _matchers(cls, v: list[str]) -> list[str]:
        for text in v:
            Matcher.parse(text)  # raises ValueError with the matcher in the message
        return v

    @model_validator(mode="after")
    def _per_action(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        if self.action.scales:
            if self.target is None:
                raise ValueError(f"action {self.action} needs a target")
            kinds = TARGET_KINDS[self.action]
            if self.target.kind not in kinds:
                raise ValueError(f"action {self.action} targets {' or '.join(kinds)}, not {self.target.kind!r}")
            if self.target.field is not None and self.target.field not in TARGET_FIELDS[self.action]:
                raise ValueError(
                    f"action {self.action} changes {' or '.join(TARGET_FIELDS[self.action])}, not {self.target.field!r}"
                )
        elif self.target is not None:
            raise ValueError(f"action {self.action} takes no target")
        if self.action is Action.WEBHOOK:
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError("action webhook needs an http(s) url")
        elif self.url is not None or self.token_file is not None or self.send_resolved:
            raise ValueError(f"url/token_file/send_resolved are for action webhook, not {self.action}")
        if self.undo_on_resolve and not self.action.scales:
            raise ValueError(f"undo_on_resolve needs a scaling action (scale, keda, hpa), not {self.action}")
        return self

    def to_spec(self) -> HookSpec:
        target = None
        if self.target is not None:
            default_field = TARGET_KINDS[self.action][self.target.kind][1]
            target = Target(
                kind=self.target.kind,
                namespace=self.target.namespace,
                name=self.target.name,
                field=self.target.field or default_field,
            )
        return HookSpec(
            name=self.name,
            matchers=tuple(Matcher.parse(m) for m in self.match),
            action=self.action,
            target=target,
            step=self.step,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            cooldown=self.cooldown,
            undo_on_resolve=self.undo_on_resolve,
            url=self.url or "",
            send_resolved=self.send_resolved,
        )


class HooksConfig(BaseModel):
    """``POST /hooks/alertmanager`` and the hooks it may run. No hooks configured: the endpoint does not exist."""

    model_config = _FROZEN

    token_file: Path | None = None
    """File holding the bearer token Alertmanager must send (mount a Secret; re-read on change). Alertmanager side:
    ``http_config.authorization.credentials_file``. When unset, the token comes from ``$SNNRM_HOOKS_TOKEN``."""
    kubeconfig: Path | None = None
    """Deprecated alias of the daemon's top-level ``kubeconfig`` (which every apiserver client uses)."""
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Largest notification accepted: ~1 KB per alert, so 1 MiB holds about a thousand; set Alertmanager's
    ``max_alerts`` to stay below it."""
    dedup_ttl: float = Field(default=7 * 24 * 3600.0, gt=0.0)
    """Seconds a firing episode is remembered for dedup/undo; longer than any sane repeat_interval (default 4 h)."""
    dedup_max_entries: int = Field(default=10_000, ge=1)
    rules: list[HookConfig] = Field(default_factory=list)

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[HookConfig]) -> list[HookConfig]:
        names = [h.name for h in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"hook names must be unique; repeated: {', '.join(dupes)}")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    @property
    def needs_kube(self) -> bool:
        return any(h.action.scales for h in self.rules)

    def specs(self) -> tuple[HookSpec, ...]:
        return tuple(h.to_spec() for h in self.rules)
