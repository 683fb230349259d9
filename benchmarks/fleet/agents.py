"""Thousands of snnrm node agents in one process: the real :class:`~snnrm.cluster.node_agent.NodeAgent` per node
(its summary, its publish policy, its 1 s sync loop, its Node patches), fed by simulated telemetry.

``python -m benchmarks.fleet.agents --kubeconfig K --nodes N --stats FILE --state DIR`` (SIGUSR1 starts the faults)

What is simulated, and why:

* Telemetry: each node's per-core queue fill and per-link utilisation are its own steady load (drawn per chip)
  plus noise drawn afresh at every reading, per chip (an input burst loads a whole chip) and per core/link.
  The real daemon's telemetry pipeline (NodeMonitor at 10 Hz) is not run: 5,000 of them at 1 ms a frame do
  not fit on two cores; the agent reads what it would read from it.
* Pods bound to each node come from one shared pod watch dispatched by ``spec.nodeName`` into each agent's
  :class:`~snnrm.cluster.node_agent.NodePods`, instead of one watch per node (the daemon's own); the apiserver
  therefore sees 1 watch here where a fleet has one per node (reported as such).
* Faults: on SIGUSR1, ``--fault-fraction`` of the nodes each lose one chip's cores at a
  uniformly random time over ``--fault-window`` seconds (a real change: one summary write each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

from snnrm.cluster.events import EventRecorder
from snnrm.cluster.hints import PlanHints
from snnrm.cluster.node_agent import NodeAgent
from snnrm.cluster.remap import RemapLedger
from snnrm.core.jobs import JOB
from snnrm.core.summary import PublishPolicy
from snnrm.core.topology import INTER_CHIP_WEIGHT, BoolArray, ChipGeometry, FloatArray, Topology
from snnrm.kube.api import PODS, GoneError, KubeError
from snnrm.kube.client import KubeAsyncApi

TOPOLOGY = Topology.grid(chips=4, geometry=ChipGeometry(cols=4, rows=4, cores_per_router=2))
"""Each simulated node: 4 chips of 32 cores (128 cores); small, so that 5,000 agents fit in one process."""
NOISE = 0.1
"""Amplitude of the uniform telemetry noise, per chip and per core/link, on a 0..1 load."""


@dataclass(frozen=True, slots=True)
class Readings:
    queue_fill: FloatArray
    link_utilization: FloatArray
    link_failed: BoolArray


@dataclass(eq=False)
class SimNode:
    """One simulated node's state (:class:`~snnrm.cluster.node_agent.NodeState`)."""

    rng: np.random.Generator
    topology: Topology = TOPOLOGY
    withheld: BoolArray | None = None
    healthy: BoolArray = field(default_factory=lambda: np.ones(TOPOLOGY.n_cores, dtype=np.bool_))
    fill: FloatArray = field(init=False)
    link: FloatArray = field(init=False)
    readings: int = 0

    def __post_init__(self) -> None:
        self.fill = self.rng.uniform(0.05, 0.4, self.topology.n_chips)
        self.link = self.rng.uniform(0.05, 0.5, self.topology.n_chips)

    @property
    def monitor(self) -> Readings:
        self.readings += 1  # once per agent sync: the cadence the agents actually kept
        t, u = self.topology, self.rng.uniform
        chip = u(-NOISE, NOISE, t.n_chips)
        return Readings(
            np.clip((self.fill + chip)[t.chip_of] + u(-NOISE, NOISE, t.n_cores), 0.0, 1.0),
            np.clip((self.link + chip)[t.router_chip[t.link_src]] + u(-NOISE, NOISE, t.n_links), 0.0, 1.0),
            np.zeros(t.n_links, dtype=np.bool_),
        )

    def core_healthy(self) -> BoolArray:
        return self.healthy

    def chip_headroom_keps(self) -> FloatArray:
        ok = np.bincount(self.topology.chip_of, weights=self.healthy, minlength=self.topology.n_chips)
        out: FloatArray = ok * 1000.0 * (1.0 - self.fill)
        return out

    def withhold(self, cores: BoolArray | None) -> None:
        self.withheld = cores

    def fail_chip(self, chip: int) -> None:
        self.healthy = self.healthy & (self.topology.chip_of != chip)


async def feed_pods(api: KubeAsyncApi, agents: dict[str, NodeAgent]) -> None:
    """One pod watch (label ``snnrm.io/job``) for every agent, dispatched by ``spec.nodeName``."""

    def dispatch(kind: str, pod: dict[str, object]) -> None:
        spec = pod.get("spec")
        node = spec.get("nodeName") if isinstance(spec, dict) else None
        agent = agents.get(str(node)) if node else None
        if agent is not None:
            agent.pods.apply(kind, pod)

    while True:
        try:
            items, rv = await api.list(PODS, label_selector=JOB)
            for p in items:
                dispatch("ADDED", p)
            async for kind, obj in api.watch(PODS, resource_version=rv, label_selector=JOB):
                if kind != "BOOKMARK":
                    dispatch(kind, obj)
        except GoneError:
            continue
        except KubeError:
            await asyncio.sleep(0.5)


async def faults(
    nodes: list[SimNode], go: asyncio.Event, fraction: float, window: float, rng: random.Random, done: list[int]
) -> None:
    """Wait for ``go``, then fail one chip on ``fraction`` of the nodes spread over ``window`` seconds."""
    await go.wait()
    victims = rng.sample(range(len(nodes)), max(1, round(fraction * len(nodes))))
    times = sorted(rng.uniform(0.0, window) for _ in victims)
    start = time.monotonic()
    for i, at in zip(victims, times, strict=True):
        await asyncio.sleep(max(0.0, start + at - time.monotonic()))
        nodes[i].fail_chip(rng.randrange(TOPOLOGY.n_chips))
        done[0] += 1


async def main_async(args: argparse.Namespace) -> None:
    cfg = Configuration()
    await kube_config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    # kubernetes-asyncio pools cpu_count*5 connections; thousands of agents share this one client where a fleet
    # has a connection per daemon, so give it room (the apiserver's own inflight limit still applies).
    cfg.connection_pool_maxsize = 64
    api = KubeAsyncApi(ApiClient(configuration=cfg), timeout=60.0)
    rng = np.random.default_rng(args.seed)
    names = [f"{args.prefix}{i:05d}" for i in range(args.nodes)]
    nodes = [SimNode(np.random.default_rng(rng.integers(1 << 32))) for _ in names]
    state = Path(args.state)
    agents: dict[str, NodeAgent] = {}
    for name, node in zip(names, nodes, strict=True):
        ledger, recorder = RemapLedger(state / name, TOPOLOGY), EventRecorder(api, instance=name)
        agents[name] = NodeAgent(
            api,
            name,
            node,
            ledger,
            PlanHints(),
            None,
            recorder,
            policy=PublishPolicy(),
            inter_chip_weight=INTER_CHIP_WEIGHT,
        )
    stats = Path(args.stats)
    t0, cpu0 = time.monotonic(), time.process_time()
    faulted = [0]

    async def staggered(agent: NodeAgent, delay: float) -> None:
        await asyncio.sleep(delay)  # daemons do not start in the same second
        await agent.sync_forever()

    async def report() -> None:
        while True:
            await asyncio.sleep(2.0)
            body = {
                "time": time.time(),
                "publications": sum(a.publications for a in agents.values()),
                "published_nodes": sum(1 for a in agents.values() if a.publications),
                "cpu_s": time.process_time() - cpu0,
                "wall_s": time.monotonic() - t0,
                "faulted": faulted[0],
                "syncs": sum(node.readings for node in nodes),
            }
            tmp = stats.with_suffix(".tmp")
            tmp.write_text(json.dumps(body))
            os.replace(tmp, stats)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(feed_pods(api, agents))
        tg.create_task(report())
        go = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        tg.create_task(faults(nodes, go, args.fault_fraction, args.fault_window, random.Random(args.seed), faulted))
        for i, agent in enumerate(agents.values()):
            tg.create_task(staggered(agent, args.ramp * i / max(1, len(agents))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--prefix", default="fleet-")
    p.add_argument("--stats", required=True)
    p.add_argument("--state", required=True, help="directory for the agents' (empty) remap ledgers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ramp", type=float, default=20.0, help="seconds over which the agents start")
    p.add_argument("--fault-fraction", type=float, default=0.05)
    p.add_argument("--fault-window", type=float, default=60.0)
    args = p.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
