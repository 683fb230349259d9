"""``DRAResourceHealth.NodeWatchResources``: device health streamed to the kubelet (KEP-4680).

The kubelet keeps one stream per registered driver and shows the health of the devices a container uses in
``status.containerStatuses[].allocatedResourcesStatus`` (resource ID ``<driver>/<pool>/<device>``). Each message
is the complete device list; a device missing from it, or not refreshed within its
``health_check_timeout_seconds``, becomes Unknown. So the stream sends the full list at once, again on every
health change of :class:`DraView`, and at least every ``heartbeat`` seconds with fresh timestamps.

The same handler is registered as ``v1.DRAResourceHealth`` (kubelet 1.37) and ``v1alpha1.DRAResourceHealth``
(1.34-1.36): the messages are identical.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from snnrm.core.dra import DraSnapshot, health_message
from snnrm.core.health import Health
from snnrm.dra.registration import HEALTH_SERVICE_V1, HEALTH_SERVICE_V1ALPHA1
from snnrm.dra.view import DraView
from snnrm.kubelet.protos.dra_health.v1 import api_pb2
from snnrm.kubelet.wire import lenient, refuse_malformed

log = structlog.get_logger(__name__)

HEARTBEAT_S = 10.0
"""Resend period: a third of the timeout we declare, so two lost messages still do not turn devices Unknown."""
TIMEOUT_S = 30
"""``health_check_timeout_seconds`` per device (the kubelet's default too)."""
MESSAGE_MAX = 1024

_STATUS = {
    int(Health.HEALTHY): api_pb2.HEALTHY,
    int(Health.UNKNOWN): api_pb2.UNKNOWN,
    int(Health.UNHEALTHY): api_pb2.UNHEALTHY,
}


def health_response(view: DraView, pool: str, *, now: float | None = None) -> api_pb2.NodeWatchResourcesResponse:
    """The complete device list of the pool with each device's current health (empty before any telemetry)."""
    response = api_pb2.NodeWatchResourcesResponse()
    snap: DraSnapshot | None = view.snapshot
    if snap is None:
        return response
    stamp = int(now if now is not None else time.time())
    layout = view.layout
    for i, name in enumerate(layout.names):
        message = health_message(snap, layout, i)
        if len(message) > MESSAGE_MAX:
            message = message[: MESSAGE_MAX - 3] + "..."
        response.devices.add(
            device=api_pb2.DeviceIdentifier(pool_name=pool, device_name=name),
            health=_STATUS[int(snap.conditions.health[i])],
            last_updated_time=stamp,
            health_check_timeout_seconds=TIMEOUT_S,
            message=message,
        )
    return response


class HealthServicer:
    """Streams :func:`health_response` of a :class:`DraView` to every watcher."""

    def __init__(self, view: DraView, *, pool: str, heartbeat: float = HEARTBEAT_S) -> None:
        self._view = view
        self._pool = pool
        self._heartbeat = heartbeat
        self._closed = asyncio.Event()
        self.open_streams = 0
        self.messages_sent = 0

    def close(self) -> None:
        """End every stream (the server is stopping)."""
        self._closed.set()

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        method = grpc.unary_stream_rpc_method_handler(
            self._watch,
            request_deserializer=lenient(api_pb2.NodeWatchResourcesRequest.FromString),
            response_serializer=api_pb2.NodeWatchResourcesResponse.SerializeToString,
        )
        return [
            grpc.method_handlers_generic_handler(s, {"NodeWatchResources": method})
            for s in (HEALTH_SERVICE_V1, HEALTH_SERVICE_V1ALPHA1)
        ]

    async def _watch(
        self, request: api_pb2.NodeWatchResourcesRequest | None, context: Any
    ) -> AsyncIterator[api_pb2.NodeWatchResourcesResponse]:
        if request is None:
            await refuse_malformed(context, "NodeWatchResources")
        self.open_streams += 1
        log.info("dra_health_stream_opened", streams=self.open_streams)
        try:
            async for response in self.stream():
                self.messages_sent += 1
                yield response
        finally:
            self.open_streams -= 1
            log.info("dra_health_stream_closed", streams=self.open_streams)

    async def stream(self) -> AsyncIterator[api_pb2.NodeWatchResourcesResponse]:
        """Full list now (once telemetry has arrived), on every health change, and every heartbeat."""
        view = self._view
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            ready = asyncio.ensure_future(view.ready.wait())
            await asyncio.wait((ready, closed), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            while not self._closed.is_set():
                seen = view.health_version
                yield health_response(view, self._pool)
                deadline = asyncio.get_running_loop().time() + self._heartbeat
                while not self._closed.is_set() and view.health_version == seen:
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    change = asyncio.ensure_future(view.wait_newer(view.version))
                    await asyncio.wait((change, closed), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                    change.cancel()
        finally:
            closed.cancel()
