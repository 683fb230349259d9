"""Device health transitions as they reach the kubelet: a counter, and a span per change when tracing is on.

:class:`HealthTransitions` follows what each resource's feed publishes (every item is the complete device list
ListAndWatch sends; coalesced, so a transition is recorded as the kubelet saw it) and diffs it against the
previous list. Each change counts ``snnrm_device_health_transitions_total{resource,to}`` and, with tracing on,
becomes one ``snnrm.health_transition`` span naming the devices that changed (up to
:data:`~snnrm.obs.rpc.MAX_SPAN_IDS`) and, for neuron cores, why they turned unhealthy.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import AsyncIterable, Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from snnrm.core.devices import NEURON_CORE, DeviceSet
from snnrm.core.health import Reason
from snnrm.core.topology import IntArray
from snnrm.obs.rpc import MAX_SPAN_IDS
from snnrm.obs.tracing import NoopTracer, Tracer


class HealthTransitions:
    """Counts (and traces) device health changes per resource.

    :param core_reasons: the health machine's reason bits per core, read when neuron cores turn unhealthy.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        node: str,
        tracer: Tracer | None = None,
        core_reasons: Callable[[], IntArray] | None = None,
    ) -> None:
        self.node = node
        self.tracer: Tracer = tracer or NoopTracer()
        self._reasons = core_reasons
        self._last: dict[str, DeviceSet] = {}
        self.transitions = Counter(
            "snnrm_device_health_transitions",
            "Devices whose advertised health changed, by the state they changed to.",
            ("node", "resource", "to"),
            registry=registry,
        )

    def observe(self, devices: DeviceSet) -> None:
        """Fold in the latest device list of a resource (the first one is the baseline)."""
        res = devices.resource
        before = self._last.get(res)
        self._last[res] = devices
        if before is None:
            for to in ("healthy", "unhealthy"):
                self.transitions.labels(self.node, res, to)
            return
        if before.ids != devices.ids:  # a re-planned layout: no per-device diff is meaningful
            return
        down = np.flatnonzero(before.healthy & ~devices.healthy)
        up = np.flatnonzero(~before.healthy & devices.healthy)
        if len(down):
            self.transitions.labels(self.node, res, "unhealthy").inc(len(down))
        if len(up):
            self.transitions.labels(self.node, res, "healthy").inc(len(up))
        if (len(down) or len(up)) and self.tracer.enabled:
            self._span(before, devices, down, up)

    def _span(self, before: DeviceSet, after: DeviceSet, down: IntArray, up: IntArray) -> None:
        ids = after.ids
        with self.tracer.span("snnrm.health_transition") as span:
            span.set_attribute("snnrm.resource", after.resource)
            span.set_attribute("snnrm.healthy", after.healthy_count)
            span.set_attribute("snnrm.healthy_before", before.healthy_count)
            span.set_attribute("snnrm.total", len(ids))
            span.set_attribute("snnrm.became_unhealthy", len(down))
            span.set_attribute("snnrm.became_healthy", len(up))
            span.set_attribute("snnrm.became_unhealthy_ids", [ids[i] for i in down[:MAX_SPAN_IDS].tolist()])
            span.set_attribute("snnrm.became_healthy_ids", [ids[i] for i in up[:MAX_SPAN_IDS].tolist()])
            if after.resource == NEURON_CORE and self._reasons is not None and len(down):
                bits = self._reasons()[down]
                tally = Tally(name for b in bits.tolist() for name in (Reason.names(int(b)) or ["recovering"]))
                span.set_attribute("snnrm.reasons", [f"{k}={v}" for k, v in sorted(tally.items())])

    async def watch(self, feed: AsyncIterable[DeviceSet]) -> None:
        """Observe every list ``feed`` yields, until cancelled (one task per resource's feed)."""
        async for devices in feed:
            self.observe(devices)
