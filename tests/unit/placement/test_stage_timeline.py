"""The node reallocator's verdicts on the status page's timeline: a remap with its reasons and both core sets, a
stage that could not be moved, its recovery, deferrals folded; every verdict still reaches the real reporter."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from snnrm.backends.sim import SimBackend
from snnrm.cluster.remap import LocalStage
from snnrm.cluster.timeline import TimelineReporter
from snnrm.core.jobs import StageHealth
from snnrm.core.placement import StageDemand
from snnrm.core.topology import Topology
from snnrm.obs.timeline import Timeline


@dataclass
class Inner:
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        self.calls.append(("report", health.state))

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        self.calls.append(("event", reason))


def _stage(topo: Topology, cores: list[int]) -> LocalStage:
    ids = tuple(topo.ids[i] for i in cores)
    demands = (StageDemand(2), StageDemand(2))
    return LocalStage("ns", "j-1", "uid", "j", 1, demands, ids, np.array(cores, dtype=np.int64), True)


async def test_verdicts_are_recorded_and_passed_on() -> None:
    topology = await SimBackend(chips=1, cores_per_chip=16).discover()
    tl = Timeline()
    inner = Inner()
    rep = TimelineReporter(inner, tl, topology)
    s = _stage(topology, [4, 5])
    # A remap: the reallocator reports the new cores (with the reasons), then sends the Event with the costs.
    done = StageHealth("ok", ("queue-saturated",), 1.0, "done", 10.0)
    await rep.report(s, done, cores=["chip0-core8", "chip0-core9"], moved_at=1.0)
    await rep.event(s, reason="Remapped", note="queue-saturated: live remap of stage 1 ..; cost 30 -> 10")
    for _ in range(3):
        await rep.event(s, reason="RemapDeferred", note="failed-core: job cooldown")
    await rep.report(s, StageHealth("degraded", ("failed-core",), 2.0, "unavailable", 30.0), cores=None, moved_at=None)
    await rep.report(s, StageHealth("ok"), cores=None, moved_at=None)
    await rep.event(s, reason="SomethingElse", note="not a decision")
    remapped, deferred, degraded, recovered = tl.entries()
    assert remapped.kind == "reallocation"
    assert remapped.reasons == ("queue-saturated",)
    assert remapped.devices == ("chip0-core8", "chip0-core9")
    assert remapped.from_devices == (topology.ids[4], topology.ids[5])
    assert remapped.message == "j: queue-saturated: live remap of stage 1 ..; cost 30 -> 10"
    assert (remapped.job, remapped.stage, remapped.pod) == ("j", 1, "j-1")
    assert (deferred.action, deferred.repeats, deferred.message) == (
        "deferred",
        3,
        "j stage 1: failed-core: job cooldown",
    )
    assert degraded.action == "degraded"
    assert degraded.message == "stage 1 of j degraded (failed-core); not moved: no better home on this node"
    assert (recovered.action, recovered.reasons) == ("recovered", ("failed-core",))
    assert inner.calls == [
        ("report", "ok"),
        ("event", "Remapped"),
        *[("event", "RemapDeferred")] * 3,
        ("report", "degraded"),
        ("report", "ok"),
        ("event", "SomethingElse"),
    ]
