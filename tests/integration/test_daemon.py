"""The whole daemon against the kubelet stand-in over real unix sockets, and its HTTP face over real TCP."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from snnrm import node as node_module
from snnrm.app import LOOP_SWITCH_INTERVAL_S, Daemon
from snnrm.config import Config
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn


@dataclass
class Running:
    daemon: Daemon
    kubelet: KubeletStandIn
    base: str
    stop: asyncio.Event
    task: asyncio.Task[None]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = Config(
        backend="sim",
        kubelet_dir=tmp_path / "dp",
        http="127.0.0.1:0",
        sim_chips=2,
        sim_cores=16,
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
        sample_period=0.05,
        metrics_granularity="core",
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        await asyncio.wait_for(daemon.http_started.wait(), 10)
        await kubelet.wait_capacity(NEURON_CORE, 32, within=10)
        await kubelet.wait_capacity(EVENT_THROUGHPUT, len(daemon.node.blocks.ids), within=10)
        yield Running(daemon, kubelet, f"http://127.0.0.1:{daemon.http_port}", stop, task)
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_registers_both_resources_and_becomes_ready(running: Running) -> None:
    """Both resources register; /readyz turns 200 once telemetry flows and the plugins are registered."""
    k = running.kubelet
    assert k.capacity(NEURON_CORE) == 32
    assert k.allocatable(NEURON_CORE) == 32
    assert k.capacity(EVENT_THROUGHPUT) == len(running.daemon.node.blocks.ids)
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(running.base + "/readyz") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 200
        async with http.get(running.base + "/healthz") as r:
            assert r.status == 200


async def test_injected_core_failure_reaches_the_kubelet(running: Running) -> None:
    """POST /sim/faults -> pushed hard fault -> ListAndWatch -> allocatable drops; DELETE brings it back."""
    async with aiohttp.ClientSession() as http:
        async with http.post(running.base + "/sim/faults", json={"kind": "core-failure", "chip": 1, "core": 3}) as r:
            assert r.status == 201
            fault_id = (await r.json())["id"]
        await running.kubelet.wait_until(lambda: running.kubelet.allocatable(NEURON_CORE) == 31, within=5)
        assert running.kubelet.devices(NEURON_CORE)["chip1-core3"] is False
        assert running.kubelet.capacity(NEURON_CORE) == 32
        async with http.get(running.base + "/api/v1/node") as r:
            body = await r.json()
        assert body["unhealthy_cores"] == [{"id": "chip1-core3", "state": "unhealthy", "reasons": ["failed"]}]
        async with http.get(running.base + "/sim/faults") as r:
            assert [f["id"] for f in (await r.json())["faults"]] == [fault_id]
        async with http.delete(f"{running.base}/sim/faults/{fault_id}") as r:
            assert r.status == 204
        # Recovery waits out the health machine's recover dwell (2 s of good telemetry).
        await running.kubelet.wait_until(lambda: running.kubelet.allocatable(NEURON_CORE) == 32, within=10)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"kind": "meteor-strike", "cores": [1]}', 400, "bad fault"),
        (b'{"kind": "core-failure", "cores": [99999]}', 400, "bad fault"),
        (b'{"kind": "core-failure", "chip": 7, "core": 0}', 400, "chip must be"),
        (b"x" * (128 * 1024), 413, ""),
    ],
)
async def test_bad_fault_requests_are_rejected_and_change_nothing(
    running: Running, body: bytes, status: int, message: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            running.base + "/sim/faults", data=body, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == status
            assert message in await r.text()
        async with http.get(running.base + "/sim/faults") as r:
            assert (await r.json())["faults"] == []
    assert running.kubelet.allocatable(NEURON_CORE) == 32


async def test_fault_injection_requires_a_json_content_type(running: Running) -> None:
    """A cross-site form post (text/plain) cannot inject a fault."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            running.base + "/sim/faults",
            data=b'{"kind": "core-failure", "cores": [1]}',
            headers={"Content-Type": "text/plain"},
        ) as r,
    ):
        assert r.status == 415
    assert running.kubelet.allocatable(NEURON_CORE) == 32


async def test_metrics_parse_and_follow_health(running: Running) -> None:
    """/metrics parses with the Prometheus parser and snnrm_resource_devices follows a fault."""
    running.daemon.backend.inject({"kind": "core_failure", "cores": [0, 1]})  # type: ignore[attr-defined]
    await running.kubelet.wait_until(lambda: running.kubelet.allocatable(NEURON_CORE) == 30, within=5)
    async with aiohttp.ClientSession() as http, http.get(running.base + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    devices = {(s.labels["resource"], s.labels["state"]): s.value for s in families["snnrm_resource_devices"].samples}
    assert devices[(NEURON_CORE, "healthy")] == 30
    assert devices[(NEURON_CORE, "unhealthy")] == 2
    healthy = {s.labels["core"]: s.value for s in families["snnrm_core_healthy"].samples}
    assert healthy["chip0-core0"] == 0
    assert healthy["chip0-core2"] == 1
    assert len(healthy) == 32


async def test_a_scrape_renders_behind_a_just_published_hard_fault(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after a pushed hard fault changed what ListAndWatch sends, the daemon's /metrics render (a worker
    thread, ~50 ms of GIL-holding string work at 16,384 cores) sleeps until the fault's send window has passed
    instead of competing with it; the scrape then answers in full. (The window is widened to 2 s here so the
    scrape surely lands in it.)"""
    monkeypatch.setattr(node_module, "FAULT_SEND_S", 2.0)
    sleepers: list[tuple[str, float]] = []
    real_sleep = time.sleep

    def recorded(seconds: float) -> None:
        sleepers.append((sys._getframe(2).f_code.co_name, seconds))  # who called yield_to_faults
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", recorded)
    running.daemon.backend.inject({"kind": "core_failure", "cores": [4]})  # type: ignore[attr-defined]
    await running.kubelet.wait_until(lambda: running.kubelet.allocatable(NEURON_CORE) == 31, within=5)
    async with aiohttp.ClientSession() as http, http.get(running.base + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    rendered = [s for who, s in sleepers if who == "render_parts"]
    assert rendered, f"the scrape did not stand back: {sleepers}"
    assert all(0 < s <= 2.0 for s in rendered)
    healthy = {
        s.labels["core"]: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "snnrm_core_healthy"
    }
    assert len(healthy) == 32
    assert healthy["chip0-core4"] == 0


async def test_the_daemon_counts_its_own_http_requests(running: Running) -> None:
    """The running daemon's server carries the request metrics (snnrm/obs/http_metrics.py), by route template."""
    async with aiohttp.ClientSession() as http:
        async with http.delete(running.base + "/sim/faults/424242") as r:
            assert r.status == 404
        async with http.get(running.base + "/metrics") as r:
            text = await r.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {
        (s.labels["route"], s.labels["method"], s.labels["code"]): s.value
        for s in families["snnrm_http_requests"].samples
        if s.name == "snnrm_http_requests_total"
    }
    assert counts[("/sim/faults/{fault_id}", "DELETE", "404")] == 1
    assert not any("424242" in label for key in counts for label in key)
    nodes = {s.labels["node"] for s in families["snnrm_http_requests"].samples}
    assert nodes == {s.labels["node"] for s in families["snnrm_resource_devices"].samples}  # joins like the rest


async def test_stop_removes_the_plugin_sockets(running: Running) -> None:
    """A stop request ends every root task and leaves no plugin socket behind."""
    kdir = running.daemon.config.kubelet_dir
    assert (kdir / "snnrm-neuron-core.sock").exists()
    running.stop.set()
    await asyncio.wait_for(running.task, 10)
    assert not (kdir / "snnrm-neuron-core.sock").exists()
    assert not (kdir / "snnrm-event-throughput.sock").exists()


async def test_a_running_daemon_keeps_its_startup_objects_out_of_the_cyclic_gc(running: Running) -> None:
    """While it serves, what the daemon built at startup is frozen (a full collection over it took ~50 ms, ten
    times the fault -> ListAndWatch budget); stopping unfreezes it, so a process that runs daemons one after
    another (this test suite) collects their garbage as before."""
    assert gc.get_freeze_count() > 10_000
    running.stop.set()
    await asyncio.wait_for(running.task, 10)
    assert gc.get_freeze_count() == 0


async def test_a_running_daemon_takes_the_gil_back_from_worker_threads_within_a_millisecond(running: Running) -> None:
    """Evaluations, metric rendering and the rates half of each frame run in worker threads; at CPython's default
    switch interval (5 ms) one of them could hold the GIL for the fault path's whole budget. The daemon shortens
    it while it runs and puts back what it found at stop."""
    assert sys.getswitchinterval() == pytest.approx(LOOP_SWITCH_INTERVAL_S)
    running.stop.set()
    await asyncio.wait_for(running.task, 10)
    assert sys.getswitchinterval() == pytest.approx(0.005)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_snnrm_run_serves_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    """The CLI contract: `snnrm run --backend sim --kubelet-dir DIR --http ...` registers, then SIGTERM -> exit 0."""
    kdir = tmp_path / "dp"
    port = _free_port()
    async with KubeletStandIn(kdir) as kubelet:
        env = {**os.environ, "SNNRM_STATE_DIR": str(tmp_path / "s"), "SNNRM_CDI_DIR": str(tmp_path / "c")}
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
            "2",
            "--sim-cores",
            "8",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await kubelet.wait_capacity(NEURON_CORE, 16, within=30)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, out.decode()
        assert b"stopped" in out
