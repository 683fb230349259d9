"""The human-facing side of the HTTP server: the JSON API and the live status page at ``/``.

* ``GET /api/v1/topology``: static layout (chips on the board grid, NUMA nodes, mesh geometry, cores at their
  router coordinates, a link summary, device IDs). Fetched once by the page.
* ``GET /api/v1/devices``: live state, per resource every device with its health, and per core health state,
  reason bits, queue fill, spike-transfer efficiency, effective KEPS and load, as parallel arrays indexed like
  ``topology.cores`` (an object per core would be ten times the bytes at 16k cores), plus active sim faults.
* ``GET /api/v1/history``: the rolling window of node-level series kept by :class:`StatusHistory`.
* ``GET /api/v1/heat?metric=queue_fill|load|efficiency[&frames=N]``: the heat map's past kept by
  :class:`~snnrm.http.history.HeatHistory`: per core the worst value per bucket, and over the whole window.
* ``GET /api/v1/events``: the node's :class:`~snnrm.obs.timeline.Timeline` (health transitions, stage verdicts and
  reallocations with their reasons, injected sim faults), oldest first.
* ``GET /api/v1/stages`` (:func:`snnrm.http.extender.setup_stage_view`): the split-learning stages on this node.
* ``GET /``: a page of plain HTML, CSS and JavaScript (``static/``; no library, no CDN, so it works offline and
  behind an air gap) that polls the live endpoints every second (the heat map's past every few) and draws on
  ``<canvas>``.

JSON never carries NaN or Infinity (``JSON.parse`` rejects them): non-finite numbers become ``null``. A bad query
parameter gets 400 with ``{"error": ...}`` like the rest of the server.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.resources
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt
from aiohttp import web

from snnrm.backends.base import FaultInjection
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.health import Health, HealthReason
from snnrm.core.topology import Topology
from snnrm.core.types import JSON
from snnrm.http.history import HEAT_METRICS, HEAT_WORST, SERIES, HeatMetric, StatusHistory, core_load
from snnrm.node import NodeService
from snnrm.obs.timeline import Timeline

MAX_UNHEALTHY_LISTED: Final = 1000
"""Unhealthy cores spelled out with their reasons; past this the per-core arrays still say everything."""

_ASSETS: Final = {
    "status.js": "text/javascript",
    "status.css": "text/css",
}
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page loads only its own files and talks only to this server; anything else is a bug, and the browser test
sees the violation as a console error."""


@dataclass(frozen=True, slots=True, eq=False)
class StatusSources:
    """What the status routes read; stored on the app under :data:`STATUS`."""

    node: NodeService
    history: StatusHistory
    sim: FaultInjection | None
    assets: dict[str, bytes]
    timeline: Timeline


STATUS = web.AppKey("status", StatusSources)

# -- the JSON the API answers with (key order here is the order on the wire) --------------------------------------

Floats = list[float | None]
"""A number per element; ``null`` where it is not finite."""


class GeometryJSON(TypedDict):
    cols: int
    rows: int
    cores_per_router: int
    cores_per_chip: int


class GridJSON(TypedDict):
    cols: int
    rows: int


class ChipJSON(TypedDict):
    index: int
    id: str
    pos: list[int]
    numa: int
    first_core: int
    cores: int
    nominal_keps: float | None


class TopologyCoresJSON(TypedDict):
    """Parallel arrays, one element per core."""

    count: int
    ids: list[str]
    chip: list[int]
    x: list[int]
    y: list[int]
    slot: list[int]
    router: list[int]
    nominal_keps: Floats
    queue_capacity: Floats


class ChipPairJSON(TypedDict):
    chips: list[int]
    links: int


class TopologyLinksJSON(TypedDict):
    count: int
    on_chip: int
    inter_chip: int
    chip_pairs: list[ChipPairJSON]


class CoreDevicesJSON(TypedDict):
    count: int
    ids: list[str]


class BlockDevicesJSON(TypedDict):
    count: int
    block_keps: float
    ids: list[str]
    chip: list[int]


class TopologyBody(TypedDict):
    """``GET /api/v1/topology``."""

    backend: str
    geometry: GeometryJSON
    board: GridJSON
    mesh: GridJSON
    chips: list[ChipJSON]
    cores: TopologyCoresJSON
    links: TopologyLinksJSON
    devices: dict[str, CoreDevicesJSON | BlockDevicesJSON]
    """By resource name: the neuron cores, and the event-throughput blocks."""


class ResourceStateJSON(TypedDict):
    total: int
    healthy_count: int
    ids: NotRequired[list[str]]
    healthy: list[bool]
    block_keps: NotRequired[float]
    chip: NotRequired[list[int]]


class LegendJSON(TypedDict):
    state: list[str]
    reasons: dict[str, int]


class CoreStateJSON(TypedDict):
    """Parallel arrays indexed like ``topology.cores``."""

    state: list[int]
    reasons: list[int]
    queue_fill: Floats
    efficiency: Floats
    effective_keps: Floats
    load: Floats


class UnhealthyCoreJSON(TypedDict):
    index: int
    id: str
    state: str
    reasons: list[str]


class LinkStateJSON(TypedDict):
    failed: int
    utilization_mean: float | None
    utilization_max: float | None


class DevicesBody(TypedDict):
    """``GET /api/v1/devices``."""

    backend: str
    time: float
    telemetry_time: float | None
    telemetry_age_s: float | None
    frames: int
    rejected_frames: int
    resources: dict[str, ResourceStateJSON]
    core_counts: dict[str, int]
    legend: LegendJSON
    cores: CoreStateJSON
    unhealthy_cores: list[UnhealthyCoreJSON]
    unhealthy_cores_total: int
    links: LinkStateJSON
    faults: list[JSON] | None
    """The simulator's faults as injected (a client's JSON) plus their status; None without a simulator."""


class HistoryTotalsJSON(TypedDict):
    cores: int
    blocks: int
    block_keps: float


class HistoryBody(TypedDict):
    """``GET /api/v1/history``."""

    period: float
    window: int
    t: Floats
    series: dict[str, Floats]
    totals: HistoryTotalsJSON


class HeatBody(TypedDict):
    """``GET /api/v1/heat``."""

    metric: HeatMetric
    worst: Literal["max", "min"]
    bucket_s: float
    buckets: int
    window_s: float
    covered_s: float
    t: Floats
    frames: list[Floats]
    peak: Floats


def _floats(a: npt.ArrayLike, decimals: int) -> Floats:
    """A JSON-safe list: rounded, with NaN/inf as ``null``."""
    arr = np.round(np.asarray(a, dtype=np.float64), decimals)
    out: Floats = arr.tolist()
    bad = ~np.isfinite(arr)
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            out[i] = None
    return out


def _float(x: float, decimals: int = 6) -> float | None:
    return round(float(x), decimals) if np.isfinite(x) else None


def topology_body(node: NodeService) -> TopologyBody:
    """The static layout of the node."""
    t = node.topology
    g = t.geometry
    board_cols = int(t.chip_pos[:, 0].max()) + 1
    board_rows = int(t.chip_pos[:, 1].max()) + 1
    rchip = t.router_chip
    src_chip, dst_chip = rchip[t.link_src], rchip[t.link_dst]
    inter = t.link_inter_chip
    pairs, counts = np.unique(
        np.stack([np.minimum(src_chip, dst_chip), np.maximum(src_chip, dst_chip)], axis=1)[inter],
        axis=0,
        return_counts=True,
    )
    per_chip_keps = np.bincount(t.chip_of, weights=t.core_nominal_keps, minlength=t.n_chips)
    blocks = node.blocks
    core_devices: CoreDevicesJSON = {"count": t.n_cores, "ids": list(t.ids)}
    block_devices: BlockDevicesJSON = {
        "count": len(blocks.ids),
        "block_keps": blocks.block_keps,
        "ids": list(blocks.ids),
        "chip": blocks.chip_of_block.tolist(),
    }
    return {
        "backend": node.backend.name,
        "geometry": {
            "cols": g.cols,
            "rows": g.rows,
            "cores_per_router": g.cores_per_router,
            "cores_per_chip": g.cores,
        },
        "board": {"cols": board_cols, "rows": board_rows},
        "mesh": {"cols": board_cols * g.cols, "rows": board_rows * g.rows},
        "chips": [
            {
                "index": c,
                "id": f"chip{c}",
                "pos": [int(t.chip_pos[c, 0]), int(t.chip_pos[c, 1])],
                "numa": int(t.chip_numa[c]),
                "first_core": c * g.cores,
                "cores": g.cores,
                "nominal_keps": _float(per_chip_keps[c], 1),
            }
            for c in range(t.n_chips)
        ],
        "cores": {
            "count": t.n_cores,
            "ids": list(t.ids),
            "chip": t.chip_of.tolist(),
            "x": t.gx.tolist(),
            "y": t.gy.tolist(),
            "slot": (t.local % g.cores_per_router).tolist(),
            "router": t.router.tolist(),
            "nominal_keps": _floats(t.core_nominal_keps, 1),
            "queue_capacity": _floats(t.core_queue_capacity, 1),
        },
        "links": {
            "count": t.n_links,
            "on_chip": int(np.count_nonzero(~inter)),
            "inter_chip": int(np.count_nonzero(inter)),
            "chip_pairs": [
                {"chips": [int(a), int(b)], "links": int(n)}
                for (a, b), n in zip(pairs.tolist(), counts.tolist(), strict=True)
            ],
        },
        "devices": {NEURON_CORE: core_devices, EVENT_THROUGHPUT: block_devices},
    }


def _faults(sim: FaultInjection | None) -> list[JSON] | None:
    if sim is None:
        return None
    out: list[JSON] = []
    for fid, f in sorted(sim.faults.items()):
        status: str
        try:
            status = sim.fault_status(fid)
        except KeyError:  # cleared behind the backend's back; list what we know
            status = "unknown"
        out.append({**f, "status": status})
    return out


def devices_body(node: NodeService, sim: FaultInjection | None, *, ids: bool = True) -> DevicesBody:
    """Live per-device and per-core state; ``ids=False`` leaves out the device ID lists (static, in topology)."""
    m = node.monitor
    t = node.topology
    state = m.health.state
    reasons = m.health.reasons
    unhealthy = np.flatnonzero(state != Health.HEALTHY)
    # Hard failures first (they are what an operator acts on), then by core index.
    unhealthy = unhealthy[np.argsort((reasons[unhealthy] & HealthReason.FAILED) == 0, kind="stable")]
    load = core_load(node)
    age = time.monotonic() - node.last_sample_wall
    resources: dict[str, ResourceStateJSON] = {}
    for res, d in node.devices().items():
        entry: ResourceStateJSON
        if ids:
            entry = {
                "total": len(d.ids),
                "healthy_count": d.healthy_count,
                "ids": list(d.ids),
                "healthy": d.healthy.tolist(),
            }
        else:
            entry = {"total": len(d.ids), "healthy_count": d.healthy_count, "healthy": d.healthy.tolist()}
        if res == EVENT_THROUGHPUT:
            entry["block_keps"] = node.blocks.block_keps
            entry["chip"] = node.blocks.chip_of_block.tolist()
        resources[res] = entry
    return {
        "backend": node.backend.name,
        "time": time.time(),
        "telemetry_time": _float(m.last_frame_time),
        "telemetry_age_s": _float(age, 3),
        "frames": m.frames,
        "rejected_frames": m.rejected_frames,
        "resources": resources,
        "core_counts": node.core_counts(),
        "legend": {
            "state": [h.name.lower() for h in Health],
            "reasons": {HealthReason.names(int(r))[0]: int(r) for r in HealthReason if r},
        },
        "cores": {
            "state": state.tolist(),
            "reasons": reasons.tolist(),
            "queue_fill": _floats(m.queue_fill, 4),
            "efficiency": _floats(m.rates.rates.efficiency, 4),
            "effective_keps": _floats(m.effective_keps(), 1),
            "load": _floats(load, 4),
        },
        "unhealthy_cores": [
            {
                "index": i,
                "id": t.ids[i],
                "state": Health(int(state[i])).name.lower(),
                "reasons": HealthReason.names(int(reasons[i])),
            }
            for i in unhealthy[:MAX_UNHEALTHY_LISTED].tolist()
        ],
        "unhealthy_cores_total": len(unhealthy),
        "links": {
            "failed": int(np.count_nonzero(m.link_failed)),
            "utilization_mean": _float(float(m.link_utilization.mean()) if m.link_utilization.size else 0.0, 4),
            "utilization_max": _float(float(m.link_utilization.max()) if m.link_utilization.size else 0.0, 4),
        },
        "faults": _faults(sim),
    }


def history_body(history: StatusHistory, node: NodeService) -> HistoryBody:
    """The rolling window, oldest first, one array per series."""
    w = history.snapshot()
    return {
        "period": history.period,
        "window": history.window,
        "t": _floats(w.t, 3),
        "series": {name: _floats(w.values[i], 4) for i, name in enumerate(SERIES)},
        "totals": {
            "cores": node.topology.n_cores,
            "blocks": len(node.blocks.ids),
            "block_keps": node.blocks.block_keps,
        },
    }


def heat_body(history: StatusHistory, metric: HeatMetric, frames: int | None = None) -> HeatBody:
    """The heat map's past for one metric: the newest ``frames`` buckets (all kept when None) and the per-core
    worst value over every kept bucket (``peak``), arrays indexed like ``topology.cores``."""
    heat = history.heat
    w = heat.window(metric)
    shown = w.frames if frames is None else w.frames[len(w.frames) - min(frames, len(w.frames)) :]
    return {
        "metric": metric,
        "worst": HEAT_WORST[metric],
        "bucket_s": heat.bucket,
        "buckets": heat.buckets,
        "window_s": heat.bucket * heat.buckets,
        "covered_s": heat.bucket * len(w.t),
        "t": _floats(w.t[len(w.t) - len(shown) :], 3),
        "frames": [_floats(f, 3) for f in shown],
        "peak": _floats(w.peak, 3),
    }


def fault_recorder(timeline: Timeline, topology: Topology) -> Callable[[JSON], None]:
    """A :attr:`snnrm.backends.sim.SimBackend.on_inject` listener that puts each injected fault on ``timeline``."""

    def record(fault: JSON) -> None:
        kind = str(fault.get("kind", "fault")).replace("_", "-")
        cores = [int(c) for c in fault.get("cores") or () if 0 <= int(c) < topology.n_cores]
        ids = [topology.ids[c] for c in cores]
        if ids:
            where = f" on {len(ids)} core(s) ({ids[0]}{' ..' if len(ids) > 1 else ''})"
        elif "chip" in fault:
            where = f" on chip{fault['chip']}"
        else:
            where = ""
        message = f"sim fault {fault.get('id')} injected: {kind}{where}"
        timeline.add("fault", "injected", message, reasons=[kind], devices=ids)

    return record


async def _json(body: Mapping[str, object], *, cache: str = "no-store") -> web.Response:
    """Serialise off the event loop: at 16k cores a body is about a megabyte and ~15 ms of encoding, which
    would otherwise sit in front of a hard fault on its way to ListAndWatch. The body itself is built on the
    loop, so it is one consistent snapshot."""
    text = await asyncio.to_thread(functools.partial(json.dumps, separators=(",", ":"), allow_nan=False), body)
    return web.Response(text=text, content_type="application/json", headers={"Cache-Control": cache})


def _flag(request: web.Request, name: str, *, default: bool) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise _bad(f"{name} must be true or false, got {value!r}")


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


async def get_topology(request: web.Request) -> web.Response:
    """``GET /api/v1/topology``."""
    return await _json(topology_body(request.app[STATUS].node), cache="no-cache")


async def get_devices(request: web.Request) -> web.Response:
    """``GET /api/v1/devices[?ids=false]``."""
    s = request.app[STATUS]
    return await _json(devices_body(s.node, s.sim, ids=_flag(request, "ids", default=True)))


async def get_history(request: web.Request) -> web.Response:
    """``GET /api/v1/history``."""
    s = request.app[STATUS]
    return await _json(history_body(s.history, s.node))


async def get_heat(request: web.Request) -> web.Response:
    """``GET /api/v1/heat?metric=queue_fill|load|efficiency[&frames=N]``."""
    metric = request.query.get("metric", "queue_fill")
    if metric not in HEAT_METRICS:
        raise _bad(f"metric must be one of {', '.join(HEAT_METRICS)}, got {metric!r}")
    raw = request.query.get("frames")
    frames = None
    if raw is not None:
        if not (raw.isascii() and raw.isdecimal()) or len(raw) > 6:  # isdecimal alone takes other scripts
            raise _bad(f"frames must be a non-negative integer, got {raw!r}")
        frames = int(raw)
    s = request.app[STATUS]
    return await _json(heat_body(s.history, metric, frames))


async def get_events(request: web.Request) -> web.Response:
    """``GET /api/v1/events``."""
    return await _json(request.app[STATUS].timeline.body())


async def index(request: web.Request) -> web.Response:
    """The status page."""
    return web.Response(
        body=request.app[STATUS].assets["index.html"],
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


async def asset(request: web.Request) -> web.Response:
    """The page's script and stylesheet (a fixed set: no file system path ever comes from the URL)."""
    name = request.match_info["name"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound(text=f"no asset {name!r}\n")
    return web.Response(
        body=request.app[STATUS].assets[name],
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


def _load_assets() -> dict[str, bytes]:
    static = importlib.resources.files("snnrm.http").joinpath("static")
    return {name: static.joinpath(name).read_bytes() for name in ("index.html", *_ASSETS)}


def setup_status(
    app: web.Application,
    *,
    node: NodeService,
    sim: FaultInjection | None = None,
    history: StatusHistory | None = None,
    timeline: Timeline | None = None,
) -> None:
    """Add the status page and ``/api/v1/{topology,devices,history,heat,events}`` to ``app``.

    ``history`` should be the instance whose :meth:`StatusHistory.run` the daemon's TaskGroup runs; without one,
    ``/api/v1/history`` and ``/api/v1/heat`` answer with an empty window (nothing samples it). ``timeline`` is the
    daemon's (its health transitions and reallocator record there); without one the timeline stays empty.
    """
    app[STATUS] = StatusSources(
        node=node,
        history=history if history is not None else StatusHistory(node),
        sim=sim,
        assets=_load_assets(),
        timeline=timeline if timeline is not None else Timeline(),
    )
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/api/v1/topology", get_topology)
    app.router.add_get("/api/v1/devices", get_devices)
    app.router.add_get("/api/v1/history", get_history)
    app.router.add_get("/api/v1/heat", get_heat)
    app.router.add_get("/api/v1/events", get_events)
