"""The JSON API (``/api/v1/topology``, ``/api/v1/devices``, ``/api/v1/history``) of a real daemon over real TCP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from snnrm.app import Daemon
from snnrm.backends.sim import SimBackend
from snnrm.config import Config
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.http.history import SERIES
from snnrm.http.server import build_app, serve
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.node import NodeService


@dataclass
class Running:
    daemon: Daemon
    kubelet: KubeletStandIn
    base: str


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
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        await asyncio.wait_for(daemon.http_started.wait(), 10)
        await kubelet.wait_capacity(NEURON_CORE, 32, within=10)
        yield Running(daemon, kubelet, f"http://127.0.0.1:{daemon.http_port}")
        stop.set()
        await asyncio.wait_for(task, 10)


def _strict_json(text: str) -> Any:
    """Parse as a browser would: NaN and Infinity are not JSON."""

    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=reject)


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "application/json"
        return _strict_json(await r.text())


async def _until(
    http: aiohttp.ClientSession, url: str, ok: Callable[[Any], bool], *, within: float = 10.0
) -> dict[str, Any]:
    """Poll ``url`` until ``ok(body)``; fails with the last body."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        body: dict[str, Any] = await _get(http, url)
        if ok(body):
            return body
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{url} never satisfied the condition; last body: {json.dumps(body)[:2000]}")
        await asyncio.sleep(0.1)


async def test_topology_describes_chips_mesh_links_and_devices(running: Running) -> None:
    """Chips sit on the board grid with their NUMA node; cores carry mesh coordinates; device IDs are listed."""
    async with aiohttp.ClientSession() as http:
        body = await _get(http, running.base + "/api/v1/topology")
    assert body["backend"] == "sim"
    g = body["geometry"]
    assert g["cores_per_chip"] == 16 == g["cols"] * g["rows"] * g["cores_per_router"]
    assert [c["id"] for c in body["chips"]] == ["chip0", "chip1"]
    assert all(c["numa"] == 0 and c["cores"] == 16 for c in body["chips"])
    positions = {tuple(c["pos"]) for c in body["chips"]}
    assert len(positions) == 2
    assert all(0 <= x < body["board"]["cols"] and 0 <= y < body["board"]["rows"] for x, y in positions)

    cores = body["cores"]
    assert cores["count"] == 32
    for key in ("ids", "chip", "x", "y", "slot", "router", "nominal_keps", "queue_capacity"):
        assert len(cores[key]) == 32, key
    assert cores["ids"][19] == "chip1-core3"
    assert cores["chip"][19] == 1
    # Every core has its own place on the mesh (router coordinates plus its slot behind the router).
    places = set(zip(cores["x"], cores["y"], cores["slot"], strict=True))
    assert len(places) == 32
    assert max(cores["x"]) < body["mesh"]["cols"]
    assert max(cores["y"]) < body["mesh"]["rows"]

    links = body["links"]
    assert links["count"] == links["on_chip"] + links["inter_chip"] > 0
    assert links["inter_chip"] == sum(p["links"] for p in links["chip_pairs"])
    assert [p["chips"] for p in links["chip_pairs"]] == [[0, 1]]

    devices = body["devices"]
    assert devices[NEURON_CORE]["ids"] == cores["ids"]
    ev = devices[EVENT_THROUGHPUT]
    assert ev["count"] == len(ev["ids"]) == len(ev["chip"]) == len(running.daemon.node.blocks.ids)
    assert ev["block_keps"] > 0


async def test_devices_reports_every_device_and_core_compactly(running: Running) -> None:
    """Per resource every device with its health; per core parallel arrays; all healthy before any fault."""
    async with aiohttp.ClientSession() as http:
        body = await _until(http, running.base + "/api/v1/devices", lambda b: b["frames"] > 0)
    assert body["backend"] == "sim"
    assert body["telemetry_age_s"] is not None
    nc = body["resources"][NEURON_CORE]
    assert nc["total"] == nc["healthy_count"] == 32
    assert len(nc["ids"]) == len(nc["healthy"]) == 32
    assert all(nc["healthy"])
    ev = body["resources"][EVENT_THROUGHPUT]
    assert len(ev["ids"]) == len(ev["healthy"]) == ev["total"]
    cores = body["cores"]
    for key in ("state", "reasons", "queue_fill", "efficiency", "effective_keps"):
        assert isinstance(cores[key], list), key
        assert len(cores[key]) == 32, key
    assert set(cores["state"]) == {0}
    assert body["legend"]["state"] == ["healthy", "unknown", "unhealthy"]
    assert body["legend"]["reasons"]["failed"] == 1
    assert body["unhealthy_cores"] == []
    assert body["faults"] == []


async def test_injected_fault_shows_up_in_devices(running: Running) -> None:
    """A core failure posted to /sim/faults appears as an unhealthy core, a withdrawn device and an active fault."""
    async with aiohttp.ClientSession() as http:
        async with http.post(running.base + "/sim/faults", json={"kind": "core-failure", "chip": 1, "core": 3}) as r:
            assert r.status == 201
            fault_id = (await r.json())["id"]
        body = await _until(
            http, running.base + "/api/v1/devices", lambda b: b["resources"][NEURON_CORE]["healthy_count"] == 31
        )
    idx = body["resources"][NEURON_CORE]["ids"].index("chip1-core3")
    assert body["resources"][NEURON_CORE]["healthy"][idx] is False
    legend = body["legend"]
    assert legend["state"][body["cores"]["state"][idx]] == "unhealthy"
    assert body["cores"]["reasons"][idx] & legend["reasons"]["failed"]
    assert body["cores"]["effective_keps"][idx] == 0
    assert body["unhealthy_cores"] == [{"index": idx, "id": "chip1-core3", "state": "unhealthy", "reasons": ["failed"]}]
    assert body["unhealthy_cores_total"] == 1
    [fault] = body["faults"]
    assert fault["id"] == fault_id
    assert fault["kind"] == "core_failure"
    assert fault["cores"] == [idx]
    assert fault["status"] == "active"


async def test_history_is_a_rolling_window_that_records_a_fault(running: Running) -> None:
    """The history task samples once per second; a core failure shows as a step in healthy cores."""
    url = running.base + "/api/v1/history"
    async with aiohttp.ClientSession() as http:
        body = await _until(http, url, lambda b: len(b["t"]) >= 2)
        assert body["period"] == 1.0
        assert body["window"] >= 60
        assert set(body["series"]) == set(SERIES)
        assert all(len(v) == len(body["t"]) for v in body["series"].values())
        assert body["t"] == sorted(body["t"])
        assert body["totals"]["cores"] == 32
        assert body["series"]["healthy_cores"][-1] == 32
        assert body["series"]["healthy_blocks"][-1] == body["totals"]["blocks"]
        assert body["series"]["efficiency_mean"][-1] == pytest.approx(1.0)

        running.daemon.backend.inject({"kind": "core_failure", "cores": [0, 1]})  # type: ignore[attr-defined]
        body = await _until(http, url, lambda b: b["series"]["healthy_cores"][-1] == 30, within=5)
    assert 32 in body["series"]["healthy_cores"]  # the baseline before the fault is still in the window
    assert body["series"]["effective_keps"][-1] < body["series"]["effective_keps"][0]


async def test_devices_can_leave_out_the_static_id_lists(running: Running) -> None:
    """``?ids=false`` (what the page polls) drops the ID lists but keeps every health array; bad values are 400."""
    async with aiohttp.ClientSession() as http:
        body = await _get(http, running.base + "/api/v1/devices?ids=false")
        assert all("ids" not in r for r in body["resources"].values())
        assert len(body["resources"][NEURON_CORE]["healthy"]) == 32
        async with http.get(running.base + "/api/v1/devices?ids=maybe") as r:
            assert r.status == 400
            assert "ids must be true or false" in (await r.json())["error"]


async def test_wrong_methods_get_405(running: Running) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/api/v1/topology", "/api/v1/devices", "/api/v1/history"):
            async with http.post(running.base + path, json={}) as r:
                assert r.status == 405, path


async def test_devices_without_a_simulator_report_no_faults(tmp_path: Path) -> None:
    """On a real-hardware backend there is no fault injection: ``faults`` is null (the page says so)."""
    node = await NodeService.start(SimBackend(chips=1, cores_per_chip=4), block_keps=1000.0, sample_period=0.1)
    app = build_app(node, registry=CollectorRegistry(), ready_checks=[], sim=None)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(app, "127.0.0.1", 0, on_started=started.set_result))
    try:
        port = await asyncio.wait_for(started, 10)
        async with aiohttp.ClientSession() as http:
            body = await _get(http, f"http://127.0.0.1:{port}/api/v1/devices")
            history = await _get(http, f"http://127.0.0.1:{port}/api/v1/history")
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
    assert body["faults"] is None
    assert body["frames"] == 0
    assert body["telemetry_time"] is None  # NaN before the first frame travels as null, not as bare NaN
    assert history["t"] == []  # nothing samples a history nobody runs
