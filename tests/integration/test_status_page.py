"""The status page in a real headless Chromium: it loads, its plots render and follow a fault, the console is clean;
during the demo's story it draws the job's stages on the mesh, the timeline and the heat map's past, with the
values of ``/api/v1/*``.

Chromium (Debian package ``chromium``, installed by ``scripts/install-test-deps.sh``) is driven over the DevTools
protocol (:mod:`snnrm.testing.browser`, which ``scripts/screenshot-status.py`` uses too). Console messages,
uncaught exceptions and browser log entries (failed loads, CSP violations) are all collected and must be empty of
errors. Set ``SNNRM_TEST_ARTIFACTS=DIR`` to keep the screenshots (always written under the test's tmp_path too).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

import sim_hw
from snnrm.app import Daemon
from snnrm.backends.sim import SimBackend
from snnrm.cluster.hints import PlanHints
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.demo import scenario
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.obs.console import LiveSummary
from snnrm.testing.browser import DevTools, chromium

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


@dataclass
class Demo:
    daemon: Daemon
    base: str


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Demo]:
    """``snnrm demo``'s story on a daemon: the planned 4-stage job, a hot spot under stage 1 that the node's
    reallocator answers with a live remap, later a failed core under stage 2."""
    config = Config(
        backend="sim",
        kubelet_dir=tmp_path / "dp",
        http="127.0.0.1:0",
        sim_chips=4,
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        hints = PlanHints()
        daemon = await Daemon.create(config, hints=hints)
        assert isinstance(daemon.backend, SimBackend)
        story = scenario(daemon, kubelet, daemon.backend, LiveSummary(live=False), hints)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop, extra=(story,)))
        await asyncio.wait_for(daemon.http_started.wait(), 10)
        yield Demo(daemon, f"http://127.0.0.1:{daemon.http_port}")
        stop.set()
        await asyncio.wait_for(task, 10)


# -------------------------------------------------------------------------------------------- helpers

# Pixel statistics of every canvas: how much is painted and how many pixels are near given colours (only below
# the legend band of the time charts, so a legend swatch alone never counts as a drawn line).
CANVAS_STATS = """
(() => {
  const near = {
    blue: [90, 169, 230], red: [239, 83, 80], unhealthy: [74, 20, 24], hot: [232, 65, 58],
    stage0: [255, 95, 210], stage1: [92, 225, 255], stage2: [198, 255, 92], stage3: [255, 160, 64],
  };
  const out = {};
  for (const c of document.querySelectorAll("canvas")) {
    const {width: w, height: h} = c;
    const d = c.getContext("2d").getImageData(0, 0, w, h).data;
    const top = Math.round(Number(c.dataset.plotTop || 0) * (window.devicePixelRatio || 1));
    const s = {w, h, painted: 0, colors: 0};
    for (const k of Object.keys(near)) s[k] = 0;
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


HOT = 0.8
"""Queue fill from which a core counts as part of a hot spot (the heat map's saturated end)."""


async def _hot_cores(base: str) -> int:
    """Cores whose event queue is near full in the daemon's live frame."""
    fill = (await _api(base, "/api/v1/devices?ids=false"))["cores"]["queue_fill"]
    return sum(q is not None and q >= HOT for q in fill)


async def _history_len(base: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(base + "/api/v1/history") as r:
        return len((await r.json())["t"])


async def _api(base: str, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(base + path) as r:
        assert r.status == 200, (path, r.status, await r.text())
        return await r.json()


async def _screenshot(cdp: DevTools, path: Path) -> None:
    _save(path, await cdp.screenshot())


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
        # The time charts step once the history has sampled the fault: two more samples, then two more redraws.
        await cdp.until("document.getElementById('tile-faults').textContent.startsWith('1')")
        sampled = await _history_len(running.base) + 2
        async with asyncio.timeout(20):
            while await _history_len(running.base) < sampled:  # noqa: ASYNC110 - polling another process's state
                await asyncio.sleep(0.25)
        updates = int(await cdp.evaluate("document.body.dataset.updates"))
        await cdp.until(f"Number(document.body.dataset.updates) >= {updates + 2}")

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


async def test_page_draws_the_jobs_stages_timeline_and_heat_history_of_the_demo(demo: Demo, tmp_path: Path) -> None:
    """During the demo's remap: each stage outlined on the mesh with a route to the next, the jobs panel and the
    timeline saying what ``/api/v1/stages`` and ``/api/v1/events`` say, the hot spot kept in the heat map's past
    after the stage left it, and no empty band beside the chip grid."""
    async with asyncio.timeout(40):
        while not any(e["action"] == "remapped" for e in (await _api(demo.base, "/api/v1/events"))["events"]):  # noqa: ASYNC110 - polling the daemon over HTTP
            await asyncio.sleep(0.25)
    # The old hot spot cools down once its stage is gone: wait until no core's queue is near full in the live frame.
    async with asyncio.timeout(30):
        while await _hot_cores(demo.base):  # noqa: ASYNC110 - polling another process's state
            await asyncio.sleep(0.25)
    async with chromium(tmp_path) as cdp:
        await cdp.send("Page.navigate", url=demo.base + "/")
        await cdp.wait_event("Page.loadEventFired")
        updates = int(await cdp.until("document.body.dataset.updates"))
        await cdp.until(f"Number(document.body.dataset.updates) >= {updates + 2}")

        stages = await _api(demo.base, "/api/v1/stages")
        [job] = stages["jobs"]
        assert [st["stage"] for st in job["stages"]] == [0, 1, 2, 3]
        # The jobs panel: labelled, one row per stage with the API's core count, chips and pod, and the routes.
        assert (await cdp.evaluate("document.getElementById('jobs-title').textContent")).startswith(
            "Split-learning jobs on this node"
        )
        rows = await cdp.evaluate(
            "[...document.querySelectorAll('#jobs .stage-row')].map((r) => "
            "({stage: Number(r.dataset.stage), cores: Number(r.dataset.cores), text: r.textContent}))"
        )
        assert [r["stage"] for r in rows] == [0, 1, 2, 3]
        for row, st in zip(rows, job["stages"], strict=True):
            assert row["cores"] == len(st["cores"])
            assert row["text"].startswith(f"S{st['stage']} · {len(st['cores'])} cores on ")
            assert st["pod"] in row["text"]
            assert all(f"chip{c}" in row["text"] for c in st["chips"])
        remapped = [st for st in job["stages"] if st["remapped"]]
        assert remapped, job
        assert rows[remapped[0]["stage"]]["text"].endswith(f"remapped generation {remapped[0]['generation']}")
        routes = await cdp.evaluate("document.querySelector('#jobs .routes').textContent")
        for r in job["routes"]:
            assert f"S{r['from']}→S{r['to']} {r['mean_hops']:.2f}" in routes
        # The mesh: four stages outlined in their colours, three routes drawn.
        assert await cdp.evaluate("document.getElementById('heatmap').dataset.stages") == "4"
        assert await cdp.evaluate("document.getElementById('heatmap').dataset.routes") == str(len(job["routes"]))
        now = await cdp.evaluate(CANVAS_STATS)
        for k in range(4):
            assert now["heatmap"][f"stage{k}"] > 20, (k, now["heatmap"])

        # The timeline: newest first, the API's entries with their actions and messages (the fault, the devices
        # that turned unhealthy and why, the remap with its reason).
        events = (await _api(demo.base, "/api/v1/events"))["events"]
        # The page polls: let it catch up with the newest entry just fetched (more may arrive after the remap).
        newest = max(e["seq"] for e in events)
        await cdp.until(
            f"[...document.querySelectorAll('#timeline li[data-seq]')].some((li) => Number(li.dataset.seq) >= {newest})"
        )
        shown = await cdp.evaluate(
            "[...document.querySelectorAll('#timeline li[data-seq]')].map((li) => ({seq: Number(li.dataset.seq),"
            " action: li.dataset.action, msg: li.querySelector('.msg').textContent}))"
        )
        by_seq = {e["seq"]: e for e in events}
        assert [e["seq"] for e in shown] == sorted((e["seq"] for e in shown), reverse=True)
        assert {e["seq"] for e in shown} >= {e["seq"] for e in events[-5:]} - {max(by_seq) + 1}
        for e in shown:
            if e["seq"] in by_seq:
                assert (e["action"], e["msg"]) == (by_seq[e["seq"]]["action"], by_seq[e["seq"]]["message"])
        actions = [e["action"] for e in shown]
        assert {"injected", "unhealthy", "remapped", "withheld"} <= set(actions), actions
        remap = next(e for e in events if e["action"] == "remapped")
        assert remap["reasons"] == ["queue-saturated"]
        assert "live remap of stage 1" in remap["message"]
        # A health transition with its reason: the hot chip's event throughput no longer covers its blocks. (The
        # stage usually leaves on its second full reading, before its cores' 0.5 s health dwell turns them
        # Unhealthy; on a loaded machine they may turn first, with "queue-saturated" as the reason.)
        unhealthy = next(e for e in events if e["action"] == "unhealthy")
        reason = "queue-saturated" if unhealthy["resource"] == NEURON_CORE else "measured capacity no longer covers"
        assert reason in unhealthy["message"], unhealthy

        # The heat map's past: the strip shows the API's frames; "worst, last 5 min" shows the hot spot that the
        # live frame no longer has (the stage moved away from it).
        heat = await _api(demo.base, "/api/v1/heat?metric=queue_fill&frames=12")
        # The page polls: wait for it to have caught up with the frames the API just returned (on a loaded machine
        # its last poll may predate the newest bucket).
        await cdp.until(f"Number(document.getElementById('heat-history').dataset.frames) >= {len(heat['frames'])}")
        frames = int(await cdp.evaluate("document.getElementById('heat-history').dataset.frames"))
        assert frames == len(heat["frames"]) or frames == len(heat["frames"]) + 1  # a new bucket may have opened
        # The 16 cores of the hot spot held queued events in the window, every other core none. (The daemon moves
        # the stage on its second saturated reading, by the queue's wait at the throttled rate, before the queue
        # fills: ~16 % here. The heat map shows fill, not the pressure the daemon acts on.)
        peak = [v for v in heat["peak"] if v is not None]
        assert sum(v >= 0.05 for v in peak) >= 16, sorted(peak, reverse=True)[:20]
        assert now["heatmap"]["hot"] < 50, now["heatmap"]
        await cdp.evaluate("document.getElementById('heat-view-peak').click()")
        assert await cdp.evaluate("document.getElementById('heatmap').dataset.view") == "peak"
        assert await cdp.evaluate("document.getElementById('legend-label').textContent") == (
            "event-queue fill: worst in the last 5 min"
        )
        worst = await cdp.evaluate(CANVAS_STATS)
        assert worst["heatmap"] != now["heatmap"], now["heatmap"]  # the window's worst, not the live frame
        assert (await cdp.evaluate("document.getElementById('heat-history-title').textContent")).startswith(
            "Heat-map history"
        )

        # No empty band: the side column starts just right of the chip grid and ends at the card's edge.
        box = await cdp.evaluate(
            "(() => { const r = (id) => document.getElementById(id).getBoundingClientRect();"
            " const card = document.getElementById('mesh-row').getBoundingClientRect();"
            " return {heat: r('heatmap').right, sideLeft: r('mesh-side').left, sideRight: r('mesh-side').right,"
            " sideTop: r('mesh-side').top, heatTop: r('heatmap').top, row: card.right}; })()"
        )
        assert box["sideLeft"] - box["heat"] <= 20, box
        assert abs(box["row"] - box["sideRight"]) <= 2, box
        assert abs(box["sideTop"] - box["heatTop"]) <= 4, box

        # Counts by meaning: the lent cores are "withheld for remap" in the device health panel, not unhealthy.
        counts = (await _api(demo.base, "/api/v1/devices?ids=false"))["core_counts"]
        assert counts["withheld_for_remap"] == 16, counts
        expected = (
            f"{counts['allocatable']} allocatable · {counts['withheld_for_remap']} withheld for remap · "
            f"{counts['unhealthy']} unhealthy"
        )
        await cdp.until(
            f"document.querySelector('#resources .res .name span:last-child').textContent === {json.dumps(expected)}"
        )

        await _screenshot(cdp, tmp_path / "status-page-demo.png")
        problems = cdp.problems()
        assert problems == [], "\n".join(problems)
