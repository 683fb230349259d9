"""A real Alertmanager delivers alerts to the running daemon's ``/hooks/alertmanager``, and the hook acts once.

Alerts are fed through Alertmanager's own API (``POST /api/v2/alerts``, what Prometheus does). Alertmanager groups
them, re-sends the group when it changes, and sends the resolved notification; the daemon must scale the
Deployment exactly once per firing episode and undo it once on resolve. The Kubernetes API is the in-memory fake
here; tests/e2e/test_alerting_e2e.py runs the same path against a real kube-apiserver, fed by a real Prometheus.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from snnrm.app import Daemon
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.core.hooks import HOOK_LABEL
from snnrm.kube.api import CORE_EVENTS, Resource
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.fake_cluster import FakeClusterApi
from snnrm.testing.promstack import Alertmanager, eventually
from snnrm.testing.tools import require_tool

DEPLOYMENTS = Resource("apps", "v1", "deployments")
DEPLOY = "dvs-gesture-stage1"
TOKEN = "alertmanager-to-snnrm"


@dataclass
class Stack:
    daemon: Daemon
    kube: FakeClusterApi
    am: Alertmanager
    base: str

    def replicas(self) -> int:
        obj = self.kube.get_obj(DEPLOYMENTS, DEPLOY, "snn")
        assert obj is not None
        return int(obj["spec"]["replicas"])

    def counts(self) -> dict[str, int]:
        assert self.daemon.hooks is not None
        return {f"{h}:{o}": n for (h, _, o), n in self.daemon.hooks.runner.actions.items()}

    def notifications(self) -> int:
        assert self.daemon.hooks is not None
        return sum(self.daemon.hooks.runner.notifications.values())


def _alertmanager_bin() -> Path:
    return require_tool("SNNRM_ALERTMANAGER", "alertmanager", "build-observability-tools.sh alertmanager")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    am_bin = _alertmanager_bin()
    token = tmp_path / "hooks-token"
    token.write_text(TOKEN + "\n")
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
                "rules": [
                    {
                        "name": "scale-stage1",
                        "match": ['alertname="SnnrmEventQueueSaturated"'],
                        "action": "scale",
                        "target": {"kind": "Deployment", "namespace": "snn", "name": "dvs-gesture-stage1"},
                        "step": 1,
                        "min_replicas": 1,
                        "max_replicas": 4,
                        "cooldown": 3600,
                        "undo_on_resolve": True,
                    }
                ],
            },
        }
    )
    kube = FakeClusterApi()
    kube.put(DEPLOYMENTS, {"metadata": {"name": DEPLOY, "namespace": "snn"}, "spec": {"replicas": 1}})
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config, hooks_kube=kube)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        await asyncio.wait_for(daemon.http_started.wait(), 10)
        await kubelet.wait_capacity(NEURON_CORE, 32, within=10)
        base = f"http://127.0.0.1:{daemon.http_port}"
        am = Alertmanager(am_bin, tmp_path / "am", webhook_url=base + "/hooks/alertmanager", token_file=token)
        try:
            async with am:
                yield Stack(daemon, kube, am, base)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)


def _alert(chip: str, *, ends: datetime | None = None, starts: datetime) -> dict[str, Any]:
    a: dict[str, Any] = {
        "labels": {"alertname": "SnnrmEventQueueSaturated", "severity": "warning", "node": "n1", "chip": chip},
        "annotations": {"summary": f"queues on chip {chip} are full"},
        "startsAt": starts.isoformat(),
        "generatorURL": "http://prometheus.test/graph",
    }
    if ends is not None:
        a["endsAt"] = ends.isoformat()
    return a


async def test_alertmanager_delivery_scales_exactly_once_and_resolve_undoes_once(stack: Stack) -> None:
    started = datetime.now(UTC) - timedelta(seconds=5)
    await stack.am.post_alerts([_alert("0", starts=started)])
    await eventually(lambda: _replicas(stack, 2), within=20, what="Deployment scaled to 2")
    assert stack.counts() == {"scale-stage1:applied": 1}

    # Re-posting the same alert (Prometheus does, every evaluation) and a second alert joining the group make
    # Alertmanager re-send the group: the first alert is a duplicate, the second waits out the hook's cooldown.
    for _ in range(3):
        await stack.am.post_alerts([_alert("0", starts=started), _alert("1", starts=started)])
        await asyncio.sleep(1.0)
    await eventually(
        lambda: _async(stack.counts().get("scale-stage1:cooldown", 0) >= 1), within=20, what="a re-sent group"
    )
    assert stack.counts()["scale-stage1:applied"] == 1
    assert stack.counts()["scale-stage1:duplicate"] >= 1
    assert stack.replicas() == 2
    [event] = [e for e in stack.kube.all(CORE_EVENTS) if e["reason"] == "SnnrmHookScaled"]
    assert "1 -> 2" in event["message"]

    # Resolve both: Alertmanager sends the resolved notification; only the alert that scaled is undone, once.
    now = datetime.now(UTC)
    await stack.am.post_alerts([_alert("0", starts=started, ends=now), _alert("1", starts=started, ends=now)])
    await eventually(lambda: _replicas(stack, 1), within=20, what="Deployment scaled back to 1")
    assert stack.counts()["scale-stage1:undone"] == 1

    # Nothing else may follow. Alertmanager notifies a group one flush at a time and keeps resolved alerts (and
    # sends them again) until a notification of them succeeds, so once a later alert of the same group arrives,
    # every delivery before it has been handled. The marker names no configured hook: it acts on nothing.
    marker = _alert("marker", starts=datetime.now(UTC))
    marker["labels"][HOOK_LABEL] = "test-marker"
    await stack.am.post_alerts([marker])
    await eventually(
        lambda: _async(stack.counts().get("(unknown):unknown-hook", 0) >= 1), within=20, what="the marker alert"
    )
    assert stack.replicas() == 1
    assert stack.counts()["scale-stage1:undone"] == 1
    assert stack.counts()["scale-stage1:applied"] == 1
    assert stack.counts()["scale-stage1:nothing-to-undo"] == 1  # chip 1's resolve, delivered once
    assert stack.counts()["(unknown):unknown-hook"] == 1
    assert stack.daemon.hooks is not None
    assert set(stack.daemon.hooks.runner.notifications) == {"ok"}  # no retry asked for, nothing rejected


async def test_the_hook_metrics_are_scraped_from_metrics(stack: Stack) -> None:
    await stack.am.post_alerts([_alert("0", starts=datetime.now(UTC))])
    await eventually(lambda: _replicas(stack, 2), within=20, what="Deployment scaled to 2")
    async with aiohttp.ClientSession() as http, http.get(stack.base + "/metrics") as r:
        text = await r.text()
    samples = {
        (s.labels["hook"], s.labels["outcome"]): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "snnrm_hook_actions"
        for s in f.samples
        if s.name == "snnrm_hook_actions_total"
    }
    assert samples[("scale-stage1", "applied")] == 1


async def test_alertmanager_without_the_token_is_refused(stack: Stack, tmp_path: Path) -> None:
    """A second Alertmanager with a wrong token delivers; the daemon answers 401 and nothing scales."""
    wrong = tmp_path / "wrong-token"
    wrong.write_text("guess")
    am2 = Alertmanager(
        stack.am.binary, tmp_path / "am2", webhook_url=stack.base + "/hooks/alertmanager", token_file=wrong
    )
    async with am2:
        await am2.post_alerts([_alert("0", starts=datetime.now(UTC))])
        assert stack.daemon.hooks is not None
        runner = stack.daemon.hooks.runner
        await eventually(lambda: _async(runner.notifications["unauthorized"] >= 1), within=20, what="a 401")
    assert stack.replicas() == 1
    assert stack.counts() == {}


async def _async(value: bool) -> bool:
    return value


async def _replicas(stack: Stack, n: int) -> bool:
    return stack.replicas() == n
