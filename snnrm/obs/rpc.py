"""Timing, counting and tracing of the device plugin RPCs, as a wrapper around a gRPC generic handler.

The servicer stays free of observability code: :meth:`RpcInstrumentation.wrap` takes the
``grpc.GenericRpcHandler`` a servicer builds and returns one whose method handlers time every unary call into
``snnrm_device_plugin_rpc_duration_seconds``, count it by status code, count container allocations, count the
messages ListAndWatch streams send, and open a server span for Allocate and GetPreferredAllocation when tracing
is on. Wrapped method handlers are built once per method, so a call costs two clock reads, a histogram
observation and one extra coroutine frame (a few microseconds, against a millisecond-scale round trip).

The one hook the plugin needs: ``server.add_generic_rpc_handlers((instrumentation.wrap(servicer.handler(),
resource=resource),))`` where it adds the servicer's handler.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence, Sized
from typing import Any, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from snnrm.obs.tracing import AttributeValue, NoopTracer, Span, Tracer

RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.0025, 0.004, 0.006, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Seconds. Dense around the targets (Allocate p99 < 1.5 ms, GetPreferredAllocation p99 < 4 ms)."""
MAX_SPAN_IDS = 64
"""Device IDs recorded on a span, at most (a 1,000-core allocation would make an unreadable, oversized span)."""
ALLOCATION_RESULTS = ("ok", "invalid_argument", "failed_precondition", "unavailable")
"""Allocate outcomes pre-created at zero so that ``rate()`` sees them from the first scrape."""
TRACED = frozenset({"Allocate", "GetPreferredAllocation"})

# grpc ships no types: what this module reads of its objects, and of the device plugin messages (v1beta1; this
# layer does not import the generated stubs of snnrm.kubelet), is spelled out structurally here. A wrapped
# method's request and response stay ``Any``: each method has its own message types.


class _Context(Protocol):
    """The part of ``grpc.aio.ServicerContext`` read here (an older grpc has no ``code()``; see :func:`_code_of`)."""

    def code(self) -> object: ...

    def details(self) -> object: ...


class _HandlerCallDetails(Protocol):
    @property
    def method(self) -> str: ...


class _RpcMethodHandler(Protocol):
    """``grpc.RpcMethodHandler``: which behaviour is set depends on the streaming flags."""

    @property
    def request_streaming(self) -> bool: ...
    @property
    def response_streaming(self) -> bool: ...
    @property
    def request_deserializer(self) -> Callable[[bytes], object] | None: ...
    @property
    def response_serializer(self) -> Callable[[Any], bytes] | None: ...
    @property
    def unary_unary(self) -> _UnaryBehavior: ...
    @property
    def unary_stream(self) -> _StreamBehavior: ...


class _GenericRpcHandler(Protocol):
    """``grpc.GenericRpcHandler`` (a servicer's ``handler()``); ``service_name`` is optional, looked up by name."""

    def service(self, handler_call_details: _HandlerCallDetails) -> _RpcMethodHandler | None: ...


class _ContainerAllocateRequest(Protocol):
    @property
    def devices_ids(self) -> Sequence[str]: ...


class _AllocateRequest(Protocol):
    @property
    def container_requests(self) -> Sequence[_ContainerAllocateRequest]: ...


class _PreferredAsk(Protocol):
    @property
    def available(self) -> Sized: ...
    @property
    def must_include(self) -> Sized: ...
    @property
    def size(self) -> int: ...


class _PreferredAllocationRequest(Protocol):
    """A GetPreferredAllocation request as the device plugin decodes it (snnrm.kubelet.id_index.PreferredRequest)."""

    @property
    def containers(self) -> int: ...
    @property
    def asks(self) -> Sequence[_PreferredAsk]: ...


class _ContainerPreferredAllocationResponse(Protocol):
    @property
    def deviceIDs(self) -> Sequence[str]: ...


class _PreferredAllocationResponse(Protocol):
    @property
    def container_responses(self) -> Sequence[_ContainerPreferredAllocationResponse]: ...


_UnaryBehavior = Callable[[Any, _Context], Awaitable[Any]]
_StreamBehavior = Callable[[Any, _Context], AsyncGenerator[Any, None]]


def _code_of(context: _Context, error: BaseException | None) -> grpc.StatusCode:
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - an older grpc without ServicerContext.code(): call it UNKNOWN
        code = None
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


class RpcInstrumentation:
    """Metrics (and spans) for the device plugin servers of one node; one instance serves every resource."""

    def __init__(self, *, registry: CollectorRegistry, node: str, tracer: Tracer | None = None) -> None:
        self.node = node
        self.tracer: Tracer = tracer or NoopTracer()
        self.duration = Histogram(
            "snnrm_device_plugin_rpc_duration_seconds",
            "Time to answer a device plugin RPC, from request decoded to response returned.",
            ("node", "resource", "rpc"),
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self.calls = Counter(
            "snnrm_device_plugin_rpcs",
            "Device plugin RPCs answered, by gRPC status code.",
            ("node", "resource", "rpc", "code"),
            registry=registry,
        )
        self.allocations = Counter(
            "snnrm_allocations",
            "Container allocations requested by the kubelet (one per container of an Allocate call), by result.",
            ("node", "resource", "result"),
            registry=registry,
        )
        self.allocated_devices = Counter(
            "snnrm_allocated_devices",
            "Devices handed to containers by successful Allocate calls.",
            ("node", "resource"),
            registry=registry,
        )
        self.law_messages = Counter(
            "snnrm_list_and_watch_messages",
            "ListAndWatch messages (complete device lists) sent to the kubelet.",
            ("node", "resource"),
            registry=registry,
        )
        self.law_streams = Gauge(
            "snnrm_list_and_watch_streams",
            "ListAndWatch streams open now.",
            ("node", "resource"),
            registry=registry,
        )

    def wrap(self, handler: _GenericRpcHandler, *, resource: str) -> grpc.GenericRpcHandler:
        """``handler`` (a ``grpc.GenericRpcHandler``) with every method instrumented for ``resource``."""
        for result in ALLOCATION_RESULTS:
            self.allocations.labels(self.node, resource, result)
        self.allocated_devices.labels(self.node, resource)
        self.law_messages.labels(self.node, resource)
        self.law_streams.labels(self.node, resource)
        return _InstrumentedHandler(handler, self, resource)

    # -- per-method wrappers ---------------------------------------------------------------------------------

    def unary(self, behavior: _UnaryBehavior, *, resource: str, rpc: str) -> _UnaryBehavior:
        observe = self.duration.labels(self.node, resource, rpc).observe
        calls = self.calls
        node = self.node
        by_code: dict[grpc.StatusCode, Counter] = {}  # the counter child per status code, resolved once
        tracer = self.tracer
        after = self._after_allocate(resource) if rpc == "Allocate" else None
        traced = rpc in TRACED
        span_name = f"v1beta1.DevicePlugin/{rpc}"

        async def timed(request: Any, context: _Context) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                observe(time.perf_counter() - start)
                code = _code_of(context, error)
                child = by_code.get(code)
                if child is None:
                    child = by_code[code] = calls.labels(node, resource, rpc, code.name)
                child.inc()
                if after is not None:
                    after(request, code)

        if not traced or not tracer.enabled:
            return timed  # tracing off: not even a check per call
        request_attributes = _allocate_attributes if rpc == "Allocate" else _preferred_allocation_attributes
        response_attributes = _preferred_response_attributes if rpc == "GetPreferredAllocation" else None

        async def traced_call(request: Any, context: _Context) -> Any:
            with tracer.span(span_name, request_attributes(resource, request), kind="server") as span:
                try:
                    response = await timed(request, context)
                except BaseException as e:
                    code = _code_of(context, e)
                    span.set_attribute("rpc.grpc.status_code", code.value[0])
                    span.set_error(f"{code.name}: {_details(context)}")
                    raise
                span.set_attribute("rpc.grpc.status_code", 0)
                if response_attributes is not None:
                    response_attributes(response, span)
                return response

        return traced_call

    def _after_allocate(self, resource: str) -> Callable[[_AllocateRequest, grpc.StatusCode], None]:
        by_result = {r: self.allocations.labels(self.node, resource, r) for r in ALLOCATION_RESULTS}
        devices = self.allocated_devices.labels(self.node, resource)
        allocations = self.allocations
        node = self.node

        def count(request: _AllocateRequest | None, code: grpc.StatusCode) -> None:
            # None: bytes that did not parse (snnrm.kubelet.servicer.lenient), refused as one call.
            containers = len(request.container_requests) if request is not None else 1
            result = "ok" if code is grpc.StatusCode.OK else code.name.lower()
            child = by_result.get(result) or allocations.labels(node, resource, result)
            child.inc(containers)
            if code is grpc.StatusCode.OK and request is not None:
                devices.inc(sum(len(c.devices_ids) for c in request.container_requests))

        return count

    def stream(self, behavior: _StreamBehavior, *, resource: str, rpc: str) -> _StreamBehavior:
        messages = self.law_messages.labels(self.node, resource)
        streams = self.law_streams.labels(self.node, resource)

        async def counted(request: Any, context: _Context) -> AsyncGenerator[Any, None]:
            streams.inc()
            inner = behavior(request, context)
            try:
                async for message in inner:
                    messages.inc()
                    yield message
            finally:
                streams.dec()
                # Close the inner stream now, not at garbage collection: its own cleanup (e.g. noticing that
                # the kubelet left) must run when the call ends.
                await inner.aclose()

        return counted


def _details(context: _Context) -> str:
    try:
        return str(context.details() or "")
    except Exception:  # noqa: BLE001 - details are decoration on an error span
        return ""


def _ids(ids: Iterable[str]) -> list[str]:
    return [str(i) for i in list(ids)[:MAX_SPAN_IDS]]


def _rpc_attributes(rpc: str, resource: str, containers: int) -> dict[str, AttributeValue]:
    return {
        "rpc.system": "grpc",
        "rpc.service": "v1beta1.DevicePlugin",
        "rpc.method": rpc,
        "snnrm.resource": resource,
        "snnrm.containers": containers,
    }


def _allocate_attributes(resource: str, request: _AllocateRequest | None) -> dict[str, AttributeValue]:
    if request is None:  # did not parse
        return _rpc_attributes("Allocate", resource, 0)
    attrs = _rpc_attributes("Allocate", resource, len(request.container_requests))
    ids = [i for c in request.container_requests for i in c.devices_ids]
    attrs["snnrm.devices"] = len(ids)
    attrs["snnrm.device_ids"] = _ids(ids)
    return attrs


def _preferred_allocation_attributes(
    resource: str, request: _PreferredAllocationRequest | None
) -> dict[str, AttributeValue]:
    if request is None:  # did not parse
        return _rpc_attributes("GetPreferredAllocation", resource, 0)
    # Devices the plugin knows: the request is decoded into indices, unknown IDs dropped.
    asks = request.asks
    attrs = _rpc_attributes("GetPreferredAllocation", resource, request.containers)
    attrs["snnrm.allocation_size"] = sum(a.size for a in asks)
    attrs["snnrm.available"] = sum(len(a.available) for a in asks)
    attrs["snnrm.must_include"] = sum(len(a.must_include) for a in asks)
    return attrs


def _preferred_response_attributes(response: _PreferredAllocationResponse, span: Span) -> None:
    ids = [i for c in response.container_responses for i in c.deviceIDs]
    span.set_attribute("snnrm.preferred", len(ids))
    span.set_attribute("snnrm.preferred_ids", _ids(ids))


class _InstrumentedHandler(grpc.ServiceRpcHandler):  # type: ignore[misc]  # grpc ships no types
    """Delegates to the wrapped handler; instrumented method handlers are built once per method."""

    def __init__(self, inner: _GenericRpcHandler, instrumentation: RpcInstrumentation, resource: str) -> None:
        self._inner = inner
        self._obs = instrumentation
        self._resource = resource
        self._cache: dict[str, _RpcMethodHandler] = {}

    def service_name(self) -> str:
        name = getattr(self._inner, "service_name", None)
        return str(name()) if name is not None else ""

    def service(self, handler_call_details: _HandlerCallDetails) -> _RpcMethodHandler | None:
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None:
            return cached
        h = self._inner.service(handler_call_details)
        if h is None:
            return None
        rpc = method.rsplit("/", 1)[-1]
        wrapped: _RpcMethodHandler
        if not h.request_streaming and not h.response_streaming:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._obs.unary(h.unary_unary, resource=self._resource, rpc=rpc),
                request_deserializer=h.request_deserializer,
                response_serializer=h.response_serializer,
            )
        elif not h.request_streaming:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._obs.stream(h.unary_stream, resource=self._resource, rpc=rpc),
                request_deserializer=h.request_deserializer,
                response_serializer=h.response_serializer,
            )
        else:
            wrapped = h  # no client-streaming methods in the device plugin API
        self._cache[method] = wrapped
        return wrapped
