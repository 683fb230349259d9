"""Client of the kubelet's PodResources API (``/v1.PodResourcesLister/List``): which container holds which device.

Used to put ``namespace``, ``pod`` and ``container`` labels on per-device metrics (the Kubernetes
instrumentation guideline for device exporters). The kubelet serves it on a unix socket
(``/var/lib/kubelet/pod-resources/kubelet.sock``, mounted read-only into the DaemonSet); it rate-limits all of its
clients together to 100 QPS with a burst of 10 and answers ``RESOURCE_EXHAUSTED`` beyond that, so this client:

* answers from a short cache (``cache_seconds``, default 2 s: a scrape every 15-30 s never waits, and a burst of
  scrapes makes one call), with one call in flight at a time (concurrent callers share it);
* after ``RESOURCE_EXHAUSTED`` or any other error keeps the last good answer and waits ``backoff_seconds``
  before asking again; every call is bounded by ``timeout`` (a hung kubelet never stalls a scrape);
* raises the receive limit to 16 MiB (gRPC's default 4 MiB is too small for a node with many pods);
* does nothing at all while the socket is absent (not a Kubernetes node, or the feature unmounted): no channel,
  no labels.

Only devices of the ``resources`` given (snnrm's own) are kept.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import NamedTuple, Self

import grpc
import structlog

from snnrm.kubelet.protos.podresources.v1 import api_pb2

log = structlog.get_logger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
SERVICE = "v1.PodResourcesLister"
MAX_RECEIVE_BYTES = 16 * 1024 * 1024
"""Receive limit for List answers: what kubelet-side exporters commonly use (gRPC's default is 4 MiB)."""
CACHE_SECONDS = 2.0
"""Answers are reused this long: at most 0.5 QPS of the kubelet's 100 QPS node-wide budget, whatever scrapes."""
BACKOFF_SECONDS = 5.0
"""After a failed or rate-limited call, ask again no sooner than this."""
TIMEOUT_SECONDS = 1.0
"""Deadline of one List call; a scrape never waits longer for pod labels."""


class ContainerRef(NamedTuple):
    """A container holding a device."""

    namespace: str
    pod: str
    container: str


class PodResourcesError(Exception):
    """A List call failed; ``code`` is the gRPC status (``RESOURCE_EXHAUSTED`` when rate-limited)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


_EMPTY: Mapping[str, Mapping[str, ContainerRef]] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class Assignments:
    """One List answer, reduced to ``resource -> device ID -> container`` for the resources of interest."""

    owners: Mapping[str, Mapping[str, ContainerRef]] = field(default_factory=lambda: _EMPTY)
    pods: int = 0
    fetched_at: float = float("-inf")

    @classmethod
    def from_response(
        cls, response: api_pb2.ListPodResourcesResponse, *, resources: Collection[str] | None, fetched_at: float
    ) -> Assignments:
        owners: dict[str, dict[str, ContainerRef]] = {}
        for pod in response.pod_resources:
            for container in pod.containers:
                ref = ContainerRef(pod.namespace, pod.name, container.name)
                for dev in container.devices:
                    if resources is not None and dev.resource_name not in resources:
                        continue
                    per = owners.setdefault(dev.resource_name, {})
                    for device_id in dev.device_ids:
                        per[device_id] = ref
        frozen = MappingProxyType({r: MappingProxyType(d) for r, d in owners.items()})
        return cls(frozen, len(response.pod_resources), fetched_at)


EMPTY = Assignments()


class PodResourcesClient:
    """Cached, rate-aware ``List`` over the kubelet's PodResources socket (see module docstring).

    Use as an async context manager (or call :meth:`aclose`) so the channel is closed.
    """

    def __init__(
        self,
        socket_path: Path = DEFAULT_SOCKET,
        *,
        resources: Collection[str] | None = None,
        cache_seconds: float = CACHE_SECONDS,
        backoff_seconds: float = BACKOFF_SECONDS,
        timeout: float = TIMEOUT_SECONDS,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = Path(socket_path)
        self._resources = frozenset(resources) if resources is not None else None
        self._cache_seconds = cache_seconds
        self._backoff = backoff_seconds
        self._timeout = timeout
        self._max_receive = max_receive_bytes
        self._clock = clock
        self._channel: grpc.aio.Channel | None = None
        self._list: grpc.aio.UnaryUnaryMultiCallable | None = None
        self._latest = EMPTY
        self._next_call = float("-inf")
        self._inflight: asyncio.Task[Assignments] | None = None
        self._counts = {"ok": 0, "error": 0, "rate_limited": 0}
        self._was_available: bool | None = None

    # -- what the metrics collector reads (PodAttribution) ---------------------------------------------------

    @property
    def available(self) -> bool:
        """The socket exists now (a ``stat``)."""
        return self.socket_path.exists()

    @property
    def request_counts(self) -> Mapping[str, int]:
        return MappingProxyType(self._counts)

    @property
    def latest(self) -> Assignments:
        """The last good answer (:data:`EMPTY` before one, or while the socket is absent)."""
        return self._latest

    def owners(self) -> Mapping[str, Mapping[str, ContainerRef]]:
        """``resource -> device ID -> container`` from the last good answer; the same object until it changes."""
        return self._latest.owners

    # -- calls -----------------------------------------------------------------------------------------------

    def _stub(self) -> grpc.aio.UnaryUnaryMultiCallable:
        if self._list is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.socket_path.absolute()}",
                options=[("grpc.max_receive_message_length", self._max_receive)],
            )
            self._list = self._channel.unary_unary(
                f"/{SERVICE}/List",
                request_serializer=api_pb2.ListPodResourcesRequest.SerializeToString,
                response_deserializer=api_pb2.ListPodResourcesResponse.FromString,
            )
        return self._list

    async def list(self) -> Assignments:
        """One ``List`` call now, uncached; raises :class:`PodResourcesError`."""
        call = self._stub()
        try:
            response = await call(api_pb2.ListPodResourcesRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as e:
            raise PodResourcesError(f"PodResources List failed: {e.code().name}: {e.details()}", e.code()) from e
        return Assignments.from_response(response, resources=self._resources, fetched_at=self._clock())

    async def _refresh_once(self) -> Assignments:
        try:
            result = await self.list()
        except Exception as e:  # noqa: BLE001 - the kubelet's answer is untrusted; any failure keeps the last one
            code = e.code if isinstance(e, PodResourcesError) else grpc.StatusCode.UNKNOWN
            limited = code is grpc.StatusCode.RESOURCE_EXHAUSTED
            self._counts["rate_limited" if limited else "error"] += 1
            self._next_call = self._clock() + self._backoff
            log.warning("pod_resources_list_failed", code=code.name, error=str(e), retry_in=self._backoff)
            return self._latest
        self._counts["ok"] += 1
        if result.owners != self._latest.owners:  # unchanged: keep the old object, so consumers' caches hold
            self._latest = result
        self._next_call = self._clock() + self._cache_seconds
        return self._latest

    async def refresh(self) -> Assignments:
        """The current assignments: cached, shared between concurrent callers, never raising.

        While the socket is absent the answer is :data:`EMPTY` and nothing is dialled.
        """
        available = self.available
        if available != self._was_available:
            log.info("pod_resources_socket", present=available, socket=str(self.socket_path))
            self._was_available = available
        if not available:
            self._latest = EMPTY
            return EMPTY
        if self._inflight is None:
            if self._clock() < self._next_call:
                return self._latest
            task = asyncio.ensure_future(self._refresh_once())
            task.add_done_callback(self._call_done)
            self._inflight = task
        # shield: a caller giving up (a scrape's deadline) must not cancel the call other callers share.
        return await asyncio.shield(self._inflight)

    def _call_done(self, task: asyncio.Task[Assignments]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def aclose(self) -> None:
        """Close the channel (an in-flight call is cancelled)."""
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._list = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
