"""``/v1beta1.DevicePlugin/*`` for one resource, as a grpc.aio generic handler.

A generic handler (rather than the generated servicer base class) lets ListAndWatch and the fixed answers send
pre-serialized bytes with an identity serializer: the device list is encoded once per change by
:class:`~snnrm.kubelet.wire.ListAndWatchEncoder` and shared by every open stream.

Health for validation and preference is the health last advertised through the feed (what the kubelet saw).
One servicer lives as long as one gRPC server; :meth:`close` ends its streams so that ``server.stop(grace)``
returns as soon as unary calls in flight finish, and :attr:`dropped` tells the owner that the kubelet went away
from ListAndWatch (the owner registers again if no stream comes back; a stream ending is not a restart).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
import structlog

from snnrm.core.allocation import AllocationError, UnknownDeviceError
from snnrm.core.topology import BoolArray
from snnrm.kubelet.allocator import ResourceAllocator
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.id_index import PreferredRequest
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.wire import DEVICE_PLUGIN_SERVICE, ListAndWatchEncoder, lenient, refuse_malformed

log = structlog.get_logger(__name__)

MAX_CONTAINERS = 64
"""Container requests one Allocate or GetPreferredAllocation may carry. The kubelet sends one per call; a request
of a million tiny ones kept the event loop (and every other RPC, /healthz included) busy for seconds to a minute."""


class DevicePluginServicer:
    """Serves one resource's :class:`DeviceFeed` and :class:`ResourceAllocator` to the kubelet."""

    def __init__(
        self,
        *,
        feed: DeviceFeed,
        allocator: ResourceAllocator,
        encoder: ListAndWatchEncoder,
        pre_start_required: bool = False,
    ) -> None:
        self.resource = feed.resource
        self._feed = feed
        self._allocator = allocator
        self._encoder = encoder
        self._options = api_pb2.DevicePluginOptions(
            pre_start_required=pre_start_required, get_preferred_allocation_available=True
        )
        self._options_bytes = self._options.SerializeToString()
        self._payload: tuple[int, bytes] = (0, b"")
        self._closed = asyncio.Event()
        self._streams = 0
        self.dropped = asyncio.Event()
        """Set when the kubelet's ListAndWatch stream ended because the client left (not by :meth:`close`)."""
        self._awaiting_kubelet = False
        self._kubelet_stream: int | None = None
        self.streams_opened = 0
        """ListAndWatch streams opened so far (for tests and status)."""

    @property
    def options(self) -> api_pb2.DevicePluginOptions:
        return self._options

    @property
    def open_streams(self) -> int:
        return self._streams

    def expect_kubelet(self) -> None:
        """A Register call is about to go out: the next stream opened is the kubelet's. Any local client may open
        ListAndWatch too; only the kubelet's stream ending says it may have dropped us (a foreign stream held open
        used to hide that, and the node's devices stayed unusable while it was held)."""
        self._awaiting_kubelet = True

    @property
    def kubelet_stream_open(self) -> bool:
        """Whether the stream the kubelet opened after the last registration is still open."""
        return self._kubelet_stream is not None

    def close(self) -> None:
        """End every ListAndWatch stream normally (the server is about to stop)."""
        self._closed.set()
        self._feed.wake()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic handler to add to a ``grpc.aio`` server."""
        empty = lenient(api_pb2.Empty.FromString)
        return grpc.method_handlers_generic_handler(
            DEVICE_PLUGIN_SERVICE,
            {
                "GetDevicePluginOptions": grpc.unary_unary_rpc_method_handler(
                    self._get_options, request_deserializer=empty
                ),
                "ListAndWatch": grpc.unary_stream_rpc_method_handler(self._list_and_watch, request_deserializer=empty),
                "GetPreferredAllocation": grpc.unary_unary_rpc_method_handler(
                    self._get_preferred_allocation,
                    request_deserializer=self._decode_preferred,
                    response_serializer=api_pb2.PreferredAllocationResponse.SerializeToString,
                ),
                "Allocate": grpc.unary_unary_rpc_method_handler(
                    self._allocate,
                    request_deserializer=lenient(api_pb2.AllocateRequest.FromString),
                    response_serializer=api_pb2.AllocateResponse.SerializeToString,
                ),
                "PreStartContainer": grpc.unary_unary_rpc_method_handler(
                    self._pre_start_container,
                    request_deserializer=lenient(api_pb2.PreStartContainerRequest.FromString),
                ),
            },
        )

    # --- RPCs ---------------------------------------------------------------------------------------------

    async def _get_options(self, request: api_pb2.Empty | None, context: Any) -> bytes:
        if request is None:
            await refuse_malformed(context, "GetDevicePluginOptions")
        return self._options_bytes

    async def _list_and_watch(self, request: api_pb2.Empty | None, context: Any) -> AsyncIterator[bytes]:
        if request is None:
            await refuse_malformed(context, "ListAndWatch")
        self._streams += 1
        self.streams_opened += 1
        stream = self.streams_opened
        if self._awaiting_kubelet:
            self._awaiting_kubelet, self._kubelet_stream = False, stream
        ended_by_us = False
        log.info("list-and-watch opened", resource=self.resource)
        try:
            seen = 0
            while not self._closed.is_set():
                version = self._feed.version
                current = self._feed.current
                if version != seen and current is not None:
                    # Latest state only: whatever was published while we were sending is coalesced here.
                    seen = version
                    yield self._encoded(version, current)
                    continue
                await self._feed.changed(seen)  # close() wakes it too
            ended_by_us = True
        finally:
            self._streams -= 1
            kubelets = stream == self._kubelet_stream
            if kubelets:
                self._kubelet_stream = None
            if not ended_by_us and not self._closed.is_set() and (kubelets or self._streams == 0):
                log.warning("list-and-watch dropped by kubelet", resource=self.resource, others_open=self._streams)
                self.dropped.set()

    def _encoded(self, version: int, devices: Any) -> bytes:
        cached_version, payload = self._payload
        if cached_version != version:
            payload = self._encoder.encode(devices)
            self._payload = (version, payload)
        return payload

    def _healthy(self) -> BoolArray | None:
        current = self._feed.current
        return None if current is None else current.healthy

    def _decode_preferred(self, raw: bytes) -> PreferredRequest | None:
        # Straight into device indices (the C path reads the bytes without a str per ID); None: not a message.
        return self._allocator.id_index.preferred_request(raw, MAX_CONTAINERS)

    async def _refuse_over_limit(self, context: Any, rpc: str, containers: int) -> None:
        """INVALID_ARGUMENT when a request lists more than :data:`MAX_CONTAINERS` containers."""
        if containers > MAX_CONTAINERS:
            log.warning("request refused", resource=self.resource, rpc=rpc, containers=containers)
            await _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{rpc}: {containers} container requests in one call, at most {MAX_CONTAINERS} (the kubelet sends one)",
            )

    async def _get_preferred_allocation(
        self, request: PreferredRequest | None, context: Any
    ) -> api_pb2.PreferredAllocationResponse:
        if request is None:
            await refuse_malformed(context, "GetPreferredAllocation")
        await self._refuse_over_limit(context, "GetPreferredAllocation", request.containers)
        healthy = self._healthy()
        if healthy is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"no {self.resource} devices published yet")
        if request.asks:  # one wait per call, however many containers a (possibly hostile) request lists
            await self._allocator.settle(request.asks[0].available, request.asks[0].size)
        # Decoded before the call ran: if the devices were renumbered since (a re-plan of the blocks), the indices
        # are moved onto the numbering the answer is computed in.
        request = request.onto(self._allocator.id_index)
        response = api_pb2.PreferredAllocationResponse()
        for ask in request.asks:
            ids = self._allocator.preferred(ask.available, ask.must_include, ask.size, healthy)
            response.container_responses.add().deviceIDs.extend(ids)
        return response

    async def _allocate(self, request: api_pb2.AllocateRequest | None, context: Any) -> api_pb2.AllocateResponse:
        if request is None:
            await refuse_malformed(context, "Allocate")
        await self._refuse_over_limit(context, "Allocate", len(request.container_requests))
        if any(not c.devices_ids for c in request.container_requests):
            # The kubelet calls Allocate only for containers that get devices; an empty one would be handed a
            # zero-device allocation file shared by both resources (the hash of no IDs).
            log.warning("allocate rejected", resource=self.resource, reason="a container asks for no device")
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{self.resource}: a container asks for no device")
        healthy = self._healthy()
        if healthy is None:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, f"no {self.resource} devices published yet")
        response = api_pb2.AllocateResponse()
        try:
            # Every container is validated (together: an ID in two containers is a double booking) before any
            # file is written or any plan marked admitted, so a rejected request changes nothing.
            self._allocator.validate([i for req in request.container_requests for i in req.devices_ids], healthy)
            answers = [self._allocator.allocate(req.devices_ids, healthy) for req in request.container_requests]
        except AllocationError as e:
            code = (
                grpc.StatusCode.INVALID_ARGUMENT
                if isinstance(e, UnknownDeviceError)
                else grpc.StatusCode.FAILED_PRECONDITION
            )
            log.warning("allocate rejected", resource=self.resource, reason=e.reason, ids=list(e.ids))
            await _abort(context, code, f"{self.resource}: {e}")
        response.container_responses.extend(answers)
        log.debug("allocated", resource=self.resource, containers=len(answers))
        return response

    async def _pre_start_container(self, request: api_pb2.PreStartContainerRequest | None, context: Any) -> bytes:
        if request is None:
            await refuse_malformed(context, "PreStartContainer")
        return b""  # PreStartContainerResponse{} serializes to nothing


async def _abort(context: Any, code: grpc.StatusCode, details: str) -> NoReturn:
    await context.abort(code, details)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
