"""``GET /metrics`` over real HTTP: content negotiation, gzip, pod labels from a fake PodResources server, and the
whole exposition read back with the Prometheus text parser and the OpenMetrics parser."""

from __future__ import annotations

import asyncio
import gzip
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from snnrm.backends.sim import SimBackend
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.http.metrics import metrics_handler
from snnrm.http.server import build_app
from snnrm.kubelet.podresources import PodResourcesClient
from snnrm.node import NodeService
from snnrm.obs.exposition import MetricsRegistry
from snnrm.obs.metrics import NodeCollector
from snnrm.obs.rpc import RpcInstrumentation
from snnrm.testing.fake_podresources import FakePodResourcesLister

# prometheus_client annotates its text-format parser but not this OpenMetrics one: the same function, typed alike.
parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families

PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass
class Served:
    base: str
    node: NodeService
    pods: FakePodResourcesLister


@pytest.fixture
async def served(short_dir: Path) -> AsyncIterator[Served]:
    backend = SimBackend(chips=2, cores_per_chip=16, speed=1.0)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.02)
    registry = MetricsRegistry()
    sock = short_dir / "pod-resources" / "kubelet.sock"
    async with FakePodResourcesLister(sock) as fake, PodResourcesClient(sock, resources=node.feeds) as client:
        registry.register(NodeCollector(node, node="n1", granularity="core", pods=client))
        registry.add_scrape_hook(client.refresh)
        RpcInstrumentation(registry=registry, node="n1")
        app = build_app(node, registry=registry, ready_checks=[], sim=backend)
        runner, base = await _serve(app)
        tasks = [asyncio.create_task(backend.run()), asyncio.create_task(node.sample_forever())]
        await asyncio.wait_for(node.ready.wait(), 10)
        try:
            yield Served(base, node, fake)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runner.cleanup()


async def _get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """GET without compression unless asked (aiohttp's client offers gzip by default)."""
    headers = {"Accept-Encoding": "identity", **headers}
    async with aiohttp.ClientSession(auto_decompress=False) as http, http.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def test_prometheus_3_gets_openmetrics(served: Served) -> None:
    status, headers, body = await _get(served.base + "/metrics", Accept=PROMETHEUS_3_ACCEPT)
    assert status == 200
    assert headers["Content-Type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}
    assert families["snnrm_core_events_processed"].type == "counter"
    assert families["snnrm_core_unhealthy"].type == "info"
    assert families["snnrm_device_plugin_rpc_duration_seconds"].type == "histogram"
    assert len(families["snnrm_core_healthy"].samples) == 32


async def test_plain_clients_get_text_0_0_4(served: Served) -> None:
    for accept in ("text/plain;version=0.0.4", "*/*", ""):
        status, headers, body = await _get(served.base + "/metrics", Accept=accept)
        assert status == 200
        assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in parse_text(body.decode())}
        healthy = {s.labels["core"]: s.value for s in families["snnrm_core_healthy"].samples}
        assert len(healthy) == 32
        assert set(healthy.values()) <= {0.0, 1.0}


async def test_gzip_when_accepted(served: Served) -> None:
    _, headers, body = await _get(served.base + "/metrics", **{"Accept-Encoding": "gzip, deflate"})
    assert headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in headers["Vary"]
    plain = gzip.decompress(body).decode()
    assert "snnrm_core_event_queue_depth{" in plain
    _, headers, _ = await _get(served.base + "/metrics", **{"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in headers


async def test_allocated_cores_are_labelled_with_their_pod(served: Served) -> None:
    served.pods.assign("ml", "trainer-0", "stage-1", NEURON_CORE, ["chip0-core3", "chip1-core0"])
    served.pods.assign("ml", "trainer-0", "stage-1", EVENT_THROUGHPUT, [served.node.blocks.ids[0]])
    _, _, body = await _get(served.base + "/metrics")
    families = {f.name: f for f in parse_text(body.decode())}
    owners = {
        s.labels["core"]: (s.labels["namespace"], s.labels["pod"], s.labels["container"])
        for s in families["snnrm_core_events_processed"].samples
        if "pod" in s.labels
    }
    assert owners == {"chip0-core3": ("ml", "trainer-0", "stage-1"), "chip1-core0": ("ml", "trainer-0", "stage-1")}
    held = {(s.labels["resource"], s.labels["chip"]): s.value for s in families["snnrm_container_devices"].samples}
    assert held == {(NEURON_CORE, "0"): 1, (NEURON_CORE, "1"): 1, (EVENT_THROUGHPUT, "0"): 1}
    assert families["snnrm_pod_resources_available"].samples[0].value == 1


async def test_fault_shows_in_the_next_scrape(served: Served) -> None:
    sim = served.node.backend
    assert isinstance(sim, SimBackend)
    sim.inject({"kind": "core-failure", "chip": 1, "core": 2})
    for _ in range(100):
        _, _, body = await _get(served.base + "/metrics")
        families = {f.name: f for f in parse_text(body.decode())}
        why = [s.labels for s in families["snnrm_core_unhealthy_info"].samples]
        if why:
            break
        await asyncio.sleep(0.02)
    assert [(w["core"], w["state"], w["reason"]) for w in why] == [("chip1-core2", "unhealthy", "failed")]
    healthy = {s.labels["core"]: s.value for s in families["snnrm_core_healthy"].samples}
    assert healthy["chip1-core2"] == 0


async def test_any_prometheus_client_registry_is_served() -> None:
    registry = CollectorRegistry()
    Counter("snnrm_plain", "A plain counter.", registry=registry).inc()
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    runner, base = await _serve(app)
    try:
        _, headers, body = await _get(base + "/metrics", Accept="application/openmetrics-text; version=1.0.0")
        assert headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert "snnrm_plain_total 1.0" in body.decode()
        _, headers, body = await _get(base + "/metrics")
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    finally:
        await runner.cleanup()
