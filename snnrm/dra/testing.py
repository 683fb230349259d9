"""Test doubles of the DRA driver's seams.

* :class:`FakeDraKube`: an in-memory :class:`~snnrm.dra.kube.DraKubeApi`: ResourceSlices with resource versions,
  optimistic concurrency, watches and dry runs; claims and nodes as plain dicts. ``features`` imitates an
  apiserver with feature gates off: the fields of a disabled feature are dropped on write, as the real
  apiserver's strategies do.
* :class:`StaticTelemetry`: a :class:`~snnrm.dra.view.DraTelemetry` whose arrays a test sets.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator

import numpy as np

from snnrm.core.dra import DraFeatures
from snnrm.core.health import Health, HealthReason
from snnrm.core.topology import FloatArray, IntArray, Topology
from snnrm.core.types import JSON
from snnrm.dra.kube import DraApiError


class FakeDraKube:
    def __init__(self, *, features: DraFeatures | None = None) -> None:
        self.features = features or DraFeatures()
        self.slices: dict[str, JSON] = {}
        self.claims: dict[tuple[str, str], JSON] = {}
        self.nodes: dict[str, JSON] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_next: list[DraApiError] = []
        """Errors to raise from the next calls, in order (any call)."""
        self._rv = 100
        self._watchers: list[asyncio.Queue[tuple[str, JSON] | None]] = []

    # --- helpers for tests ----------------------------------------------------------------------------------

    def add_node(self, name: str) -> JSON:
        node = {"metadata": {"name": name, "uid": str(uuid.uuid4())}}
        self.nodes[name] = node
        return node

    def put_claim(self, claim: JSON) -> None:
        meta = claim["metadata"]
        self.claims[(meta["namespace"], meta["name"])] = claim

    def pool_slices(self, node: str, driver: str) -> list[JSON]:
        return [copy.deepcopy(s) for s in self.slices.values() if _selected(s, node, driver)]

    def external_delete(self, name: str) -> None:
        """Delete a slice as someone else would (the kubelet wiping, an admin)."""
        obj = self.slices.pop(name)
        self._bump(obj)
        self._notify("DELETED", obj)

    def close_watches(self) -> None:
        for q in self._watchers:
            q.put_nowait(None)

    # --- DraKubeApi -----------------------------------------------------------------------------------------

    def _call(self, what: str, arg: str = "") -> None:
        self.calls.append((what, arg))
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _bump(self, obj: JSON) -> None:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)

    def _notify(self, kind: str, obj: JSON) -> None:
        for q in self._watchers:
            q.put_nowait((kind, copy.deepcopy(obj)))

    def _stored(self, obj: JSON) -> JSON:
        obj = copy.deepcopy(obj)
        spec = obj.setdefault("spec", {})
        f = self.features
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

    async def get_claim(self, namespace: str, name: str) -> JSON:
        self._call("get_claim", f"{namespace}/{name}")
        try:
            return copy.deepcopy(self.claims[(namespace, name)])
        except KeyError:
            raise DraApiError(404, f"resourceclaims {name!r} not found", method="GET") from None

    async def list_slices(self, *, node: str, driver: str) -> tuple[list[JSON], str]:
        self._call("list_slices")
        return self.pool_slices(node, driver), str(self._rv)

    async def watch_slices(self, *, node: str, driver: str, resource_version: str) -> AsyncIterator[tuple[str, JSON]]:
        self._call("watch_slices", resource_version)
        q: asyncio.Queue[tuple[str, JSON] | None] = asyncio.Queue()
        self._watchers.append(q)
        try:
            while (item := await q.get()) is not None:
                kind, obj = item
                if _selected(obj, node, driver):
                    yield kind, obj
        finally:
            self._watchers.remove(q)

    async def create_slice(self, obj: JSON, *, dry_run: bool = False) -> JSON:
        name = obj["metadata"]["name"]
        self._call("create_slice" + ("(dry-run)" if dry_run else ""), name)
        if name in self.slices and not dry_run:
            raise DraApiError(409, f"resourceslices {name!r} already exists", method="POST", reason="AlreadyExists")
        stored = self._stored(obj)
        stored["metadata"].pop("resourceVersion", None)
        if dry_run:
            return stored
        self._bump(stored)
        self.slices[name] = stored
        self._notify("ADDED", stored)
        return copy.deepcopy(stored)

    async def update_slice(self, obj: JSON) -> JSON:
        name = obj["metadata"]["name"]
        self._call("update_slice", name)
        current = self.slices.get(name)
        if current is None:
            raise DraApiError(404, f"resourceslices {name!r} not found", method="PUT")
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise DraApiError(409, "the object has been modified", method="PUT", reason="Conflict")
        stored = self._stored(obj)
        self._bump(stored)
        self.slices[name] = stored
        self._notify("MODIFIED", stored)
        return copy.deepcopy(stored)

    async def delete_slice(self, name: str, *, resource_version: str = "") -> None:
        self._call("delete_slice", name)
        current = self.slices.get(name)
        if current is None:
            return
        if resource_version and resource_version != current["metadata"]["resourceVersion"]:
            raise DraApiError(409, "precondition failed", method="DELETE", reason="Conflict")
        del self.slices[name]
        self._bump(current)
        self._notify("DELETED", current)

    async def get_node(self, name: str) -> JSON | None:
        self._call("get_node", name)
        node = self.nodes.get(name)
        return copy.deepcopy(node) if node is not None else None


def _selected(obj: JSON, node: str, driver: str) -> bool:
    spec = obj.get("spec", {})
    return bool(spec.get("nodeName") == node and spec.get("driver") == driver)


class StaticTelemetry:
    """A :class:`~snnrm.dra.view.DraTelemetry` whose per-core arrays tests set directly (all healthy, nominal)."""

    def __init__(self, topology: Topology, *, blocks_per_chip: int = 4) -> None:
        n = topology.n_cores
        self.state = np.full(n, int(Health.HEALTHY), dtype=np.int64)
        self.reasons = np.zeros(n, dtype=np.int64)
        self.keps = topology.core_nominal_keps.copy()
        self.blocks = np.full(topology.n_chips, blocks_per_chip, dtype=np.int64)
        self.time = 0.0

    def fail(self, core: int, reason: int = int(HealthReason.FAILED)) -> None:
        self.state[core] = int(Health.UNHEALTHY)
        self.reasons[core] = reason

    def recover(self, core: int) -> None:
        self.state[core] = int(Health.HEALTHY)
        self.reasons[core] = 0

    def core_state(self) -> IntArray:
        return self.state

    def core_reasons(self) -> IntArray:
        return self.reasons

    def effective_keps(self) -> FloatArray:
        return self.keps

    def healthy_blocks_per_chip(self) -> IntArray:
        return self.blocks

    def now(self) -> float:
        return self.time
