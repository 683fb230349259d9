"""OpenTelemetry traces, off by default and free when off.

Tracing turns on only when the environment asks for it with the standard variables: ``OTEL_TRACES_EXPORTER``
set to an exporter other than ``none`` (``otlp`` or ``console``), or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) with no exporter named.
``OTEL_SDK_DISABLED=true`` wins over both. (The OpenTelemetry spec defaults the exporter to ``otlp``; a node
daemon that starts dialling ``localhost:4317`` because nobody said otherwise would be a surprise, so the default
here is off.) Everything else, endpoint, headers, TLS, timeouts, sampler (``OTEL_TRACES_SAMPLER``), batching
(``OTEL_BSP_*``), service name and resource attributes, is read by the SDK itself from the same variables.

When off, :func:`setup_tracing` returns a :class:`Tracing` whose tracer is a no-op: the ``opentelemetry``
packages are not even imported, and instrumented code checks ``tracer.enabled`` and skips building attributes.
No global state: the tracer provider is owned by the :class:`Tracing` object (never installed as the global
provider), which the app shuts down (flushing queued spans) on exit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from snnrm import __version__

if TYPE_CHECKING:  # the SDK is imported at run time only when tracing is on
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[bool] | Sequence[int] | Sequence[float]
Attributes = Mapping[str, AttributeValue]
SpanKindName = Literal["internal", "server", "client"]
INSTRUMENTATION_NAME = "snnrm"


class TracingConfigError(Exception):
    """The ``OTEL_*`` environment asks for something this build cannot do; the message says what."""


class Span(Protocol):
    """The part of a span instrumented code uses."""

    def set_attribute(self, key: str, value: AttributeValue) -> None: ...

    def set_error(self, description: str) -> None:
        """Mark the span failed (status ERROR) with a short description."""
        ...


class Tracer(Protocol):
    """Starts spans; ``enabled`` is False for the no-op tracer, so callers can skip preparing attributes."""

    @property
    def enabled(self) -> bool: ...

    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: SpanKindName = "internal"
    ) -> contextlib.AbstractContextManager[Span]: ...


class _NoopSpan:
    __slots__ = ()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass

    def set_error(self, description: str) -> None:
        pass


_NOOP_SPAN = _NoopSpan()
_NOOP_CONTEXT: contextlib.AbstractContextManager[Span] = contextlib.nullcontext(_NOOP_SPAN)


class NoopTracer:
    """The tracer when tracing is off: one shared, reusable context manager; nothing is recorded."""

    enabled = False

    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: SpanKindName = "internal"
    ) -> contextlib.AbstractContextManager[Span]:
        return _NOOP_CONTEXT


class _OtelSpan:
    __slots__ = ("_span", "_status", "failed")

    def __init__(
        self, span: otel_trace.Span, status: tuple[type[otel_trace.Status], type[otel_trace.StatusCode]]
    ) -> None:
        self._span = span
        self._status = status
        self.failed = False

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def set_error(self, description: str) -> None:
        status, code = self._status
        self._span.set_status(status(code.ERROR, description))
        self.failed = True


class OtelTracer:
    """Adapter over an OpenTelemetry SDK tracer (constructed only when tracing is on)."""

    enabled = True

    def __init__(self, tracer: otel_trace.Tracer) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode  # only when tracing is on

        self._tracer = tracer
        self._kinds = {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}
        self._status = (Status, StatusCode)

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Attributes | None = None, *, kind: SpanKindName = "internal"
    ) -> Iterator[Span]:
        # The SDK's own status-on-exception would overwrite a status the caller chose (e.g. the gRPC code);
        # an exception only sets one when the caller has not.
        with self._tracer.start_as_current_span(
            name, kind=self._kinds[kind], attributes=attributes, set_status_on_exception=False
        ) as s:
            span = _OtelSpan(s, self._status)
            try:
                yield span
            except BaseException as e:
                if not span.failed:
                    span.set_error(f"{type(e).__name__}: {e}")
                raise


@dataclass(slots=True, eq=False)
class Tracing:
    """The tracer the daemon hands out, and the provider behind it (None when off)."""

    tracer: Tracer
    provider: TracerProvider | None = None
    exporters: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Flush queued spans and stop the exporters (blocking, bounded by the SDK's export timeouts)."""
        if self.provider is not None:
            self.provider.shutdown()
            self.provider = None
            self.tracer = NoopTracer()


def requested_exporters(env: Mapping[str, str]) -> tuple[str, ...]:
    """Exporter names the environment asks for; empty means tracing stays off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    names = tuple(n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip())
    if names:
        return () if "none" in names else names
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ("otlp",)
    return ()


def _make_exporter(name: str, env: Mapping[str, str]) -> SpanExporter:
    # Imported here: the exporter packages (and grpc channels they open) exist only when asked for.
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER={name!r} is not supported here (use otlp, console or none)")
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter as HttpExporter,
            )
        except ImportError as e:
            raise TracingConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs the opentelemetry-exporter-otlp-proto-http package"
            ) from e
        http_exporter: SpanExporter = HttpExporter()  # that package may be absent: mypy may not know its type
        return http_exporter
    raise TracingConfigError(f"OTLP protocol {protocol!r} is not supported (use grpc or http/protobuf)")


def _provider(node: str | None) -> TracerProvider:
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider

    attrs: dict[str, str] = {SERVICE_VERSION: __version__}
    if node:
        attrs["host.name"] = node
    resource = Resource.create(attrs)  # adds OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "snnrm"}))
    return TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER


def setup_tracing(env: Mapping[str, str] | None = None, *, node: str | None = None) -> Tracing:
    """Tracing as the ``OTEL_*`` environment asks (see module docstring); a no-op :class:`Tracing` when off.

    Raises :class:`TracingConfigError` for an exporter or protocol that cannot be honoured: a daemon told to
    export traces somewhere should refuse to start rather than silently drop them.
    """
    env = os.environ if env is None else env
    names = requested_exporters(env)
    if not names:
        return Tracing(NoopTracer())
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporters = [_make_exporter(n, env) for n in names]
    provider = _provider(node)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_* tune the batching
    return Tracing(OtelTracer(provider.get_tracer(INSTRUMENTATION_NAME, __version__)), provider, names)


def tracing_with_exporter(exporter: SpanExporter, *, node: str | None = None) -> Tracing:
    """Tracing that hands every finished span to ``exporter`` at once (tests: the SDK's in-memory exporter)."""
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = _provider(node)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(OtelTracer(provider.get_tracer(INSTRUMENTATION_NAME, __version__)), provider, ("custom",))
