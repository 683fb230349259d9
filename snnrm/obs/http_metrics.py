"""Request counts and latency of the daemon's and the controller's HTTP servers, as one aiohttp middleware.

* ``snnrm_http_requests_total{[node,]route,method,code}``: every request a handler (or aiohttp's router) answered;
* ``snnrm_http_request_duration_seconds{[node,]route,method}``: how long the answer took, from the middleware's
  view (on the controller this is the scheduler extender's latency as the kube-scheduler sees it, minus the
  network).

The daemon's series carry its ``node`` label like every other family it exports; the controller's have none.

Labels are bounded whatever clients send: ``route`` is the route's template (``/sim/faults/{fault_id}``, never the
concrete path) or ``(unmatched)`` for any path no route serves, ``method`` is one of the standard methods or
``other``, ``code`` an HTTP status. Requests aiohttp refuses before routing (malformed request lines or headers)
never reach a middleware: those are the one warning per request that :mod:`snnrm.obs.logging` writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds: probes and extender verbs answer in about a millisecond; a /metrics scrape of 16,384 cores at core
granularity takes tens of milliseconds, and the kube-scheduler's default extender timeout is 5 s."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The route template that served ``request``, or :data:`UNMATCHED` (404/405 from the router)."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


def method_of(request: web.Request) -> str:
    """The request method when it is a standard one, else ``other`` (WebDAV's and other extension methods)."""
    return request.method if request.method in METHODS else "other"


class HttpMetrics:
    """The two families in an injected registry (no global state), and the middleware that fills them."""

    def __init__(self, registry: CollectorRegistry, *, node: str | None = None) -> None:
        self._node = () if node is None else (node,)
        first = [] if node is None else ["node"]
        self.requests = Counter(
            "snnrm_http_requests",
            "HTTP requests answered, by route template, method and status code.",
            [*first, "route", "method", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "snnrm_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            [*first, "route", "method"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Time and count the request; put it outermost so the 500s of inner middleware are counted too."""
        start = time.perf_counter()
        code = 500
        try:
            response = await handler(request)
        except web.HTTPException as e:
            code = e.status
            raise
        except asyncio.CancelledError:
            code = 499  # the client went away (nginx's convention): nothing was answered
            raise
        else:
            code = response.status
            return response
        finally:
            route, method = route_of(request), method_of(request)
            self.duration.labels(*self._node, route, method).observe(time.perf_counter() - start)
            self.requests.labels(*self._node, route, method, str(code)).inc()


__all__ = ["HTTP_BUCKETS", "UNMATCHED", "HttpMetrics", "method_of", "route_of"]
