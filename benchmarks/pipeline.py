"""The telemetry pipeline's three size-and-speed targets, measured, printed against the targets.

1. **Ingest**: realistic frames of a 16,384-core node (128 Loihi 2-like chips x 128 cores, three quarters of the
   cores running split SNN jobs, background load, a hot spot, a congested link, a queue burst, telemetry glitches
   of every kind and a core failure) are recorded from ``sim_hw`` first, then folded through the whole pipeline
   as the node service does it: ``NodeMonitor.observe`` (validation, smoothing, health, capacity, change
   detection) and, when it reports a change, the device lists published to the feeds. The process is pinned to
   one CPU. Target: >= 5,000,000 core-samples/s.
2. **Scrape**: a child process plays the daemon at 4,096 cores (32 chips, jobs running, a fresh frame folded in
   every 100 ms like the sampler), serving ``/metrics`` at core granularity through the real aiohttp handler; the
   parent is Prometheus, scraping over TCP with aiohttp: OpenMetrics + gzip (what Prometheus 3 asks for) and
   text 0.0.4 uncompressed. Target: < 100 ms per scrape.
3. **RSS**: ``snnrm run --backend sim --sim-chips 128 --sim-cores 128`` in a subprocess against a kubelet
   stand-in in this process; VmRSS from ``/proc/PID/status`` once registered and settled, and again after a few
   scrapes at the daemon's default granularity; then again with placement on (node summary, plan hints, live
   remaps) against an in-memory apiserver over HTTP, so the Kubernetes client is loaded. Target: < 150 MB.

Numbers only; no asserts. Run: ``python -m benchmarks pipeline`` or ``python benchmarks/pipeline.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import multiprocessing as mp
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path

import aiohttp
import numpy as np
import structlog

from benchmarks.verdict import verdict
from sim_hw import (
    CoreFailure,
    HotSpot,
    LinkCongestion,
    QueueSaturation,
    Simulator,
    TelemetryGlitch,
    load_preset,
    networks,
)
from snnrm.backends.sim import frame_of, topology_of
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.monitor import NodeMonitor

INGEST_TARGET = 5_000_000.0
SCRAPE_TARGET_MS = 100.0
RSS_TARGET_MB = 150.0
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


# --- a realistic node ----------------------------------------------------------------------------------------


def build_sim(chips: int, *, seed: int = 0) -> Simulator:
    """``chips`` x 128 cores, ~3/4 busy with split SNN jobs, background load and scheduled faults of every kind."""
    sim = Simulator(load_preset("loihi2", chips=chips, cores_per_chip=128), seed=seed, dt=0.01)
    for job, placement in networks.mixed_in_core_order(sim.n_cores, 0.75):
        sim.add_job(job, placement)
    sim.set_background(core_rate=2.0e4, link_fraction=0.05)
    n = sim.n_cores
    sim.schedule(HotSpot(cores=(5, 6, 7), service_divisor=4.0), at=1.0, duration=3.0)
    busy_route = sim.route(0, int(sim.jobs()["dvs-0"][1][0]))
    if busy_route.size:
        sim.schedule(LinkCongestion(links=(int(busy_route[0]),), capacity_divisor=1000.0), at=2.0, duration=4.0)
    sim.schedule(QueueSaturation(cores=tuple(range(100, 116)), burst_factor=5.0), at=3.0, duration=2.0)
    glitches = (
        TelemetryGlitch(cores=tuple(range(n // 2, n // 2 + 64)), mode="nan"),
        TelemetryGlitch(cores=tuple(range(n // 2 + 64, n // 2 + 128)), mode="negative"),
        TelemetryGlitch(cores=tuple(range(n // 2 + 128, n // 2 + 192)), mode="stale"),
    )
    for glitch in glitches:
        sim.schedule(glitch, at=4.0, duration=1.0)
    sim.schedule(CoreFailure(cores=(n - 1,)), at=5.0)
    return sim


# --- 1. ingest ---------------------------------------------------------------------------------------------------


def ingest(chips: int = 128, frames: int = 80, repeats: int = 5) -> None:
    from snnrm.kubelet.feed import DeviceFeed  # the publish step the node service runs on a change

    sim = build_sim(chips)
    topo = topology_of(sim)
    blocks = ThroughputBlocks.plan(topo, block_keps=1000.0)
    recorded = []
    for _ in range(frames):
        sim.advance(10)  # 100 ms sampling period
        recorded.append(frame_of(sim))
    n = topo.n_cores
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    walls, changes = [], 0
    try:
        for _ in range(repeats):
            monitor = NodeMonitor(topo, blocks)
            feeds = {res: DeviceFeed(res, d) for res, d in monitor.devices().items()}
            changes = 0
            t0 = time.perf_counter()
            for f in recorded:
                if monitor.observe(f):
                    changes += 1
                    for res, d in monitor.devices().items():
                        feeds[res].publish(d)
            walls.append(time.perf_counter() - t0)
    finally:
        os.sched_setaffinity(0, before)
    rejected = int(monitor.rates.rejected_samples.sum())
    print(
        f"ingest: {n} cores x {frames} frames recorded from sim_hw (jobs on 3/4 of the cores, faults, glitches); "
        f"{changes} frames changed devices, {rejected} core-samples rejected; pinned to CPU {cpu}"
    )
    for label, wall in (("best", min(walls)), ("median", statistics.median(walls))):
        rate = n * frames / wall
        print(
            f"  {label:>6} of {repeats}: {wall / frames * 1e3:.2f} ms/frame = {rate / 1e6:.2f} M core-samples/s; "
            f"target >= {INGEST_TARGET / 1e6:.0f} M: ratio {rate / INGEST_TARGET:.2f} "
            f"({verdict(rate >= INGEST_TARGET)})"
        )


# --- 2. scrape ---------------------------------------------------------------------------------------------------


def _scrape_server(chips: int, port_out: mp.Queue[int], stop: MpEvent) -> None:
    """Child: a node of ``chips`` x 128 cores, frames folded every 100 ms, /metrics at core granularity."""
    from aiohttp import web
    from prometheus_client import ProcessCollector

    from snnrm.http.metrics import metrics_handler
    from snnrm.obs.exposition import MetricsRegistry
    from snnrm.obs.metrics import NodeCollector
    from snnrm.obs.rpc import RpcInstrumentation

    logging.disable(logging.WARNING)
    sim = build_sim(chips)
    topo = topology_of(sim)
    monitor = NodeMonitor(topo, ThroughputBlocks.plan(topo, block_keps=1000.0))
    for _ in range(30):
        sim.advance(10)
        monitor.observe(frame_of(sim))
    registry = MetricsRegistry()
    registry.register(NodeCollector(monitor, node=socket.gethostname(), granularity="core"))
    RpcInstrumentation(registry=registry, node=socket.gethostname())
    ProcessCollector(registry=registry)

    async def serve() -> None:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler(registry))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port_out.put(int(runner.addresses[0][1]))
        try:
            while not stop.is_set():  # the sampler: advance the chips and fold a frame every 100 ms
                t0 = time.perf_counter()
                sim.advance(10)
                monitor.observe(frame_of(sim))
                await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - t0)))
        finally:
            await runner.cleanup()

    asyncio.run(serve())


async def _scrape_times(url: str, scrapes: int, headers: dict[str, str]) -> tuple[list[float], int, int]:
    times: list[float] = []
    size = wire = 0
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        for i in range(scrapes + 2):
            t0 = time.perf_counter()
            async with http.get(url, headers=headers) as r:
                raw = await r.read()
                encoding = r.headers.get("Content-Encoding")
            t = time.perf_counter() - t0
            body = gzip.decompress(raw) if encoding == "gzip" else raw
            if i >= 2:  # two warm-ups
                times.append(t)
            size, wire = len(body), len(raw)
            await asyncio.sleep(0.05)
    return times, size, wire


def scrape(chips: int = 32, scrapes: int = 30) -> None:
    ctx = mp.get_context("spawn")
    port_q: mp.Queue[int] = ctx.Queue()
    stop = ctx.Event()
    child = ctx.Process(target=_scrape_server, args=(chips, port_q, stop), daemon=True)
    child.start()
    try:
        port = port_q.get(timeout=120)
        url = f"http://127.0.0.1:{port}/metrics"
        print(f"scrape: {chips * 128} cores, core granularity, server in its own process (sampler running)")
        for label, headers in (
            ("OpenMetrics + gzip (Prometheus 3)", {"Accept": PROMETHEUS_3_ACCEPT, "Accept-Encoding": "gzip"}),
            ("text 0.0.4, uncompressed", {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity"}),
        ):
            times, size, wire = asyncio.run(_scrape_times(url, scrapes, headers))
            ms = np.asarray(times) * 1e3
            p50, p99 = np.percentile(ms, [50, 99])
            print(
                f"  {label}: {size / 1e6:.1f} MB body ({wire / 1e6:.2f} MB on the wire); p50 {p50:.1f} ms, "
                f"p99 {p99:.1f} ms, max {ms.max():.1f} ms; target < {SCRAPE_TARGET_MS:.0f} ms: "
                f"p50 ratio {p50 / SCRAPE_TARGET_MS:.2f}, p99 ratio {p99 / SCRAPE_TARGET_MS:.2f} "
                f"({verdict(p99 < SCRAPE_TARGET_MS)})"
            )
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()


# --- 3. RSS ------------------------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _rss(chips: int, cores: int, scrapes: int, *, cluster: bool = False) -> None:
    """The daemon's RSS once registered and settled, and after scrapes. ``cluster``: with placement (node summary,
    plan hints, live remaps) on against an in-memory apiserver over HTTP, so the Kubernetes client is loaded too."""
    from snnrm.core.devices import NEURON_CORE
    from snnrm.core.summary import ANNOTATION
    from snnrm.kube.api import NODES
    from snnrm.kubelet.standin import KubeletStandIn
    from snnrm.testing.fake_apiserver import FakeApiServer

    with tempfile.TemporaryDirectory(prefix="snnrm-", dir="/tmp") as tmp:
        kdir = Path(tmp) / "dp"
        port = _free_port()
        async with KubeletStandIn(kdir) as kubelet, FakeApiServer() as apiserver:
            env = {**os.environ, "SNNRM_STATE_DIR": f"{tmp}/state", "SNNRM_CDI_DIR": f"{tmp}/cdi"}
            extra: list[str] = []
            if cluster:
                apiserver.api.add_node("rss-node")
                conf = Path(tmp) / "config.yaml"
                conf.write_text("placement:\n  enabled: true\n  node_name: rss-node\n")
                extra = ["--config", str(conf), "--kubeconfig", str(apiserver.kubeconfig(Path(tmp) / "kubeconfig"))]
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "snnrm",
                "run",
                "--backend",
                "sim",
                "--kubelet-dir",
                str(kdir),
                "--http",
                f"127.0.0.1:{port}",
                "--sim-chips",
                str(chips),
                "--sim-cores",
                str(cores),
                *extra,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                t0 = time.perf_counter()
                await kubelet.wait_capacity(NEURON_CORE, chips * cores, within=120)
                if cluster:  # the agent has connected and published: the client is loaded and in use
                    while ANNOTATION not in (apiserver.api.get_obj(NODES, "rss-node") or {})["metadata"].get(
                        "annotations", {}
                    ):
                        if time.perf_counter() - t0 > 120:
                            raise TimeoutError("the placement agent never published its node summary")
                        await asyncio.sleep(0.2)
                registered = time.perf_counter() - t0
                samples = [_rss_mb(proc.pid)]
                while len(samples) < 4 or abs(samples[-1] - samples[-4]) > 1.0:  # settled: flat over 3 s
                    await asyncio.sleep(1.0)
                    samples.append(_rss_mb(proc.pid))
                    if len(samples) > 30:
                        break
                settled = samples[-1]
                what = " with placement on (in-memory apiserver)" if cluster else ""
                print(
                    f"rss{what}: `snnrm run --backend sim --sim-chips {chips} --sim-cores {cores}` registered in "
                    f"{registered:.1f} s; VmRSS settled at {settled:.1f} MB after {len(samples) - 1} s; "
                    f"target < {RSS_TARGET_MB:.0f} MB: ratio {settled / RSS_TARGET_MB:.2f} "
                    f"({verdict(settled < RSS_TARGET_MB)})"
                )
                url = f"http://127.0.0.1:{port}/metrics"
                times, size, wire = await _scrape_times(
                    url, scrapes, {"Accept": PROMETHEUS_3_ACCEPT, "Accept-Encoding": "gzip"}
                )
                after = _rss_mb(proc.pid)
                print(
                    f"  after {scrapes + 2} scrapes at the daemon's default granularity ({size / 1e6:.1f} MB body, "
                    f"{wire / 1e6:.2f} MB gzip; p50 {statistics.median(times) * 1e3:.0f} ms): VmRSS {after:.1f} MB, "
                    f"ratio {after / RSS_TARGET_MB:.2f} ({verdict(after < RSS_TARGET_MB)})"
                )
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 30)


def rss(chips: int = 128, cores: int = 128, scrapes: int = 5) -> None:
    asyncio.run(_rss(chips, cores, scrapes))
    asyncio.run(_rss(chips, cores, scrapes, cluster=True))


def main() -> None:
    """Ingest rate, scrape time and RSS, each against its target."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.disable(logging.WARNING)
    ingest()
    scrape()
    rss()


if __name__ == "__main__":
    main()
