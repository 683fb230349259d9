"""The in-memory :class:`snnrm.kube.api.ClusterApi` every layer's unit tests use: objects by resource, watches,
evictions, Leases, scale subresources, discovery.

Enough apiserver behaviour for the placement controller's, the hooks' and the DRA driver's unit tests:

* ``resourceVersion`` on every write, and optimistic concurrency on ``replace``, on a merge patch that carries
  ``metadata.resourceVersion`` and on a preconditioned ``delete`` (409 on a stale one);
* RFC 7386 merge patches, ``generateName``, 404 for unknown objects, 409 for existing names;
* the ``scale`` subresource (a ``Scale`` reading and writing the parent's ``spec.replicas``);
* list + watch with label selectors (``key``, ``key=value``) and ``spec.nodeName=`` field selectors; each
  watcher gets every later change (and ``DELETED`` events);
* the Eviction subresource: deletes the pod, or answers 429 when the pod is named in :attr:`blocked_evictions`
  (what a PodDisruptionBudget does); ``dryRun`` changes nothing;
* ``served`` for API discovery, and :attr:`fail_next` to inject errors;
* ResourceSlices stored as an apiserver with DRA feature gates off stores them (:attr:`dra_features`: the fields of
  a disabled feature are dropped on write, dry runs included, as the real apiserver's strategies do).

Also builders for the objects these tests (and the e2e tier) need: :func:`stage_pod` (a pod following the job
contract) and :func:`node_summary` (what a node's daemon would publish).
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from snnrm.core.devices import NEURON_CORE
from snnrm.core.dra import DraFeatures
from snnrm.core.jobs import GATE, INPUT_RATE, JOB, SPIKE_RATE, STAGE, STAGES
from snnrm.core.summary import NodeSummary, summarize
from snnrm.core.topology import INTER_CHIP_WEIGHT, ChipGeometry, Topology
from snnrm.core.types import JSON
from snnrm.kube.api import NODES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, KubeError, Resource, error_for

_Key = tuple[str, str | None, str]  # (resource path without namespace, namespace, name)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _matches(obj: JSON, label_selector: str | None, field_selector: str | None) -> bool:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    for term in (label_selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        if "=" in term:
            k, _, v = term.partition("=")
            if labels.get(k.strip()) != v.strip():
                return False
        elif term not in labels:
            return False
    for term in (field_selector or "").split(","):
        term = term.strip()
        if not term:
            continue
        k, _, v = term.partition("=")
        node = (obj.get("spec") or {}).get("nodeName") or ""
        if k == "spec.nodeName" and node != v:
            return False
        if k == "metadata.name" and meta.get("name") != v:
            return False
        if k == "spec.driver" and (obj.get("spec") or {}).get("driver") != v:
            return False
    return True


@dataclass(eq=False)
class FakeClusterApi:
    objects: dict[_Key, JSON] = field(default_factory=dict)
    served: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """API group -> version -> resource plurals, for :meth:`served_versions`."""
    blocked_evictions: set[tuple[str, str]] = field(default_factory=set)
    """(namespace, pod) whose eviction a disruption budget refuses (429)."""
    evictions: list[tuple[str, str, bool]] = field(default_factory=list)
    """(namespace, pod, dry_run) of every eviction that went through."""
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every call; a dry-run create is ``POST?dryRun``, a list ``LIST``, a watch ``WATCH``."""
    fail_next: list[KubeError] = field(default_factory=list)
    """Errors raised by the next calls, in order (then calls behave normally again)."""
    dra_features: DraFeatures = field(default_factory=DraFeatures)
    """The DRA features this apiserver keeps in ResourceSlices (all by default)."""
    _rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _watchers: list[tuple[Resource, str | None, str | None, str | None, asyncio.Queue[tuple[str, JSON] | None]]] = (
        field(default_factory=list)
    )

    # -- helpers for tests ---------------------------------------------------------------------------------------

    def put(self, res: Resource, obj: JSON) -> JSON:
        """Create or replace an object as-is (test setup); watchers see it."""
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace") if res.namespaced else None
        if res.namespaced and ns is None:
            ns = meta["namespace"] = "default"
        key = (res.path(), ns, meta["name"])
        kind = "MODIFIED" if key in self.objects else "ADDED"
        return self._store(res, key, obj, kind)

    def get_obj(self, res: Resource, name: str, namespace: str | None = "default") -> JSON | None:
        return self.objects.get((res.path(), namespace if res.namespaced else None, name))

    def all(self, res: Resource) -> list[JSON]:
        return [o for (p, _, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0])) if p == res.path()]

    def delete_obj(self, res: Resource, name: str, namespace: str | None = "default") -> None:
        """Delete as someone else would (an admin, the kubelet wiping slices); watchers see the deletion with a new
        resourceVersion, as from the real apiserver."""
        key = (res.path(), namespace if res.namespaced else None, name)
        obj = self.objects.pop(key, None)
        if obj is not None:
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self._notify(res, "DELETED", obj)

    def close_watches(self) -> None:
        """End every open watch (as the apiserver does after its timeout)."""
        for *_, q in self._watchers:
            q.put_nowait(None)

    def add_node(self, name: str) -> JSON:
        """A Node with a uid (what the DRA driver owns its slices by)."""
        return self.put(NODES, {"metadata": {"name": name}})

    def put_claim(self, claim: JSON) -> JSON:
        return self.put(RESOURCE_CLAIMS, claim)

    @property
    def slices(self) -> dict[str, JSON]:
        """Every ResourceSlice by name (as stored)."""
        return {str(o["metadata"]["name"]): o for o in self.all(RESOURCE_SLICES)}

    def pool_slices(self, node: str, driver: str) -> list[JSON]:
        """Copies of ``node``'s slices of ``driver``."""
        return [
            copy.deepcopy(s)
            for s in self.all(RESOURCE_SLICES)
            if (s.get("spec") or {}).get("nodeName") == node and (s.get("spec") or {}).get("driver") == driver
        ]

    # -- internals -----------------------------------------------------------------------------------------------

    def _store(self, res: Resource, key: _Key, obj: JSON, kind: str) -> JSON:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("uid", f"uid-{key[2]}-{meta['resourceVersion']}")
        meta.setdefault("creationTimestamp", f"2026-01-01T00:00:{int(meta['resourceVersion']) % 60:02d}Z")
        self.objects[key] = obj
        self._notify(res, kind, obj)
        return copy.deepcopy(obj)

    def _notify(self, res: Resource, kind: str, obj: JSON) -> None:
        ns = (obj.get("metadata") or {}).get("namespace")
        for r, wns, ls, fs, q in self._watchers:
            if r == res and (wns is None or wns == ns) and _matches(obj, ls, fs):
                q.put_nowait((kind, copy.deepcopy(obj)))

    def _maybe_fail(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _key(self, res: Resource, name: str, namespace: str | None) -> _Key:
        return (res.path(), (namespace or "default") if res.namespaced else None, name)

    # -- ClusterApi ----------------------------------------------------------------------------------------------

    async def get(
        self, res: Resource, name: str, *, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        self._maybe_fail("GET", path)
        obj = self.objects.get(self._key(res, name, namespace))
        if obj is None:
            raise error_for(404, f"{path} not found", method="GET", path=path)
        if subresource == "scale":
            return _scale_of(obj)
        return copy.deepcopy(obj)

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[JSON], str]:
        self._maybe_fail("LIST", res.path(namespace=namespace))
        path = res.path()
        items = [
            copy.deepcopy(o)
            for (p, ns, _), o in self.objects.items()
            if p == path and (namespace is None or ns == namespace) and _matches(o, label_selector, field_selector)
        ]
        return items, str(next(self._rv))

    async def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[tuple[str, JSON]]:
        self._maybe_fail("WATCH", res.path(namespace=namespace))
        q: asyncio.Queue[tuple[str, JSON] | None] = asyncio.Queue()
        entry = (res, namespace, label_selector, field_selector, q)
        self._watchers.append(entry)
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._watchers.remove(entry)

    async def create(
        self,
        res: Resource,
        obj: JSON,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JSON:
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        self._maybe_fail("POST?dryRun" if dry_run else "POST", path)
        if res == PODS and subresource == "eviction" and name is not None:
            ns = namespace or "default"
            if self._key(res, name, ns) not in self.objects:
                raise error_for(404, f"pod {ns}/{name} not found", method="POST", path=path)
            if (ns, name) in self.blocked_evictions:
                raise error_for(
                    429, "Cannot evict pod as it would violate the pod's disruption budget.", method="POST", path=path
                )
            self.evictions.append((ns, name, dry_run))
            if not dry_run:
                self.delete_obj(res, name, ns)
            return {"kind": "Status", "status": "Success"}
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            meta["name"] = f"{meta.get('generateName', 'obj-')}{next(self._rv)}"
        if res.namespaced:
            meta["namespace"] = namespace or meta.get("namespace") or "default"
        key = self._key(res, meta["name"], meta.get("namespace"))
        if key in self.objects:
            raise error_for(
                409, f"{path}/{meta['name']} already exists", method="POST", path=path, reason="AlreadyExists"
            )
        if res == RESOURCE_SLICES:
            obj = _dra_stored(obj, self.dra_features)
        if dry_run:
            meta.pop("resourceVersion", None)
            return obj
        return self._store(res, key, obj, "ADDED")

    async def merge_patch(
        self, res: Resource, name: str, patch: JSON, *, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        path = res.path(namespace=namespace, name=name, subresource=subresource)
        self._maybe_fail("PATCH", path)
        key = self._key(res, name, namespace)
        cur = self.objects.get(key)
        if cur is None:
            raise error_for(404, f"{path} not found", method="PATCH", path=path)
        want = (patch.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != cur["metadata"]["resourceVersion"]:
            raise error_for(409, "the object has been modified", method="PATCH", path=path)
        if subresource == "scale":
            replicas = (patch.get("spec") or {}).get("replicas")
            return _scale_of(self._store(res, key, merge_patch(cur, {"spec": {"replicas": replicas}}), "MODIFIED"))
        merged: JSON = merge_patch(cur, patch)
        return self._store(res, key, merged, "MODIFIED")

    async def replace(self, res: Resource, name: str, obj: JSON, *, namespace: str | None = None) -> JSON:
        path = res.path(namespace=namespace, name=name)
        self._maybe_fail("PUT", path)
        key = self._key(res, name, namespace)
        cur = self.objects.get(key)
        if cur is None:
            raise error_for(404, f"{path} not found", method="PUT", path=path)
        want = (obj.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != cur["metadata"]["resourceVersion"]:
            raise error_for(409, "the object has been modified", method="PUT", path=path, reason="Conflict")
        if res == RESOURCE_SLICES:
            obj = _dra_stored(obj, self.dra_features)
        return self._store(res, key, obj, "MODIFIED")

    async def delete(
        self, res: Resource, name: str, *, namespace: str | None = None, resource_version: str = ""
    ) -> None:
        path = res.path(namespace=namespace, name=name)
        self._maybe_fail("DELETE", path)
        key = self._key(res, name, namespace)
        cur = self.objects.get(key)
        if cur is None:
            raise error_for(404, f"{path} not found", method="DELETE", path=path)
        if resource_version and resource_version != cur["metadata"]["resourceVersion"]:
            raise error_for(409, "precondition failed", method="DELETE", path=path, reason="Conflict")
        self.delete_obj(res, name, key[1])

    async def served_versions(self, group: str) -> dict[str, builtins.list[str]]:
        self._maybe_fail("GET", f"/apis/{group}")
        return copy.deepcopy(self.served.get(group, {}))

    # -- convenience ---------------------------------------------------------------------------------------------

    def events_for(self, pod: str) -> builtins.list[JSON]:
        return [
            o
            for (p, _, _), o in self.objects.items()
            if p.endswith("/events") and (o.get("regarding") or {}).get("name") == pod
        ]


def _dra_stored(obj: JSON, f: DraFeatures) -> JSON:
    """A ResourceSlice as an apiserver keeping only the features ``f`` stores it (and with taints' timeAdded set)."""
    obj = copy.deepcopy(obj)
    spec = obj.setdefault("spec", {})
    if not f.partitionable:
        spec.pop("sharedCounters", None)
    for d in spec.get("devices") or []:
        if not f.partitionable:
            d.pop("consumesCounters", None)
        if not f.consumable:
            d.pop("allowMultipleAllocations", None)
            for cap in (d.get("capacity") or {}).values():
                cap.pop("requestPolicy", None)
        if not f.taints:
            d.pop("taints", None)
        for t in d.get("taints") or []:
            t.setdefault("timeAdded", "2026-01-01T00:00:00Z")
    return obj


def _scale_of(obj: JSON) -> JSON:
    """The ``autoscaling/v1`` Scale of a workload: its name, resourceVersion and ``spec.replicas``."""
    meta = obj.get("metadata") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
    }


SMALL_TOPOLOGY = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4))
"""Two 16-core chips: small enough to reason about in a test, large enough to have inter-chip routes."""


def node_summary(
    now: float,
    *,
    free: int | None = None,
    fill: float = 0.0,
    link: float = 0.0,
    topology: Topology = SMALL_TOPOLOGY,
    healthy: int | None = None,
) -> NodeSummary:
    """What a node's daemon would publish: the first ``free`` cores free (all by default), the first
    ``healthy`` cores healthy (all by default), uniform queue fill and link load."""
    n = topology.n_cores
    mask = np.zeros(n, dtype=bool)
    mask[: n if free is None else free] = True
    ok = np.zeros(n, dtype=bool)
    ok[: n if healthy is None else healthy] = True
    return summarize(
        topology,
        now=now,
        free=mask,
        healthy=ok,
        queue_fill=np.full(n, fill),
        link_utilization=np.full(topology.n_links, link),
        chip_headroom_keps=np.full(topology.n_chips, 1000.0),
        inter_chip_weight=INTER_CHIP_WEIGHT,  # a bare grid: no hardware to say otherwise
    )


def stage_pod(
    job: str,
    index: int,
    stages: int,
    cores: int,
    *,
    keps: float = 100.0,
    gated: bool = False,
    node: str | None = None,
    namespace: str = "default",
    name: str | None = None,
    scheduler: str | None = None,
    annotations: dict[str, str] | None = None,
) -> JSON:
    """A stage pod following the job contract (``snnrm.io/job``/``stage`` labels, rate annotations)."""
    ann = {STAGES: str(stages), SPIKE_RATE: str(keps), **(annotations or {})}
    if index == 0:
        ann[INPUT_RATE] = "50"
    limits = {NEURON_CORE: str(cores)}
    spec: JSON = {
        "containers": [
            {"name": "snn", "image": "registry.invalid/snn:none", "resources": {"limits": limits, "requests": limits}}
        ],
    }
    if gated:
        spec["schedulingGates"] = [{"name": GATE}]
    if node:
        spec["nodeName"] = node
    if scheduler:
        spec["schedulerName"] = scheduler
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name or f"{job}-{index}",
            "namespace": namespace,
            "uid": f"uid-{name or job}-{index}",
            "labels": {JOB: job, STAGE: str(index)},
            "annotations": ann,
            "creationTimestamp": f"2026-01-01T00:00:0{index % 10}Z",
        },
        "spec": spec,
    }
