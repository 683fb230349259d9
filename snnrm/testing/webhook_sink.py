"""A real HTTP server standing in for a webhook's target in tests: it records every JSON body it receives."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web


@asynccontextmanager
async def webhook_sink(path: str = "/notify") -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """Serve ``POST path`` on a free loopback port; yields (its URL, the bodies received so far, in order)."""
    got: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post(path, handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}{path}", got
    finally:
        await runner.cleanup()
