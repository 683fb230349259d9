"""The experiment's snnrm policy and the daemon's reallocator decide the same on the same inputs.

The experiment runs :class:`snnrm.cluster.remap.NodeReallocator` through
:class:`~benchmarks.experiments.policies.DaemonReallocator`. This test wires a second NodeReallocator the way the
daemon does (a :class:`~snnrm.node.NodeService`, a stage source of pods, a reporter, a remap ledger), feeds both
the same telemetry frames of one simulated node under a hot spot and then a failed core, follows every remap on
the simulator, and fails at the first pass where the two decide differently (which stage, which cores, why), so a
copy of the decision path in the experiments cannot drift from the product again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import sim_hw
from benchmarks.experiments.policies import DaemonReallocator, RunningJob, RunningStage, pod_name
from snnrm.backends.sim import SimBackend, frame_of, topology_of
from snnrm.cluster.remap import LocalStage, NodeReallocator, NullReporter, RemapLedger
from snnrm.core.devices import ThroughputBlocks
from snnrm.core.monitor import NodeMonitor
from snnrm.core.placement import PlacementView, StageDemand, plan_job
from snnrm.core.reallocation import ReallocationSettings
from snnrm.core.telemetry import FaultKind, HardFault
from snnrm.node import NodeService

DEMANDS = (StageDemand(4, out_keps=2000), StageDemand(4, out_keps=2000), StageDemand(4))
JOB = sim_hw.networks.Job(
    name="j",
    stages=(
        sim_hw.networks.Stage("s0", 1024, 4, spike_rate=2e6),
        sim_hw.networks.Stage("s1", 1024, 4, spike_rate=2e6),
        sim_hw.networks.Stage("s2", 1024, 4, spike_rate=0.0),
    ),
    input_rate=2e6,
)
SETTINGS = ReallocationSettings(dwell=1.0, cooldown=3.0, min_age=0.0)


@dataclass
class _Pods:
    """The daemon's stage source: the job's pods, with the cores each uses now."""

    placement: list[np.ndarray]
    admitted: list[tuple[str, ...]]
    last_move: list[float | None]

    def stages(self) -> list[LocalStage]:
        return [
            LocalStage(
                "default",
                pod_name("j", i),
                str(i + 1),
                "j",
                i,
                DEMANDS,
                self.admitted[i],
                self.placement[i],
                True,
                self.last_move[i],
            )
            for i in range(3)
        ]


def test_the_experiment_policy_and_the_daemon_reallocator_decide_alike(tmp_path: Path) -> None:
    backend = SimBackend(chips=2, cores_per_chip=16, seed=3)
    sim = backend.sim
    topo = topology_of(sim)
    weight = sim.spec.inter_chip_hop_latency / sim.spec.hop_latency
    plan = plan_job(PlacementView.idle(topo, inter_chip_weight=weight), DEMANDS)
    assert plan is not None
    placement = [p.copy() for p in plan.stages]
    sim.add_job(JOB, placement)
    clock = [0.0]

    # The experiment's side.
    m_exp = NodeMonitor(topo, ThroughputBlocks.plan(topo, block_keps=1000.0))
    exp = DaemonReallocator(topo, m_exp, SETTINGS, weight, lambda: clock[0])
    running = RunningJob(
        "j", DEMANDS, [RunningStage("j", i, p.copy(), p.copy(), i + 1, 0.0) for i, p in enumerate(placement)]
    )

    # The daemon's side, wired as snnrm/app.py wires it.
    node = NodeService(backend, topo, ThroughputBlocks.plan(topo, block_keps=1000.0), 0.1)
    pods = _Pods(
        [p.copy() for p in placement],
        [tuple(topo.ids[i] for i in np.sort(p).tolist()) for p in placement],
        [None, None, None],
    )
    daemon_moves: list[tuple[int, tuple[int, ...]]] = []

    def follow(stage: LocalStage, cores: np.ndarray) -> None:
        daemon_moves.append((stage.index, tuple(np.sort(cores).tolist())))

    admitted = np.zeros(topo.n_cores, dtype=bool)
    admitted[np.concatenate(placement)] = True
    daemon = NodeReallocator(
        node,
        pods,
        NullReporter(),
        RemapLedger(tmp_path, topo),
        lambda: admitted,
        settings=SETTINGS,
        inter_chip_weight=weight,
        clock=lambda: clock[0],
        on_remap=follow,
    )

    sim.inject(sim_hw.HotSpot(tuple(placement[1].tolist()), service_divisor=8.0), duration=None)
    decided = 0
    for k in range(140):
        sim.advance(10)
        clock[0] = sim.time
        frame = frame_of(sim)
        m_exp.observe(frame)
        node.monitor.observe(frame)
        if k == 80:  # a core of the last stage fails: pushed to both, as the backend pushes it
            failed = int(pods.placement[2][0])
            sim.inject(sim_hw.CoreFailure((failed,)), duration=None)
            for m in (m_exp, node.monitor):
                m.hard_fault(HardFault(FaultKind.CORE, failed, True, sim.time))
        if k % 5:
            continue
        booked = admitted.copy()
        exp_moves = exp.step({"j": running}, booked)
        daemon_moves.clear()
        asyncio.run(daemon.step())
        got = [(mv.stage, tuple(mv.target.tolist())) for mv in exp_moves]
        assert got == daemon_moves, f"t={sim.time:.2f}: experiment {got} != daemon {daemon_moves}"
        for stage, cores in daemon_moves:  # the runtime follows the remap, on both sides
            target = np.array(cores, dtype=np.int64)
            sim.move_stage("j", stage, target)
            running.stages[stage].cores = target.copy()
            running.stages[stage].last_move = sim.time
            pods.placement[stage] = target.copy()
            pods.last_move[stage] = sim.time
            decided += 1
    assert decided >= 2  # the hot spot and the failed core each moved a stage
    exp.close()
