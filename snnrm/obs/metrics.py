"""Prometheus metrics from snapshots: a custom collector reads the node's state on every scrape.

Following prometheus/client_python's custom-collector pattern, nothing is kept between scrapes: the arrays the
telemetry pipeline maintains are the source of truth, so a scrape never sees a half-updated set of gauges.
Names follow the Prometheus conventions: ``snnrm_`` prefix, base units, ``_total`` counters, ``_ratio`` for 0-1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from snnrm.core.devices import DeviceSet
from snnrm.core.health import Health, Reason
from snnrm.core.monitor import NodeMonitor


class NodeCollector(Collector):
    """Per-core, per-link and per-resource series for one node."""

    def __init__(self, monitor: NodeMonitor, devices: Callable[[], dict[str, DeviceSet]], *, node: str) -> None:
        self._m = monitor
        self._devices = devices
        self._node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
        m = self._m
        t = m.topology
        r = m.rates.rates
        labels = ["node", "chip", "core"]
        chip = [str(c) for c in t.chip_of.tolist()]
        core = list(t.ids)
        node = self._node

        def per_core(
            family: GaugeMetricFamily | CounterMetricFamily, values: np.ndarray
        ) -> GaugeMetricFamily | CounterMetricFamily:
            for c, k, v in zip(chip, core, values.tolist(), strict=True):
                family.add_metric([node, c, k], v)
            return family

        yield per_core(
            GaugeMetricFamily(
                "snnrm_core_event_queue_depth", "Events waiting in the core's input queue.", labels=labels
            ),
            r.queue_depth,
        )
        yield per_core(
            GaugeMetricFamily(
                "snnrm_core_spike_transfer_efficiency_ratio",
                "Delivered over sent spikes of the core, smoothed.",
                labels=labels,
            ),
            r.efficiency,
        )
        yield per_core(
            CounterMetricFamily("snnrm_core_events_processed", "Events the core processed.", labels=labels),
            r.counters["events_processed"],
        )
        yield per_core(
            CounterMetricFamily("snnrm_core_events_dropped", "Events dropped at the core.", labels=labels),
            r.counters["events_dropped"],
        )
        yield per_core(
            GaugeMetricFamily("snnrm_core_healthy", "1 if the core is Healthy, else 0.", labels=labels),
            (m.health.state == Health.HEALTHY).astype(np.float64),
        )
        reasons = InfoMetricFamily(
            "snnrm_core_unhealthy_reason", "Why a core is not Healthy (one series per such core).", labels=labels
        )
        for i in np.flatnonzero(m.health.state != Health.HEALTHY).tolist():
            reasons.add_metric(
                [node, chip[i], core[i]],
                {
                    "state": Health(int(m.health.state[i])).name.lower(),
                    "reason": ",".join(Reason.names(int(m.health.reasons[i]))) or "recovering",
                },
            )
        yield reasons
        link = GaugeMetricFamily(
            "snnrm_link_utilization_ratio",
            "Load of a directed mesh link over the last sample, 0-1 of capacity.",
            labels=["node", "link", "inter_chip"],
        )
        for i, (u, x) in enumerate(zip(m.link_utilization.tolist(), t.link_inter_chip.tolist(), strict=True)):
            link.add_metric([node, f"r{t.link_src[i]}-r{t.link_dst[i]}", "true" if x else "false"], u)
        yield link
        devices = GaugeMetricFamily(
            "snnrm_resource_devices", "Devices advertised to the kubelet.", labels=["node", "resource", "state"]
        )
        for res, d in self._devices().items():
            h = d.healthy_count
            devices.add_metric([node, res, "healthy"], h)
            devices.add_metric([node, res, "unhealthy"], len(d.ids) - h)
        yield devices
        rejected = CounterMetricFamily(
            "snnrm_telemetry_rejected_samples",
            "Core samples rejected as NaN, negative, stale or impossible.",
            labels=["node"],
        )
        rejected.add_metric([node], float(m.rates.rejected_samples.sum()))
        yield rejected
        frames = CounterMetricFamily("snnrm_telemetry_frames", "Telemetry frames folded in.", labels=["node"])
        frames.add_metric([node], float(m.frames))
        yield frames
