"""A real Prometheus 3 scrapes ``/metrics``: once negotiating as it does by default (OpenMetrics 1.0.0) and once
restricted to text 0.0.4; both scrapes succeed and every sample lands, pod labels included."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families as parse_text

from snnrm.backends.sim import SimBackend
from snnrm.core.devices import NEURON_CORE
from snnrm.http.metrics import metrics_handler
from snnrm.kubelet.podresources import PodResourcesClient
from snnrm.node import NodeService
from snnrm.obs.exposition import Format, MetricsRegistry
from snnrm.obs.metrics import NodeCollector
from snnrm.obs.rpc import RpcInstrumentation
from snnrm.testing.fake_podresources import FakePodResourcesLister
from snnrm.testing.promstack import Prometheus, eventually
from snnrm.testing.tools import require_tool

JOBS = {"negotiated": None, "text": ["PrometheusText0.0.4"]}


@dataclass(eq=False)
class TwoJobPrometheus(Prometheus):
    """Prometheus with one scrape job per entry of :data:`JOBS` (``scrape_protocols`` None: Prometheus' default)."""

    target: str = ""
    protocols: dict[str, list[str] | None] = field(default_factory=dict)

    async def __aenter__(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        jobs: list[dict[str, Any]] = []
        for name, protocols in self.protocols.items():
            job: dict[str, Any] = {
                "job_name": name,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [self.target]}],
            }
            if protocols:
                job["scrape_protocols"] = protocols
            jobs.append(job)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
        await self._start(
            [
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        return self


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Scraped:
    prom: TwoJobPrometheus
    registry: MetricsRegistry
    content_types: dict[str, str]


def _recording(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], seen: dict[str, str]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def recorded(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        seen[request.headers.get("Accept", "")] = response.headers["Content-Type"]
        return response

    return recorded


@pytest.fixture
async def scraped(short_dir: Path) -> AsyncIterator[Scraped]:
    prometheus = require_tool("SNNRM_PROMETHEUS", "prometheus", "build-observability-tools.sh prometheus")
    backend = SimBackend(chips=2, cores_per_chip=16)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.05)
    sock = short_dir / "pr" / "kubelet.sock"
    registry = MetricsRegistry()
    seen: dict[str, str] = {}
    async with FakePodResourcesLister(sock) as fake, PodResourcesClient(sock, resources=node.feeds) as pods:
        fake.assign("ml", "trainer-0", "stage-1", NEURON_CORE, ["chip0-core3", "chip1-core0"])
        registry.register(NodeCollector(node, node="n1", granularity="core", pods=pods))
        registry.add_scrape_hook(pods.refresh)
        RpcInstrumentation(registry=registry, node="n1").duration.labels("n1", NEURON_CORE, "Allocate").observe(0.001)
        app = web.Application()
        app.router.add_get("/metrics", _recording(metrics_handler(registry), seen))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        target = f"127.0.0.1:{runner.addresses[0][1]}"
        tasks = [asyncio.create_task(backend.run()), asyncio.create_task(node.sample_forever())]
        try:
            await asyncio.wait_for(node.ready.wait(), 10)
            prom = TwoJobPrometheus(binary=prometheus, workdir=short_dir / "prom", target=target, protocols=JOBS)
            async with prom:
                yield Scraped(prom, registry, seen)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()


async def test_real_prometheus_ingests_both_formats(scraped: Scraped) -> None:
    prom = scraped.prom

    async def both_up() -> bool:
        targets = await prom.targets_up()
        return len(targets) == 2 and all(t["health"] == "up" and not t["lastError"] for t in targets)

    try:
        await eventually(both_up, within=30, what="both scrape jobs up")
        samples = [
            s.name
            for f in parse_text(scraped.registry.render(scraped.registry.snapshot(), Format.TEXT).decode())
            for s in f.samples
        ]
        expected = {job: len(samples) for job in JOBS}  # every sample we expose becomes a series, in either format
        for job in JOBS:

            async def ingested(job: str = job) -> bool:
                got = await prom.query(f'count by (__name__) ({{job="{job}", __name__=~"snnrm_.*"}})')
                return sum(int(g["value"][1]) for g in got) == expected[job]

            await eventually(ingested, within=15, what=f"{job}: all {expected[job]} samples ingested")
            cores = await prom.query(f'count(snnrm_core_healthy{{job="{job}"}})')
            assert int(cores[0]["value"][1]) == 32
            owned = await prom.query(f'snnrm_core_events_processed_total{{job="{job}", pod="trainer-0"}}')
            assert sorted(s["metric"]["core"] for s in owned) == ["chip0-core3", "chip1-core0"]
            assert await prom.query(f'snnrm_build_info{{job="{job}"}}')
            buckets = await prom.query(f'snnrm_device_plugin_rpc_duration_seconds_bucket{{job="{job}"}}')
            assert buckets
    except AssertionError:
        print(prom.log_tail())
        raise
    types = set(scraped.content_types.values())
    assert "application/openmetrics-text; version=1.0.0; charset=utf-8" in types
    assert "text/plain; version=0.0.4; charset=utf-8" in types
