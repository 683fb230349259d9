"""``GET /metrics``: Prometheus text 0.0.4 or OpenMetrics 1.0.0 by content negotiation, gzip when accepted.

With a :class:`~snnrm.obs.exposition.MetricsRegistry` the scrape hooks run and the array-backed collectors
snapshot on the event loop, then the body is streamed (chunked): each batch of families is rendered, and
gzip-compressed when the client accepts it, in a worker thread. Level-1 gzip: Prometheus asks for it on every
scrape, and a large node's exposition shrinks ~10x for a few milliseconds of CPU. Any other registry is rendered
whole by prometheus_client, also off the loop.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry

from snnrm.obs.exposition import MetricsRegistry, encode_plain, negotiate

GZIP_MIN_BYTES = 4096
"""Smaller bodies go uncompressed: gzip's header and a thread hop cost more than they save."""
GZIP_LEVEL = 1


def _accepts_gzip(header: str) -> bool:
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def metrics_handler(registry: CollectorRegistry) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The ``/metrics`` handler for ``registry``."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        fmt = negotiate(request.headers.get(hdrs.ACCEPT))
        headers = {hdrs.CONTENT_TYPE: fmt.content_type, hdrs.VARY: "Accept, Accept-Encoding"}
        use_gzip = _accepts_gzip(request.headers.get(hdrs.ACCEPT_ENCODING, ""))
        if not isinstance(registry, MetricsRegistry):
            body = await asyncio.to_thread(encode_plain, registry, fmt)
            if use_gzip and len(body) >= GZIP_MIN_BYTES:
                body = await asyncio.to_thread(gzip.compress, body, GZIP_LEVEL)
                headers[hdrs.CONTENT_ENCODING] = "gzip"
            return web.Response(body=body, headers=headers)
        families = await registry.prepare()  # hooks and snapshot: a failure here is still a clean 500
        encode = None
        if use_gzip:
            headers[hdrs.CONTENT_ENCODING] = "gzip"
            encode = _Gzip().chunk
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        async for chunk in registry.chunks(families, fmt, encode=encode):
            if chunk:
                await response.write(chunk)
        if encode is not None:
            await response.write(encode(b"", final=True))
        await response.write_eof()
        return response

    return metrics


class _Gzip:
    """One gzip member written chunk by chunk (used from one thread at a time)."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def chunk(self, data: bytes, *, final: bool = False) -> bytes:
        out = self._z.compress(data)
        return out + self._z.flush() if final else out
