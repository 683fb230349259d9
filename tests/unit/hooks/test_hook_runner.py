"""The hook runner against the in-memory Kubernetes API: bounded read-modify-write, retries, Events, counters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from hook_payloads import alert, payload

from snnrm.cluster.hooks import HookRunner, target_resource
from snnrm.core.hooks import Action, HookPlanner, HookSpec, Matcher, Outcome, Target, parse_notification
from snnrm.kube.api import CORE_EVENTS, KubeError, Resource
from snnrm.testing.fake_cluster import FakeClusterApi

QUEUE = (Matcher.parse('alertname="SnnrmEventQueueSaturated"'),)
DEPLOY = Target("Deployment", "snn", "stage1", "replicas")
DEPLOYMENTS, _ = target_resource(DEPLOY)
DEPLOY_PATH = "/apis/apps/v1/namespaces/snn/deployments/stage1"


def replicas(kube: FakeClusterApi, res: Resource = DEPLOYMENTS, name: str = "stage1") -> int:
    obj = kube.get_obj(res, name, "snn")
    assert obj is not None
    return int(obj["spec"]["replicas"])


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def kube() -> FakeClusterApi:
    k = FakeClusterApi()
    k.put(DEPLOYMENTS, {"metadata": {"name": "stage1", "namespace": "snn"}, "spec": {"replicas": 2}})
    return k


def runner(kube: FakeClusterApi | None, *hooks: HookSpec, clock: Clock | None = None) -> HookRunner:
    return HookRunner(HookPlanner(hooks), kube=kube, node="n1", clock=clock or Clock())


def scale(**kw: Any) -> HookSpec:
    args: dict[str, Any] = {"step": 1, "min_replicas": 1, "max_replicas": 4, "cooldown": 0.0, "undo_on_resolve": True}
    args.update(kw)
    return HookSpec("scale-stage1", QUEUE, Action.SCALE, DEPLOY, **args)


def note(*alerts: dict[str, Any]) -> Any:
    return parse_notification(payload(*alerts))


async def test_scale_up_through_the_scale_subresource_with_a_precondition(kube: FakeClusterApi) -> None:
    r = runner(kube, scale())
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.APPLIED
    assert res.detail == "Deployment/snn/stage1.spec.replicas 2 -> 3"
    assert replicas(kube) == 3
    assert ("PATCH", DEPLOY_PATH + "/scale") in kube.calls
    assert ("POST", "/api/v1/namespaces/snn/events") in kube.calls
    [event] = kube.all(CORE_EVENTS)
    assert event["reason"] == "SnnrmHookScaled"
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "namespace": "snn",
        "name": "stage1",
    }
    assert r.actions[("scale-stage1", "scale", "applied")] == 1


async def test_repeats_do_nothing_and_resolve_undoes_once(kube: FakeClusterApi) -> None:
    r = runner(kube, scale())
    await r.handle(note(alert()))
    for _ in range(3):
        [res] = await r.handle(note(alert()))
        assert res.outcome is Outcome.DUPLICATE
    assert replicas(kube) == 3
    [res] = await r.handle(note(alert(status="resolved")))
    assert res.outcome is Outcome.UNDONE
    assert replicas(kube) == 2
    [res] = await r.handle(note(alert(status="resolved")))
    assert res.outcome is Outcome.NOTHING_TO_UNDO
    assert replicas(kube) == 2


async def test_bounds_hold_and_undo_reverts_only_what_was_applied(kube: FakeClusterApi) -> None:
    r = runner(kube, scale(step=5, max_replicas=4))
    [res] = await r.handle(note(alert()))
    assert (res.outcome, replicas(kube)) == (Outcome.APPLIED, 4)  # 2 + 5 clamped to 4
    [res] = await r.handle(note(alert(fingerprint="other")))
    assert (res.outcome, replicas(kube)) == (Outcome.AT_BOUND, 4)
    await r.handle(note(alert(status="resolved")))
    assert replicas(kube) == 2  # -2, not -5


async def test_a_write_conflict_is_read_again(kube: FakeClusterApi) -> None:
    """Someone (an HPA, kubectl) wrote between our read and our write: we re-read and apply on top of theirs."""
    r = runner(kube, scale())
    original_get = kube.get
    sneaked = False

    async def get_then_sneak(res: Resource, name: str, **kw: Any) -> dict[str, Any]:
        nonlocal sneaked
        obj = await original_get(res, name, **kw)
        if not sneaked:
            sneaked = True
            kube.put(DEPLOYMENTS, {"metadata": {"name": "stage1", "namespace": "snn"}, "spec": {"replicas": 3}})
        return obj

    kube.get = get_then_sneak  # type: ignore[method-assign]
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.APPLIED
    assert replicas(kube) == 4


async def test_transient_failures_ask_for_a_resend_which_then_acts_once(kube: FakeClusterApi) -> None:
    r = runner(kube, scale())
    kube.fail_next = [KubeError(503, "etcd leader changed")]
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.RETRY
    assert replicas(kube) == 2
    [res] = await r.handle(note(alert()))  # Alertmanager re-sends after the 5xx
    assert res.outcome is Outcome.APPLIED
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.DUPLICATE
    assert replicas(kube) == 3


async def test_permanent_failures_are_reported_not_retried(kube: FakeClusterApi) -> None:
    missing = Target("StatefulSet", "snn", "nope", "replicas")
    r = runner(kube, HookSpec("scale-missing", QUEUE, Action.SCALE, missing, max_replicas=3))
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.FAILED
    assert "404" in res.detail
    [event] = kube.all(CORE_EVENTS)
    assert event["reason"] == "SnnrmHookFailed"
    assert event["type"] == "Warning"


async def test_keda_and_hpa_bounds_are_patched_on_the_object(kube: FakeClusterApi) -> None:
    so = Target("ScaledObject", "snn", "stage1", "minReplicaCount")
    hpa = Target("HorizontalPodAutoscaler", "snn", "stage2", "maxReplicas")
    (so_res, so_sub), (hpa_res, hpa_sub) = target_resource(so), target_resource(hpa)
    assert (so_sub, hpa_sub) == (None, None)  # the bounds live on the objects, not in a scale subresource
    assert so_res.path(namespace="snn", name="stage1") == "/apis/keda.sh/v1alpha1/namespaces/snn/scaledobjects/stage1"
    assert hpa_res.path(namespace="snn", name="stage2") == (
        "/apis/autoscaling/v2/namespaces/snn/horizontalpodautoscalers/stage2"
    )
    # minReplicaCount: default 0
    kube.put(so_res, {"metadata": {"name": "stage1", "namespace": "snn"}, "spec": {"maxReplicaCount": 10}})
    kube.put(
        hpa_res, {"metadata": {"name": "stage2", "namespace": "snn"}, "spec": {"minReplicas": 1, "maxReplicas": 4}}
    )
    r = runner(
        kube,
        HookSpec("keda-floor", QUEUE, Action.KEDA, so, step=2, min_replicas=0, max_replicas=8),
        HookSpec("hpa-ceiling", QUEUE, Action.HPA, hpa, step=4, min_replicas=1, max_replicas=16),
    )
    results = await r.handle(note(alert()))
    assert [x.outcome for x in results] == [Outcome.APPLIED, Outcome.APPLIED]
    assert (kube.get_obj(so_res, "stage1", "snn") or {})["spec"] == {"maxReplicaCount": 10, "minReplicaCount": 2}
    assert (kube.get_obj(hpa_res, "stage2", "snn") or {})["spec"] == {"minReplicas": 1, "maxReplicas": 8}


async def test_scaling_without_a_kubernetes_api_fails_loudly() -> None:
    r = runner(None, scale())
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.FAILED
    assert "no Kubernetes API" in res.detail


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[int]]]:
    """A real HTTP server standing in for an outgoing webhook; answers with the statuses queued in ``codes``."""
    got: list[dict[str, Any]] = []
    codes: list[int] = []

    async def handle(request: web.Request) -> web.Response:
        got.append({"auth": request.headers.get("Authorization"), "body": await request.json()})
        return web.Response(status=codes.pop(0) if codes else 200)

    app = web.Application()
    app.router.add_post("/notify", handle)
    runner_ = web.AppRunner(app)
    await runner_.setup()
    site = web.TCPSite(runner_, "127.0.0.1", 0)
    await site.start()
    port = runner_.addresses[0][1]
    yield f"http://127.0.0.1:{port}/notify", got, codes
    await runner_.cleanup()


async def test_outgoing_webhook_posts_the_alert_once_with_its_token(
    receiver: tuple[str, list[dict[str, Any]], list[int]], tmp_path: Any
) -> None:
    url, got, codes = receiver
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    r = runner(None, HookSpec("notify", QUEUE, Action.WEBHOOK, url=url))
    r.webhook_tokens["notify"] = token
    codes.append(502)
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.RETRY
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.APPLIED
    [res] = await r.handle(note(alert()))
    assert res.outcome is Outcome.DUPLICATE
    assert len(got) == 2
    assert got[1]["auth"] == "Bearer s3cret"
    assert got[1]["body"]["hook"] == "notify"
    assert got[1]["body"]["alert"]["labels"]["alertname"] == "SnnrmEventQueueSaturated"
    await r.aclose()


async def test_a_slow_webhook_delays_only_its_own_hook() -> None:
    """A target that hangs holds back later notifications for the same hook, never an unrelated hook's."""
    release, entered = asyncio.Event(), asyncio.Event()
    got: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        got.append("slow")
        entered.set()
        await release.wait()
        return web.Response(status=200)

    async def fast(request: web.Request) -> web.Response:
        got.append("fast")
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/slow", slow)
    app.router.add_post("/fast", fast)
    server = web.AppRunner(app)
    await server.setup()
    site = web.TCPSite(server, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{server.addresses[0][1]}"
    other = (Matcher.parse('alertname="SnnrmSpikeEfficiencyLow"'),)
    r = runner(
        None,
        HookSpec("slow", QUEUE, Action.WEBHOOK, url=f"{base}/slow"),
        HookSpec("fast", other, Action.WEBHOOK, url=f"{base}/fast"),
    )
    try:
        first = asyncio.create_task(r.handle(note(alert())))
        await asyncio.wait_for(entered.wait(), timeout=10)
        # The slow hook is mid-call; an unrelated alert goes through now (before the fix: it waited for the lock).
        [res] = await asyncio.wait_for(
            r.handle(note(alert("SnnrmSpikeEfficiencyLow", fingerprint="0807060504030201"))), timeout=10
        )
        assert res.outcome is Outcome.APPLIED
        assert not first.done()
        release.set()
        [res] = await first
        assert res.outcome is Outcome.APPLIED
        assert got == ["slow", "fast"]
    finally:
        release.set()
        await r.aclose()
        await server.cleanup()
