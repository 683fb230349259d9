"""``snnrm_http_*`` over real HTTP: the daemon's and the controller's servers count and time every request by route
template, with labels bounded whatever a client sends (concrete IDs, unknown paths, made-up methods)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from snnrm.backends.sim import SimBackend
from snnrm.core.cluster import ClusterIndex
from snnrm.http.extender import ExtenderContext, build_extender_app
from snnrm.http.middleware import middlewares
from snnrm.http.server import build_app, serve
from snnrm.node import NodeService
from snnrm.obs.http_metrics import UNMATCHED, HttpMetrics
from snnrm.testing.fake_cluster import node_summary, stage_pod


async def _started(app: web.Application) -> tuple[str, asyncio.Task[None]]:
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, "127.0.0.1", 0, on_started=started.set_result))
    return f"http://127.0.0.1:{await started}", task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _requests(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    return {
        (s.labels["route"], s.labels["method"], s.labels["code"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "snnrm_http_requests_total"
    }


def _observed(registry: CollectorRegistry, route: str, method: str) -> float | None:
    return registry.get_sample_value("snnrm_http_request_duration_seconds_count", {"route": route, "method": method})


@pytest.fixture
async def daemon_http() -> AsyncIterator[tuple[str, CollectorRegistry]]:
    backend = SimBackend(chips=1, cores_per_chip=16, speed=1.0)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.02)
    registry = CollectorRegistry()
    app = build_app(node, registry=registry, ready_checks=[], sim=backend, http_metrics=HttpMetrics(registry))
    base, task = await _started(app)
    try:
        yield base, registry
    finally:
        await _stop(task)


async def test_the_daemon_counts_requests_by_route_template_and_code(
    daemon_http: tuple[str, CollectorRegistry],
) -> None:
    base, registry = daemon_http
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
        for fault in ("17", "18", "not-a-number"):
            async with http.delete(f"{base}/sim/faults/{fault}") as r:
                assert r.status in (400, 404)
        for path in ("/nope", "/nope/1", "/api/v9/secret"):
            async with http.get(base + path) as r:
                assert r.status == 404
        async with http.request("PROPFIND", f"{base}/healthz") as r:  # a method no route serves
            assert r.status == 405
    counts = _requests(registry)
    assert counts[("/healthz", "GET", "200")] == 3
    assert counts[("/sim/faults/{fault_id}", "DELETE", "404")] == 2
    assert counts[("/sim/faults/{fault_id}", "DELETE", "400")] == 1
    assert counts[(UNMATCHED, "GET", "404")] == 3
    assert counts[(UNMATCHED, "other", "405")] == 1
    # Bounded: no concrete ID, path or made-up method ever becomes a label value.
    values = {v for key in counts for v in key}
    assert not values & {"17", "18", "not-a-number", "/nope", "/nope/1", "/api/v9/secret", "PROPFIND"}
    assert _observed(registry, "/healthz", "GET") == 3
    assert _observed(registry, "/sim/faults/{fault_id}", "DELETE") == 3


async def test_a_handler_that_fails_is_counted_as_the_500_it_answers() -> None:
    registry = CollectorRegistry()
    app = web.Application(middlewares=middlewares(HttpMetrics(registry)))

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app.router.add_get("/broken/{id}", broken)
    base, task = await _started(app)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/broken/7") as r:
            assert r.status == 500
            assert "internal error" in (await r.json())["error"]
    finally:
        await _stop(task)
    assert _requests(registry) == {("/broken/{id}", "GET", "500"): 1}


async def test_the_extender_verbs_latency_is_exported_for_the_controller() -> None:
    registry = CollectorRegistry()
    index = ClusterIndex()
    index.set_summary("n-a", node_summary(5000.0))
    ctx = ExtenderContext(index, clock=lambda: 5000.0)
    base, task = await _started(build_extender_app(ctx, http_metrics=HttpMetrics(registry)))
    try:
        async with aiohttp.ClientSession() as http:
            body = {"Pod": stage_pod("j", 0, 2, 4), "NodeNames": ["n-a"]}
            for verb in ("filter", "prioritize"):
                async with http.post(f"{base}/extender/{verb}", json=body) as r:
                    assert r.status == 200
            async with http.post(f"{base}/extender/filter", data=b"{not json") as r:
                assert r.status == 400
        metrics = {m.name: m for m in parse_text(generate_latest(registry).decode())}
    finally:
        await _stop(task)
    counts = _requests(registry)
    assert counts[("/extender/filter", "POST", "200")] == 1
    assert counts[("/extender/filter", "POST", "400")] == 1
    assert counts[("/extender/prioritize", "POST", "200")] == 1
    assert "snnrm_http_request_duration_seconds" in metrics  # and it parses as Prometheus text
