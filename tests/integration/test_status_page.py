"""The status page in a real headless Chromium: it loads, its plots render and follow a fault, the console is clean.

Chromium (Debian package ``chromium``, installed by ``scripts/install-test-deps.sh``) is driven over the DevTools
protocol on a websocket: the port is read from ``DevToolsActivePort`` in a fresh profile directory, so tests never
race for a fixed port. Console messages, uncaught exceptions and browser log entries (failed loads, CSP
violations) are all collected and must be empty of errors. Set ``SNNRM_TEST_ARTIFACTS=DIR`` to keep the
screenshot (it is always written under the test's tmp_path too).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

import sim_hw
from snnrm.app import Daemon
from snnrm.backends.sim import SimBackend
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers; the tmp dir is not
    "--window-size=1440,1200",
    "--remote-debugging-port=0",
)

# -------------------------------------------------------------------------------------------- DevTools client


@dataclass(eq=False)
class DevTools:
    """A minimal Chrome DevTools Protocol client over one page target's websocket."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 0
    _pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _event_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_forever(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            else:
                self.events.append(data)
                self._event_arrived.set()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools websocket closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = fut
        await self.ws.send_json({"id": self._next_id, "method": method, "params": params})
        return await asyncio.wait_for(fut, 30)

    async def wait_event(self, method: str, *, within: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for e in self.events:
                    if e["method"] == method:
                        return e
                self._event_arrived.clear()
                await self._event_arrived.wait()

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its value (JSON-serialisable)."""
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"JS failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def until(self, expression: str, *, within: float = 15.0) -> Any:
        """Evaluate until the value is truthy."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"page never satisfied {expression!r}; problems so far: {self.problems()}")
            await asyncio.sleep(0.2)

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors seen so far."""
        out: list[str] = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a)) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log ({p['entry']['source']}): {p['entry']['text']} {p['entry'].get('url', '')}")
        return out


def _chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium not found: run scripts/install-test-deps.sh (Debian package `chromium`)")


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path) -> AsyncIterator[DevTools]:
    """Start headless Chromium with a fresh profile and attach to its first page."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with (tmp_path / "chromium.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            _chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        port_file = profile / "DevToolsActivePort"
        async with asyncio.timeout(30):
            while not port_file.exists() or not port_file.read_text().strip():
                if proc.returncode is not None:
                    pytest.fail(f"chromium exited with {proc.returncode}: {(tmp_path / 'chromium.log').read_text()}")
                await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                        pages = [t for t in await r.json() if t["type"] == "page"]
                    if pages:
                        break
                    await asyncio.sleep(0.05)
            async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = DevTools(ws)
                reader = asyncio.create_task(cdp.read_forever())
                try:
                    for domain in ("Runtime", "Log", "Page"):
                        await cdp.send(f"{domain}.enable")
                    yield cdp
                finally:
                    await ws.close()
                    await reader
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -------------------------------------------------------------------------------------------- the daemon


@dataclass
class Running:
    daemon: Daemon
    sim: SimBackend
    kubelet: KubeletStandIn
    base: str
    stage_cores: list[np.ndarray]


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    """The demo's shape: four Loihi-2-like chips, a split DVS-gesture CSNN placed stage after stage."""
    config = Config(
        backend="sim",
        kubelet_dir=tmp_path / "dp",
        http="127.0.0.1:0",
        sim_chips=4,
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        assert isinstance(daemon.backend, SimBackend)
        job = sim_hw.networks.dvs_gesture_csnn(stages=4, name="dvs-gesture")
        # Stages side by side from core 0 on: the heat map then shows the job as a band of busy cores.
        bounds = np.cumsum([0, *(s.cores for s in job.stages)])
        stage_cores = [np.arange(a, b) for a, b in itertools.pairwise(bounds)]
        daemon.backend.sim.add_job(job, stage_cores)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        await asyncio.wait_for(daemon.http_started.wait(), 10)
        await kubelet.wait_capacity(NEURON_CORE, daemon.node.topology.n_cores, within=30)
        yield Running(daemon, daemon.backend, kubelet, f"http://127.0.0.1:{daemon.http_port}", stage_cores)
        stop.set()
        await asyncio.wait_for(task, 10)


# -------------------------------------------------------------------------------------------- helpers

# Pixel statistics of every canvas: how much is painted and how many pixels are near given colours (only below
# the legend band of the time charts, so a legend swatch alone never counts as a drawn line).
CANVAS_STATS = """
(() => {
  const near = {blue: [90, 169, 230], red: [239, 83, 80], unhealthy: [74, 20, 24]};
  const out = {};
  for (const c of document.querySelectorAll("canvas")) {
    const {width: w, height: h} = c;
    const d = c.getContext("2d").getImageData(0, 0, w, h).data;
    const top = Math.round(Number(c.dataset.plotTop || 0) * (window.devicePixelRatio || 1));
    const s = {w, h, painted: 0, colors: 0, blue: 0, red: 0, unhealthy: 0};
    const seen = new Set();
    for (let i = 0; i < d.length; i += 4) {
      if (!d[i + 3]) continue;
      s.painted++;
      if (seen.size < 4096) seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
      if ((i / 4) / w < top) continue;
      for (const [k, [r, g, b]] of Object.entries(near)) {
        if (Math.abs(d[i] - r) + Math.abs(d[i + 1] - g) + Math.abs(d[i + 2] - b) < 40) s[k]++;
      }
    }
    s.colors = seen.size;
    out[c.id] = s;
  }
  return out;
})()
"""


async def _history_len(base: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(base + "/api/v1/history") as r:
        return len((await r.json())["t"])


async def _screenshot(cdp: DevTools, path: Path) -> None:
    metrics = await cdp.send("Page.getLayoutMetrics")
    size = metrics["cssContentSize"]
    shot = await cdp.send(
        "Page.captureScreenshot",
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    )
    _save(path, base64.b64decode(shot["data"]))


def _save(path: Path, png: bytes) -> None:
    path.write_bytes(png)
    if artifacts := os.environ.get("SNNRM_TEST_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(artifacts) / path.name)


# -------------------------------------------------------------------------------------------- tests


async def test_page_and_assets_are_served_offline_with_a_strict_policy(running: Running) -> None:
    """``/`` is HTML that loads only same-origin assets; unknown assets are 404 and never read from disk."""
    async with aiohttp.ClientSession() as http:
        async with http.get(running.base + "/") as r:
            assert r.status == 200
            assert r.content_type == "text/html"
            html = await r.text()
            csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp
        assert "connect-src 'self'" in csp
        assert "http://" not in html.replace("http://127.0.0.1", "")
        assert "https://" not in html
        async with http.get(running.base + "/static/status.js") as r:
            assert r.status == 200
            assert r.content_type == "text/javascript"
            assert "api/v1/devices" in await r.text()
        async with http.get(running.base + "/static/status.css") as r:
            assert r.status == 200
            assert r.content_type == "text/css"
        for bad in ("/static/nope.js", "/static/..%2Fstatus.py", "/static/index.html%00"):
            async with http.get(running.base + bad) as r:
                assert r.status == 404, bad


async def test_page_renders_live_plots_and_follows_a_fault_without_console_errors(
    running: Running, tmp_path: Path
) -> None:
    """In Chromium: data arrives, every plot draws, a core failure shows in the heat map, tables and charts."""
    async with chromium(tmp_path) as cdp:
        await cdp.send("Page.navigate", url=running.base + "/")
        await cdp.wait_event("Page.loadEventFired")
        # Let the history hold a few samples so the time charts have lines to draw.
        async with asyncio.timeout(20):
            while await _history_len(running.base) < 4:  # noqa: ASYNC110 - polling another process's state
                await asyncio.sleep(0.25)
        updates = int(await cdp.until("document.body.dataset.updates"))
        await cdp.until(f"Number(document.body.dataset.updates) >= {updates + 2}")

        before = await cdp.evaluate(CANVAS_STATS)
        assert set(before) >= {
            "heatmap",
            "heat-legend",
            "chart-efficiency",
            "chart-throughput",
            "chart-queue",
            "chart-health",
        }
        for name, s in before.items():
            assert s["w"] > 50, (name, s)
            assert s["h"] > 10, (name, s)
            assert s["painted"] > 0.01 * s["w"] * s["h"], (name, s)
            assert s["colors"] > 8, (name, s)
        # The job's traffic is plotted: the throughput chart's "processed" line is drawn in the plot area.
        assert before["chart-throughput"]["blue"] > 50, before["chart-throughput"]
        assert before["heatmap"]["unhealthy"] == 0
        # Colouring the mesh by load instead of queue fill shows where the job runs.
        await cdp.evaluate("document.querySelector('#heat-metric [data-metric=load]').click()")
        assert await cdp.evaluate("document.getElementById('legend-label').textContent") == (
            "load: events processed / nominal"
        )
        by_load = await cdp.evaluate(CANVAS_STATS)
        assert by_load["heatmap"]["colors"] > before["heatmap"]["colors"]
        await cdp.evaluate("document.querySelector('#heat-metric [data-metric=queue_fill]').click()")
        assert await cdp.evaluate("document.getElementById('tile-cores').textContent") == "512/ 512 · 512 healthy"
        assert "every core is healthy" in await cdp.evaluate("document.getElementById('unhealthy').textContent")

        # A core failure on two cores of the second stage.
        victims = running.stage_cores[1][:2].tolist()
        fault_id = running.sim.inject({"kind": "core_failure", "cores": victims})
        ids = [running.daemon.node.topology.ids[c] for c in victims]
        await cdp.until(
            "(() => { const t = document.getElementById('unhealthy').textContent;"
            f" return {json.dumps(ids)}.every((id) => t.includes(id)) && t.includes('failed'); }})()"
        )
        faults = await cdp.until(
            "(() => { const t = document.getElementById('faults').textContent;"
            " return t.includes('core-failure') && t.includes('active') && t; })()"
        )
        assert str(fault_id) in faults
        assert ids[0] in faults
        assert await cdp.evaluate("document.getElementById('tile-cores').textContent") == "510/ 512 · 510 healthy"
        # The time charts step once the history has sampled the fault.
        await cdp.until("document.getElementById('tile-faults').textContent.startsWith('1')")
        await asyncio.sleep(2.5)

        after = await cdp.evaluate(CANVAS_STATS)
        assert after["heatmap"]["unhealthy"] > before["heatmap"]["unhealthy"]
        assert after["heatmap"]["red"] > before["heatmap"]["red"]
        await _screenshot(cdp, tmp_path / "status-page.png")
        assert (tmp_path / "status-page.png").stat().st_size > 20_000

        problems = cdp.problems()
        assert problems == [], "\n".join(problems)
        warnings = [
            e for e in cdp.events if e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "warning"
        ]
        assert warnings == []
