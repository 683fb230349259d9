"""Device health transitions as they reach the kubelet: a counter, and a span per change when tracing is on.

:class:`HealthTransitions` follows what each resource's feed publishes (every item is the complete device list
ListAndWatch sends; coalesced, so a transition is recorded as the kubelet saw it) and diffs it against the
previous list. Each change counts ``snnrm_device_health_transitions_total{resource,to}`` and, with tracing on,
becomes one ``snnrm.health_transition`` span naming the devices that changed (up to
:data:`~snnrm.obs.rpc.MAX_SPAN_IDS`) and, for neuron cores, why they turned unhealthy; with a
:class:`~snnrm.obs.timeline.Timeline`, each change is also an entry of the status page's timeline.

A neuron core advertised Unhealthy because a live remap lent it to a stage (``core_withheld``) is healthy by
measurement: it is recorded as ``withheld-for-remap``, never as a fault.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import AsyncIterable, Callable
from typing import Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from snnrm.core.devices import NEURON_CORE, DeviceSet
from snnrm.core.health import HealthReason
from snnrm.core.topology import BoolArray, IntArray
from snnrm.obs.rpc import MAX_SPAN_IDS
from snnrm.obs.timeline import Timeline
from snnrm.obs.tracing import NoopTracer, Tracer

WITHHELD: Final = "withheld-for-remap"
"""The reason given for a core advertised Unhealthy only because a live remap lent it to a stage."""


class HealthTransitions:
    """Counts (and traces) device health changes per resource.

    :param core_reasons: the health machine's reason bits per core, read when neuron cores turn unhealthy.
    :param core_withheld: cores withheld for a live remap now (None: none), so a lent core is not called a fault.
    :param timeline: where each change is recorded for the status page, when given.
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        node: str,
        tracer: Tracer | None = None,
        core_reasons: Callable[[], IntArray] | None = None,
        core_withheld: Callable[[], BoolArray | None] | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.node = node
        self.tracer: Tracer = tracer or NoopTracer()
        self._reasons = core_reasons
        self._withheld = core_withheld
        self.timeline = timeline
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
        if self.timeline is not None:
            self._record(devices, down, up)

    def _why(self, resource: str, down: IntArray) -> list[str]:
        """One reason name per core in ``down`` (neuron cores only): its health bits, or withheld for a remap."""
        if resource != NEURON_CORE or self._reasons is None:
            return []
        bits = self._reasons()[down]
        withheld = self._withheld() if self._withheld is not None else None
        lent = withheld[down] if withheld is not None else np.zeros(len(down), dtype=np.bool_)
        # A core with no reason bits left is on its way back (recovery dwell) unless a remap lent it.
        return [
            WITHHELD if w and not b else ",".join(HealthReason.names(int(b))) or "recovering"
            for b, w in zip(bits.tolist(), lent.tolist(), strict=True)
        ]

    def _record(self, devices: DeviceSet, down: IntArray, up: IntArray) -> None:
        assert self.timeline is not None
        res = devices.resource
        noun = "neuron cores" if res == NEURON_CORE else "event-throughput devices"
        ids = devices.ids
        if len(down):
            why = self._why(res, down) or [""] * len(down)
            lent = [ids[i] for i, w in zip(down.tolist(), why, strict=True) if w == WITHHELD]
            bad = [(ids[i], w) for i, w in zip(down.tolist(), why, strict=True) if w != WITHHELD]
            if lent:
                msg = f"{len(lent)} {noun} withheld for a live remap (lent to a stage, healthy by measurement)"
                self.timeline.add("health", "withheld", msg, reasons=[WITHHELD], resource=res, devices=lent)
            if bad:
                tally = Tally(n for _, w in bad for n in w.split(",") if n)
                reasons = [f"{k}={v}" for k, v in sorted(tally.items())]
                if reasons:
                    because = f" ({', '.join(reasons)})"
                elif res != NEURON_CORE:
                    because = " (their chip's measured capacity no longer covers them)"
                else:
                    because = ""
                self.timeline.add(
                    "health",
                    "unhealthy",
                    f"{len(bad)} {noun} turned unhealthy{because}",
                    reasons=reasons,
                    resource=res,
                    devices=[d for d, _ in bad],
                )
        if len(up):
            self.timeline.add(
                "health",
                "healthy",
                f"{len(up)} {noun} advertised healthy again",
                resource=res,
                devices=[ids[i] for i in up.tolist()],
            )

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
                tally = Tally(name for w in self._why(after.resource, down) for name in w.split(","))
                span.set_attribute("snnrm.reasons", [f"{k}={v}" for k, v in sorted(tally.items())])

    async def watch(self, feed: AsyncIterable[DeviceSet]) -> None:
        """Observe every list ``feed`` yields, until cancelled (one task per resource's feed)."""
        async for devices in feed:
            self.observe(devices)
