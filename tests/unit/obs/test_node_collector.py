"""NodeCollector: families rendered from the monitor's arrays at every granularity, parsed back with both parsers."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families as parse_text

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.telemetry import FaultKind, HardFault, TelemetryFrame
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.obs.exposition import Format, MetricsRegistry
from snnrm.obs.metrics import GRANULARITIES, ContainerRef, Granularity, NodeCollector

# prometheus_client annotates its text-format parser but not this OpenMetrics one: the same function, typed alike.
parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families

GEOMETRY = ChipGeometry(cols=2, rows=2, cores_per_router=2)  # 8 cores per chip, 2 per router
CHIPS = 2
N = CHIPS * GEOMETRY.cores


def _monitor() -> NodeMonitor:
    t = Topology.grid(chips=CHIPS, geometry=GEOMETRY, nominal_keps=1000.0, queue_capacity=100.0)
    return NodeMonitor(t, ThroughputBlocks.plan(t, block_keps=500.0))


def _frame(m: NodeMonitor, t: float, k: int) -> TelemetryFrame:
    """Core i processed 100*k*(i+1) events, has queue depth i, sent 10k and delivered (10 - 0.1*(i%3))*k spikes."""
    i = np.arange(N, dtype=np.float64)
    links = m.topology.n_links
    return TelemetryFrame(
        timestamp=t,
        queue_depth=i,
        events_in=100.0 * k * (i + 1),
        events_processed=100.0 * k * (i + 1),
        events_dropped=np.full(N, float(k)),
        spikes_sent=np.full(N, 10.0 * k),
        spikes_delivered=(10.0 - 0.1 * (i % 3)) * k,
        link_utilization=np.linspace(0.0, 0.9, links),
        core_failed=np.zeros(N, dtype=bool),
        link_failed=np.zeros(links, dtype=bool),
    )


@pytest.fixture
def monitor() -> NodeMonitor:
    m = _monitor()
    for k in range(4):
        m.observe(_frame(m, 0.1 * k, k))
    m.hard_fault(HardFault(FaultKind.CORE, 5, failed=True, timestamp=0.35))
    return m


def _text(collector: NodeCollector, fmt: Format = Format.TEXT) -> str:
    registry = MetricsRegistry()
    registry.register(collector)
    return registry.render(registry.snapshot(), fmt).decode()


def _by_name(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in parse_text(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_core_granularity_has_one_series_per_core_with_device_ids(monitor: NodeMonitor) -> None:
    m = _by_name(_text(NodeCollector(monitor, node="n1", granularity="core")))
    healthy = {labels["core"]: v for labels, v in m["snnrm_core_healthy"]}
    assert len(healthy) == N
    assert healthy["chip0-core5"] == 0
    assert sum(healthy.values()) == N - 1
    processed = {labels["core"]: v for labels, v in m["snnrm_core_events_processed_total"]}
    assert processed["chip1-core2"] == 100 * 3 * (8 + 2 + 1)
    assert all(labels["node"] == "n1" and labels["chip"] in ("0", "1") for labels, _ in m["snnrm_core_healthy"])
    [(why, one)] = m["snnrm_core_unhealthy_info"]
    assert (why["core"], why["state"], why["reason"], one) == ("chip0-core5", "unhealthy", "failed", 1)
    assert len(m["snnrm_link_utilization_ratio"]) == monitor.topology.n_links


def test_group_and_chip_granularity_aggregate_meaningfully(monitor: NodeMonitor) -> None:
    core = _by_name(_text(NodeCollector(monitor, node="n1", granularity="core")))
    group = _by_name(_text(NodeCollector(monitor, node="n1", granularity="group")))
    chip = _by_name(_text(NodeCollector(monitor, node="n1", granularity="chip")))
    for name in (
        "snnrm_core_event_queue_depth",
        "snnrm_core_events_processed_total",
        "snnrm_core_events_dropped_total",
        "snnrm_core_spikes_sent_total",
        "snnrm_core_healthy",
    ):
        total = sum(v for _, v in core[name])
        assert math.isclose(sum(v for _, v in group[name]), total), name
        assert math.isclose(sum(v for _, v in chip[name]), total), name
    assert len(group["snnrm_core_healthy"]) == monitor.topology.n_routers
    assert {tuple(sorted(labels)) for labels, _ in group["snnrm_core_healthy"]} == {("chip", "group", "node")}
    assert len(chip["snnrm_core_healthy"]) == CHIPS
    # router domain 2 of chip 0 holds cores 4 and 5 (5 failed); efficiency is spike-weighted, within 0..1
    g = {(lb["chip"], lb["group"]): v for lb, v in group["snnrm_core_healthy"]}
    assert g[("0", "2")] == 1
    assert all(0.0 <= v <= 1.0 for _, v in chip["snnrm_core_spike_transfer_efficiency_ratio"])
    # link utilisation: the highest of the aggregated links, so max() agrees at every level
    top = max(v for _, v in core["snnrm_link_utilization_ratio"])
    assert max(v for _, v in group["snnrm_link_utilization_ratio"]) == pytest.approx(top)
    assert max(v for _, v in chip["snnrm_link_utilization_ratio"]) == pytest.approx(top)
    assert "snnrm_core_unhealthy_info" not in group
    # per-chip families do not depend on granularity
    for name in ("snnrm_chip_cores", "snnrm_chip_degraded_cores", "snnrm_chip_capacity_effective_events_per_second"):
        assert sorted(v for _, v in core[name]) == sorted(v for _, v in chip[name])


def test_chip_and_node_families(monitor: NodeMonitor) -> None:
    m = _by_name(_text(NodeCollector(monitor, node="n1", granularity="chip")))
    cores = {(lb["chip"], lb["state"]): v for lb, v in m["snnrm_chip_cores"]}
    assert cores[("0", "healthy")] == 7
    assert cores[("0", "unhealthy")] == 1
    assert cores[("1", "healthy")] == 8
    degraded = {(lb["chip"], lb["reason"]): v for lb, v in m["snnrm_chip_degraded_cores"]}
    assert degraded[("0", "failed")] == 1
    assert sum(degraded.values()) == 1
    nominal = {lb["chip"]: v for lb, v in m["snnrm_chip_capacity_nominal_events_per_second"]}
    assert nominal == {"0": 8e6, "1": 8e6}
    effective = {lb["chip"]: v for lb, v in m["snnrm_chip_capacity_effective_events_per_second"]}
    assert effective["0"] < effective["1"] <= 8e6
    devices = {(lb["resource"], lb["state"]): v for lb, v in m["snnrm_resource_devices"]}
    assert devices[(NEURON_CORE, "unhealthy")] == 1
    assert devices[(NEURON_CORE, "healthy")] == N - 1
    assert m["snnrm_telemetry_frames_total"] == [({"node": "n1"}, 4.0)]
    assert m["snnrm_event_throughput_device_events_per_second"][0][1] == 500e3
    [(build, _)] = m["snnrm_build_info"]
    assert build["version"]
    ages = [v for _, v in m["snnrm_chip_telemetry_age_seconds"]]
    assert ages == [0.0, 0.0]


def _assert_matches_reference(collector: NodeCollector, fmt: Format) -> None:
    """Everything the fast writer emits, prometheus_client's own encoder emits too (values to 6 digits)."""
    reference = CollectorRegistry()
    reference.register(collector)
    ours = _text(collector, fmt)
    theirs = generate_latest(reference).decode()
    parse = parse_openmetrics if fmt is Format.OPENMETRICS else parse_text
    a = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse(ours) for s in f.samples}
    b = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse_text(theirs) for s in f.samples}
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert (math.isnan(v) and math.isnan(b[k])) or math.isclose(v, b[k], rel_tol=1e-5), k


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("fmt", list(Format))
def test_fast_writer_matches_prometheus_client(monitor: NodeMonitor, granularity: Granularity, fmt: Format) -> None:
    _assert_matches_reference(NodeCollector(monitor, node="n1", granularity=granularity), fmt)


def test_names_follow_prometheus_conventions(monitor: NodeMonitor) -> None:
    collector = NodeCollector(monitor, node="n1", granularity="core")
    for f in collector.snapshot():
        assert f.name.startswith("snnrm_")
        assert not f.name.endswith(("_total", "_info", "_count", "_sum", "_bucket"))
        if f.name.endswith("_ratio") and len(f.values):
            assert np.nanmin(f.values) >= 0.0
            assert np.nanmax(f.values) <= 1.0
        for name in f.labels.names:
            assert name not in f.name.removeprefix("snnrm_").split("_")[1:], (f.name, name)


def test_fresh_values_on_every_scrape(monitor: NodeMonitor) -> None:
    collector = NodeCollector(monitor, node="n1", granularity="core")
    registry = CollectorRegistry()
    registry.register(collector)
    labels = {"node": "n1", "chip": "0", "core": "chip0-core1"}
    before = registry.get_sample_value("snnrm_core_events_processed_total", labels)
    assert before is not None  # the core's counter is exported before the new frame, not only after it
    monitor.observe(_frame(monitor, 0.5, 5))
    assert registry.get_sample_value("snnrm_core_events_processed_total", labels) == before + 2 * 100 * 2


@dataclass
class _Pods:
    owners_map: Mapping[str, Mapping[str, ContainerRef]] = field(default_factory=dict)
    available: bool = True
    request_counts: Mapping[str, int] = field(default_factory=lambda: {"ok": 3, "error": 1, "rate_limited": 0})

    def owners(self) -> Mapping[str, Mapping[str, ContainerRef]]:
        return self.owners_map


def test_allocated_cores_carry_namespace_pod_and_container(monitor: NodeMonitor) -> None:
    ref = ("ml", "trainer-0", "stage-1")
    pods = _Pods(
        {
            NEURON_CORE: {"chip0-core1": ref, "chip1-core7": ("ml", "trainer-1", "stage-2"), "chip9-core0": ref},
            EVENT_THROUGHPUT: {monitor.blocks.ids[0]: ref, monitor.blocks.ids[1]: ref, "chip7-ev0": ref},
            "example.com/gpu": {"gpu0": ref},
        }
    )
    collector = NodeCollector(monitor, node="n1", granularity="core", pods=pods)
    text = _text(collector)
    m = _by_name(text)
    owned = {lb["core"]: (lb.get("namespace"), lb.get("pod"), lb.get("container")) for lb, _ in m["snnrm_core_healthy"]}
    assert owned["chip0-core1"] == ref
    assert owned["chip1-core7"] == ("ml", "trainer-1", "stage-2")
    assert owned["chip0-core2"] == (None, None, None)
    containers = {
        (lb["resource"], lb["chip"], lb["pod"]): v for lb, v in m["snnrm_container_devices"]
    }  # unknown IDs and other resources are ignored, never guessed
    assert containers == {
        (NEURON_CORE, "0", "trainer-0"): 1,
        (NEURON_CORE, "1", "trainer-1"): 1,
        (EVENT_THROUGHPUT, "0", "trainer-0"): 2,
    }
    assert m["snnrm_pod_resources_available"] == [({"node": "n1"}, 1.0)]
    assert {lb["result"]: v for lb, v in m["snnrm_pod_resources_requests_total"]}["ok"] == 3
    for fmt in Format:
        _assert_matches_reference(collector, fmt)
    # unchanged assignments are not recomputed; a new answer is
    first = collector.snapshot()[0].labels
    assert collector.snapshot()[0].labels is first
    pods.owners_map = {}
    assert collector.snapshot()[0].labels is not first
    assert "trainer-0" not in _text(collector)


def test_group_granularity_attributes_by_container_count_not_labels(monitor: NodeMonitor) -> None:
    pods = _Pods({NEURON_CORE: {"chip0-core1": ("ml", "p", "c")}})
    m = _by_name(_text(NodeCollector(monitor, node="n1", granularity="group", pods=pods)))
    assert all("pod" not in lb for lb, _ in m["snnrm_core_healthy"])
    assert m["snnrm_container_devices"] == [
        ({"node": "n1", "resource": NEURON_CORE, "chip": "0", "namespace": "ml", "pod": "p", "container": "c"}, 1.0)
    ]


@dataclass
class _Plugin:
    resource: str
    registrations: int
    registered: asyncio.Event


def test_plugin_registrations(monitor: NodeMonitor) -> None:
    up = asyncio.Event()
    up.set()
    plugins = [_Plugin(NEURON_CORE, 2, up), _Plugin(EVENT_THROUGHPUT, 1, asyncio.Event())]
    m = _by_name(_text(NodeCollector(monitor, node="n1", plugins=plugins)))
    assert {lb["resource"]: v for lb, v in m["snnrm_device_plugin_registrations_total"]} == {
        NEURON_CORE: 2,
        EVENT_THROUGHPUT: 1,
    }
    assert {lb["resource"]: v for lb, v in m["snnrm_device_plugin_registered"]} == {NEURON_CORE: 1, EVENT_THROUGHPUT: 0}


def test_before_the_first_frame_nothing_breaks() -> None:
    m = _monitor()
    text = _text(NodeCollector(m, node="n1", granularity="chip", clock=lambda: 5.0))
    parsed = _by_name(text)
    assert math.isnan(parsed["snnrm_telemetry_last_frame_age_seconds"][0][1])
    assert all(math.isnan(v) for _, v in parsed["snnrm_chip_telemetry_age_seconds"])
    list(parse_openmetrics(_text(NodeCollector(m, node="n1"), Format.OPENMETRICS)))


def test_unknown_granularity_is_refused(monitor: NodeMonitor) -> None:
    with pytest.raises(ValueError, match="granularity"):
        NodeCollector(monitor, node="n1", granularity="board")  # type: ignore[arg-type]
