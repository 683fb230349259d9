"""``v1.DRAPlugin`` (and its identical predecessor ``v1beta1.DRAPlugin``): NodePrepareResources and
NodeUnprepareResources for the kubelet.

The kubelet batches every claim of a pod that names our driver into one call and retries claims whose answer is
missing or carries an error, so: every requested claim gets an entry; a failing claim never fails the others;
and a claim prepared before is answered again from :class:`ClaimStore` (idempotent). A new claim is read from the
apiserver (the request carries only namespace/name/UID), its allocation results for our driver are checked
against this node's pool and devices (and against NoExecute taints it does not tolerate), its CDI spec is
written and the checkpoint saved, and only then does the call answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import grpc
import structlog

from snnrm.core.dra import (
    EFFECTS,
    NO_EXECUTE,
    TAINT_KEY,
    THROUGHPUT,
    AllocatedDevice,
    ClaimError,
    DraLayout,
    allocated_devices,
    tolerates,
)
from snnrm.dra.claims import ClaimStore, PreparedClaim
from snnrm.dra.registration import DRA_SERVICE_V1, DRA_SERVICE_V1BETA1
from snnrm.dra.view import DraView
from snnrm.kube.api import KubeError
from snnrm.kube.dra import DraApi
from snnrm.kubelet.protos.dra.v1 import api_pb2
from snnrm.kubelet.wire import lenient, refuse_malformed

log = structlog.get_logger(__name__)

MAX_CONCURRENT_GETS = 8
"""Claims of one batch read in parallel: a pod rarely has more, and the apiserver's per-client QPS stays sane."""


class DraPluginServicer:
    """Prepares and unprepares this node's claims of ``driver`` (pool ``pool``)."""

    def __init__(
        self,
        *,
        driver: str,
        pool: str,
        layout: DraLayout,
        api: DraApi,
        store: ClaimStore,
        view: DraView | None = None,
    ) -> None:
        self.driver = driver
        self.pool = pool
        self._layout = layout
        self._api = api
        self._store = store
        self._view = view
        self._lock = asyncio.Lock()
        self._gets = asyncio.Semaphore(MAX_CONCURRENT_GETS)
        self.prepare_calls = 0
        self.unprepare_calls = 0
        self.api_reads = 0

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """Handlers for both service names (same messages; v1beta1 clients skip ``share_id`` as unknown)."""
        methods = {
            "NodePrepareResources": grpc.unary_unary_rpc_method_handler(
                self._prepare_rpc,
                request_deserializer=lenient(api_pb2.NodePrepareResourcesRequest.FromString),
                response_serializer=api_pb2.NodePrepareResourcesResponse.SerializeToString,
            ),
            "NodeUnprepareResources": grpc.unary_unary_rpc_method_handler(
                self._unprepare_rpc,
                request_deserializer=lenient(api_pb2.NodeUnprepareResourcesRequest.FromString),
                response_serializer=api_pb2.NodeUnprepareResourcesResponse.SerializeToString,
            ),
        }
        return [grpc.method_handlers_generic_handler(s, methods) for s in (DRA_SERVICE_V1, DRA_SERVICE_V1BETA1)]

    async def _prepare_rpc(
        self, request: api_pb2.NodePrepareResourcesRequest | None, context: Any
    ) -> api_pb2.NodePrepareResourcesResponse:
        if request is None:
            await refuse_malformed(context, "NodePrepareResources")
        return await self.prepare(list(request.claims))

    async def _unprepare_rpc(
        self, request: api_pb2.NodeUnprepareResourcesRequest | None, context: Any
    ) -> api_pb2.NodeUnprepareResourcesResponse:
        if request is None:
            await refuse_malformed(context, "NodeUnprepareResources")
        return await self.unprepare(list(request.claims))

    # --- prepare --------------------------------------------------------------------------------------------

    async def prepare(self, claims: Sequence[api_pb2.Claim]) -> api_pb2.NodePrepareResourcesResponse:
        self.prepare_calls += 1
        response = api_pb2.NodePrepareResourcesResponse()
        fresh: list[api_pb2.Claim] = []
        for c in claims:
            known = self._store.get(c.uid)
            if known is not None:
                self._store.ensure_spec(known)
                self._answer(response, known)
            elif c.uid not in {f.uid for f in fresh}:
                fresh.append(c)
        if not fresh:
            return response
        results = await asyncio.gather(*(self._read(c) for c in fresh))
        async with self._lock:
            prepared: list[PreparedClaim] = []
            for claim, result in zip(fresh, results, strict=True):
                if isinstance(result, str):
                    response.claims[claim.uid].error = result
                    continue
                try:
                    p = self._store.prepare(uid=claim.uid, namespace=claim.namespace, name=claim.name, devices=result)
                except OSError as e:
                    response.claims[claim.uid].error = f"writing the CDI spec: {e}"
                    continue
                prepared.append(p)
            if prepared:
                try:
                    self._store.save()
                except OSError as e:
                    for p in prepared:
                        self._store.unprepare(p.uid)
                        response.claims[p.uid].error = f"saving the prepared-claims checkpoint: {e}"
                    prepared = []
            for p in prepared:
                self._answer(response, p)
                log.info(
                    "dra_prepared", claim=f"{p.namespace}/{p.name}", uid=p.uid, devices=[d.device for d in p.devices]
                )
        for claim in fresh:
            if response.claims[claim.uid].error:
                error = response.claims[claim.uid].error
                log.warning("dra_prepare_failed", claim=f"{claim.namespace}/{claim.name}", uid=claim.uid, error=error)
        return response

    @staticmethod
    def _answer(response: api_pb2.NodePrepareResourcesResponse, p: PreparedClaim) -> None:
        entry = response.claims[p.uid]
        for d in p.devices:
            dev = entry.devices.add(
                request_names=list(d.request_names),
                pool_name=d.pool,
                device_name=d.device,
                cdi_device_ids=list(d.cdi_ids),
            )
            if d.share_id:
                dev.share_id = d.share_id

    async def _read(self, claim: api_pb2.Claim) -> list[tuple[AllocatedDevice, list[str]]] | str:
        """The claim's devices with their core IDs, or an error message for the kubelet."""
        try:
            async with self._gets:
                self.api_reads += 1
                obj = await self._api.get_claim(claim.namespace, claim.name)
        except KubeError as e:
            return f"reading ResourceClaim {claim.namespace}/{claim.name}: {e}"
        try:
            devices = allocated_devices(obj, driver=self.driver, uid=claim.uid)
            return [(d, self._check(d)) for d in devices]
        except ClaimError as e:
            return str(e)

    def _check(self, d: AllocatedDevice) -> list[str]:
        """Core IDs behind an allocated device; raises :class:`ClaimError` if this node cannot serve it."""
        if d.pool != self.pool:
            raise ClaimError(f"device {d.device} is in pool {d.pool!r}, this node serves pool {self.pool!r}")
        i = self._layout.index_of.get(d.device)
        if i is None:
            raise ClaimError(f"device {d.device} does not exist in pool {self.pool}")
        snap = self._view.snapshot if self._view is not None else None
        if snap is not None and EFFECTS[int(snap.conditions.effect[i])] == NO_EXECUTE:
            reason = snap.conditions.reason[i]
            if not tolerates(d.tolerations, key=TAINT_KEY, value=reason, effect=NO_EXECUTE):
                raise ClaimError(f"device {d.device} is unhealthy ({TAINT_KEY}={reason}:NoExecute)")
        if self._layout.kinds[i] == THROUGHPUT:
            return []
        ids = self._layout.topology.ids
        return [ids[k] for k in self._layout.cores_of(i).tolist()]

    # --- unprepare ------------------------------------------------------------------------------------------

    async def unprepare(self, claims: Sequence[api_pb2.Claim]) -> api_pb2.NodeUnprepareResourcesResponse:
        self.unprepare_calls += 1
        response = api_pb2.NodeUnprepareResourcesResponse()
        async with self._lock:
            removed = []
            for c in claims:
                try:
                    if self._store.unprepare(c.uid):
                        removed.append(c)
                except OSError as e:
                    response.claims[c.uid].error = f"removing the CDI spec: {e}"
                    continue
                response.claims[c.uid].SetInParent()
            if removed:
                try:
                    self._store.save()
                except OSError as e:
                    for c in removed:
                        response.claims[c.uid].error = f"saving the prepared-claims checkpoint: {e}"
        for c in removed:
            log.info("dra_unprepared", claim=f"{c.namespace}/{c.name}", uid=c.uid)
        return response
