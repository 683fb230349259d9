"""Hard fault in the chip -> the ListAndWatch message that reports it, at 16,384 cores.

The daemon runs in process on a 128-chip x 128-core simulated node (real gRPC server on a unix socket, the
telemetry sampler and the simulator clock running as usual). A client in another process (as the kubelet is)
holds ListAndWatch open and timestamps each message on arrival; the benchmark fails one core at a time through
the simulator and measures from the fault to the first message in which that core is Unhealthy.
Target (README, Results): p99 < 5 ms. Each part pools ``ROUNDS`` daemons of ``FAULTS`` faults (600 in all), so its p99
is not one host hiccup.

Beside it, the floor: a trivial ListAndWatch server in the same process hands the daemon's last message (the same
bytes, ~0.7 MB at 16,384 cores) to the same reader, at the same pace, and the time from handing it over to its
arrival is what gRPC, HTTP/2 flow control and the two processes cost on this machine before the daemon does
anything. The ratio to the floor says how much the daemon adds.

Then the same with stages placed (``stages``, default 300): split jobs run on the simulated cores and the
daemon's live-remap reallocator (:class:`snnrm.cluster.remap.NodeReallocator`, as ``placement.enabled`` runs it)
makes its pass over them on every telemetry frame, on the same event loop as the ListAndWatch send. Its verdicts go
nowhere (no apiserver here); its moves are real (a failed core under a stage is remapped, as on a node).

Last, the same while another process scrapes /metrics every second (``scrape_every``; Prometheus's default is a
minute, 15 s is common): the exposition at 16,384 cores renders in a worker thread for tens of milliseconds, and the
loop must get the GIL back from it in time (the daemon's switch interval, ``snnrm.app.LOOP_SWITCH_INTERVAL_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import random
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import numpy as np

from benchmarks.verdict import verdict
from sim_hw import networks
from snnrm.app import Daemon
from snnrm.backends.sim import SimBackend, topology_of
from snnrm.cluster.remap import LocalStage, NodeReallocator, NullReporter, RemapLedger
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.core.placement import StageDemand
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.wire import DEVICE_PLUGIN_SERVICE, REGISTRATION_SERVICE, ListAndWatchEncoder, plugin_socket_name
from snnrm.obs.logging import configure_logging

TARGET_P99_MS = 5.0
"""Fault -> ListAndWatch p99 at 16,384 cores (the fleet-scale issue's node target)."""


def _raw(b: bytes) -> bytes:
    return b


async def _serve_bytes(sock: Path, service: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.aio.Server:
    """A started gRPC server on unix socket ``sock`` answering one method with raw bytes."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    return server


async def _accept(request: bytes, context: object) -> bytes:
    return b""  # an empty v1beta1.Empty


def _read_stream(sock: str, out: Connection) -> None:
    """Child process: hold ListAndWatch open; per message send (arrival time, IDs reported Unhealthy)."""
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        stream = channel.unary_stream(
            f"/{DEVICE_PLUGIN_SERVICE}/ListAndWatch",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=lambda b: b,  # stamp the arrival before parsing
        )(api_pb2.Empty())
        for raw in stream:
            t = time.perf_counter()
            msg = api_pb2.ListAndWatchResponse.FromString(raw)
            out.send((t, {d.ID for d in msg.devices if d.health == "Unhealthy"}))


def _start_reader(sock: Path) -> tuple[Connection, mp.process.BaseProcess]:
    """The stand-in kubelet in its own process (receiving and parsing 16k-device messages does not share the
    measured event loop; perf_counter is CLOCK_MONOTONIC, comparable across processes)."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    reader = ctx.Process(target=_read_stream, args=(str(sock), child), name="snnrm-bench-kubelet")
    reader.start()
    return parent, reader


async def _floor(message: bytes, sends: int) -> list[float]:
    """Hand-over -> arrival of ``message`` on a ListAndWatch stream from a server that does nothing else."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def list_and_watch(request: bytes, context: object) -> AsyncIterator[bytes]:
        while True:
            yield await queue.get()

    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "floor.sock"
        server = await _serve_bytes(
            sock,
            DEVICE_PLUGIN_SERVICE,
            "ListAndWatch",
            grpc.unary_stream_rpc_method_handler(list_and_watch, request_deserializer=_raw, response_serializer=_raw),
        )
        parent, reader = _start_reader(sock)
        try:
            queue.put_nowait(message)
            await asyncio.to_thread(parent.recv)
            await asyncio.sleep(0.5)
            rng = random.Random(0)
            latencies = []
            for _ in range(sends):
                await asyncio.sleep(rng.uniform(0.02, 0.08))
                queue.put_nowait(message)
                t0 = time.perf_counter()
                t1, _ = await asyncio.to_thread(parent.recv)
                latencies.append(t1 - t0)
        finally:
            reader.kill()
            reader.join(10)
            await server.stop(None)
        return latencies


@dataclass(eq=False)
class _PlacedStages:
    """StageSource: the stages put on the simulator, at the cores their last remap gave them."""

    ledger: RemapLedger
    placed: list[LocalStage]

    def stages(self) -> list[LocalStage]:
        topo = self.ledger.topology
        out = []
        for s in self.placed:
            rec = self.ledger.current(s.namespace, s.pod, s.uid)
            if rec is not None:
                s = replace(s, cores=np.sort(topo.indices(rec.cores)))
            out.append(s)
        return out


def _place_stages(backend: SimBackend, want: int) -> list[LocalStage]:
    """Whole jobs of the measured networks on the next free cores in index order until ``want`` stages run."""
    sim = backend.sim
    topo = topology_of(sim)
    placed: list[LocalStage] = []
    fill = 0.05
    while True:
        jobs = networks.mixed_in_core_order(topo.n_cores, fill)
        if sum(len(j.stages) for j, _ in jobs) >= want or fill >= 0.95:
            break
        fill += 0.05
    for job, ranges in jobs:
        if len(placed) >= want:
            break
        sim.add_job(job, [list(r) for r in ranges])
        demands = tuple(StageDemand(s.cores) for s in job.stages)
        for i, r in enumerate(ranges):
            ids = tuple(topo.ids[c] for c in r)
            cores = np.arange(r.start, r.stop, dtype=np.int64)
            pod = f"{job.name}-stage{i}"
            placed.append(LocalStage("bench", pod, pod, job.name, i, demands, ids, cores, live_remap=True))
    return placed


PROMETHEUS_SCRAPE_HEADERS = {
    # What Prometheus 3 sends by default (prometheus/prometheus scrape/scrape.go: its Accept header, and gzip): the
    # body is OpenMetrics, gzip-compressed by the daemon (0.5 MB at 16,384 cores instead of 10.5 MB of text).
    "Accept": (
        "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
        "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
        "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
    ),
    "Accept-Encoding": "gzip",
}


def _scrape_forever(url: str, every: float) -> None:
    """Child process: GET ``url`` (the daemon's /metrics, as Prometheus does) every ``every`` seconds."""
    import urllib.request

    request = urllib.request.Request(url, headers=PROMETHEUS_SCRAPE_HEADERS)
    while True:
        t = time.monotonic()
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=30) as r:
            r.read()
        time.sleep(max(0.0, every - (time.monotonic() - t)))


async def _measure(
    chips: int, cores: int, faults: int, stages: int = 0, scrape_every: float = 0.0
) -> tuple[list[float], int, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            backend="sim",
            kubelet_dir=Path(tmp) / "dp",
            http="127.0.0.1:0",
            sim_chips=chips,
            sim_cores=cores,
            state_dir=Path(tmp) / "state",
            cdi_dir=Path(tmp) / "cdi",
        )
        # A kubelet that accepts Register and never dials back: the plugin serves once kubelet.sock exists, and
        # the benchmark's own client is the only ListAndWatch reader (a stand-in kubelet parsing 16k-device
        # messages in this process would be measured too).
        config.kubelet_dir.mkdir(parents=True)
        kubelet = await _serve_bytes(
            config.kubelet_dir / "kubelet.sock",
            REGISTRATION_SERVICE,
            "Register",
            grpc.unary_unary_rpc_method_handler(_accept, request_deserializer=_raw, response_serializer=_raw),
        )
        daemon = await Daemon.create(config)
        backend = daemon.backend
        assert isinstance(backend, SimBackend)
        stop = asyncio.Event()
        run = asyncio.create_task(daemon.run(stop=stop))
        sock = config.kubelet_dir / plugin_socket_name(NEURON_CORE)
        while not sock.exists():  # noqa: ASYNC110 - a socket file appearing has no event to await
            await asyncio.sleep(0.01)
        await daemon.node.ready.wait()
        realloc_task: asyncio.Task[None] | None = None
        if stages:
            ledger = RemapLedger(config.state_dir, daemon.node.topology)
            source = _PlacedStages(ledger, _place_stages(backend, stages))
            booked = np.zeros(daemon.node.topology.n_cores, dtype=bool)
            for st in source.placed:
                booked[st.cores] = True
            realloc = NodeReallocator(
                daemon.node,
                source,
                NullReporter(),  # no apiserver here: the verdicts' API calls are not measured
                ledger,
                lambda: booked,
                inter_chip_weight=backend.inter_chip_weight,
            )
            realloc_task = asyncio.create_task(realloc.run())  # cancelled and awaited below
        scraper: mp.process.BaseProcess | None = None
        if scrape_every:
            while daemon.http_port is None:  # noqa: ASYNC110 - the server reports its port once bound
                await asyncio.sleep(0.01)
            url = f"http://127.0.0.1:{daemon.http_port}/metrics"
            scraper = mp.get_context("spawn").Process(target=_scrape_forever, args=(url, scrape_every), daemon=True)
            scraper.start()
        parent, reader = _start_reader(sock)
        try:
            await asyncio.to_thread(parent.recv)  # the initial full list
            await asyncio.sleep(0.5)
            rng = random.Random(0)
            order = rng.sample(range(daemon.node.topology.n_cores), daemon.node.topology.n_cores)
            ids = daemon.node.topology.ids
            reported: set[str] = set()
            latencies: list[float] = []
            wrong = 0
            for _ in range(faults):
                await asyncio.sleep(rng.uniform(0.02, 0.08))  # land at every phase of the sampling period
                while parent.poll():  # messages sent since (a remap lends cores: they are advertised Unhealthy)
                    reported = parent.recv()[1]
                    wrong += 1
                # A core the kubelet already sees Unhealthy changes nothing when it fails: no message is due.
                core = next(c for c in order if ids[c] not in reported)
                order.remove(core)
                backend.inject({"kind": "core_failure", "cores": [core]})
                # The fault happens when the simulator applies it: inject returns right after pushing the event
                # (its own bookkeeping, ~2 ms at 16,384 cores, is the hardware's, not the daemon's).
                t0 = time.perf_counter()
                while True:
                    t1, unhealthy = await asyncio.to_thread(parent.recv)
                    reported = unhealthy
                    if ids[core] in unhealthy:
                        latencies.append(t1 - t0)
                        break
                    wrong += 1  # a message that did not yet carry the fault (e.g. a capacity change)
            last = daemon.node.feeds[NEURON_CORE].current
            assert last is not None
            message = ListAndWatchEncoder().encode(last)
        finally:
            reader.kill()
            reader.join(10)
            if scraper is not None:
                scraper.kill()
                scraper.join(10)
            if realloc_task is not None:
                realloc_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await realloc_task
        stop.set()
        await run
        await kubelet.stop(None)
        return latencies, wrong, message


def _print_run(title: str, latencies: list[float], other: int) -> np.ndarray:
    """Print one run's percentiles and verdict; returns its latencies in ms."""
    ms = np.asarray(latencies) * 1e3
    p50, p99 = np.percentile(ms, [50, 99])
    print(f"{title}: {len(ms)} faults ({other} other messages in between)")
    print(
        f"  p50 {p50:.2f} ms  p99 {p99:.2f} ms  max {ms.max():.2f} ms; "
        f"{np.mean(ms >= TARGET_P99_MS):.2%} of faults at or over {TARGET_P99_MS:g} ms"
    )
    print(f"  target p99 < {TARGET_P99_MS} ms: ratio {p99 / TARGET_P99_MS:.2f} ({verdict(p99 < TARGET_P99_MS)})")
    return ms


FAULTS = 200
"""Faults per daemon: each fails a core for good, and the simulator takes at most 256 live faults."""
ROUNDS = 3
"""Daemons per part, their faults pooled. A p99 over 200 faults is the third-worst, which one hiccup of a shared
2-core host moves by milliseconds (the floor's own max reached 6.6-11.7 ms in runs whose p99 was 1.7-2.3 ms);
over 600 it is the sixth-worst."""


def _rounds(
    rounds: int, chips: int, cores: int, faults: int, stages: int = 0, scrape_every: float = 0.0
) -> tuple[list[float], int, bytes]:
    """``_measure`` ``rounds`` times, each with a fresh daemon; latencies pooled, other messages summed."""
    pooled: list[float] = []
    others = 0
    message = b""
    for _ in range(rounds):
        latencies, other, message = asyncio.run(_measure(chips, cores, faults, stages, scrape_every))
        pooled += latencies
        others += other
    return pooled, others, message


def main(
    chips: int = 128,
    cores: int = 128,
    faults: int = FAULTS,
    stages: int = 300,
    scrape_every: float = 1.0,
    rounds: int = ROUNDS,
) -> None:
    """Print fault -> ListAndWatch latency percentiles against the target: alone, with ``stages`` placed, and
    while Prometheus scrapes /metrics every ``scrape_every`` seconds (each part ``rounds`` daemons of ``faults``)."""
    configure_logging("console", level=40)
    latencies, other, message = _rounds(rounds, chips, cores, faults)
    floor_ms = np.asarray(asyncio.run(_floor(message, faults * rounds))) * 1e3
    ms = _print_run(f"fault -> ListAndWatch at {chips * cores} cores", latencies, other)
    f50, f99 = np.percentile(floor_ms, [50, 99])
    print(
        f"  floor (a trivial server sending the same {len(message) / 1e6:.2f} MB message to the same reader): "
        f"p50 {f50:.2f} ms  p99 {f99:.2f} ms  max {floor_ms.max():.2f} ms; "
        f"the daemon adds p50 {np.percentile(ms, 50) - f50:+.2f} ms"
    )
    if stages:
        latencies, other, _ = _rounds(rounds, chips, cores, faults, stages)
        _print_run(
            f"with {stages} stages placed and the live-remap reallocator's pass on every frame", latencies, other
        )
    if scrape_every:
        latencies, other, _ = _rounds(rounds, chips, cores, faults, scrape_every=scrape_every)
        _print_run(
            f"while /metrics is scraped every {scrape_every:g} s (another process; the exposition renders in a worker "
            "thread)",
            latencies,
            other,
        )


if __name__ == "__main__":
    main()
