"""Per-stage series of the stages running on this node, from the node agent (no controller needed).

The node agent knows which split-learning stages run here (the pods bound to the node, their cores from the
kubelet's PodResources API), where live remaps moved them (the remap ledger) and, on simulated chips, the spike
latency into each stage (:class:`~snnrm.cluster.sim_workload.SimWorkloads`). :class:`StageCollector` exports that
at scrape time, so the split-learning dashboard shows a daemon-only install's jobs:

* ``snnrm_job_stage_info{node,namespace,snn_job,stage,pod,live_remap}`` = 1: which pod is which stage (the
  dashboards join per-pod core series to stages with it);
* ``snnrm_stage_cores{node,namespace,snn_job,stage}``: neuron cores the stage uses now (a remap's target, else
  the admitted ones);
* ``snnrm_stage_remaps_total{...}``: live remaps of the stage since its pod was admitted (the ledger's
  generation; the series exists at 0 from admission, so ``increase()`` sees the first move);
* ``snnrm_stage_spike_latency_seconds{...}``: spike latency into the stage (route from the previous stage plus
  queueing delay) where the node measures it; today only the simulator does, so real chips export no series.

Cardinality is bounded by what runs here: one series per family and stage (a stage holds at least one core, so
at most one per neuron core), no core IDs, reasons or other free text as labels, and a stage's series go with
its pod. Nothing is kept between scrapes. Why a stage moved is ``snnrm_reallocations_total{reason,action}``,
which the node's reallocator counts in the same registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from snnrm.cluster.remap import LocalStage, RemapLedger

StageKey = tuple[str, str, int]
"""(namespace, job, stage index)."""

_LABELS = ["node", "namespace", "snn_job", "stage"]


class StageCollector(Collector):
    """See the module docstring.

    :param node: value of the ``node`` label (the daemon's, like every other family).
    :param stages: the stages running on this node now (:meth:`snnrm.cluster.node_agent.NodeAgent.stages`).
    :param ledger: the node's remap records (the remap count of each stage).
    :param latency: spike latency into each stage, seconds (None or missing key: not measured here).
    """

    def __init__(
        self,
        *,
        node: str,
        stages: Callable[[], Sequence[LocalStage]],
        ledger: RemapLedger,
        latency: Callable[[], Mapping[StageKey, float]] | None = None,
    ) -> None:
        self._node = node
        self._stages = stages
        self._ledger = ledger
        self._latency = latency

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        info = GaugeMetricFamily(
            "snnrm_job_stage_info",
            "A split-learning stage running on this node: its pod, and whether its runtime follows live remaps.",
            labels=[*_LABELS, "pod", "live_remap"],
        )
        cores = GaugeMetricFamily(
            "snnrm_stage_cores",
            "Neuron cores the stage uses now (a live remap's target, else the admitted ones).",
            labels=_LABELS,
        )
        remaps = CounterMetricFamily(
            "snnrm_stage_remaps",
            "Live remaps of the stage on this node since its pod was admitted (reasons: snnrm_reallocations_total).",
            labels=_LABELS,
        )
        latency = GaugeMetricFamily(
            "snnrm_stage_spike_latency_seconds",
            "Spike latency into the stage: route from the previous stage plus queueing delay (where measured).",
            labels=_LABELS,
        )
        measured = self._latency() if self._latency is not None else {}
        for s in sorted(self._stages(), key=lambda s: (s.namespace, s.job, s.index)):
            labels = [self._node, s.namespace, s.job, str(s.index)]
            info.add_metric([*labels, s.pod, "true" if s.live_remap else "false"], 1)
            cores.add_metric(labels, len(s.cores))
            rec = self._ledger.current(s.namespace, s.pod, s.uid)
            remaps.add_metric(labels, rec.generation if rec is not None else 0)
            seconds = measured.get((s.namespace, s.job, s.index))
            if seconds is not None:
                latency.add_metric(labels, seconds)
        yield info
        yield cores
        yield remaps
        yield latency
