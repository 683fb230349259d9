"""aiohttp application: ``/metrics``, ``/healthz``, ``/readyz``, ``/api/v1/node``, ``/sim/faults``.

The status page (``/``) and ``/api/v1/{topology,devices,history}`` live in :mod:`snnrm.http.status`.

Every request body is untrusted: bodies are capped, JSON is validated, and a bad request gets a 4xx with a
message that says what was wrong; nothing is changed by a rejected request.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from snnrm.backends.base import FaultInjection, FaultLimitError
from snnrm.core.health import Health, HealthReason
from snnrm.http import body
from snnrm.http.history import StatusHistory
from snnrm.http.metrics import metrics_handler
from snnrm.http.middleware import middlewares
from snnrm.http.status import setup_status
from snnrm.node import NodeService
from snnrm.obs.http_metrics import HttpMetrics
from snnrm.obs.timeline import Timeline

NODE = web.AppKey("node", NodeService)
SIM = web.AppKey("sim", FaultInjection)
REGISTRY = web.AppKey("registry", CollectorRegistry)
READY_CHECKS = web.AppKey("ready_checks", list[Callable[[], str | None]])


@dataclass(frozen=True, slots=True)
class FaultAccess:
    """Who may inject or clear simulator faults: nobody (``off``), clients on this host (``loopback``), or
    holders of a bearer token (``token``). Reading the fault list is always allowed."""

    mode: Literal["off", "loopback", "token"] = "loopback"
    token: bytes | None = None

    def refuse(self, request: web.Request) -> web.Response | None:
        """None when ``request`` may change faults, else the 403/401 answer."""
        if self.mode == "off":
            return _error(403, "fault injection is off (--sim-fault-injection off)")
        if self.mode == "loopback":
            peer = request.remote or ""
            try:
                local = ipaddress.ip_address(peer.split("%")[0]).is_loopback
            except ValueError:
                local = False
            return None if local else _error(403, "fault injection is only accepted from this host (loopback)")
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if self.token and scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), self.token):
            return None
        return _error(401, "fault injection needs the bearer token (SNNRM_SIM_FAULT_TOKEN)")


FAULT_ACCESS = web.AppKey("fault_access", FaultAccess)
log = structlog.get_logger(__name__)
_FAULT_ID = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
MAX_BODY = 64 * 1024
"""Largest request body accepted: a fault or hook payload is a few hundred bytes; anything bigger is abuse."""


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Deliberately checks nothing else, so a kubelet outage never kills us."""
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    """Readiness: hardware discovered, telemetry flowing, every device plugin registered with the kubelet."""
    problems = [p for check in request.app[READY_CHECKS] if (p := check()) is not None]
    if problems:
        return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
    return web.Response(text="ready\n")


async def node_state(request: web.Request) -> web.Response:
    """A JSON summary of the node: chips, health by core, devices by resource and state."""
    node = request.app[NODE]
    m = node.monitor
    topo = node.topology
    state = m.health.state
    unhealthy = np.flatnonzero(state != Health.HEALTHY)
    body: dict[str, Any] = {
        "backend": node.backend.name,
        "chips": topo.n_chips,
        "cores": topo.n_cores,
        "geometry": {"cols": topo.geometry.cols, "rows": topo.geometry.rows},
        "frames": m.frames,
        "telemetry_time": m.last_frame_time,
        "resources": {res: {"total": len(d.ids), "healthy": d.healthy_count} for res, d in node.devices().items()},
        "core_counts": node.core_counts(),
        "unhealthy_cores": [
            {
                "id": topo.ids[i],
                "state": Health(int(state[i])).name.lower(),
                "reasons": HealthReason.names(int(m.health.reasons[i])),
            }
            for i in unhealthy[:1000].tolist()
        ],
    }
    return web.json_response(body)


async def post_fault(request: web.Request) -> web.Response:
    """Inject a simulator fault: ``{"kind": "core_failure", "cores": [..], "at"?: s, "duration"?: s}``."""
    sim = request.app.get(SIM)
    if sim is None:
        return _error(404, "fault injection needs --backend sim")
    if (refused := request.app[FAULT_ACCESS].refuse(request)) is not None:
        return refused
    if request.content_type != "application/json":
        # A browser form post (text/plain, no preflight) from any page must not be able to inject faults.
        return _error(415, "Content-Type must be application/json")
    try:
        spec = body.loads(await request.read())
    except body.BodyError as e:
        return _error(400, str(e))
    if not isinstance(spec, dict):
        return _error(400, "body must be a JSON object")
    try:
        fault_id = sim.inject(spec)
    except FaultLimitError as e:
        return _error(429, str(e))
    except (ValueError, TypeError, KeyError, IndexError) as e:
        return _error(400, f"bad fault: {e}")
    return web.json_response({"id": fault_id}, status=201)


async def list_faults(request: web.Request) -> web.Response:
    """Faults injected and not yet cleared."""
    sim = request.app.get(SIM)
    if sim is None:
        return _error(404, "fault injection needs --backend sim")
    return web.json_response({"faults": sim.fault_list(), "sim_time": sim.sim_time})


async def delete_fault(request: web.Request) -> web.Response:
    """Reverse an injected fault by id."""
    sim = request.app.get(SIM)
    if sim is None:
        return _error(404, "fault injection needs --backend sim")
    if (refused := request.app[FAULT_ACCESS].refuse(request)) is not None:
        return refused
    raw_id = request.match_info["fault_id"]
    if not _FAULT_ID.fullmatch(raw_id):  # int() would accept " 1", "+1", "1_0" and non-ASCII digits
        return _error(400, f"fault id must be a positive decimal integer, got {raw_id!r}")
    try:
        sim.clear(int(raw_id))
    except KeyError:
        return _error(404, f"no fault {raw_id}")
    return web.Response(status=204)


def build_app(
    node: NodeService,
    *,
    registry: CollectorRegistry,
    ready_checks: list[Callable[[], str | None]],
    sim: FaultInjection | None = None,
    fault_access: FaultAccess = FaultAccess(),
    history: StatusHistory | None = None,
    timeline: Timeline | None = None,
    http_metrics: HttpMetrics | None = None,
) -> web.Application:
    """The aiohttp application; collaborators are injected (no globals), so tests build their own.

    ``http_metrics``: count and time every request (``snnrm_http_*`` in its registry)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares(http_metrics))
    app[NODE] = node
    app[REGISTRY] = registry
    app[READY_CHECKS] = ready_checks
    app[FAULT_ACCESS] = fault_access
    if sim is not None:
        app[SIM] = sim
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler(registry))
    app.router.add_get("/api/v1/node", node_state)
    app.router.add_post("/sim/faults", post_fault)
    app.router.add_get("/sim/faults", list_faults)
    app.router.add_delete("/sim/faults/{fault_id}", delete_fault)
    # Status page and JSON API; ``history`` is the instance whose run() the daemon's TaskGroup owns.
    setup_status(app, node=node, sim=sim, history=history, timeline=timeline)
    return app


SHUTDOWN_GRACE_S = 2.0
"""Seconds requests in flight get to finish when the process stops. aiohttp's default (60 s) let one client that
sent half a body hold a SIGTERM past Kubernetes' 30 s grace period, into a SIGKILL."""


async def serve(app: web.Application, host: str, port: int, *, on_started: Callable[[int], None] | None = None) -> None:
    """Serve ``app`` until cancelled, then shut the runner down; ``on_started`` gets the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        if on_started is not None:
            on_started(int(runner.addresses[0][1]))
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
