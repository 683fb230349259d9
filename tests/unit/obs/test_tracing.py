"""Tracing: off unless OTEL_* asks, free when off (no SDK import), spans through the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from snnrm.core.devices import NEURON_CORE, DeviceSet
from snnrm.core.health import HealthReason
from snnrm.kubelet.feed import DeviceFeed
from snnrm.obs.tracing import (
    NoopTracer,
    TracingConfigError,
    requested_exporters,
    setup_tracing,
    tracing_with_exporter,
)
from snnrm.obs.transitions import HealthTransitions


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ()),
        ({"OTEL_SERVICE_NAME": "x"}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ("console", "otlp")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ()),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, ()),
    ],
)
def test_tracing_is_off_unless_the_environment_asks(env: dict[str, str], expected: tuple[str, ...]) -> None:
    assert requested_exporters(env) == expected


def test_off_means_no_opentelemetry_import_at_all() -> None:
    """The daemon's modules and a disabled setup leave the OpenTelemetry packages unimported."""
    code = (
        "import sys, snnrm.app, snnrm.obs.rpc, snnrm.obs.transitions, snnrm.obs.tracing as t\n"
        "tr = t.setup_tracing({})\n"
        "assert not tr.enabled and not tr.tracer.enabled\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


def test_noop_tracer_shares_one_context() -> None:
    tracer = NoopTracer()
    with tracer.span("a") as s1, tracer.span("b", {"k": 1}, kind="server") as s2:
        s1.set_attribute("x", 1)
        s2.set_error("nothing happens")
    assert tracer.span("a") is tracer.span("b")


def test_console_exporter_turns_tracing_on_and_shuts_down() -> None:
    tracing = setup_tracing({"OTEL_TRACES_EXPORTER": "console"}, node="n1")
    started = tracing.enabled  # a local, so mypy does not carry `enabled is True` past shutdown()
    assert started
    assert tracing.exporters == ("console",)
    tracing.shutdown()
    assert not tracing.enabled
    assert not tracing.tracer.enabled


def test_otlp_grpc_exporter_is_built_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")  # never dialled: no span is exported
    tracing = setup_tracing(node="n1")
    assert tracing.exporters == ("otlp",)
    tracing.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "not supported"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"}, "not supported"),
    ],
)
def test_unusable_configuration_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(TracingConfigError, match=message):
        setup_tracing(env)


@pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None, reason="http exporter installed"
)
def test_http_protobuf_without_its_package_says_which_package() -> None:
    with pytest.raises(TracingConfigError, match="opentelemetry-exporter-otlp-proto-http"):
        setup_tracing({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})


def test_spans_reach_the_exporter_with_resource_and_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    exporter = InMemorySpanExporter()
    tracing = tracing_with_exporter(exporter, node="n1")
    with tracing.tracer.span("work", {"snnrm.resource": NEURON_CORE}, kind="server") as span:
        span.set_attribute("snnrm.devices", 3)
        span.set_error("FAILED_PRECONDITION: unhealthy")
    [s] = exporter.get_finished_spans()
    assert s.name == "work"
    assert s.kind is SpanKind.SERVER
    assert s.attributes == {"snnrm.resource": NEURON_CORE, "snnrm.devices": 3}
    assert s.status.status_code is StatusCode.ERROR
    assert s.resource.attributes["service.name"] == "snnrm"
    assert s.resource.attributes["host.name"] == "n1"
    tracing.shutdown()


def test_an_exception_marks_the_span_failed_unless_the_caller_did() -> None:
    exporter = InMemorySpanExporter()
    tracing = tracing_with_exporter(exporter)

    def fail(name: str, explain: str | None = None) -> None:
        with tracing.tracer.span(name) as span:
            if explain is not None:
                span.set_error(explain)
            raise KeyError("chip9-core0")

    with pytest.raises(KeyError):
        fail("raises")
    with pytest.raises(KeyError):
        fail("explained", "INVALID_ARGUMENT: unknown device")
    raised, explained = exporter.get_finished_spans()
    assert raised.status.status_code is StatusCode.ERROR
    assert raised.status.description == "KeyError: 'chip9-core0'"
    assert [e.name for e in raised.events] == ["exception"]
    assert explained.status.description == "INVALID_ARGUMENT: unknown device"
    tracing.shutdown()


def test_service_name_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "snnrm-edge")
    exporter = InMemorySpanExporter()
    tracing = tracing_with_exporter(exporter)
    with tracing.tracer.span("x"):
        pass
    assert exporter.get_finished_spans()[0].resource.attributes["service.name"] == "snnrm-edge"
    tracing.shutdown()


# -- health transitions ------------------------------------------------------------------------------------------


def _cores(healthy: list[bool]) -> DeviceSet:
    n = len(healthy)
    return DeviceSet(
        NEURON_CORE, tuple(f"chip0-core{i}" for i in range(n)), np.array(healthy), np.zeros(n, dtype=np.int64)
    )


def _only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    exporter.clear()
    return spans[0]


def test_health_transitions_are_counted_and_traced() -> None:
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    reasons = np.array([0, int(HealthReason.FAILED), int(HealthReason.QUEUE_SATURATED | HealthReason.STALE), 0])
    ht = HealthTransitions(
        registry=registry,
        node="n1",
        tracer=tracing_with_exporter(exporter).tracer,
        core_reasons=lambda: reasons,
    )

    def count(to: str) -> float | None:
        return registry.get_sample_value(
            "snnrm_device_health_transitions_total", {"node": "n1", "resource": NEURON_CORE, "to": to}
        )

    ht.observe(_cores([True] * 4))  # the baseline: nothing changed yet
    assert count("unhealthy") == 0
    assert exporter.get_finished_spans() == ()
    ht.observe(_cores([True, False, False, True]))
    assert count("unhealthy") == 2
    span = _only_span(exporter)
    assert span.name == "snnrm.health_transition"
    attrs = dict(span.attributes or {})
    assert attrs["snnrm.became_unhealthy"] == 2
    assert attrs["snnrm.became_unhealthy_ids"] == ("chip0-core1", "chip0-core2")
    assert attrs["snnrm.healthy"] == 2
    assert attrs["snnrm.healthy_before"] == 4
    assert attrs["snnrm.reasons"] == ("failed=1", "queue-saturated=1", "stale=1")
    ht.observe(_cores([True, False, False, True]))  # nothing new: no count, no span
    assert exporter.get_finished_spans() == ()
    ht.observe(_cores([True, True, False, True]))
    assert count("healthy") == 1
    assert dict(_only_span(exporter).attributes or {})["snnrm.became_healthy_ids"] == ("chip0-core1",)


async def test_health_transitions_follow_a_device_feed() -> None:
    registry = CollectorRegistry()
    ht = HealthTransitions(registry=registry, node="n1")
    feed = DeviceFeed(NEURON_CORE, _cores([True] * 3))
    task = asyncio.create_task(ht.watch(feed))
    await asyncio.sleep(0)
    feed.publish(_cores([False, True, True]))
    for _ in range(100):
        value = registry.get_sample_value(
            "snnrm_device_health_transitions_total", {"node": "n1", "resource": NEURON_CORE, "to": "unhealthy"}
        )
        if value == 1:
            break
        await asyncio.sleep(0.01)
    assert value == 1
    task.cancel()
