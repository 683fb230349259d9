"""The node reallocator's verdicts, recorded on the status page's timeline as well as where they normally go.

:class:`TimelineReporter` wraps the :class:`~snnrm.cluster.remap.StageReporter` a
:class:`~snnrm.cluster.remap.NodeReallocator` reports to (pod annotations and Events in a cluster, the log in the
demo): every verdict still reaches it unchanged, and is also added to the daemon's
:class:`~snnrm.obs.timeline.Timeline` with its reasons, so ``GET /api/v1/events`` tells what the node decided
without a Kubernetes API to read Events from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from snnrm.cluster.remap import LocalStage, StageReporter
from snnrm.core.jobs import StageHealth
from snnrm.core.topology import Topology
from snnrm.obs.timeline import Timeline

_EVENT_ACTIONS = {"Remapped": "remapped", "RemapDeferred": "deferred", "WouldRemap": "would-remap"}
"""Reallocator Events that are decisions (the rest are passed on, not recorded)."""
_VERDICTS = {
    "not-opted-in": "not moved: its runtime does not follow remaps (the controller may evict it)",
    "unavailable": "not moved: no better home on this node",
}


@dataclass(eq=False)
class TimelineReporter:
    """A StageReporter that records each verdict on ``timeline`` and passes it on to ``inner``."""

    inner: StageReporter
    timeline: Timeline
    topology: Topology
    _health: dict[tuple[str, str], StageHealth] = field(default_factory=dict)
    """The last verdict per stage pod: a remap's Event names its reasons through it."""
    _moved_to: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def _ids(self, stage: LocalStage) -> list[str]:
        return [self.topology.ids[i] for i in sorted(stage.cores.tolist())]

    def _stage_entry(self, stage: LocalStage, action: str, what: str, reasons: tuple[str, ...]) -> None:
        self.timeline.add(
            "stage",
            action,
            f"stage {stage.index} of {stage.job} {what}",
            reasons=reasons,
            devices=self._ids(stage),
            job=stage.job,
            stage=stage.index,
            pod=stage.pod,
        )

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        """Record a change of the stage's verdict (the reallocator reports only changes), then pass it on."""
        key = (stage.namespace, stage.pod)
        before = self._health.get(key)
        self._health[key] = health
        if health.degraded:
            verdict = _VERDICTS.get(health.remap, health.remap)
            self._stage_entry(stage, "degraded", f"degraded ({', '.join(health.reasons)}); {verdict}", health.reasons)
        elif health.remap == "done" and cores is not None:
            self._moved_to[key] = cores  # recorded with the Remapped Event, which carries the costs
        elif before is not None and before.degraded:
            self._stage_entry(stage, "recovered", "healthy again on its cores", before.reasons)
        await self.inner.report(stage, health, cores=cores, moved_at=moved_at)

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        """Record a decision (remap, deferral, dry run), then pass the Event on."""
        action = _EVENT_ACTIONS.get(reason)
        if action is not None:
            key = (stage.namespace, stage.pod)
            health = self._health.get(key)
            # A remap is reported (with its reasons) just before its Event; a deferral names its reason in the note.
            reasons = health.reasons if health is not None and action == "remapped" else ()
            target = self._moved_to.pop(key, []) if action == "remapped" else []
            self.timeline.add(
                "reallocation",
                action,
                # A remap's note names its stage ("live remap of stage 1 ..."); a deferral's names only the reason.
                f"{stage.job}: {note}" if action == "remapped" else f"{stage.job} stage {stage.index}: {note}",
                reasons=reasons,
                devices=target,
                from_devices=self._ids(stage) if target else (),
                job=stage.job,
                stage=stage.index,
                pod=stage.pod,
            )
        await self.inner.event(stage, reason=reason, note=note, warning=warning)
