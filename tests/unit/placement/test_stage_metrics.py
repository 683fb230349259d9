"""The daemon's per-stage series (snnrm/cluster/stage_metrics.py) from a real remap ledger, rendered by the
daemon's own registry and parsed back as Prometheus would: what the split-learning dashboard reads without the
controller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from snnrm.cluster.remap import LocalStage, RemapLedger
from snnrm.cluster.stage_metrics import StageCollector
from snnrm.core.placement import StageDemand
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.obs.exposition import Format, MetricsRegistry

TOPO = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=4))
DEMANDS = (StageDemand(2, out_keps=100.0), StageDemand(2))


def stage(i: int, cores: list[int], *, live: bool = True) -> LocalStage:
    ids = tuple(TOPO.ids[c] for c in cores)
    return LocalStage("snn", f"gesture-{i}", f"uid-{i}", "gesture", i, DEMANDS, ids, np.array(cores), live)


def _grouped(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


async def test_stages_here_are_exported_with_cores_remaps_and_latency(tmp_path: Path) -> None:
    ledger = RemapLedger(tmp_path, TOPO)
    now = [stage(0, [0, 1]), stage(1, [2, 3], live=False)]
    latency = {("snn", "gesture", 0): 2.5e-6}
    registry = MetricsRegistry()
    registry.register(StageCollector(node="n1", stages=lambda: now, ledger=ledger, latency=lambda: latency))

    got = _grouped((await registry.scrape(Format.TEXT)).decode())
    base = {"node": "n1", "namespace": "snn", "snn_job": "gesture"}
    assert got["snnrm_job_stage_info"] == [
        ({**base, "stage": "0", "pod": "gesture-0", "live_remap": "true"}, 1.0),
        ({**base, "stage": "1", "pod": "gesture-1", "live_remap": "false"}, 1.0),
    ]
    assert got["snnrm_stage_cores"] == [({**base, "stage": "0"}, 2.0), ({**base, "stage": "1"}, 2.0)]
    # Both stages' remap counters exist at 0 from admission, so increase() sees the first move.
    assert got["snnrm_stage_remaps_total"] == [({**base, "stage": "0"}, 0.0), ({**base, "stage": "1"}, 0.0)]
    # Only the stage the node measures has a latency series.
    assert got["snnrm_stage_spike_latency_seconds"] == [({**base, "stage": "0"}, 2.5e-6)]

    # A live remap of stage 0 to three cores: the ledger's record drives the count, the stage its cores.
    ledger.record(now[0], np.array([8, 9, 10]), now=100.0)
    now[0] = stage(0, [8, 9, 10])
    got = _grouped((await registry.scrape(Format.TEXT)).decode())
    assert ({**base, "stage": "0"}, 1.0) in got["snnrm_stage_remaps_total"]
    assert ({**base, "stage": "0"}, 3.0) in got["snnrm_stage_cores"]

    # The pods end: every series of the job goes (no stale label sets accumulate over jobs).
    now.clear()
    got = _grouped((await registry.scrape(Format.TEXT)).decode())
    assert not any(name.startswith(("snnrm_job_stage", "snnrm_stage_")) for name in got)
