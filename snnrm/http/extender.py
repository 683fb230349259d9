"""The kube-scheduler extender webhook (filter + prioritize), and a JSON view of jobs and their planned cores.

Wire format (kube-scheduler ``extender/v1``; JSON keys are the Go field names, exact case):

* ``POST <prefix>/filter`` with ``ExtenderArgs`` ``{"Pod": v1.Pod, "NodeNames": [..]}`` (``nodeCacheCapable:
  true``) or ``{"Pod": .., "Nodes": {"items": [v1.Node..]}}``; answers ``ExtenderFilterResult`` in the same
  form: ``NodeNames`` (or ``Nodes``), ``FailedNodes``, ``FailedAndUnresolvableNodes``, ``Error``;
* ``POST <prefix>/prioritize`` with the same arguments; answers ``HostPriorityList``
  ``[{"Host": name, "Score": 0..10}]``.

The decisions are :mod:`snnrm.core.extender` over the controller's cached cluster index, so no request waits
on any node. Malformed JSON, JSON of the wrong shape (ExtenderArgs here, the Pod in
:func:`snnrm.core.extender.check_pod`) or a resource count Kubernetes would refuse is a 400 naming the problem,
logged as a warning; a body over the cap is a 413; a valid request never gets a 500: an unexpected failure while
deciding becomes a filter ``Error`` (the scheduler retries the pod) or all-zero scores (prioritize errors are
ignored by the scheduler anyway), logged with its traceback.

``GET /api/v1/placement`` lists every job the controller knows: each stage's pod, node, planned or held cores
and reservation, for the status page and for people.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from aiohttp import web

from snnrm.core.cluster import ClusterIndex, StageKey
from snnrm.core.extender import PodInputError, demand_of, filter_nodes, prioritize
from snnrm.core.requeue import TurnedAway
from snnrm.http import body as bodies
from snnrm.http.middleware import middlewares
from snnrm.obs.http_metrics import HttpMetrics

log = structlog.get_logger(__name__)

DEFAULT_PREFIX = "/extender"
MAX_BODY = 32 * 1024 * 1024
"""Without nodeCacheCapable the scheduler sends whole Node objects (a few KB each): 5,000 nodes fit in 32 MiB."""


@dataclass(eq=False)
class ExtenderStats:
    """Request counts by verb and outcome (exposed by ``/api/v1/placement``)."""

    counts: dict[str, int] = field(default_factory=dict)

    def count(self, verb: str, outcome: str) -> None:
        key = f"{verb}:{outcome}"
        self.counts[key] = self.counts.get(key, 0) + 1


@dataclass(eq=False)
class ExtenderContext:
    index: ClusterIndex
    clock: Callable[[], float] = time.time
    stats: ExtenderStats = field(default_factory=ExtenderStats)
    turned_away: TurnedAway | None = None
    """Where filter records pods it turned away for lack of cores (the controller hands them back later)."""


EXTENDER = web.AppKey("snnrm_extender", ExtenderContext)


class BadRequestError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class _Args:
    pod: dict[str, Any]
    names: list[str]
    nodes: list[dict[str, Any]] | None
    """The Node objects when the scheduler sent them (nodeCacheCapable false)."""


def _field(d: dict[str, Any], name: str) -> Any:
    """Exact Go field name first, then any case (Go decodes case-insensitively)."""
    if name in d:
        return d[name]
    low = name.lower()
    return next((v for k, v in d.items() if k.lower() == low), None)


async def _args(request: web.Request) -> _Args:
    raw = await request.read()
    try:
        body = bodies.loads(raw)
    except bodies.BodyError as e:
        raise BadRequestError(str(e)) from None
    if not isinstance(body, dict):
        raise BadRequestError("ExtenderArgs must be a JSON object")
    pod = _field(body, "Pod")
    if not isinstance(pod, dict):
        raise BadRequestError("ExtenderArgs.Pod must be a v1.Pod object")
    names = _field(body, "NodeNames")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequestError("ExtenderArgs.NodeNames must be a list of strings")
        return _Args(pod, names, None)
    nodes = _field(body, "Nodes")
    if nodes is None:
        return _Args(pod, [], None)
    items = nodes.get("items") if isinstance(nodes, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise BadRequestError("ExtenderArgs.Nodes must be a v1.NodeList with items")
    out_names = []
    for item in items:
        meta = item.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str):
            raise BadRequestError("every node in ExtenderArgs.Nodes needs metadata.name")
        out_names.append(name)
    return _Args(pod, out_names, items)


def json_response(body: Any, status: int = 200) -> web.Response:
    """``body`` as a JSON response (compact, as the scheduler reads it)."""
    return web.Response(body=json.dumps(body, separators=(",", ":")), status=status, content_type="application/json")


def _bad(ctx: ExtenderContext, verb: str, error: ValueError) -> web.Response:
    """The 400 for bad input: counted, one warning line (no traceback: the sender is wrong, not snnrm)."""
    ctx.stats.count(verb, "bad-request")
    log.warning("extender_bad_request", verb=verb, error=str(error))
    return json_response({"Error": str(error)}, status=400)


async def filter_handler(request: web.Request) -> web.Response:
    ctx = request.app[EXTENDER]
    try:
        args = await _args(request)
    except BadRequestError as e:
        return _bad(ctx, "filter", e)
    try:
        demand = demand_of(args.pod)
        now = ctx.clock()
        res = filter_nodes(ctx.index, demand, args.names, now=now)
    except PodInputError as e:
        return _bad(ctx, "filter", e)
    except Exception as e:  # a valid request never gets a 500: the scheduler retries the pod on Error
        ctx.stats.count("filter", "error")
        log.exception("extender_filter_failed")
        return json_response({"Error": f"snnrm extender failed: {e!r}"})
    ctx.stats.count("filter", "ok")
    if ctx.turned_away is not None:
        meta = args.pod.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("name"), str):
            ctx.turned_away.record(
                str(meta.get("namespace") or "default"),
                meta["name"],
                str(meta.get("uid") or ""),
                demand.cores,
                () if res.passed else res.short,  # a pod that fits somewhere is the scheduler's to place
                now,
            )
    out: dict[str, Any] = {
        "FailedNodes": res.failed,
        "FailedAndUnresolvableNodes": res.unresolvable,
        "Error": "",
    }
    if args.nodes is None:
        out["NodeNames"] = res.passed
    else:
        keep = set(res.passed)
        out["Nodes"] = {"items": [n for n, name in zip(args.nodes, args.names, strict=True) if name in keep]}
    return json_response(out)


async def prioritize_handler(request: web.Request) -> web.Response:
    ctx = request.app[EXTENDER]
    try:
        args = await _args(request)
    except BadRequestError as e:
        return _bad(ctx, "prioritize", e)
    try:
        scores = prioritize(ctx.index, demand_of(args.pod), args.names, now=ctx.clock())
    except PodInputError as e:
        return _bad(ctx, "prioritize", e)
    except Exception:  # never a 500; the scheduler ignores prioritize errors anyway
        ctx.stats.count("prioritize", "error")
        log.exception("extender_prioritize_failed")
        scores = [0] * len(args.names)
    else:
        ctx.stats.count("prioritize", "ok")
    return web.Response(body=_host_priorities(args.names, scores), content_type="application/json")


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._:-]*$")


def _host_priorities(names: list[str], scores: list[int]) -> bytes:
    """``[{"Host":..,"Score":..}]`` built as text: 5,000 dicts through json.dumps cost more than the scoring.
    Node names are DNS subdomains and need no escaping; any other name goes through json.dumps."""
    if all(_PLAIN_NAME.match(n) for n in names):
        body = ",".join(f'{{"Host":"{n}","Score":{s}}}' for n, s in zip(names, scores, strict=True))
        return f"[{body}]".encode()
    return json.dumps([{"Host": n, "Score": s} for n, s in zip(names, scores, strict=True)]).encode()


def placement_body(index: ClusterIndex, *, now: float) -> dict[str, Any]:
    """Jobs, their stages and cores, and the nodes' free capacity (``GET /api/v1/placement``)."""
    jobs = []
    for (ns, job), _pods in sorted(index.jobs()):
        stages = []
        for i, ref in sorted(index.stages_of((ns, job)).items()):
            r = index.reservations.get(StageKey(ns, job, i))
            topo = index.topology(r.node) if r is not None else None
            reserved = [topo.ids[c] for c in np.asarray(r.cores).tolist()] if (r is not None and topo) else []
            stages.append(
                {
                    "stage": i,
                    "pod": ref.pod,
                    "node": ref.node,
                    "gated": ref.gated,
                    "cores_requested": ref.cores,
                    "spike_rate_keps": ref.out_keps,
                    "planned_node": ref.planned_node or (r.node if r is not None else None),
                    "cores": list(ref.cores_held) or list(ref.planned_cores) or reserved,
                    "reservation": None
                    if r is None
                    else {"node": r.node, "cores": len(r.cores), "committed": r.committed, "plan": r.plan_id},
                }
            )
        jobs.append({"namespace": ns, "job": job, "stages": stages})
    nodes = []
    for name in index.node_names():
        s = index.summary(name)
        if s is None:
            continue
        nodes.append(
            {
                "node": name,
                "cores": s.n_cores,
                "free": s.free_count,
                "available": index.available(name),
                "healthy": s.healthy,
                "age_s": round(now - s.time, 1),
                "fresh": index.fresh(name, now),
            }
        )
    return {"jobs": jobs, "nodes": nodes}


async def placement_handler(request: web.Request) -> web.Response:
    ctx = request.app[EXTENDER]
    body = placement_body(ctx.index, now=ctx.clock())
    body["requests"] = dict(ctx.stats.counts)
    return json_response(body)


StageView = Callable[[], dict[str, Any]]
STAGE_VIEW: web.AppKey[StageView] = web.AppKey("snnrm_stage_view")


async def stages_handler(request: web.Request) -> web.Response:
    return json_response(request.app[STAGE_VIEW]())


def setup_stage_view(app: web.Application, view: StageView) -> None:
    """``GET /api/v1/stages`` on a node's daemon: each stage here, its cores and chips, and the routes between
    consecutive stages (what the status page draws on the mesh)."""
    app[STAGE_VIEW] = view
    app.router.add_get("/api/v1/stages", stages_handler)


def setup_extender(app: web.Application, ctx: ExtenderContext, *, prefix: str = DEFAULT_PREFIX) -> None:
    """Add the extender verbs under ``prefix`` and ``GET /api/v1/placement`` to ``app``."""
    prefix = "/" + prefix.strip("/")
    app[EXTENDER] = ctx
    app.router.add_post(f"{prefix}/filter", filter_handler)
    app.router.add_post(f"{prefix}/prioritize", prioritize_handler)
    app.router.add_get("/api/v1/placement", placement_handler)


def build_extender_app(
    ctx: ExtenderContext, *, prefix: str = DEFAULT_PREFIX, http_metrics: HttpMetrics | None = None
) -> web.Application:
    """A stand-alone application (the controller's HTTP server); the body cap covers whole NodeLists.
    ``http_metrics``: count and time every request, the extender verbs' latency among them."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares(http_metrics))
    setup_extender(app, ctx, prefix=prefix)
    return app
