"""A fake kubelet PodResources server: ``/v1.PodResourcesLister`` over grpc.aio on a unix socket.

It answers ``List``, ``GetAllocatableResources`` and ``Get`` from pods that a test assigns, and behaves like the
kubelet where a client can tell: the service and message names of the ``v1`` wire protocol, its rate limit
(100 QPS with a burst of 10, ``RESOURCE_EXHAUSTED`` "rejected by rate limit" beyond; both adjustable), errors
queued on demand, and an optional delay (a hung kubelet). Calls are counted.

    async with FakePodResourcesLister(tmp_path / "kubelet.sock") as fake:
        fake.assign("default", "trainer-0", "stage", "snnrm.io/neuron-core", ["chip0-core1", "chip0-core2"])
        ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from snnrm.kubelet.protos.podresources.v1 import api_pb2, api_pb2_grpc

RATE_LIMIT_QPS = 100.0
RATE_LIMIT_BURST = 10


@dataclass
class _Container:
    name: str
    devices: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class _Pod:
    namespace: str
    name: str
    containers: dict[str, _Container] = field(default_factory=dict)


class _TokenBucket:
    """golang.org/x/time/rate semantics, as the kubelet's limiter: ``qps`` tokens a second, ``burst`` at most."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = qps
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FakePodResourcesLister(api_pb2_grpc.PodResourcesListerServicer):
    """See the module docstring. Use as an async context manager; the socket is removed on exit."""

    def __init__(
        self,
        socket_path: Path,
        *,
        qps: float = RATE_LIMIT_QPS,
        burst: int = RATE_LIMIT_BURST,
        delay: float = 0.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.delay = delay
        """Seconds every call sleeps before answering."""
        self._limiter = _TokenBucket(qps, burst)
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._errors: list[tuple[grpc.StatusCode, str]] = []
        self._server: grpc.aio.Server | None = None
        self.calls: dict[str, int] = {"List": 0, "GetAllocatableResources": 0, "Get": 0}
        self.allocatable: dict[str, list[str]] = {}
        """resource -> healthy device IDs, for GetAllocatableResources."""

    # -- test controls -----------------------------------------------------------------------------------------

    def assign(self, namespace: str, pod: str, container: str, resource: str, device_ids: Iterable[str]) -> None:
        """Give ``container`` of ``namespace/pod`` these devices (added to what it has)."""
        p = self._pods.setdefault((namespace, pod), _Pod(namespace, pod))
        c = p.containers.setdefault(container, _Container(container))
        c.devices.setdefault(resource, []).extend(device_ids)

    def remove_pod(self, namespace: str, pod: str) -> None:
        self._pods.pop((namespace, pod), None)

    def clear(self) -> None:
        self._pods.clear()

    def fail_next(self, code: grpc.StatusCode, details: str = "injected failure", times: int = 1) -> None:
        """The next ``times`` calls fail with ``code``."""
        self._errors.extend([(code, details)] * times)

    def set_rate_limit(self, qps: float, burst: int) -> None:
        self._limiter = _TokenBucket(qps, burst)

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        server = grpc.aio.server()
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket_path.absolute()}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        self.socket_path.unlink(missing_ok=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- the service -----------------------------------------------------------------------------------------------

    async def _admit(self, method: str, context: Any) -> None:
        self.calls[method] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self._limiter.allow():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit")
        if self._errors:
            code, details = self._errors.pop(0)
            await context.abort(code, details)

    def _pod_message(self, p: _Pod) -> api_pb2.PodResources:
        return api_pb2.PodResources(
            name=p.name,
            namespace=p.namespace,
            containers=[
                api_pb2.ContainerResources(
                    name=c.name,
                    devices=[
                        api_pb2.ContainerDevices(resource_name=res, device_ids=ids) for res, ids in c.devices.items()
                    ],
                )
                for c in p.containers.values()
            ],
        )

    async def List(  # grpc.aio servicers may be coroutines (the stub's type allows Awaitable)
        self, request: api_pb2.ListPodResourcesRequest, context: Any
    ) -> api_pb2.ListPodResourcesResponse:
        await self._admit("List", context)
        return api_pb2.ListPodResourcesResponse(pod_resources=[self._pod_message(p) for p in self._pods.values()])

    async def GetAllocatableResources(
        self, request: api_pb2.AllocatableResourcesRequest, context: Any
    ) -> api_pb2.AllocatableResourcesResponse:
        await self._admit("GetAllocatableResources", context)
        return api_pb2.AllocatableResourcesResponse(
            devices=[api_pb2.ContainerDevices(resource_name=r, device_ids=ids) for r, ids in self.allocatable.items()]
        )

    async def Get(self, request: api_pb2.GetPodResourcesRequest, context: Any) -> api_pb2.GetPodResourcesResponse:
        await self._admit("Get", context)
        p = self._pods.get((request.pod_namespace, request.pod_name))
        if p is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"pod {request.pod_name} in namespace {request.pod_namespace} not found"
            )
        return api_pb2.GetPodResourcesResponse(pod_resources=self._pod_message(p))  # type: ignore[arg-type]
