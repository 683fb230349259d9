"""The cluster-side controller process, wired from its configuration (the counterpart of :mod:`snnrm.app`).

``snnrm controller`` (:mod:`snnrm.cli_controller`) parses flags into a :class:`ControllerConfig` and calls
:func:`run`; this module builds the Kubernetes client, the :class:`~snnrm.cluster.controller.PlacementController`
(gang planner, reservations, leader election), the optional
:class:`~snnrm.cluster.reallocation.ReallocationController`, and serves the HTTP face: the scheduler extender's
verbs and ``/api/v1/placement`` (:mod:`snnrm.http.extender`), ``/healthz``, ``/readyz`` (cache synced),
``/api/v1/leader`` and ``/metrics``. Every root task runs in one TaskGroup until ``stop`` is set or one fails.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from snnrm.cluster.controller import ControllerSettings, PlacementController
from snnrm.cluster.reallocation import ReallocationController, ReallocationMetrics
from snnrm.http.extender import DEFAULT_PREFIX, ExtenderContext, build_extender_app, json_response
from snnrm.http.metrics import metrics_handler
from snnrm.http.server import serve
from snnrm.kube.client import KubeAsyncApi
from snnrm.obs.http_metrics import HttpMetrics
from snnrm.obs.tracing import setup_tracing

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Everything ``snnrm controller`` is told (flags and ``SNNRM_*``), already validated."""

    host: str = "127.0.0.1"
    port: int = 9500
    prefix: str = DEFAULT_PREFIX
    """URL prefix of the extender's filter and prioritize verbs."""
    kubeconfig: Path | None = None
    """None: the pod's service account."""
    settings: ControllerSettings = field(default_factory=ControllerSettings)
    reallocation: bool = True
    """Run the reallocation controller (evictions of degraded stages) while leading."""


def build_controller_app(
    controller: PlacementController, *, prefix: str = DEFAULT_PREFIX, registry: CollectorRegistry | None = None
) -> web.Application:
    """Extender verbs, ``/api/v1/placement``, ``/healthz``, ``/readyz`` (cache synced) and ``/metrics``."""
    app = build_extender_app(
        ExtenderContext(controller.index, clock=controller.clock, turned_away=controller.turned_away),
        prefix=prefix,
        http_metrics=None if registry is None else HttpMetrics(registry),
    )

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if not controller.cache.synced.is_set():
            return web.Response(status=503, text="cluster cache not synced yet\n")
        return web.Response(text="ready\n")

    async def leader(request: web.Request) -> web.Response:
        return json_response({"identity": controller.settings.identity, "leading": controller.elector.leading.is_set()})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/leader", leader)
    if registry is not None:
        app.router.add_get("/metrics", metrics_handler(registry))
    return app


async def run_controller(
    controller: PlacementController,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    prefix: str = DEFAULT_PREFIX,
    registry: CollectorRegistry | None = None,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Serve HTTP and run ``controller`` until ``stop`` is set or a root task fails (then it raises)."""
    app = build_controller_app(controller, prefix=prefix, registry=registry)

    async def stopper() -> None:
        await stop.wait()
        raise _StopError

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve(app, host, port, on_started=on_started), name="controller-http")
            tg.create_task(controller.run(), name="placement-controller")
            tg.create_task(stopper(), name="stop")
    except* _StopError:
        log.info("controller_stopped")


async def run(
    config: ControllerConfig, *, stop: asyncio.Event, on_started: Callable[[int], None] | None = None
) -> None:
    """Connect to the apiserver, build the controllers and run them with their HTTP face until ``stop``.

    Raises :class:`~snnrm.kube.api.KubeConfigError` when no usable kubeconfig or service account is found.
    """
    registry = CollectorRegistry(auto_describe=True)
    tracing = setup_tracing(node=config.settings.identity)  # off unless OTEL_* asks for it
    try:
        async with await KubeAsyncApi.connect(config.kubeconfig) as api:
            ctl = PlacementController(api, config.settings)
            if config.reallocation:
                realloc = ReallocationController(
                    api,
                    ctl.cache,
                    ctl.recorder,
                    metrics=ReallocationMetrics(registry),
                    dry_run=config.settings.dry_run,
                    tracer=tracing.tracer,
                )
                ctl.extra_leader_work.append(realloc.run)
            await run_controller(
                ctl,
                host=config.host,
                port=config.port,
                stop=stop,
                prefix=config.prefix,
                registry=registry,
                on_started=on_started,
            )
    finally:
        await asyncio.to_thread(tracing.shutdown)


class _StopError(Exception):
    """Raised inside the TaskGroup to cancel every root task on a stop request."""
