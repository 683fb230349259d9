"""Scheduler-extender decisions: which nodes can take a pod (filter) and how good each one is (prioritize).

Pure functions of the :class:`~snnrm.core.cluster.ClusterIndex`; the HTTP shell (:mod:`snnrm.http.extender`)
only decodes the scheduler's JSON and encodes the answer. Both work on arrays indexed by node slot, so that a
request naming 5,000 nodes costs a few vector operations plus one dictionary lookup per name.

Filter, for a pod requesting ``n`` neuron cores:

* a node that publishes no summary, or whose stage plan says another node, fails for good
  (``FailedAndUnresolvableNodes``: preemption cannot help);
* a node whose summary is stale, or that has fewer than ``n`` free healthy cores once every reservation
  for other stages is taken out, fails with the numbers in the reason (``FailedNodes``);
* a stage with a reservation passes only on its reserved node, and only while those cores are still free.

Prioritize (0-10): a stage planned on a node gets 10 there. Otherwise the score mixes

* traffic (weight :data:`TRAFFIC_SHARE` when a neighbouring stage already runs or is planned somewhere): the
  spike traffic to and from the stage's neighbours, costed at a few hops when they share the node and
  :data:`~snnrm.core.cluster.INTER_NODE_HOPS` when they do not, scaled so that the cheapest possible node scores 1;
* headroom: free cores left after the pod, and (1 - mean queue fill) and (1 - busiest link load) of the node.

A node with no summary (an empty index included) fails filter for good and scores 0. The pod is untrusted:
:func:`check_pod` checks the shape of every field read from it and the snnrm resource counts, and
:func:`demand_of` raises :class:`PodInputError` naming the field (the HTTP shell answers 400).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from snnrm.core.cluster import INTER_NODE_HOPS, ClusterIndex, StageKey
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.jobs import ContractError, QuantityError, StageRef, device_count, requested, stage_of
from snnrm.core.topology import BoolArray, FloatArray, IntArray

MAX_SCORE = 10
"""The extender API's MaxExtenderPriority."""
TRAFFIC_SHARE = 0.6
"""Weight of the traffic term when neighbours are placed: where the neighbours are matters more than a little
more headroom, since every spike pays the route."""
HEADROOM_WEIGHTS = (0.5, 0.3, 0.2)
"""Free-core share, queue headroom, link headroom: free cores first (room to grow and to remap into)."""


@dataclass(frozen=True, slots=True)
class PodDemand:
    """What the extender reads from a pod."""

    cores: int
    stage: StageRef | None = None
    contract_error: str | None = None

    @property
    def key(self) -> StageKey | None:
        s = self.stage
        return None if s is None else StageKey(s.namespace, s.job, s.index)


class PodInputError(ValueError):
    """The pod is not a v1.Pod as the apiserver would accept it; the message names the field (for a 400)."""


_RESOURCES = (NEURON_CORE, EVENT_THROUGHPUT)
"""The extended resources whose counts are checked (Kubernetes refuses fractional or negative ones)."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _object(value: Any, path: str) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, ``{}`` for null/absent (Go decodes null as the zero value)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PodInputError(f"{path} must be an object, got {_show(value)}")
    return value


def _array(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PodInputError(f"{path} must be a list, got {_show(value)}")
    return value


def _string(value: Any, path: str) -> None:
    if value is not None and not isinstance(value, str):
        raise PodInputError(f"{path} must be a string, got {_show(value)}")


def _string_map(value: Any, path: str) -> None:
    for k, v in _object(value, path).items():
        _string(v, f"{path}[{str(k)[:80]}]")  # the key comes from the request: keep the message short


def check_pod(pod: Any) -> None:
    """Check the shape of every pod field the extender and :func:`~snnrm.core.jobs.stage_of` read, and that each
    container's snnrm resource count is one Kubernetes accepts; :class:`PodInputError` naming the field if not."""
    pod = _object(pod, "Pod")
    meta = _object(pod.get("metadata"), "Pod.metadata")
    for name in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
        _string(meta.get(name), f"Pod.metadata.{name}")
    _string_map(meta.get("labels"), "Pod.metadata.labels")
    _string_map(meta.get("annotations"), "Pod.metadata.annotations")
    spec = _object(pod.get("spec"), "Pod.spec")
    _string(spec.get("nodeName"), "Pod.spec.nodeName")
    for i, gate in enumerate(_array(spec.get("schedulingGates"), "Pod.spec.schedulingGates")):
        _object(gate, f"Pod.spec.schedulingGates[{i}]")
    for kind in ("containers", "initContainers"):
        for i, c in enumerate(_array(spec.get(kind), f"Pod.spec.{kind}")):
            at = f"Pod.spec.{kind}[{i}]"
            resources = _object(_object(c, at).get("resources"), f"{at}.resources")
            for part in ("limits", "requests"):
                amounts = _object(resources.get(part), f"{at}.resources.{part}")
                for resource in _RESOURCES:
                    try:
                        device_count(amounts.get(resource), resource)
                    except QuantityError as e:
                        raise PodInputError(f"{at}.resources.{part}: {e}") from None
    status = _object(pod.get("status"), "Pod.status")
    _string(status.get("phase"), "Pod.status.phase")


def demand_of(pod: Mapping[str, Any]) -> PodDemand:
    """The pod's neuron-core request and, for a stage pod, its contract (a broken contract is reported);
    :class:`PodInputError` for a pod of the wrong shape or with a resource count Kubernetes refuses."""
    check_pod(pod)
    try:
        stage = stage_of(pod)
    except ContractError as e:
        return PodDemand(cores=requested(pod, NEURON_CORE), contract_error=str(e))
    return PodDemand(cores=requested(pod, NEURON_CORE) if stage is None else stage.cores, stage=stage)


@dataclass(frozen=True, slots=True)
class FilterResult:
    passed: list[str]
    failed: dict[str, str]
    unresolvable: dict[str, str]
    short: list[str] = field(default_factory=list)
    """Of ``failed``, the nodes whose summary has too few free cores (a newer summary may have room:
    :mod:`snnrm.core.requeue`)."""


def _slots(index: ClusterIndex, names: Sequence[str]) -> IntArray:
    get = index.slot_of
    return np.fromiter((get(n) for n in names), dtype=np.int64, count=len(names))


def _take(column: npt.NDArray[Any], slots: IntArray, known: BoolArray, missing: float) -> npt.NDArray[Any]:
    """``column[slots]``, with ``missing`` for names without a slot (the index's columns are empty until the
    first summary arrives, so no slot may stand in for them)."""
    out = np.full(len(slots), missing, dtype=column.dtype)
    out[known] = column[slots[known]]
    return out


def filter_nodes(index: ClusterIndex, demand: PodDemand, names: Sequence[str], *, now: float) -> FilterResult:
    """See the module docstring."""
    if demand.contract_error is not None:
        reason = f"snnrm job contract: {demand.contract_error}"
        return FilterResult([], {}, dict.fromkeys(names, reason))
    if demand.cores <= 0:
        return FilterResult(list(names), {}, {})
    key = demand.key
    reservation = index.reservations.get(key) if key is not None else None
    planned = reservation.node if reservation is not None else (demand.stage.planned_node if demand.stage else None)
    slots = _slots(index, names)
    known = slots >= 0
    published: FloatArray = _take(index.published, slots, known, -math.inf)
    fresh = known & (now - published <= index.stale_after)
    avail: IntArray = _take(index.avail, slots, known, 0)
    passed: list[str] = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    short: list[str] = []
    ok = fresh & (avail >= demand.cores)
    for i in np.flatnonzero(~ok | (planned is not None)).tolist():
        name = names[i]
        ok[i] = False  # decided below, with a reason when it fails
        if not known[i]:
            unresolvable[name] = "no snnrm summary from this node (is the snnrm daemon running there?)"
        elif planned is not None and name != planned:
            unresolvable[name] = f"stage {demand.stage.index if demand.stage else '?'} is planned on node {planned}"
        elif not fresh[i]:
            age = now - float(published[i])
            failed[name] = f"snnrm summary is {age:.0f}s old (daemon unreachable?)"
        elif reservation is not None:
            summary = index.summary(name)
            assert summary is not None
            cores = reservation.cores
            if len(cores) and not summary.free[cores[cores < len(summary.free)]].all():
                failed[name] = "cores reserved for this stage are no longer free on the node"
            else:
                ok[i] = True
        else:
            own = index.available(name, exclude=[key] if key is not None else ())
            if own >= demand.cores:
                ok[i] = True
            else:
                summary = index.summary(name)
                free = summary.free_count if summary is not None else 0
                failed[name] = (
                    f"needs {demand.cores} free healthy {NEURON_CORE}, node has {own} "
                    f"({free} free, {free - own} reserved for planned stages)"
                )
                short.append(name)
    passed = [names[i] for i in np.flatnonzero(ok).tolist()]
    return FilterResult(passed, failed, unresolvable, short)


def _intra_hops(a: int, b: int) -> float:
    """Rough mean hops between two adjacent compact blocks of ``a`` and ``b`` cores on one mesh."""
    return 1.0 + 0.5 * (math.sqrt(a) + math.sqrt(b))


def prioritize(index: ClusterIndex, demand: PodDemand, names: Sequence[str], *, now: float) -> list[int]:
    """Scores 0-10 in the order of ``names`` (see the module docstring)."""
    n = len(names)
    if n == 0:
        return []
    slots = _slots(index, names)
    known = slots >= 0
    published: FloatArray = _take(index.published, slots, known, -math.inf)
    fresh = known & (now - published <= index.stale_after)
    key = demand.key
    reservation = index.reservations.get(key) if key is not None else None
    if reservation is not None:
        return [MAX_SCORE if nm == reservation.node else 0 for nm in names]
    need = max(demand.cores, 0)
    avail_cores: IntArray = _take(index.avail, slots, known, 0)
    avail = avail_cores.astype(np.float64)
    total = np.maximum(_take(index.total, slots, known, 0).astype(np.float64), 1.0)
    w_free, w_fill, w_link = HEADROOM_WEIGHTS
    head = (
        w_free * np.clip((avail - need) / total, 0.0, 1.0)
        + w_fill * (1.0 - np.clip(_take(index.fill, slots, known, 1.0), 0.0, 1.0))
        + w_link * (1.0 - np.clip(_take(index.link, slots, known, 1.0), 0.0, 1.0))
    )
    score = head
    stage = demand.stage
    if stage is not None and key is not None:
        neighbours: list[tuple[float, int, int]] = []  # (traffic weight, neighbour's node slot, its cores)
        peers = index.stages_of(stage.job_key)
        for j, weight in ((stage.index - 1, None), (stage.index + 1, stage.out_keps)):
            if not 0 <= j < stage.stages:
                continue
            node = index.node_of_stage(StageKey(key.namespace, key.job, j))
            peer = peers.get(j)
            if node is None or peer is None:
                continue
            w = peer.out_keps if weight is None else weight
            neighbours.append((max(w, 1e-3), index.slot_of(node), peer.cores))
        if neighbours:
            cost = np.zeros(n)
            worst = 0.0
            for w, slot, cores in neighbours:
                cost += w * np.where(known & (slots == slot), _intra_hops(need, cores), INTER_NODE_HOPS)
                worst += w * INTER_NODE_HOPS
            best = float(cost.min())
            traffic = 1.0 - (cost - best) / max(worst - best, 1e-9)
            score = TRAFFIC_SHARE * traffic + (1.0 - TRAFFIC_SHARE) * head
    out = np.where(fresh & (avail_cores >= need), np.rint(MAX_SCORE * np.clip(score, 0.0, 1.0)), 0)
    return [int(x) for x in out.tolist()]
