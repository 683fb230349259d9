"""``POST /hooks/alertmanager``: Alertmanager's webhook receiver that drives the autoscaling hooks.

The endpoint can change replica counts in the cluster, so everything about the request is checked before anything
happens, in this order: a bearer token (constant-time compare; the token file is re-read when it changes, so a
rotated Secret takes effect without a restart), the content type, the size (the body is streamed and cut off at
``max_body_bytes``), the JSON, and the payload's shape. Each rejection is a 4xx with a message saying what was
wrong, is counted in ``snnrm_hook_notifications_total{result}`` and changes nothing.

Answers: 200 with the outcome of every (hook, alert) pair; 503 when an action failed transiently, so that
Alertmanager re-sends (the planner's dedup makes that safe for the pairs that did succeed).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web

from snnrm.cluster.hooks import HookRunner
from snnrm.config import ConfigError
from snnrm.config_hooks import HooksConfig
from snnrm.core.hooks import HookPlanner, Outcome, PayloadError, parse_notification
from snnrm.http import body as bodies
from snnrm.kube.api import ClusterApi

log = structlog.get_logger(__name__)

PATH = "/hooks/alertmanager"


@dataclass(eq=False)
class TokenSource:
    """The bearer token Alertmanager must present: from a file (re-read when its mtime changes) or a fixed value."""

    file: Path | None = None
    value: str | None = None
    _cached: tuple[float, bytes] | None = field(default=None, init=False)

    def current(self) -> bytes | None:
        """The token, or None if none is available (then every request is refused: fail closed)."""
        if self.file is None:
            return self.value.encode() if self.value else None
        try:
            mtime = self.file.stat().st_mtime
            if self._cached is None or self._cached[0] != mtime:
                self._cached = (mtime, self.file.read_bytes().strip())
        except OSError as e:
            log.warning("hook_token_unreadable", file=str(self.file), error=str(e))
            return None
        return self._cached[1] or None


class HookSetupError(ConfigError):
    """Hooks are configured but cannot work (no token, no Kubernetes client); the daemon refuses to start."""


@dataclass(eq=False)
class HookEndpoint:
    """What the route needs: the runner that acts, the token that guards it, and the body cap."""

    runner: HookRunner
    token: TokenSource
    max_body_bytes: int = 1024 * 1024

    async def aclose(self) -> None:
        await self.runner.aclose()


async def build_endpoint(
    cfg: HooksConfig,
    *,
    node: str,
    kube: ClusterApi | None = None,
    token: str | None = None,
) -> HookEndpoint:
    """The endpoint for ``cfg`` (which must have hooks). ``kube`` is the Kubernetes client the app made (from
    ``hooks.kubeconfig`` or in cluster), required when a hook scales something; ``token`` (from
    ``$SNNRM_HOOKS_TOKEN`` at the edge) is used when ``cfg.token_file`` is unset."""
    source = TokenSource(file=cfg.token_file, value=None if cfg.token_file else token)
    if source.current() is None:
        where = f"token_file {cfg.token_file}" if cfg.token_file else "$SNNRM_HOOKS_TOKEN"
        raise HookSetupError(f"hooks are configured but no bearer token is available ({where} empty or unreadable)")
    for rule in cfg.rules:  # a webhook's own token: found missing at start, not at the first alert
        if rule.token_file is not None and TokenSource(file=rule.token_file).current() is None:
            raise HookSetupError(f"hook {rule.name}: token_file {rule.token_file} is empty or unreadable")
    if kube is None and cfg.needs_kube:
        raise HookSetupError("scaling hooks need the Kubernetes API, and no client was given")
    runner = HookRunner(
        planner=HookPlanner(cfg.specs(), ttl=cfg.dedup_ttl, max_entries=cfg.dedup_max_entries),
        kube=kube,
        node=node,
        webhook_tokens={h.name: h.token_file for h in cfg.rules if h.token_file is not None},
    )
    return HookEndpoint(runner=runner, token=source, max_body_bytes=cfg.max_body_bytes)


HOOKS = web.AppKey("hooks", HookEndpoint)


def _reject(ep: HookEndpoint, status: int, result: str, message: str) -> web.Response:
    ep.runner.notifications[result] += 1
    log.warning("hook_request_rejected", status=status, result=result, reason=message)
    headers = {"WWW-Authenticate": 'Bearer realm="snnrm-hooks"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it exceeds ``limit`` bytes (never buffers more than limit + one chunk)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(64 * 1024):
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def alertmanager_webhook(request: web.Request) -> web.Response:
    """Receive one Alertmanager notification and run the configured hooks it matches."""
    ep = request.app[HOOKS]
    expected = ep.token.current()
    if expected is None:
        return _reject(ep, 503, "no-token", "the hook token is not available on this daemon; refusing all requests")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected):
        return _reject(ep, 401, "unauthorized", "a valid bearer token is required")
    if request.content_type != "application/json":
        return _reject(ep, 415, "unsupported-media-type", f"expected application/json, got {request.content_type}")
    raw = await _read_capped(request, ep.max_body_bytes)
    if raw is None:
        return _reject(ep, 413, "too-large", f"body larger than {ep.max_body_bytes} bytes (set max_alerts)")
    try:
        body = bodies.loads(raw)
    except bodies.BodyError as e:
        return _reject(ep, 400, "bad-request", str(e))
    try:
        notification = parse_notification(body)
    except PayloadError as e:
        return _reject(ep, 400, "bad-request", f"not an Alertmanager webhook v4 payload: {e}")
    results = await ep.runner.handle(notification)
    retry = any(r.outcome is Outcome.RETRY for r in results)
    ep.runner.notifications["retry" if retry else "ok"] += 1
    log.info(
        "hook_notification",
        receiver=notification.receiver,
        group_key=notification.group_key,
        status=notification.status,
        alerts=len(notification.alerts),
        results=len(results),
        retry=retry,
    )
    return web.json_response({"results": [r.as_json() for r in results]}, status=503 if retry else 200)


def setup_hooks(app: web.Application, endpoint: HookEndpoint) -> None:
    """Add ``POST /hooks/alertmanager`` to ``app``; the endpoint's webhook session closes with the app (the
    Kubernetes client is the app module's, which closes it)."""
    app[HOOKS] = endpoint
    app.router.add_post(PATH, alertmanager_webhook)

    async def _close(_: web.Application) -> None:
        await endpoint.aclose()

    app.on_cleanup.append(_close)


def token_from_env() -> str | None:
    """``$SNNRM_HOOKS_TOKEN``: the token when no ``hooks.token_file`` is configured (read at the edge, once)."""
    return os.environ.get("SNNRM_HOOKS_TOKEN") or None
