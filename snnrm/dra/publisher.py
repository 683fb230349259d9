"""Publishes the node's pool as ResourceSlices and keeps them there.

1. Wait for the first telemetry (what we publish is measured, not assumed).
2. Learn what the cluster keeps: a dry-run create of :func:`snnrm.core.dra.probe_slice` returns the object as it
   would be stored, with the fields of disabled features (partitionable devices, consumable capacity, device
   taints) dropped. Publishing a field the apiserver drops would be wrong, not just useless: without counters a
   chip and its groups could be allocated together. Features the cluster lacks are turned off in the slices.
3. Sync: build the desired slices (:func:`snnrm.core.dra.build_slices`), list what exists, apply the writes of
   :func:`snnrm.core.dra.plan_pool` (deletes, updates, creates). Health and taint changes sync at once; headroom
   buckets at most every ``attribute_interval`` seconds. A failed write is retried (with backoff) from a fresh
   list, so a conflict or a concurrent deletion heals itself.
4. Watch the node's slices: anything we did not write (the kubelet wipes a driver's slices at start-up and 30 s
   after it deregisters; an admin may delete one) triggers a sync, so the pool comes back within a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any

import structlog

from snnrm.core.dra import (
    DraFeatures,
    HardwareInfo,
    SliceBuilder,
    SliceSettings,
    detect_features,
    plan_pool,
    probe_slice,
    slice_name,
)
from snnrm.core.types import JSON
from snnrm.dra.view import DraView
from snnrm.kube.api import KubeError
from snnrm.kube.dra import DraApi

log = structlog.get_logger(__name__)

MAX_BACKOFF_S = 30.0


class SlicePublisher:
    """Keeps ``node``'s pool of ``driver`` in the apiserver equal to what :class:`DraView` says."""

    def __init__(
        self,
        api: DraApi,
        view: DraView,
        *,
        driver: str,
        node: str,
        info: HardwareInfo,
        allow: DraFeatures | None = None,
        settings: SliceSettings | None = None,
        attribute_interval: float = 5.0,
        resync: float = 300.0,
    ) -> None:
        self._api = api
        self._view = view
        self.driver = driver
        self.node = node
        self.pool = node
        self._info = info
        self._allow = allow or DraFeatures()
        self._settings = settings or SliceSettings()
        self._attribute_interval = attribute_interval
        self._resync = resync
        self.features: DraFeatures | None = None
        """What is published: ``allow`` and what the cluster keeps (None until probed)."""
        self.generation = 0
        self.syncs = 0
        self.writes = 0
        self.last_error = ""
        self.synced = asyncio.Event()
        """Set after the first successful sync."""
        self._owner: JSON | None = None
        self._builder: SliceBuilder | None = None
        self._cache: dict[str, JSON] | None = None
        """The pool as stored (name -> object), from a LIST, our writes and the watch; None: list first."""
        self._acked: dict[int, tuple[JSON, str]] = {}
        """Slice index -> (the desired object we wrote, the resourceVersion the apiserver gave it)."""
        self._dirty = asyncio.Event()
        self._written: deque[str] = deque(maxlen=4096)
        self._deleted: set[str] = set()
        self._list_rv = ""
        self._synced_version = -1
        self._synced_health = -1
        self._last_sync = -1e9

    async def run(self) -> None:
        await self._view.ready.wait()
        self.features = await self._probe()
        self._owner = await self._owner_ref()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sync_loop(), name="dra-slice-sync")
            tg.create_task(self._watch_loop(), name="dra-slice-watch")

    # --- discovery ------------------------------------------------------------------------------------------

    async def _probe(self) -> DraFeatures:
        delay = 1.0
        while True:
            try:
                returned = await self._api.create_slice(probe_slice(self.node, self.driver), dry_run=True)
            except KubeError as e:
                self.last_error = str(e)
                if e.status == 422:
                    # The probe itself is invalid for this apiserver (an older validation): stay conservative.
                    log.warning("dra_probe_rejected", error=str(e))
                    found = DraFeatures(partitionable=False, consumable=False, taints=False)
                    break
                log.warning("dra_probe_failed", error=str(e), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            found = detect_features(returned)
            break
        features = DraFeatures(
            partitionable=found.partitionable and self._allow.partitionable,
            consumable=found.consumable and self._allow.consumable,
            taints=found.taints and self._allow.taints,
        )
        log.info("dra_cluster_features", cluster=_fmt(found), publishing=_fmt(features))
        return features

    async def _owner_ref(self) -> JSON | None:
        try:
            node = await self._api.get_node(self.node)
        except KubeError as e:
            log.warning("dra_node_lookup_failed", node=self.node, error=str(e))
            return None
        if node is None:
            log.warning("dra_node_not_found", node=self.node, hint="slices are published without an owner")
            return None
        uid = node.get("metadata", {}).get("uid")
        if not uid:
            return None
        return {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid, "controller": True}

    # --- sync -----------------------------------------------------------------------------------------------

    def request_sync(self) -> None:
        self._dirty.set()

    async def _sync_loop(self) -> None:
        delay = 0.5
        while True:
            await self._wait_for_work()
            try:
                await self.sync_once()
            except KubeError as e:
                self.last_error = str(e)
                log.warning("dra_slice_sync_failed", error=str(e), retry_in=delay)
                self._dirty.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            else:
                delay = 0.5

    async def _wait_for_work(self) -> None:
        view = self._view
        while True:
            if self._dirty.is_set() or view.health_version != self._synced_health:
                return
            if view.version != self._synced_version:
                due = self._last_sync + self._attribute_interval - time.monotonic()
                if due <= 0:
                    return
                await _first(self._dirty.wait(), asyncio.sleep(due), self._health_change())
                continue
            await _first(self._dirty.wait(), view.wait_newer(view.version), asyncio.sleep(self._resync))
            if not self._dirty.is_set() and view.version == self._synced_version:
                self._cache = None  # resync timer: list the apiserver's view again even if nothing changed here
                self._dirty.set()

    async def _health_change(self) -> None:
        view = self._view
        while view.health_version == self._synced_health:
            await view.wait_newer(view.version)

    async def sync_once(self) -> bool:
        """One reconcile pass; returns True if it wrote anything.

        It plans against a cache of the pool (from a LIST, our own writes and the watch), so the steady state costs
        no LIST (at 16k cores the pool is ~10 MB of JSON); any failed write drops the cache and the next pass lists.
        """
        assert self.features is not None
        view = self._view
        snap = view.snapshot
        if snap is None:
            return False
        version, health = view.version, view.health_version
        self._dirty.clear()
        if self._builder is None or self._builder.features != self.features:
            self._builder = SliceBuilder(view.layout, self._info, self.features, self._settings)
            self._acked.clear()
        desired = self._builder.build(snap)
        if self._cache is None:
            items, rv = await self._api.list_slices(node=self.node, driver=self.driver)
            self._cache = {str(o.get("metadata", {}).get("name")): o for o in items}
            self._list_rv = rv
        cache = self._cache
        names = [slice_name(self.node, self.driver, i) for i in range(len(desired))]
        index = {n: i for i, n in enumerate(names)}
        unchanged = {
            i
            for i, (obj, rv) in self._acked.items()
            if i < len(desired) and desired[i] is obj and _rv(cache.get(names[i])) == rv
        }
        plan = plan_pool(
            list(cache.values()),
            desired,
            driver=self.driver,
            node=self.node,
            pool=self.pool,
            last_generation=self.generation,
            owner=self._owner,
            unchanged=unchanged,
        )
        try:
            for name, obj_rv in plan.deletes:
                self._deleted.add(name)
                await self._api.delete_slice(name, resource_version=obj_rv)
                cache.pop(name, None)
            for obj, write in [
                *((o, self._api.update_slice) for o in plan.updates),
                *((o, self._api.create_slice) for o in plan.creates),
            ]:
                stored = await write(obj)
                name = str(obj["metadata"]["name"])
                cache[name] = stored
                self._written.append(_rv(stored))
                self._acked[index[name]] = (desired[index[name]], _rv(stored))
        except KubeError:
            self._cache = None  # something else changed the pool: list again
            self._acked.clear()
            raise
        writes = len(plan.deletes) + len(plan.updates) + len(plan.creates)
        self.writes += writes
        self.syncs += 1
        self.generation = max(self.generation, plan.generation)
        self._synced_version, self._synced_health = version, health
        self._last_sync = time.monotonic()
        self.last_error = ""
        if writes:
            log.info(
                "dra_slices_synced",
                generation=plan.generation,
                slices=len(desired),
                deleted=len(plan.deletes),
                updated=len(plan.updates),
                created=len(plan.creates),
            )
        self.synced.set()
        return bool(writes)

    # --- watch ----------------------------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        await self.synced.wait()
        delay = 1.0
        while True:
            try:
                async for kind, obj in self._api.watch_slices(
                    node=self.node, driver=self.driver, resource_version=self._list_rv
                ):
                    delay = 1.0
                    self._on_event(kind, obj)
            except KubeError as e:
                if e.status == 410:  # our resourceVersion is too old: re-list through a sync, then watch again
                    self._list_rv = ""
                else:
                    log.debug("dra_slice_watch_error", error=str(e), retry_in=delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_S)
            if not self._list_rv:
                self._cache = None
                self.synced.clear()
                self._dirty.set()
                await self.synced.wait()

    def _on_event(self, kind: str, obj: JSON) -> None:
        """Fold a watch event into the cache; a change we did not make triggers a sync."""
        meta = obj.get("metadata", {})
        rv, name = _rv(obj), str(meta.get("name", ""))
        self._list_rv = rv or self._list_rv
        if kind == "BOOKMARK":
            return
        cache = self._cache
        if cache is not None and _newer(rv, _rv(cache.get(name))):
            if kind == "DELETED":
                cache.pop(name, None)
            else:
                cache[name] = obj
        if kind == "DELETED" and name in self._deleted:
            self._deleted.discard(name)
            return
        if kind in ("ADDED", "MODIFIED") and rv in self._written:
            return
        log.info("dra_slice_changed_elsewhere", change=kind, slice=name)
        self._dirty.set()


def _rv(obj: JSON | None) -> str:
    return str((obj or {}).get("metadata", {}).get("resourceVersion", ""))


def _newer(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` is newer than ``b`` (etcd revisions; unknown formats count as newer)."""
    try:
        return not b or int(a) > int(b)
    except ValueError:
        return True


async def _first(*aws: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of several coroutines finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _fmt(f: DraFeatures) -> str:
    return ",".join(k for k in ("partitionable", "consumable", "taints") if getattr(f, k)) or "none"
