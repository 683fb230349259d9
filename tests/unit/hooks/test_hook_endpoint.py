"""``POST /hooks/alertmanager`` over real HTTP: token, size, type and shape are checked before anything acts."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hook_payloads import alert, payload
from prometheus_client import CollectorRegistry

from snnrm.app import Daemon
from snnrm.cluster.hooks import HookCollector, HookRunner
from snnrm.config import Config
from snnrm.config_hooks import HooksConfig
from snnrm.core.hooks import Action, HookPlanner, HookSpec, Matcher, Target
from snnrm.http.hooks import PATH, HookEndpoint, HookSetupError, TokenSource, build_endpoint, setup_hooks
from snnrm.kube.api import KubeError, Resource
from snnrm.testing.fake_cluster import FakeClusterApi
from snnrm.testing.webhook_sink import webhook_sink

DEPLOYMENTS = Resource("apps", "v1", "deployments")
DEPLOY_PATH = "/apis/apps/v1/namespaces/snn/deployments/stage1"
TOKEN = "correct horse battery staple"


@dataclass
class Served:
    url: str
    kube: FakeClusterApi
    endpoint: HookEndpoint
    token_file: Path

    def replicas(self) -> int:
        obj = self.kube.get_obj(DEPLOYMENTS, "stage1", "snn")
        assert obj is not None
        return int(obj["spec"]["replicas"])

    async def post(self, body: bytes | Any, *, token: str | None = TOKEN, **headers: str) -> tuple[int, Any]:
        hdrs = {"Content-Type": "application/json", **headers}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with aiohttp.ClientSession() as http, http.post(self.url, data=data, headers=hdrs) as r:
            text = await r.text()
            return r.status, json.loads(text) if text.startswith("{") else text


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    kube = FakeClusterApi()
    kube.put(DEPLOYMENTS, {"metadata": {"name": "stage1", "namespace": "snn"}, "spec": {"replicas": 1}})
    hook = HookSpec(
        "scale-stage1",
        (Matcher.parse('alertname="SnnrmEventQueueSaturated"'),),
        Action.SCALE,
        Target("Deployment", "snn", "stage1", "replicas"),
        max_replicas=5,
        cooldown=0.0,
    )
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    runner = HookRunner(HookPlanner((hook,)), kube=kube, node="n1")
    endpoint = HookEndpoint(runner=runner, token=TokenSource(file=token_file), max_body_bytes=16 * 1024)
    app = web.Application()
    setup_hooks(app, endpoint)
    app_runner = web.AppRunner(app)
    await app_runner.setup()
    site = web.TCPSite(app_runner, "127.0.0.1", 0)
    await site.start()
    yield Served(f"http://127.0.0.1:{app_runner.addresses[0][1]}{PATH}", kube, endpoint, token_file)
    await app_runner.cleanup()


async def test_an_authenticated_notification_acts_and_reports_each_outcome(served: Served) -> None:
    status, body = await served.post(payload(alert()))
    assert status == 200
    assert body["results"] == [
        {
            "hook": "scale-stage1",
            "alertname": "SnnrmEventQueueSaturated",
            "fingerprint": "a1b2c3d4e5f60708",
            "status": "firing",
            "outcome": "applied",
            "detail": "Deployment/snn/stage1.spec.replicas 1 -> 2",
        }
    ]
    status, body = await served.post(payload(alert()))
    assert (status, body["results"][0]["outcome"]) == (200, "duplicate")
    assert served.replicas() == 2


@pytest.mark.parametrize(
    ("token", "headers", "body", "status", "result", "message"),
    [
        (None, {}, payload(alert()), 401, "unauthorized", "bearer token is required"),
        ("wrong", {}, payload(alert()), 401, "unauthorized", "bearer token is required"),
        ("", {"Authorization": f"Basic {TOKEN}"}, payload(alert()), 401, "unauthorized", "bearer token"),
        (TOKEN, {"Content-Type": "text/plain"}, payload(alert()), 415, "unsupported-media-type", "application/json"),
        (TOKEN, {}, b"{not json", 400, "bad-request", "body is not JSON"),
        (TOKEN, {}, b"\xff\xfe", 400, "bad-request", "body is not JSON"),
        (TOKEN, {}, {"version": "4", "alerts": "x"}, 400, "bad-request", "alerts: expected a list"),
        (TOKEN, {}, b" " * (16 * 1024 + 1), 413, "too-large", "larger than 16384 bytes"),
    ],
)
async def test_bad_requests_get_4xx_and_change_nothing(
    served: Served, token: str | None, headers: dict[str, str], body: Any, status: int, result: str, message: str
) -> None:
    if headers.get("Authorization"):
        token = None
    got, answer = await served.post(body, token=token, **headers)
    assert got == status
    assert message in answer["error"]
    assert served.replicas() == 1
    assert ("PATCH", DEPLOY_PATH + "/scale") not in served.kube.calls
    assert served.endpoint.runner.notifications[result] == 1


async def test_a_chunked_body_is_cut_off_at_the_cap(served: Served) -> None:
    """No Content-Length to trust: the stream is counted and refused past the cap."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b" " * 1024

    hdrs = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http, http.post(served.url, data=chunks(), headers=hdrs) as r:
        assert r.status == 413


async def test_a_rotated_token_file_takes_effect_and_an_emptied_one_fails_closed(served: Served) -> None:
    served.token_file.write_text("rotated")
    os.utime(served.token_file, (1, 1))  # a different mtime, whatever the filesystem's resolution
    assert (await served.post(payload(alert()), token=TOKEN))[0] == 401
    assert (await served.post(payload(alert()), token="rotated"))[0] == 200
    served.token_file.write_text("")
    os.utime(served.token_file, (2, 2))
    status, body = await served.post(payload(alert(fingerprint="x")), token="")
    assert status == 503
    assert "token is not available" in body["error"]


async def test_transient_failure_answers_503_so_alertmanager_resends(served: Served) -> None:
    served.kube.fail_next = [KubeError(0, "connection refused")]
    status, body = await served.post(payload(alert()))
    assert (status, body["results"][0]["outcome"]) == (503, "retry")
    status, body = await served.post(payload(alert()))
    assert (status, body["results"][0]["outcome"]) == (200, "applied")
    assert served.replicas() == 2


async def test_counters_are_exported(served: Served) -> None:
    await served.post(payload(alert()))
    await served.post(b"{", token="nope")
    registry = CollectorRegistry()
    registry.register(HookCollector(served.endpoint.runner, node="n1"))
    value = registry.get_sample_value
    assert value("snnrm_hook_notifications_total", {"node": "n1", "result": "ok"}) == 1
    assert value("snnrm_hook_notifications_total", {"node": "n1", "result": "unauthorized"}) == 1
    labels = {"node": "n1", "hook": "scale-stage1", "action": "scale", "outcome": "applied"}
    assert value("snnrm_hook_actions_total", labels) == 1
    assert value("snnrm_hook_remembered_alerts", {"node": "n1"}) == 1


async def test_hooks_without_a_token_refuse_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = HooksConfig.model_validate(
        {"rules": [{"name": "n", "match": ['alertname="X"'], "action": "webhook", "url": "http://127.0.0.1:1/"}]}
    )
    with pytest.raises(HookSetupError, match="SNNRM_HOOKS_TOKEN"):
        await build_endpoint(cfg, node="n1", token=None)
    ep = await build_endpoint(cfg, node="n1", token="t")
    assert ep.token.current() == b"t"
    await ep.aclose()


async def test_a_webhook_whose_own_token_file_is_missing_or_empty_refuses_to_start(tmp_path: Path) -> None:
    """Found at start-up, not when the first alert fires."""
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    for token_file in (tmp_path / "absent", empty):
        rule = {"name": "n", "match": ['alertname="X"'], "action": "webhook", "url": "http://127.0.0.1:1/"}
        cfg = HooksConfig.model_validate({"rules": [{**rule, "token_file": str(token_file)}]})
        with pytest.raises(HookSetupError, match=f"hook n: token_file {token_file} is empty or unreadable"):
            await build_endpoint(cfg, node="n1", token="t")


async def test_scaling_hooks_outside_a_cluster_without_kubeconfig_refuse_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon makes the hooks' Kubernetes client (snnrm/app.py); without credentials it refuses to start, and the
    endpoint itself refuses scaling hooks without a client."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    cfg = HooksConfig.model_validate(
        {
            "rules": [
                {
                    "name": "n",
                    "match": ['alertname="X"'],
                    "action": "scale",
                    "target": {"kind": "Deployment", "namespace": "a", "name": "b"},
                }
            ]
        }
    )
    with pytest.raises(HookSetupError, match="no client was given"):
        await build_endpoint(cfg, node="n1", token="t")
    config = Config.model_validate(
        {
            "backend": "sim",
            "kubelet_dir": tmp_path / "dp",
            "http": "127.0.0.1:0",
            "sim_chips": 1,
            "sim_cores": 4,
            "state_dir": tmp_path / "state",
            "cdi_dir": tmp_path / "cdi",
            "hooks": cfg.model_dump(mode="json"),
        }
    )
    monkeypatch.setenv("SNNRM_HOOKS_TOKEN", "t")
    with pytest.raises(HookSetupError, match=r"scaling hooks need the Kubernetes API: .*service account"):
        await Daemon.create(config)


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A real HTTP server standing in for a webhook hook's target; records every body it receives."""
    async with webhook_sink() as sink:
        yield sink


@pytest.mark.parametrize("send_resolved", [True, False])
async def test_a_webhook_hook_forwards_resolved_alerts_only_when_asked(
    tmp_path: Path, target: tuple[str, list[dict[str, Any]]], send_resolved: bool
) -> None:
    """The configured path: hooks config -> endpoint over HTTP -> an Alertmanager v4 payload with status resolved
    -> the hook's target receives it once (re-sends are duplicates); without send_resolved it never does."""
    url, got = target
    cfg = HooksConfig.model_validate(
        {
            "rules": [
                {
                    "name": "notify",
                    "match": ['alertname="SnnrmEventQueueSaturated"'],
                    "action": "webhook",
                    "url": url,
                    "cooldown": 600,
                    "send_resolved": send_resolved,
                }
            ]
        }
    )
    endpoint = await build_endpoint(cfg, node="n1", token=TOKEN)
    app = web.Application()
    setup_hooks(app, endpoint)
    server = web.AppRunner(app)
    await server.setup()
    await web.TCPSite(server, "127.0.0.1", 0).start()
    served = Served(f"http://127.0.0.1:{server.addresses[0][1]}{PATH}", FakeClusterApi(), endpoint, tmp_path / "none")
    try:
        status, body = await served.post(payload(alert()))
        assert (status, body["results"][0]["outcome"]) == (200, "applied")
        resolved = payload(alert(status="resolved"))
        assert resolved["status"] == "resolved"
        for _ in range(2):  # Alertmanager re-sends a resolved group until a delivery succeeds
            status, body = await served.post(resolved)
            assert status == 200
        outcomes = [r["outcome"] for r in body["results"]]
        if send_resolved:
            assert outcomes == ["duplicate"]
            assert [g["alert"]["status"] for g in got] == ["firing", "resolved"]
            assert got[1]["alert"]["endsAt"] == "2026-11-25T10:30:00Z"
            assert got[1]["alert"]["fingerprint"] == "a1b2c3d4e5f60708"
        else:
            assert outcomes == ["nothing-to-undo"]
            assert [g["alert"]["status"] for g in got] == ["firing"]
    finally:
        await server.cleanup()
