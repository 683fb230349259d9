"""The node agent's Node writes: telemetry noise is not a change, a real change is one write (injected clock)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snnrm.cluster.events import EventRecorder
from snnrm.cluster.hints import PlanHints
from snnrm.cluster.node_agent import NodeAgent
from snnrm.cluster.remap import RemapLedger
from snnrm.core.summary import ANNOTATION, NodeSummary, PublishPolicy
from snnrm.core.topology import INTER_CHIP_WEIGHT, BoolArray, ChipGeometry, FloatArray, Topology
from snnrm.kube.api import NODES
from snnrm.testing.fake_cluster import FakeClusterApi

TOPO = Topology.grid(chips=4, geometry=ChipGeometry(cols=4, rows=4, cores_per_router=2))


@dataclass
class Readings:
    queue_fill: FloatArray
    link_utilization: FloatArray
    link_failed: BoolArray


@dataclass
class NoisyNode:
    """A node whose telemetry is a steady load plus noise: per core and link, and per chip (an input burst loads
    a whole stage's chip at once), drawn afresh at every reading as a raw link reading is."""

    fill: float = 0.3
    link: float = 0.4
    noise: float = 0.1
    topology: Topology = TOPO
    withheld: BoolArray | None = None
    healthy: BoolArray = field(default_factory=lambda: np.ones(TOPO.n_cores, dtype=np.bool_))
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    @property
    def monitor(self) -> Readings:
        t, u, a = self.topology, self.rng.uniform, self.noise
        chip = u(-a, a, t.n_chips)
        return Readings(
            np.clip(self.fill + chip[t.chip_of] + u(-a, a, t.n_cores), 0, 1),
            np.clip(self.link + chip[t.router_chip[t.link_src]] + u(-a, a, t.n_links), 0, 1),
            np.zeros(t.n_links, dtype=np.bool_),
        )

    def core_healthy(self) -> BoolArray:
        return self.healthy

    def chip_headroom_keps(self) -> FloatArray:
        return self.rng.uniform(500, 1500, self.topology.n_chips)  # measured: noisy, and no placement reads it

    def withhold(self, cores: BoolArray | None) -> None:
        self.withheld = cores


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def rig(tmp: Path, policy: PublishPolicy) -> tuple[FakeClusterApi, NoisyNode, Clock, NodeAgent]:
    api = FakeClusterApi()
    api.put(NODES, {"metadata": {"name": "n1"}})
    node, clock = NoisyNode(), Clock()
    agent = NodeAgent(
        api,
        "n1",
        node,
        RemapLedger(tmp, TOPO),
        PlanHints(),
        None,
        EventRecorder(api, instance="n1"),
        policy=policy,
        inter_chip_weight=INTER_CHIP_WEIGHT,
        clock=clock,
    )
    return api, node, clock, agent


async def run_for(agent: NodeAgent, clock: Clock, seconds: int, *, every: int = 1) -> int:
    """Sync every ``every`` seconds (the agent's cadence is 1 s) for ``seconds``; returns the Node writes made."""
    before = agent.publications
    for _ in range(seconds // every):
        clock.now += every
        await agent.sync_once()
    return agent.publications - before


def published(api: FakeClusterApi) -> NodeSummary:
    obj = api.get_obj(NODES, "n1", None)
    assert obj is not None
    return NodeSummary.decode(obj["metadata"]["annotations"][ANNOTATION])


async def test_noise_writes_nothing_but_the_heartbeat(tmp_path: Path) -> None:
    policy = PublishPolicy()
    api, _node, clock, agent = rig(tmp_path, policy)
    await agent.sync_once()
    assert agent.publications == 1
    # The first summary holds one noisy reading: while the smoothing settles, it may be corrected, and it is
    # re-published once when settled (settle_after).
    assert 1 <= await run_for(agent, clock, int(policy.settle_after)) <= 3
    assert agent.published is not None
    assert agent.published.time == clock.now
    # Then 20 minutes of +-0.1 noise per chip and per core and link: only the 300 s heartbeats.
    assert await run_for(agent, clock, 1200) == 1200 // int(policy.max_interval)
    assert [c for c in api.calls if c[0] == "PATCH"] == [("PATCH", "/api/v1/nodes/n1")] * agent.publications


async def test_a_late_agent_does_not_publish_noise_either(tmp_path: Path) -> None:
    """An agent starved of CPU syncs every 5 s instead of every second: each reading still counts as one."""
    policy = PublishPolicy()
    _api, _node, clock, agent = rig(tmp_path, policy)
    await agent.sync_once()
    await run_for(agent, clock, 100, every=5)  # the settling: a late agent takes more seconds (same readings)
    assert await run_for(agent, clock, 1200, every=5) == 1200 // int(policy.max_interval)


async def test_unsmoothed_noise_would_write_every_min_interval(tmp_path: Path) -> None:
    """The control: the same noise compared raw (no smoothing) crosses fill_delta nearly every min_interval."""
    _api, _node, clock, agent = rig(tmp_path, PublishPolicy(load_tau=0.0))
    await agent.sync_once()
    assert await run_for(agent, clock, 600) > 600 / 5.0 / 2


async def test_a_failed_core_is_one_write(tmp_path: Path) -> None:
    api, node, clock, agent = rig(tmp_path, PublishPolicy())
    await agent.sync_once()
    await run_for(agent, clock, 60)  # past the settling write
    assert published(api).healthy == TOPO.n_cores
    before = agent.publications
    node.healthy = node.healthy.copy()
    node.healthy[5] = False
    assert await run_for(agent, clock, 1) == 1  # past min_interval already: at the next sync
    assert published(api).healthy == TOPO.n_cores - 1
    assert not published(api).free[5]
    assert await run_for(agent, clock, 200) == 0
    assert agent.publications == before + 1


async def test_a_failure_right_after_a_write_waits_for_min_interval(tmp_path: Path) -> None:
    api, node, clock, agent = rig(tmp_path, PublishPolicy(min_interval=5.0))
    await agent.sync_once()
    node.healthy = node.healthy.copy()
    node.healthy[0] = False
    assert await run_for(agent, clock, 4) == 0
    assert await run_for(agent, clock, 1) == 1
    assert published(api).healthy == TOPO.n_cores - 1


async def test_a_sustained_load_step_is_a_few_writes_then_none(tmp_path: Path) -> None:
    api, node, clock, agent = rig(tmp_path, PublishPolicy())
    await agent.sync_once()
    await run_for(agent, clock, 60)
    node.link = 0.9  # a stage started streaming through this node: +0.5 on every chip's busiest link
    writes = await run_for(agent, clock, 60)
    assert 1 <= writes <= 5  # at most ceil(0.5 / fill_delta), min_interval apart, while the average settles
    assert published(api).chip_link.min() > 0.8
    assert await run_for(agent, clock, 200) == 0
