"""The whole alert-to-hook path with real programs: a fault in the simulator, the daemon's metrics scraped by a real
Prometheus evaluating rules/snnrm.rules.yaml, a real Alertmanager delivering to ``/hooks/alertmanager``, and the
hook scaling a Deployment on a real kube-apiserver through the scale subresource; and back when the fault clears.
A ``webhook`` hook with ``send_resolved`` on the same alert receives the firing and, when it clears, the resolved
notification Alertmanager sends.

The rule file is the real one with every ``for:`` shortened to 0s (the expressions are untouched), so the test
takes seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import calendar
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e_controlplane import ControlPlane

from snnrm.app import Daemon
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.promstack import Alertmanager, Prometheus, eventually, rules_with_short_for
from snnrm.testing.tools import REPO, require_tool
from snnrm.testing.webhook_sink import webhook_sink

pytestmark = pytest.mark.e2e

TOKEN = "e2e-alertmanager-token"


@dataclass
class Chain:
    cp: ControlPlane
    daemon: Daemon
    base: str
    prom: Prometheus
    deploy: str
    forwarded: list[dict[str, Any]]
    """Bodies the webhook hook POSTed to its target."""

    def replicas(self) -> int:
        return int(self.cp.client().get(self.deploy + "/scale")["spec"].get("replicas", 0))


def _bin(var: str, name: str) -> Path:
    return require_tool(var, name, f"build-observability-tools.sh {name}")


def _deployment(name: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "stage", "image": "registry.invalid/snn-stage:1"}]},
            },
        },
    }


@pytest.fixture
async def webhook_target() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server standing in for the webhook hook's target."""
    async with webhook_sink() as sink:
        yield sink


@pytest.fixture
async def chain(
    control_plane: ControlPlane, tmp_path: Path, webhook_target: tuple[str, list[dict[str, Any]]]
) -> AsyncIterator[Chain]:
    prom_bin = _bin("SNNRM_PROMETHEUS", "prometheus")
    am_bin = _bin("SNNRM_ALERTMANAGER", "alertmanager")
    target_url, forwarded = webhook_target
    name = f"stage1-{uuid.uuid4().hex[:6]}"
    k = control_plane.client()
    k.create("/apis/apps/v1/namespaces/default/deployments", _deployment(name))
    token = tmp_path / "hooks-token"
    token.write_text(TOKEN)
    config = Config.model_validate(
        {
            "backend": "sim",
            "kubelet_dir": tmp_path / "dp",
            "http": "127.0.0.1:0",
            "sim_chips": 2,
            "sim_cores": 16,
            "state_dir": tmp_path / "state",
            "cdi_dir": tmp_path / "cdi",
            "sample_period": 0.05,
            "hooks": {
                "token_file": str(token),
                "kubeconfig": str(control_plane.kubeconfig),
                "rules": [
                    {
                        "name": "scale-on-unhealthy-cores",
                        "match": ['alertname="SnnrmCoresUnhealthy"', 'chip="1"'],
                        "action": "scale",
                        "target": {"kind": "Deployment", "namespace": "default", "name": name},
                        "step": 2,
                        "min_replicas": 1,
                        "max_replicas": 5,
                        "cooldown": 600,
                        "undo_on_resolve": True,
                    },
                    {
                        "name": "notify-on-unhealthy-cores",
                        "match": ['alertname="SnnrmCoresUnhealthy"', 'chip="1"'],
                        "action": "webhook",
                        "url": target_url,
                        "cooldown": 600,
                        "send_resolved": True,
                    },
                ],
            },
        }
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        try:
            await asyncio.wait_for(daemon.http_started.wait(), 10)
            await kubelet.wait_capacity(NEURON_CORE, 32, within=10)
            base = f"http://127.0.0.1:{daemon.http_port}"
            rules = rules_with_short_for(REPO / "rules" / "snnrm.rules.yaml", tmp_path / "rules.yaml")
            # repeat_interval 3s: Alertmanager re-notifies the still-firing alert within seconds, so the test can
            # wait for a re-delivery (seen as a "duplicate" outcome) instead of sleeping and hoping it came.
            am = Alertmanager(
                am_bin,
                tmp_path / "am",
                webhook_url=base + "/hooks/alertmanager",
                token_file=token,
                repeat_interval="3s",
            )
            async with am:
                prom = Prometheus(
                    prom_bin,
                    tmp_path / "prom",
                    targets=[f"127.0.0.1:{daemon.http_port}"],
                    rule_files=[rules],
                    alertmanager=am.address,
                )
                async with prom:
                    yield Chain(
                        control_plane,
                        daemon,
                        base,
                        prom,
                        f"/apis/apps/v1/namespaces/default/deployments/{name}",
                        forwarded,
                    )
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def _firing(prom: Prometheus, alertname: str, **labels: str) -> bool:
    return any(
        a["labels"].get("alertname") == alertname
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in await prom.alerts()
    )


async def _evaluated_after(prom: Prometheus, alertname: str, t: float) -> bool:
    """Whether Prometheus evaluated the alerting rule ``alertname`` after wall-clock time ``t``."""
    async with aiohttp.ClientSession() as http, http.get(prom.base + "/api/v1/rules?type=alert") as r:
        groups = (await r.json())["data"]["groups"]
    for rule in (rule for g in groups for rule in g["rules"]):
        if rule["name"] == alertname and rule["health"] == "ok":
            stamp = rule["lastEvaluation"].rstrip("Z")
            day, _, frac = stamp.partition(".")
            evaluated = calendar.timegm(time.strptime(day, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
            return evaluated > t
    return False


async def test_fault_fires_rule_alertmanager_delivers_hook_scales_and_undoes(chain: Chain) -> None:
    # Baseline: chip 1 scraped and the rule evaluated on it since, nothing firing for chip 1, one replica.
    await eventually(lambda: chain.prom.query('snnrm_chip_cores{chip="1"}'), within=30, what="chip 1 scraped")
    scraped = time.time()
    await eventually(
        lambda: _evaluated_after(chain.prom, "SnnrmCoresUnhealthy", scraped),
        within=30,
        what="SnnrmCoresUnhealthy evaluated on the scraped data",
    )
    assert not await _firing(chain.prom, "SnnrmCoresUnhealthy", chip="1")
    assert chain.replicas() == 1
    assert chain.forwarded == []

    async with aiohttp.ClientSession() as http:
        async with http.post(chain.base + "/sim/faults", json={"kind": "core-failure", "chip": 1, "core": 3}) as r:
            assert r.status == 201
            fault = (await r.json())["id"]
        await eventually(
            lambda: _firing(chain.prom, "SnnrmCoresUnhealthy", chip="1"),
            within=30,
            what="SnnrmCoresUnhealthy firing in Prometheus",
        )
        await eventually(lambda: _async(chain.replicas() == 3), within=30, what="Deployment scaled 1 -> 3")
        # The hook records its Event after the scale is written, so the Event may land a moment later.
        name = chain.deploy.rsplit("/", 1)[1]

        async def reasons() -> list[str]:
            events = chain.cp.client().get("/api/v1/namespaces/default/events")["items"]
            return [e["reason"] for e in events if e["involvedObject"]["name"] == name]

        assert await eventually(reasons, within=10, what="the hook's Event on the Deployment") == ["SnnrmHookScaled"]

        assert chain.daemon.hooks is not None
        counts = chain.daemon.hooks.runner.actions
        # Alertmanager re-notifies (repeat_interval): the re-delivery reaches both hooks and neither acts again.
        await eventually(
            lambda: _async(counts[("scale-on-unhealthy-cores", "scale", "duplicate")] >= 1),
            within=30,
            what="Alertmanager re-delivered the firing alert",
        )
        assert chain.replicas() == 3
        assert [f["alert"]["status"] for f in chain.forwarded] == ["firing"]

        async with http.delete(f"{chain.base}/sim/faults/{fault}") as r:
            assert r.status == 204
    await eventually(lambda: _async(chain.replicas() == 1), within=60, what="Deployment scaled back to 1")
    await eventually(lambda: _async(len(chain.forwarded) == 2), within=30, what="resolved alert forwarded")
    assert counts[("scale-on-unhealthy-cores", "scale", "applied")] == 1
    assert counts[("scale-on-unhealthy-cores", "scale", "undone")] == 1
    firing, resolved = chain.forwarded
    assert (firing["hook"], firing["alert"]["status"]) == ("notify-on-unhealthy-cores", "firing")
    assert (resolved["alert"]["status"], resolved["alert"]["fingerprint"]) == (
        "resolved",
        firing["alert"]["fingerprint"],
    )
    assert resolved["alert"]["labels"]["chip"] == "1"
    assert counts[("notify-on-unhealthy-cores", "webhook", "applied")] == 2


async def _async(value: bool) -> bool:
    return value
