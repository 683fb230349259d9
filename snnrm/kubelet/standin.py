"""An in-process kubelet device manager, for ``make demo`` and the integration tests.

It follows what the real kubelet (``pkg/kubelet/cm/devicemanager``) does on the wire, so that a plugin that
works against it has exercised the same sequence:

* on start, every *socket* in the directory is deleted (``CleanupPluginDirectory``) and ``kubelet.sock``
  serves ``/v1beta1.Registration/Register``;
* ``Register`` checks the version and that the resource is an extended resource name, then, before
  returning, dials the plugin's socket (``endpoint`` is relative to the directory) and calls
  ``GetDevicePluginOptions``; ListAndWatch runs in the background afterwards;
* every ListAndWatch message replaces the resource's device list: capacity = all devices, allocatable =
  healthy ones; when the stream ends every device turns unhealthy (capacity kept);
* :meth:`KubeletStandIn.admit` picks free healthy devices, asks GetPreferredAllocation when the plugin offers
  it (advisory: the answer is intersected with the candidates and any shortfall filled), then calls Allocate
  once per container and records the assignment;
* :meth:`KubeletStandIn.restart` behaves like a kubelet restart: endpoints are dropped, all sockets deleted,
  ``kubelet.sock`` recreated, and resources report no devices until their plugin registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import structlog

from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.wire import (
    DEVICE_PLUGIN_SERVICE,
    HEALTHY,
    KUBELET_PRESTART_TIMEOUT_S,
    KUBELET_SOCKET,
    REGISTRATION_SERVICE,
    VERSION,
)

log = structlog.get_logger(__name__)

SUPPORTED_VERSIONS = (VERSION,)
DIAL_TIMEOUT_S = 10.0
"""The kubelet's blocking dial into a plugin inside Register."""
_QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class AdmissionError(Exception):
    """The pod cannot be admitted (like kubelet's ``UnexpectedAdmissionError``)."""


Register = Callable[[api_pb2.RegisterRequest, Any], Awaitable[api_pb2.Empty]]
"""A kubelet's handler of ``Registration.Register`` (request, gRPC context) -> Empty."""


async def registration_server(socket: Path, register: Register) -> grpc.aio.Server:
    """A started gRPC server on ``socket`` answering the kubelet's Registration service with ``register``."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                REGISTRATION_SERVICE,
                {
                    "Register": grpc.unary_unary_rpc_method_handler(
                        register,
                        request_deserializer=api_pb2.RegisterRequest.FromString,
                        response_serializer=api_pb2.Empty.SerializeToString,
                    )
                },
            ),
        )
    )
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    return server


def is_extended_resource_name(name: str) -> bool:
    """Kubelet's ``IsExtendedResourceName``: ``domain/name``, not in the ``kubernetes.io`` namespace."""
    if "/" not in name or name.startswith("requests."):
        return False
    domain, _, short = name.partition("/")
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return False
    return len(domain) <= 253 and bool(_DNS_SUBDOMAIN.match(domain)) and bool(_QUALIFIED_NAME.match(short))


@dataclass(eq=False)
class _Endpoint:
    """One registered plugin, as the device manager tracks it."""

    resource: str
    socket: Path
    channel: grpc.aio.Channel
    options: api_pb2.DevicePluginOptions
    task: asyncio.Task[None] | None = None
    stopped: bool = False


@dataclass
class _ResourceState:
    devices: dict[str, bool] = field(default_factory=dict)
    """Device ID -> healthy, from the last complete ListAndWatch message."""
    messages: int = 0
    endpoint: _Endpoint | None = None


class KubeletStandIn:
    """A kubelet device manager serving ``<directory>/kubelet.sock``. Use as an async context manager."""

    def __init__(self, directory: Path, *, dial_timeout: float = DIAL_TIMEOUT_S) -> None:
        self.directory = Path(directory)
        self.dial_timeout = dial_timeout
        self.socket = self.directory / KUBELET_SOCKET
        self._server: grpc.aio.Server | None = None
        self._resources: dict[str, _ResourceState] = {}
        self._assigned: dict[tuple[str, str, str], list[str]] = {}
        """(pod UID, container, resource) -> device IDs."""
        self._changed = asyncio.Condition()
        self.registrations: list[api_pb2.RegisterRequest] = []
        """Every accepted RegisterRequest, in order."""

    # --- lifecycle ----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Clean the directory of sockets and serve ``kubelet.sock``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cleanup_sockets()
        self._server = await registration_server(self.socket, self._register)
        log.info("kubelet stand-in serving", socket=str(self.socket))

    async def aclose(self) -> None:
        """Drop every endpoint and stop serving; removes ``kubelet.sock``."""
        for state in self._resources.values():
            if state.endpoint is not None:
                await self._stop_endpoint(state.endpoint)
        if self._server is not None:
            await self._server.stop(None)
            self._server = None
        self.socket.unlink(missing_ok=True)

    async def restart(self) -> None:
        """Like a kubelet restart: endpoints gone, every socket deleted, ``kubelet.sock`` recreated."""
        for state in self._resources.values():
            if state.endpoint is not None:
                await self._stop_endpoint(state.endpoint)
                state.endpoint = None
            state.devices = {}  # checkpointed resources come back with empty device sets
        if self._server is not None:
            await self._server.stop(None)
            self._server = None
        await self._notify()
        await self.start()

    def _cleanup_sockets(self) -> None:
        for entry in os.scandir(self.directory):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                    os.unlink(entry.path)

    # --- Registration service -----------------------------------------------------------------------------

    async def _register(self, request: api_pb2.RegisterRequest, context: Any) -> api_pb2.Empty:
        if request.version not in SUPPORTED_VERSIONS:
            await context.abort(
                grpc.StatusCode.UNKNOWN,
                f"requested device plugin version {request.version!r} is not supported; "
                f"supported versions: {list(SUPPORTED_VERSIONS)}",
            )
        if not is_extended_resource_name(request.resource_name):
            await context.abort(grpc.StatusCode.UNKNOWN, f"invalid extended resource name: {request.resource_name!r}")
        if not request.endpoint or "/" in request.endpoint:
            await context.abort(grpc.StatusCode.UNKNOWN, f"invalid endpoint: {request.endpoint!r}")
        socket = self.directory / request.endpoint
        channel = grpc.aio.insecure_channel(f"unix://{socket}")
        try:
            options = await channel.unary_unary(
                f"/{DEVICE_PLUGIN_SERVICE}/GetDevicePluginOptions",
                request_serializer=api_pb2.Empty.SerializeToString,
                response_deserializer=api_pb2.DevicePluginOptions.FromString,
            )(api_pb2.Empty(), timeout=self.dial_timeout, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            await channel.close()
            await context.abort(grpc.StatusCode.UNKNOWN, f"failed to dial device plugin: {e.details()}")
        endpoint = _Endpoint(request.resource_name, socket, channel, options)
        state = self._resources.setdefault(request.resource_name, _ResourceState())
        old, state.endpoint = state.endpoint, endpoint
        if old is not None:
            await self._stop_endpoint(old)
        endpoint.task = asyncio.create_task(
            self._list_and_watch(endpoint), name=f"stand-in ListAndWatch {request.resource_name}"
        )
        self.registrations.append(request)
        log.info("plugin registered with stand-in", resource=request.resource_name, endpoint=request.endpoint)
        await self._notify()
        return api_pb2.Empty()

    async def _list_and_watch(self, endpoint: _Endpoint) -> None:
        stream = endpoint.channel.unary_stream(
            f"/{DEVICE_PLUGIN_SERVICE}/ListAndWatch",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.ListAndWatchResponse.FromString,
        )(api_pb2.Empty())
        state = self._resources[endpoint.resource]
        try:
            async for message in stream:
                if state.endpoint is not endpoint:
                    return
                state.devices = {d.ID: d.health == HEALTHY for d in message.devices}
                state.messages += 1
                await self._notify()
        except grpc.aio.AioRpcError as e:
            log.info("list-and-watch ended", resource=endpoint.resource, code=e.code().name)
        finally:
            stream.cancel()
            if state.endpoint is endpoint and not endpoint.stopped:
                # PluginDisconnected: every device unhealthy, capacity kept.
                state.devices = dict.fromkeys(state.devices, False)
                await self._notify()

    async def _stop_endpoint(self, endpoint: _Endpoint) -> None:
        endpoint.stopped = True
        if endpoint.task is not None and endpoint.task is not asyncio.current_task():
            endpoint.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint.task
        await endpoint.channel.close()

    async def drop_list_and_watch(self, resource: str) -> None:
        """Cancel the resource's ListAndWatch stream, as a kubelet does when it gives up on an endpoint."""
        state = self._resources[resource]
        endpoint = state.endpoint
        if endpoint is not None and endpoint.task is not None:
            endpoint.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint.task

    # --- node status --------------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def capacity(self, resource: str) -> int:
        """Node ``capacity[resource]``: every device of the last complete list."""
        state = self._resources.get(resource)
        return 0 if state is None else len(state.devices)

    def allocatable(self, resource: str) -> int:
        """Node ``allocatable[resource]``: healthy devices only."""
        state = self._resources.get(resource)
        return 0 if state is None else sum(state.devices.values())

    def devices(self, resource: str) -> dict[str, bool]:
        """Device ID -> healthy, as last reported."""
        state = self._resources.get(resource)
        return {} if state is None else dict(state.devices)

    def messages(self, resource: str) -> int:
        """ListAndWatch messages received for ``resource`` so far."""
        state = self._resources.get(resource)
        return 0 if state is None else state.messages

    def options(self, resource: str) -> api_pb2.DevicePluginOptions | None:
        state = self._resources.get(resource)
        return None if state is None or state.endpoint is None else state.endpoint.options

    def assigned(self) -> dict[tuple[str, str, str], list[str]]:
        """(pod UID, container, resource) -> device IDs of every admitted container."""
        return {k: list(v) for k, v in self._assigned.items()}

    async def wait_until(self, predicate: Callable[[], bool], *, within: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (re-checked on every registration and device list).

        Raises ``TimeoutError`` after ``within`` seconds.
        """
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_capacity(
        self, resource: str, capacity: int, *, allocatable: int | None = None, within: float = 10.0
    ) -> None:
        """Wait until ``capacity[resource]`` (and ``allocatable`` if given) reach the given values."""

        def reached() -> bool:
            return self.capacity(resource) == capacity and (
                allocatable is None or self.allocatable(resource) == allocatable
            )

        await self.wait_until(reached, within=within)

    # --- admission ----------------------------------------------------------------------------------------

    async def admit(
        self, pod_uid: str, container: str, requests: Mapping[str, int]
    ) -> dict[str, api_pb2.ContainerAllocateResponse]:
        """Allocate devices for one container; returns the plugin's response per resource.

        Raises :class:`AdmissionError` if too few healthy devices are free, ``grpc.aio.AioRpcError`` if the
        plugin fails Allocate (nothing is recorded then).
        """
        responses: dict[str, api_pb2.ContainerAllocateResponse] = {}
        for resource, n in requests.items():
            state = self._resources.get(resource)
            endpoint = None if state is None else state.endpoint
            if state is None or endpoint is None or endpoint.stopped:
                raise AdmissionError(f"no device plugin registered for {resource}")
            in_use = {d for (_, _, r), ids in self._assigned.items() if r == resource for d in ids}
            free = [d for d, ok in state.devices.items() if ok and d not in in_use]
            if not state.devices or not any(state.devices.values()):
                raise AdmissionError(f"no healthy devices present; cannot allocate unhealthy devices {resource}")
            if len(free) < n:
                raise AdmissionError(f"requested number of devices unavailable for {resource}: {n} > {len(free)}")
            chosen = free[:n]
            if endpoint.options.get_preferred_allocation_available:
                chosen = await self._preferred(endpoint, free, n)
            response = await endpoint.channel.unary_unary(
                f"/{DEVICE_PLUGIN_SERVICE}/Allocate",
                request_serializer=api_pb2.AllocateRequest.SerializeToString,
                response_deserializer=api_pb2.AllocateResponse.FromString,
            )(api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=chosen)]))
            if endpoint.options.pre_start_required:
                await endpoint.channel.unary_unary(
                    f"/{DEVICE_PLUGIN_SERVICE}/PreStartContainer",
                    request_serializer=api_pb2.PreStartContainerRequest.SerializeToString,
                    response_deserializer=api_pb2.PreStartContainerResponse.FromString,
                )(api_pb2.PreStartContainerRequest(devices_ids=chosen), timeout=KUBELET_PRESTART_TIMEOUT_S)
            self._assigned[(pod_uid, container, resource)] = chosen
            responses[resource] = response.container_responses[0]
        return responses

    async def _preferred(self, endpoint: _Endpoint, free: list[str], n: int) -> list[str]:
        answer = await endpoint.channel.unary_unary(
            f"/{DEVICE_PLUGIN_SERVICE}/GetPreferredAllocation",
            request_serializer=api_pb2.PreferredAllocationRequest.SerializeToString,
            response_deserializer=api_pb2.PreferredAllocationResponse.FromString,
        )(
            api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=n)
                ]
            )
        )
        # Advisory: keep what is a candidate, fill any shortfall from the candidates in order.
        candidates = set(free)
        picked = [d for d in dict.fromkeys(answer.container_responses[0].deviceIDs) if d in candidates][:n]
        taken = set(picked)
        picked += [d for d in free if d not in taken][: n - len(picked)]
        return picked

    def release(self, pod_uid: str) -> None:
        """Forget every assignment of ``pod_uid`` (the pod terminated)."""
        for key in [k for k in self._assigned if k[0] == pod_uid]:
            del self._assigned[key]
