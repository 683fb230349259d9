"""The fast exposition writer: content negotiation, value spelling, and output that both parsers read back the same
as prometheus_client's own encoders would write it."""

from __future__ import annotations

import asyncio
import gzip
import math
import threading
import zlib
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from snnrm.obs import exposition
from snnrm.obs.exposition import (
    Family,
    Format,
    Labels,
    MetricsRegistry,
    SnapshotCollector,
    format_values,
    negotiate,
    render_family,
)

PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
PROMETHEUS_2_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

# prometheus_client annotates its text-format parser but not this OpenMetrics one: the same function, typed alike.
parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (PROMETHEUS_3_ACCEPT, Format.OPENMETRICS),
        (PROMETHEUS_2_ACCEPT, Format.OPENMETRICS),
        ("text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.5", Format.TEXT),
        ("application/openmetrics-text", Format.OPENMETRICS),
        ("application/openmetrics-text;version=0.0.1", Format.TEXT),  # a version we do not speak
        ("application/openmetrics-text;q=0, */*", Format.TEXT),
        ("text/plain;version=1.0.0", Format.TEXT),
        ("*/*", Format.TEXT),
        ("", Format.TEXT),
        (None, Format.TEXT),
        ("application/json", Format.TEXT),
        ("application/openmetrics-text;q=banana", Format.TEXT),
    ],
)
def test_negotiation_honours_q_values(accept: str | None, expected: Format) -> None:
    assert negotiate(accept) is expected


def test_values_are_spelled_as_the_exposition_formats_want() -> None:
    assert format_values(np.array([0, 3, -2])) == ["0", "3", "-2"]
    assert format_values(np.array([0.0, 3.0, 1e6])) == ["0", "3", "1000000"]
    assert format_values(np.array([0.5, np.nan, np.inf, -np.inf])) == ["0.5", "NaN", "+Inf", "-Inf"]
    assert format_values(np.array([True, False])) == ["1", "0"]
    exact = format_values(np.array([1.0 / 3.0, 123456789.25]))
    assert [float(v) for v in exact] == [1.0 / 3.0, 123456789.25]
    assert format_values(np.array([1.0 / 3.0, 123456789.25]), exact=False) == ["0.333333", "1.23457e+08"]
    assert format_values(np.array([2.0**60])) == [repr(2.0**60)]  # beyond exact integers: stays a float


def _families() -> list[Family]:
    labels = Labels.build(("node", "core"), [("n1", "chip0-core0"), ("n1", 'we"ird\\one\nline')])
    return [
        Family(
            "snnrm_test_depth",
            "gauge",
            "A gauge with a\nnewline and a \\ in its help.",
            labels,
            np.array([1.5, np.nan]),
        ),
        Family("snnrm_test_events", "counter", "A counter.", labels, np.array([10.0, 2.0**40])),
        Family("snnrm_test_reason", "info", "An info.", labels, np.ones(2, dtype=np.int64)),
        Family("snnrm_test_empty", "gauge", "No series.", Labels.build(("node",), []), np.zeros(0)),
        Family(
            "snnrm_test_pods",
            "gauge",
            "Extra labels on one series.",
            labels.with_extra({1: (("namespace", "ml"), ("pod", "p-0"), ("container", "c"))}),
            np.array([1.0, 2.0]),
        ),
    ]


class _Static(SnapshotCollector):
    def __init__(self, families: list[Family]) -> None:
        self.families = families

    def snapshot(self) -> list[Family]:
        return self.families


def _samples(families: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families  # type: ignore[attr-defined]
        for s in f.samples
    }


def _same(
    a: dict[tuple[str, tuple[tuple[str, str], ...]], float], b: dict[tuple[str, tuple[tuple[str, str], ...]], float]
) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or math.isclose(a[k], b[k], rel_tol=1e-5) for k in a
    )


def test_text_output_parses_to_what_prometheus_client_writes() -> None:
    families = _families()
    ours = "".join(render_family(f, Format.TEXT) for f in families)
    reference = CollectorRegistry()
    reference.register(_Static(families))  # collect() goes through to_metric: the library's own encoder
    theirs = generate_latest(reference).decode()
    assert _same(_samples(parse_text(ours)), _samples(parse_text(theirs)))
    assert "# TYPE snnrm_test_events_total counter\n" in ours
    assert "# TYPE snnrm_test_reason_info gauge\n" in ours
    assert "# HELP snnrm_test_depth A gauge with a\\nnewline and a \\\\ in its help.\n" in ours
    pods = {s.labels.get("pod") for f in parse_text(ours) if f.name == "snnrm_test_pods" for s in f.samples}
    assert pods == {None, "p-0"}


def test_openmetrics_output_is_valid_openmetrics() -> None:
    families = _families()
    registry = MetricsRegistry()
    registry.register(_Static(families))
    body = registry.render(registry.snapshot(), Format.OPENMETRICS).decode()
    assert body.endswith("\n# EOF\n")
    assert body.count("# EOF") == 1
    parsed = {f.name: f for f in parse_openmetrics(body)}
    assert parsed["snnrm_test_events"].type == "counter"
    assert parsed["snnrm_test_reason"].type == "info"
    text = _samples(parse_text(registry.render(registry.snapshot(), Format.TEXT).decode()))
    assert _same(_samples(parsed.values()), text)


def test_registry_mixes_fast_and_ordinary_collectors() -> None:
    registry = MetricsRegistry()
    fast = _Static(_families())
    registry.register(fast)
    rpcs = Counter("snnrm_test_rpcs", "An ordinary counter.", ("rpc",), registry=registry)
    rpcs.labels("Allocate").inc(3)
    for fmt in Format:
        body = registry.render(registry.snapshot(), fmt).decode()
        assert "snnrm_test_rpcs_total" in body
        assert "snnrm_test_depth{" in body
    om = registry.render(registry.snapshot(), Format.OPENMETRICS).decode()
    assert om.count("# EOF") == 1
    assert om.endswith("# EOF\n")
    list(parse_openmetrics(om))
    # the ordinary prometheus_client API still sees everything
    assert registry.get_sample_value("snnrm_test_rpcs_total", {"rpc": "Allocate"}) == 3
    assert registry.get_sample_value("snnrm_test_events_total", {"node": "n1", "core": "chip0-core0"}) == 10
    registry.unregister(fast)
    assert "snnrm_test_depth" not in registry.render(registry.snapshot(), Format.TEXT).decode()


async def test_scrape_hooks_run_and_a_failing_or_hung_hook_does_not_fail_the_scrape() -> None:
    registry = MetricsRegistry(hook_timeout=0.05)
    registry.register(_Static(_families()))
    ran: list[str] = []

    async def good() -> None:
        ran.append("good")

    async def broken() -> None:
        raise RuntimeError("kubelet on fire")

    async def hung() -> None:
        await asyncio.sleep(10)

    for hook in (good, broken, hung):
        registry.add_scrape_hook(hook)
    body = await asyncio.wait_for(registry.scrape(Format.TEXT), 2)
    assert ran == ["good"]
    assert b"snnrm_test_depth" in body


def test_family_rejects_mismatched_values() -> None:
    with pytest.raises(ValueError, match="2 series"):
        Family("snnrm_x", "gauge", "x", Labels.build(("a",), [("1",), ("2",)]), np.zeros(3))


@pytest.mark.parametrize("fmt", list(Format))
async def test_streamed_chunks_make_the_same_body(fmt: Format, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exposition, "CHUNK_SAMPLES", 2)  # several batches even for these small families
    registry = MetricsRegistry()
    registry.register(_Static(_families()))
    Counter("snnrm_test_rpcs", "An ordinary counter.", registry=registry).inc()
    families = await registry.prepare()
    whole = registry.render(families, fmt)
    chunks = [c async for c in registry.chunks(families, fmt)]
    assert len(chunks) > 2
    assert b"".join(chunks) == whole
    z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    packed = [c async for c in registry.chunks(families, fmt, encode=z.compress)]
    assert gzip.decompress(b"".join(packed) + z.flush()) == whole


@pytest.mark.parametrize("fmt", list(Format))
async def test_rendering_pauses_before_each_slice_off_the_loop(fmt: Format, monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry's pause hook (the daemon's: wait while a hard fault's message is sent) runs before every slice
    of RENDER_SLICE_SAMPLES samples, whole or streamed (then also before each chunk is encoded), and when streamed
    in the worker thread, not on the event loop; the body is the same whatever the slice (a family's integer
    spelling is decided over all its values)."""
    families = [
        *_families(),
        Family("snnrm_test_mixed", "counter", "Integral first, then not.", _labels(5), np.array([1, 2, 3, 4.5, 6.0])),
        Family("snnrm_test_gauge", "gauge", "Mixed finite.", _labels(5), np.array([1.0, np.inf, 0.25, np.nan, -3])),
    ]
    registry = MetricsRegistry()
    registry.register(_Static(families))
    snapshot = await registry.prepare()
    whole = registry.render(snapshot, fmt)
    monkeypatch.setattr(exposition, "CHUNK_SAMPLES", 2)
    monkeypatch.setattr(exposition, "RENDER_SLICE_SAMPLES", 2)
    calls: list[int] = []
    registry.pause = lambda: calls.append(threading.get_ident())
    slices = sum(math.ceil(len(f.values) / 2) for f in families)
    assert registry.render(snapshot, fmt) == whole
    assert calls == [threading.get_ident()] * slices  # render() pauses where its caller runs it
    calls.clear()
    chunks = [c async for c in registry.chunks(snapshot, fmt)]
    assert b"".join(chunks) == whole
    assert len(calls) == slices + len(chunks)  # and once before each chunk's compression
    assert threading.get_ident() not in calls
    assert 'snnrm_test_mixed_total{i="0"} 1.0\n' in whole.decode()  # not "1": the family has a 4.5


def _labels(n: int) -> Labels:
    return Labels.build(("i",), [(str(i),) for i in range(n)])
