"""One source for the inter-chip weight: every consumer of a simulated node (the daemon's placement agent, its
remapper, the summary it publishes) uses the preset's own ratio, inter-chip hop latency over on-chip hop latency."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
from prometheus_client import CollectorRegistry

import sim_hw
from snnrm.app import KubeClients, _placement_agent
from snnrm.backends.sim import SimBackend, inter_chip_weight
from snnrm.cluster.hints import PlanHints
from snnrm.config import load_config
from snnrm.kube.api import NODES
from snnrm.kube.client import KubeAsyncApi
from snnrm.kubelet.podresources import PodResourcesClient
from snnrm.node import NodeService
from snnrm.obs.timeline import Timeline
from snnrm.obs.tracing import NoopTracer
from snnrm.testing.fake_cluster import FakeClusterApi

PRESETS = ("loihi2", "spinnaker2", "akida")


@pytest.mark.parametrize("preset", PRESETS)
def test_weight_is_the_presets_latency_ratio(preset: str) -> None:
    spec = sim_hw.load_preset(preset, chips=2)
    want = spec.inter_chip_hop_latency / spec.hop_latency
    assert inter_chip_weight(spec) == pytest.approx(want)
    assert SimBackend(preset=preset, chips=2).inter_chip_weight == pytest.approx(want)


def test_loihi2_crossing_costs_about_nineteen_hops() -> None:
    """The figure the docs quote: a Loihi 2 chip crossing is ~18.9 on-chip hops, not a generic 4."""
    assert SimBackend(preset="loihi2", chips=2).inter_chip_weight == pytest.approx(18.9, abs=0.1)


class _FakeKube(KubeClients):
    """Hands out the in-memory apiserver for any kubeconfig."""

    api: FakeClusterApi = FakeClusterApi()

    async def get(self, kubeconfig: Path | None) -> KubeAsyncApi:
        return cast(KubeAsyncApi, self.api)


@pytest.mark.parametrize("preset", PRESETS)
async def test_daemon_agent_remapper_and_summary_share_the_presets_weight(tmp_path: Path, preset: str) -> None:
    backend = SimBackend(preset=preset, chips=2, cores_per_chip=16, seed=0)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.1)
    node.monitor.observe(await backend.read_frame())
    config = load_config(state_dir=tmp_path, placement={"enabled": True, "node_name": "n1"})
    kube = _FakeKube()
    kube.api = FakeClusterApi()
    kube.api.put(NODES, {"metadata": {"name": "n1"}})
    want = inter_chip_weight(backend.sim.spec)
    async with PodResourcesClient(tmp_path / "pr.sock") as pods:
        agent = await _placement_agent(
            config, backend, node, pods, PlanHints(), CollectorRegistry(), NoopTracer(), Timeline(), kube
        )
        assert agent.inter_chip_weight == pytest.approx(want)
        assert agent.reallocator_factory is not None
        assert agent.reallocator_factory(agent).inter_chip_weight == pytest.approx(want)
        assert agent.summary().inter_chip_weight == pytest.approx(want)
        assert agent.summary().view(node.topology).inter_chip_weight == pytest.approx(want)
