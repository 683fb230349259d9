"""Simulated chips run what the kubelet admitted on them.

On real chips a stage's traffic comes from the network it runs. On simulated chips nothing would run, so a queue
could never fill and a hot spot could never appear under a stage: the node would advertise telemetry of idle
silicon while pods hold its cores. With placement on and ``--backend sim``, the daemon therefore places every job
whose stages run on this node in the simulator, at the rates the pods declare (``snnrm.io/input-rate-keps``,
``snnrm.io/spike-rate-keps``), and follows every live remap, so the node's telemetry, health and summary are
those of the admitted workload.

:func:`desired` is the pure half (stages -> simulator jobs); :class:`SimWorkloads` reconciles the simulator with
it every ``period`` seconds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog

import sim_hw
from snnrm.cluster.remap import LocalStage
from snnrm.core.placement import StageDemand
from snnrm.core.topology import IntArray

log = structlog.get_logger(__name__)

KEPS = 1000.0
"""Events per second in one KEPS."""


@dataclass(frozen=True, slots=True)
class SimJob:
    """One simulator job: a chain of stages of one pod job that run here, and their cores."""

    job: sim_hw.Job
    cores: tuple[IntArray, ...]
    stages: tuple[tuple[str, str, int], ...] = ()
    """(namespace, job, stage index) of each simulator stage, in order."""


def desired(stages: Sequence[LocalStage], neurons_per_core: int) -> dict[str, SimJob]:
    """Simulator jobs for the stages running here, keyed by name.

    A job whose stages all run here is one chain (spikes cross the mesh between its stages); otherwise each local
    stage is a job of its own, fed at the rate its predecessor declares (that traffic arrives from off the node).
    """
    by_job: dict[tuple[str, str], dict[int, LocalStage]] = {}
    for s in stages:
        by_job.setdefault(s.job_key, {})[s.index] = s
    out: dict[str, SimJob] = {}
    for (ns, job), local in by_job.items():
        demands = next(iter(local.values())).demands
        if sorted(local) == list(range(len(demands))):
            name = f"{ns}/{job}"
            chain = tuple(_stage(demands, i, local[i], neurons_per_core) for i in sorted(local))
            cores = tuple(local[i].cores for i in sorted(local))
            keys = tuple((ns, job, i) for i in sorted(local))
            out[name] = SimJob(sim_hw.Job(name, chain, input_rate=_fed(demands, 0)), cores, keys)
        else:
            for i, s in sorted(local.items()):
                name = f"{ns}/{job}/{i}"
                one = (_stage(demands, i, s, neurons_per_core),)
                out[name] = SimJob(sim_hw.Job(name, one, input_rate=_fed(demands, i)), (s.cores,), ((ns, job, i),))
    return out


def _stage(demands: Sequence[StageDemand], i: int, s: LocalStage, neurons_per_core: int) -> sim_hw.Stage:
    last = i == len(demands) - 1
    return sim_hw.Stage(
        name=f"stage{i}",
        neurons=len(s.cores) * neurons_per_core,
        cores=len(s.cores),
        spike_rate=0.0 if last else demands[i].out_keps * KEPS,
    )


def _fed(demands: Sequence[StageDemand], i: int) -> float:
    """Events per second arriving at stage ``i``: the sensor stream for stage 0, else its predecessor's spikes."""
    return (demands[0].in_keps if i == 0 else demands[i - 1].out_keps) * KEPS


@dataclass(eq=False)
class SimWorkloads:
    """Keeps the simulator's jobs equal to :func:`desired` of the node's stages."""

    sim: sim_hw.Simulator
    stages: Callable[[], Sequence[LocalStage]]
    period: float = 0.5
    latency: dict[tuple[str, str, int], float] = field(default_factory=dict)
    """Spike latency into each placed stage, seconds, as of the last pass (key: namespace, job, stage index); a
    stage whose cores all failed has none (the simulator says infinite). What the node exports per stage."""
    _placed: dict[str, SimJob] = field(default_factory=dict)

    def reconcile(self) -> None:
        """Add new jobs, move stages that moved, remove jobs that ended; a job that cannot be placed (its cores
        overlap a job not yet removed) is retried on the next pass."""
        want = desired(self.stages(), self.sim.spec.neurons_per_core)
        for name in [n for n in self._placed if n not in want or want[n].job != self._placed[n].job]:
            self.sim.remove_job(name)
            del self._placed[name]
        for name, job in want.items():
            have = self._placed.get(name)
            try:
                if have is None:
                    self.sim.add_job(job.job, list(job.cores))
                    log.info("sim_job_placed", job=name, stages=len(job.cores), cores=sum(len(c) for c in job.cores))
                else:
                    for i, (old, new) in enumerate(zip(have.cores, job.cores, strict=True)):
                        if not np.array_equal(old, new):
                            self.sim.move_stage(name, i, new)
                self._placed[name] = job
            except ValueError as e:
                log.info("sim_job_deferred", job=name, reason=str(e))
        latency: dict[tuple[str, str, int], float] = {}
        for name, placed in self._placed.items():
            for key, m in zip(placed.stages, self.sim.stage_metrics(name), strict=False):
                if math.isfinite(m.latency_s):
                    latency[key] = m.latency_s
        self.latency = latency

    def latencies(self) -> dict[tuple[str, str, int], float]:
        """:attr:`latency` now (read at scrape time)."""
        return self.latency

    async def run(self) -> None:
        while True:
            self.reconcile()
            await asyncio.sleep(self.period)
