"""One kubeconfig setting for the daemon: ``kubeconfig`` (``--kubeconfig``, ``SNNRM_KUBECONFIG``) reaches every
apiserver client; ``--dra-kubeconfig``, ``hooks.kubeconfig`` and ``placement.kubeconfig`` are deprecated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from snnrm.app import KubeClients, _placement_agent
from snnrm.backends.sim import SimBackend
from snnrm.cli import main
from snnrm.cluster.hints import PlanHints
from snnrm.config import Config, ConfigError, load_config
from snnrm.kube.api import NODES
from snnrm.kube.client import KubeAsyncApi
from snnrm.kubelet.podresources import PodResourcesClient
from snnrm.node import NodeService
from snnrm.obs.timeline import Timeline
from snnrm.obs.tracing import NoopTracer
from snnrm.testing.fake_cluster import FakeClusterApi


def consumers(c: Config) -> list[Path | None]:
    """What each apiserver client of the daemon is built from (snnrm/app.py reads these three)."""
    return [c.kubeconfig, c.hooks.kubeconfig, c.dra_kubeconfig, c.placement.kubeconfig]


def test_one_setting_reaches_every_consumer(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    assert consumers(load_config(kubeconfig=kc)) == [kc] * 4
    assert consumers(load_config()) == [None] * 4


def test_config_file_key(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    file = tmp_path / "snnrm.yaml"
    file.write_text(f"kubeconfig: {kc}\nplacement:\n  enabled: true\n")
    assert consumers(load_config(file)) == [kc] * 4


@pytest.mark.parametrize(
    "alias",
    [
        {"dra_kubeconfig": "KC"},
        {"hooks": {"kubeconfig": "KC"}},
        {"placement": {"kubeconfig": "KC"}},
    ],
)
def test_deprecated_aliases_still_work_and_warn(tmp_path: Path, alias: dict[str, object]) -> None:
    kc = tmp_path / "kubeconfig"
    given: dict[str, Any] = {k: ({"kubeconfig": kc} if isinstance(v, dict) else kc) for k, v in alias.items()}
    with structlog.testing.capture_logs() as logs:
        cfg = load_config(**given)
    assert consumers(cfg) == [kc] * 4
    assert [e["setting"] for e in logs if e["event"] == "deprecated_setting"] == [
        "dra_kubeconfig" if "dra_kubeconfig" in alias else f"{next(iter(alias))}.kubeconfig"
    ]


def test_alias_agreeing_with_the_setting_is_accepted(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    assert consumers(load_config(kubeconfig=kc, dra_kubeconfig=kc, hooks={"kubeconfig": kc})) == [kc] * 4


def test_two_settings_that_disagree_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(kubeconfig=tmp_path / "a", placement={"kubeconfig": str(tmp_path / "b")})
    msg = str(err.value)
    assert "kubeconfig settings disagree" in msg
    assert f"kubeconfig={tmp_path / 'a'}" in msg
    assert f"placement.kubeconfig={tmp_path / 'b'}" in msg
    assert "--kubeconfig" in msg


def test_run_help_documents_the_flag_and_the_alias() -> None:
    out = CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output
    assert "--kubeconfig" in out
    assert "SNNRM_KUBECONFIG" in out
    assert "Deprecated alias of --kubeconfig" in out


class _RecordingKube(KubeClients):
    """Records the kubeconfig each client is asked for; hands out the in-memory apiserver."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[Path | None] = []
        self.api = FakeClusterApi()
        self.api.put(NODES, {"metadata": {"name": "n1"}})

    async def get(self, kubeconfig: Path | None) -> KubeAsyncApi:
        self.asked.append(kubeconfig)
        return self.api  # type: ignore[return-value]  # the in-memory apiserver speaks the same ClusterApi


async def test_placement_agent_uses_the_one_setting(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    backend = SimBackend(chips=2, cores_per_chip=16, seed=0)
    node = await NodeService.start(backend, block_keps=1000.0, sample_period=0.1)
    config = load_config(state_dir=tmp_path, kubeconfig=kc, placement={"enabled": True, "node_name": "n1"})
    kube = _RecordingKube()
    async with PodResourcesClient(tmp_path / "pr.sock") as pods:
        await _placement_agent(
            config, backend, node, pods, PlanHints(), CollectorRegistry(), NoopTracer(), Timeline(), kube
        )
    assert kube.asked == [kc]
