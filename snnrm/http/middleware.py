"""aiohttp middleware shared by the daemon's and the controller's HTTP servers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from snnrm.obs.http_metrics import HttpMetrics

log = structlog.get_logger(__name__)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The last line of defence: any exception a handler did not turn into a 4xx becomes a JSON 500, with the
    traceback in the log (never in the response)."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http_handler_failed", method=request.method, path=request.path)
        return web.json_response({"error": "internal error; the details are in the log"}, status=500)


def middlewares(http_metrics: HttpMetrics | None) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """The middleware chain of both servers: request metrics outermost (they count the 500s below), then
    :func:`errors_as_json`."""
    return [errors_as_json] if http_metrics is None else [http_metrics.middleware, errors_as_json]
