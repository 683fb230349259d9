"""The controller process as ``snnrm controller`` runs it (snnrm/controller_app.py), against the in-memory
apiserver over HTTP: it connects through a kubeconfig, syncs, leads, serves its probes and extender, and stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import aiohttp

from snnrm.testing.fake_apiserver import FakeApiServer


async def _get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with http.get(url) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_the_controller_app_serves_leads_and_stops(
    controller_process: Callable[[FakeApiServer, str], AbstractAsyncContextManager[str]],
) -> None:
    async with (
        FakeApiServer() as apiserver,
        controller_process(apiserver, "replica-a") as base,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(200):
            ready, _ = await _get_json(http, base + "/readyz")
            status, leader = await _get_json(http, base + "/api/v1/leader")
            if ready == 200 and isinstance(leader, dict) and leader["leading"]:
                break
            await asyncio.sleep(0.05)
        assert (ready, leader) == (200, {"identity": "replica-a", "leading": True})
        status, placement = await _get_json(http, base + "/api/v1/placement")
        assert status == 200
        assert isinstance(placement, dict)
        async with http.get(base + "/metrics") as r:
            assert r.status == 200
        async with http.post(base + "/extender/filter", data=b"[") as r:
            assert r.status == 400  # the extender verbs are served under the default prefix
