"""The chart against a real kube-apiserver (built from k8s.io/kubernetes, tests/e2e's control plane):

* every manifest of the all-features render is accepted by server-side apply in dry-run with strict field
  validation (the CRDs for ServiceMonitor, PodMonitor, PrometheusRule, AlertmanagerConfig and ScaledObject are
  installed first, from the prometheus-operator and KEDA Go modules);
* `helm install` with the real helm installs it for real, and "auto" finds the operator API through discovery;
* the daemon's hooks, run by the real snnrm code with the token of the ServiceAccount the chart created, can do
  exactly what the chart's RBAC grants: scale their targets and record Events, and nothing else (403);
* the KubeSchedulerConfiguration snippet the chart renders is loaded by the real kube-scheduler, which then calls
  the extender at the URL the chart configured.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from chart_support import ALL_FEATURES, CHART, Helm, docs, one
from e2e_controlplane import ControlPlane, KubeClient, KubeError, _http_ok
from e2e_placement import spawn, wait_until
from e2e_support import free_port, snnrm_command, tail

from snnrm.app import Daemon
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.core.jobs import PLANNED_NODE
from snnrm.core.summary import ANNOTATION as SUMMARY
from snnrm.core.summary import NodeSummary
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.fake_cluster import SMALL_TOPOLOGY, node_summary, stage_pod

pytestmark = pytest.mark.e2e

HOOKS_TOKEN = "chart-e2e-hooks-token"


def _create(k: KubeClient, path: str, obj: dict[str, Any]) -> None:
    with contextlib.suppress(KubeError):  # 409: exists from an earlier test of this package
        k.create(path, obj)


def _namespace(k: KubeClient, name: str) -> None:
    _create(k, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


class _CrdLoader(yaml.SafeLoader):
    """PyYAML reads a bare ``=`` (an enum value in the AlertmanagerConfig CRD) as the YAML 1.1 "value" tag."""


def _value_as_string(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    assert isinstance(node, yaml.ScalarNode), node  # the "value" tag only ever marks the scalar ``=``
    return loader.construct_scalar(node)


_CrdLoader.add_constructor("tag:yaml.org,2002:value", _value_as_string)


@pytest.fixture(scope="package")
def crds(control_plane: ControlPlane, chart_crds: Path) -> list[str]:
    """The optional CRDs the chart can render, installed from the upstream modules, Established."""
    k = control_plane.client()
    names = []
    for f in sorted(chart_crds.glob("*.yaml")):
        crd = yaml.load(f.read_text(), Loader=_CrdLoader)
        _create(k, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
        names.append(crd["metadata"]["name"])
    for name in names:
        k.wait_for(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
            lambda c: any(
                x["type"] == "Established" and x["status"] == "True" for x in c.get("status", {}).get("conditions", [])
            ),
            what=f"CRD {name} established",
        )
    return names


class Discovery:
    """apiVersion + kind -> (resource plural, namespaced), from the server's discovery documents."""

    def __init__(self, k: KubeClient) -> None:
        self.k = k
        self.cache: dict[str, dict[str, tuple[str, bool]]] = {}

    def path(self, obj: dict[str, Any]) -> str:
        gv = obj["apiVersion"]
        if gv not in self.cache:
            doc = self.k.get("/api/v1" if gv == "v1" else f"/apis/{gv}")
            self.cache[gv] = {r["kind"]: (r["name"], r["namespaced"]) for r in doc["resources"] if "/" not in r["name"]}
        plural, namespaced = self.cache[gv][obj["kind"]]
        prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
        meta = obj["metadata"]
        ns = f"/namespaces/{meta['namespace']}" if namespaced else ""
        return f"{prefix}{ns}/{plural}/{meta['name']}"


def test_server_side_apply_dry_run_accepts_every_manifest(
    helm: Helm, control_plane: ControlPlane, crds: list[str]
) -> None:
    k = control_plane.client()
    manifests = helm.render(ALL_FEATURES, namespace="snnrm-dry")
    for ns in {m["metadata"].get("namespace") for m in manifests} - {None}:
        _namespace(k, ns)
    disc = Discovery(k)
    rejected = []
    for m in manifests:
        query = "?dryRun=All&fieldManager=snnrm-chart-test&fieldValidation=Strict&force=true"
        try:
            out = k.request("PATCH", disc.path(m) + query, m, content_type="application/apply-patch+yaml")
        except KubeError as e:
            rejected.append(f"{m['kind']}/{m['metadata']['name']}: {e}")
            continue
        assert out["kind"] == m["kind"]
    assert rejected == []
    # Dry run: nothing was stored.
    with pytest.raises(KubeError) as missing:
        k.get("/apis/apps/v1/namespaces/snnrm-dry/daemonsets/snnrm-dry-daemon")
    assert missing.value.status == 404


# -- helm install + RBAC under the chart's ServiceAccount ------------------------------------------------------------

RELEASE = "snnrm-e2e"
TARGETS = "snn-rbac"


def _install_values(tmp: Path) -> Path:
    values = {
        "daemon": {"config": {"backend": "sim", "simChips": 2, "simCores": 16, "samplePeriod": 0.05}},
        "monitoring": {"release": "kps"},
        "hooks": {
            "enabled": True,
            "token": {"value": HOOKS_TOKEN},
            "rules": [
                {
                    "name": "scale-stage1",
                    "match": ['alertname="SnnrmEventQueueSaturated"'],
                    "action": "scale",
                    "target": {"kind": "Deployment", "namespace": TARGETS, "name": "stage1"},
                    "max_replicas": 5,
                },
                {
                    "name": "keda-stage2",
                    "match": ['alertname="SnnrmEventQueueSaturated"'],
                    "action": "keda",
                    "target": {"kind": "ScaledObject", "namespace": TARGETS, "name": "stage2"},
                    "max_replicas": 5,
                },
                {
                    "name": "hpa-stage1",
                    "match": ['alertname="SnnrmEventQueueSaturated"'],
                    "action": "hpa",
                    "target": {
                        "kind": "HorizontalPodAutoscaler",
                        "namespace": TARGETS,
                        "name": "stage1",
                        "field": "maxReplicas",
                    },
                    "max_replicas": 9,
                },
            ],
            "alertmanagerConfig": {"enabled": True},
        },
        "controller": {"enabled": True},
        "keda": {"enabled": True, "namespace": TARGETS, "targetDeployment": "stage1"},
    }
    path = tmp / "install-values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _targets(k: KubeClient) -> None:
    _namespace(k, TARGETS)
    labels = {"app": "stage"}
    for name in ("stage1", "other"):
        _create(
            k,
            f"/apis/apps/v1/namespaces/{TARGETS}/deployments",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "stage", "image": "registry.invalid/stage:1"}]},
                    },
                },
            },
        )
    _create(
        k,
        f"/apis/keda.sh/v1alpha1/namespaces/{TARGETS}/scaledobjects",
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "stage2"},
            "spec": {
                "scaleTargetRef": {"name": "other"},
                "minReplicaCount": 1,
                "maxReplicaCount": 5,
                "triggers": [
                    {
                        "type": "prometheus",
                        "metadata": {"serverAddress": "http://prometheus:9090", "query": "vector(1)", "threshold": "1"},
                    }
                ],
            },
        },
    )
    _create(
        k,
        f"/apis/autoscaling/v2/namespaces/{TARGETS}/horizontalpodautoscalers",
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "stage1"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "stage1"},
                "minReplicas": 1,
                "maxReplicas": 3,
            },
        },
    )


@pytest.fixture(scope="package")
def installed(
    helm: Helm, control_plane: ControlPlane, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`helm install` of the chart (hooks, controller, KEDA example on) into a real apiserver; uninstalled after."""
    k = control_plane.client()
    _targets(k)
    values = _install_values(tmp_path_factory.mktemp("helm"))
    kube = ("--kubeconfig", str(control_plane.kubeconfig))
    r = helm.run(
        "install", RELEASE, str(CHART), "--namespace", RELEASE, "--create-namespace", "--values", str(values), *kube
    )
    try:
        manifest = helm.run("get", "manifest", RELEASE, "--namespace", RELEASE, *kube).stdout
        yield {"install": r.stdout, "manifests": docs(manifest), "values": values}
    finally:
        helm.run("uninstall", RELEASE, "--namespace", RELEASE, *kube, check=False)


def test_helm_install_creates_everything_and_finds_the_operator_api(
    installed: dict[str, Any], control_plane: ControlPlane
) -> None:
    k = control_plane.client()
    disc = Discovery(k)
    kinds = {m["kind"] for m in installed["manifests"]}
    # monitoring.monitor and prometheusRule.enabled are "auto": discovery shows monitoring.coreos.com/v1.
    assert {
        "ServiceMonitor",
        "PrometheusRule",
        "AlertmanagerConfig",
        "ScaledObject",
        "DaemonSet",
        "Deployment",
    } <= kinds
    for m in installed["manifests"]:
        stored = k.get(disc.path(m))
        assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    sm = k.get(f"/apis/monitoring.coreos.com/v1/namespaces/{RELEASE}/servicemonitors/{RELEASE}-daemon")
    assert sm["metadata"]["labels"]["release"] == "kps"
    assert "helm test snnrm-e2e" in installed["install"]  # NOTES.txt tells the user what to check next


def _hooks_token(manifests: list[dict[str, Any]], release: str) -> str:
    secret = one(manifests, "Secret", f"{release}-hooks")
    return base64.b64decode(secret["data"]["token"]).decode()


def test_the_hooks_token_stays_across_upgrades_and_server_side_templates(
    helm: Helm, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """No hooks.token.value: `helm install` generates the token, `helm upgrade` and `helm template
    --dry-run=server` look the installed Secret up and keep it; plain `helm template` (no cluster) cannot, and
    prints a new one each time unless the value is pinned."""
    release = "snnrm-token"
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "daemon": {"config": {"backend": "sim"}},
                "dashboards": {"enabled": False},
                "hooks": {
                    "enabled": True,
                    "rules": [
                        {
                            "name": "notify",
                            "match": ['alertname="X"'],
                            "action": "webhook",
                            "url": "http://127.0.0.1:1/",
                        }
                    ],
                },
            }
        )
    )
    kube = ("--kubeconfig", str(control_plane.kubeconfig))
    ns = ("--namespace", release)
    k = control_plane.client()
    helm.run("install", release, str(CHART), *ns, "--create-namespace", "--values", str(values), *kube)
    try:
        secret_path = f"/api/v1/namespaces/{release}/secrets/{release}-hooks"
        first = base64.b64decode(k.get(secret_path)["data"]["token"]).decode()
        assert len(first) == 40
        helm.run("upgrade", release, str(CHART), *ns, "--values", str(values), *kube)
        assert base64.b64decode(k.get(secret_path)["data"]["token"]).decode() == first
        server_side = helm.run("template", release, str(CHART), *ns, "--values", str(values), "--dry-run=server", *kube)
        assert _hooks_token(docs(server_side.stdout), release) == first
        offline = [_hooks_token(helm.render(values, release=release, namespace=release), release) for _ in range(2)]
        assert first not in offline
        assert offline[0] != offline[1]
        pinned = ("hooks.token.value=pinned-token-0123456789",)
        assert {
            _hooks_token(helm.render(values, set_=pinned, release=release, namespace=release), release)
            for _ in range(2)
        } == {"pinned-token-0123456789"}
        # A pinned value wins over the installed one on upgrade (rotation is an explicit act).
        helm.run("upgrade", release, str(CHART), *ns, "--values", str(values), "--set", pinned[0], *kube)
        assert base64.b64decode(k.get(secret_path)["data"]["token"]).decode() == "pinned-token-0123456789"
    finally:
        helm.run("uninstall", release, *ns, *kube, check=False)


def _sa_token(cp: ControlPlane, namespace: str, sa: str, *, node: str | None = None) -> str:
    """A token of ServiceAccount ``sa``. With ``node``: bound to a pod of that ServiceAccount on that node, as the
    kubelet's projected token is, so it carries user.extra authentication.kubernetes.io/node-name (1.30+)."""
    k = cp.client()
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if node is not None:
        pod = k.create(
            f"/api/v1/namespaces/{namespace}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"generateName": f"{sa}-"},
                "spec": {
                    "serviceAccountName": sa,
                    "nodeName": node,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "daemon", "image": "registry.invalid/snnrm:1"}],
                },
            },
        )
        spec["boundObjectRef"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod["metadata"]["name"],
            "uid": pod["metadata"]["uid"],
        }
    return str(
        k.create(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{sa}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )["status"]["token"]
    )


def _sa_kubeconfig(cp: ControlPlane, namespace: str, sa: str, path: Path, *, node: str | None = None) -> Path:
    token = _sa_token(cp, namespace, sa, node=node)
    cluster = {"server": cp.server, "certificate-authority": str(cp.certs / "ca.crt")}
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [{"name": "e2e", "cluster": cluster}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "e2e", "user": "sa"}}],
            }
        )
    )
    return path


def _notification(alertname: str) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "snnrm-hooks",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.invalid",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": alertname, "severity": "warning"},
                "annotations": {},
                "startsAt": "2026-11-25T00:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "",
                "fingerprint": uuid.uuid4().hex[:16],
            }
        ],
    }


async def test_hooks_act_under_the_chart_rbac_and_nothing_more(
    installed: dict[str, Any], control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The real daemon, configured from the installed ConfigMap, authenticating with the installed ServiceAccount's
    token: every configured hook acts (scale subresource, ScaledObject, HPA) and records its Event; a hook on an
    object the chart did not grant gets 403."""
    k = control_plane.client()
    cm = k.get(f"/api/v1/namespaces/{RELEASE}/configmaps/{RELEASE}-daemon")
    raw = yaml.safe_load(cm["data"]["config.yaml"])
    token = tmp_path / "hooks-token"
    secret = k.get(f"/api/v1/namespaces/{RELEASE}/secrets/{RELEASE}-hooks")
    token.write_text(base64.b64decode(secret["data"]["token"]).decode())
    assert token.read_text() == HOOKS_TOKEN
    # Only host paths change for a run outside a pod; the hooks are the installed ones, plus one the chart was never
    # asked for (its target has no RBAC), which must be refused by the apiserver.
    extra = {
        "name": "not-granted",
        "match": ['alertname="SnnrmEventQueueSaturated"'],
        "action": "scale",
        "target": {"kind": "Deployment", "namespace": TARGETS, "name": "other"},
    }
    raw.update(
        kubelet_dir=tmp_path / "dp",
        pod_resources_socket=tmp_path / "pr" / "kubelet.sock",
        http="127.0.0.1:0",
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
    )
    # controller.enabled turns the daemon's placement agent on: same token, and a Node for its summary annotation.
    # The token is bound to a daemon pod on that node, as in the cluster: the own-node policy requires it.
    node = _fake_node(k, f"chart-daemon-{uuid.uuid4().hex[:6]}")
    kubeconfig = _sa_kubeconfig(control_plane, RELEASE, f"{RELEASE}-daemon", tmp_path / "sa.kubeconfig", node=node)
    raw["hooks"] = {
        **raw["hooks"],
        "token_file": str(token),
        "kubeconfig": str(kubeconfig),
        "rules": [*raw["hooks"]["rules"], extra],
    }
    assert raw["placement"]["enabled"] is True
    raw["placement"] = {**raw["placement"], "kubeconfig": raw["hooks"]["kubeconfig"], "node_name": node}
    config = Config.model_validate(raw)
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        try:
            await asyncio.wait_for(daemon.http_started.wait(), 10)
            await kubelet.wait_capacity(NEURON_CORE, 32, within=10)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{daemon.http_port}/hooks/alertmanager",
                    json=_notification("SnnrmEventQueueSaturated"),
                    headers={"Authorization": f"Bearer {HOOKS_TOKEN}"},
                ) as r,
            ):
                body = await r.json()
                assert r.status == 200, body
            # The placement agent, under the chart's daemon RBAC, writes its summary on its own Node.
            deadline = time.monotonic() + 15
            while SUMMARY not in (k.get(f"/api/v1/nodes/{node}")["metadata"].get("annotations") or {}):
                assert time.monotonic() < deadline, "the daemon never published its node summary"
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
    outcomes = {res["hook"]: (res["outcome"], res["detail"]) for res in body["results"]}
    assert {h: o for h, (o, _) in outcomes.items()} == {
        "scale-stage1": "applied",
        "keda-stage2": "applied",
        "hpa-stage1": "applied",
        "not-granted": "failed",
    }, outcomes
    assert "403" in outcomes["not-granted"][1]
    base = f"/apis/apps/v1/namespaces/{TARGETS}/deployments"
    assert k.get(f"{base}/stage1/scale")["spec"]["replicas"] == 2
    assert k.get(f"{base}/other/scale")["spec"]["replicas"] == 1
    assert k.get(f"/apis/keda.sh/v1alpha1/namespaces/{TARGETS}/scaledobjects/stage2")["spec"]["minReplicaCount"] == 2
    hpa = k.get(f"/apis/autoscaling/v2/namespaces/{TARGETS}/horizontalpodautoscalers/stage1")
    assert hpa["spec"]["maxReplicas"] == 4
    events = k.get(f"/api/v1/namespaces/{TARGETS}/events")["items"]
    reasons = {(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]) for e in events}
    assert {
        ("Deployment", "stage1", "SnnrmHookScaled"),
        ("ScaledObject", "stage2", "SnnrmHookScaled"),
        ("HorizontalPodAutoscaler", "stage1", "SnnrmHookScaled"),
    } <= reasons
    NodeSummary.decode(k.get(f"/api/v1/nodes/{node}")["metadata"]["annotations"][SUMMARY])
    k.delete(f"/api/v1/nodes/{node}")


def _fake_node(k: KubeClient, name: str, summary: str | None = None) -> str:
    """A Node as the kubelet would leave it (Ready, neuron cores in capacity), optionally with a published summary."""
    meta: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/hostname": name}}
    if summary is not None:
        meta["annotations"] = {SUMMARY: summary}
    k.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": meta})
    res = {"cpu": "16", "memory": "32Gi", "pods": "110", NEURON_CORE: str(SMALL_TOPOLOGY.n_cores)}
    k.merge_patch(
        f"/api/v1/nodes/{name}/status",
        {
            "status": {
                "capacity": res,
                "allocatable": res,
                "conditions": [{"type": "Ready", "status": "True", "reason": "E2E", "message": "fake node"}],
            }
        },
    )
    return name


def _patch_as(cp: ControlPlane, path: str, *, token: str = "", node: str | None = None) -> tuple[int, str]:
    """Merge-PATCH an annotation on ``path`` as the daemon's ServiceAccount, with a token, or by impersonation from
    the admin (system:masters may impersonate users, groups and user.extra); the HTTP status and error body."""
    k = cp.client()
    headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
        ctx = ssl.create_default_context(cafile=str(cp.certs / "ca.crt"))
    else:
        ctx = k.ctx
        headers["Impersonate-User"] = f"system:serviceaccount:{RELEASE}:{RELEASE}-daemon"
        if node is not None:
            headers["Impersonate-Extra-authentication.kubernetes.io%2fnode-name"] = node
    body = json.dumps({"metadata": {"annotations": {"snnrm.io/own-node-test": uuid.uuid4().hex}}}).encode()
    req = urllib.request.Request(cp.server + path, data=body, method="PATCH", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            return int(r.status), ""
    except urllib.error.HTTPError as e:
        with e:
            return int(e.code), e.read().decode(errors="replace")


def test_the_daemon_may_patch_only_its_own_node_and_the_pods_bound_to_it(
    installed: dict[str, Any], control_plane: ControlPlane
) -> None:
    """The chart's ValidatingAdmissionPolicy (placement on, Kubernetes 1.37: daemon.placement.ownNodeOnly auto),
    enforced by the real apiserver: a token bound to a daemon pod on node A patches Node A and pods on A, and is
    refused on Node B and pods on B, which the ClusterRole alone allows; a token naming no node is refused. The
    same through impersonation of user.extra authentication.kubernetes.io/node-name."""
    kinds = [m["kind"] for m in installed["manifests"]]
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= set(kinds)
    k = control_plane.client()
    tag = uuid.uuid4().hex[:6]
    a, b = _fake_node(k, f"own-a-{tag}"), _fake_node(k, f"own-b-{tag}")
    pods = {}
    for node in (a, b):
        pods[node] = k.create(
            f"/api/v1/namespaces/{TARGETS}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"stage-{node}", "labels": {"snnrm.io/job": "j"}},
                "spec": {"nodeName": node, "containers": [{"name": "s", "image": "registry.invalid/stage:1"}]},
            },
        )["metadata"]["name"]
    node_path = {n: f"/api/v1/nodes/{n}" for n in (a, b)}
    pod_path = {n: f"/api/v1/namespaces/{TARGETS}/pods/{pods[n]}" for n in (a, b)}
    sa = f"{RELEASE}-daemon"
    bound = _sa_token(control_plane, RELEASE, sa, node=a)
    unbound = _sa_token(control_plane, RELEASE, sa)
    try:
        # RBAC alone grants the ServiceAccount every Node and pod:
        assert _can(k, sa, "patch", "nodes", namespace="")
        assert _can(k, sa, "patch", "pods", namespace=TARGETS)
        # The policy is applied by the apiserver once its informer has it: wait for the first refusal.
        status, denial = wait_until(
            "the own-node policy in force",
            lambda: (got := _patch_as(control_plane, node_path[b], token=bound))[0] == 403 and got,
        )
        assert f"the snnrm daemon on node {a} may change only its own Node, not {b}" in denial
        assert _patch_as(control_plane, node_path[a], token=bound)[0] == 200
        assert _patch_as(control_plane, pod_path[a], token=bound)[0] == 200
        status, denial = _patch_as(control_plane, pod_path[b], token=bound)
        assert status == 403
        assert f"may change only pods bound to it, not {TARGETS}/{pods[b]}" in denial
        status, denial = _patch_as(control_plane, node_path[a], token=unbound)
        assert status == 403
        assert "token names no node" in denial
        # Impersonating the claim: the policy reads user.extra, wherever it came from.
        assert _patch_as(control_plane, node_path[b], node=b)[0] == 200
        assert _patch_as(control_plane, node_path[a], node=b)[0] == 403
        assert _patch_as(control_plane, pod_path[b], node=b)[0] == 200
        assert _patch_as(control_plane, pod_path[a], node=b)[0] == 403
        status, denial = _patch_as(control_plane, node_path[b])
        assert status == 403, denial
        assert "token names no node" in denial
        # Nobody else is affected: the admin still patches any Node.
        k.merge_patch(node_path[b], {"metadata": {"annotations": {"snnrm.io/own-node-test": "admin"}}})
    finally:
        for n in (a, b):
            with contextlib.suppress(KubeError):
                k.delete(pod_path[n])
            with contextlib.suppress(KubeError):
                k.delete(node_path[n])


def _can(k: KubeClient, sa: str, verb: str, resource: str, group: str = "", namespace: str = TARGETS) -> bool:
    review = k.create(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{RELEASE}:{sa}",
                "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": namespace},
            },
        },
    )
    return bool(review["status"].get("allowed"))


def test_controller_plans_a_job_under_the_chart_rbac(
    installed: dict[str, Any], control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The real `snnrm controller`, with the installed Deployment's args and env and a token of the chart's
    controller ServiceAccount: it takes the chart's Lease, plans a gated two-stage job onto a node with a summary,
    ungates both pods with the plan (get + merge-PATCH) and records Events; what RBAC does not grant is refused."""
    k = control_plane.client()
    dep = k.get(f"/apis/apps/v1/namespaces/{RELEASE}/deployments/{RELEASE}-controller")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == ["controller"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    port = free_port()
    identity = f"{RELEASE}-controller-chart-test"
    env |= {
        "SNNRM_HTTP": f"127.0.0.1:{port}",  # the pod binds 0.0.0.0
        "SNNRM_KUBECONFIG": str(_sa_kubeconfig(control_plane, RELEASE, f"{RELEASE}-controller", tmp_path / "c.kc")),
        "POD_NAMESPACE": RELEASE,  # the fieldRefs of the Deployment
        "POD_NAME": identity,
    }
    lease_name = env["SNNRM_LEASE_NAME"]
    # The Deployment's environment, not this test process's SNNRM_* variables.
    full_env = {n: v for n, v in os.environ.items() if not n.startswith("SNNRM_")} | env
    tag = uuid.uuid4().hex[:6]
    node = _fake_node(k, f"chart-plan-{tag}", node_summary(time.time()).encode())
    pods = []
    proc = spawn("snnrm-controller", [*snnrm_command(), "controller"], tmp_path, env=full_env)
    try:
        wait_until("controller /readyz", lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), procs=[proc])
        lease = wait_until(
            "the chart's Lease held by the controller",
            lambda: (
                (got := k.get(f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE}/leases/{lease_name}"))
                and got["spec"].get("holderIdentity") == identity
                and got
            ),
            procs=[proc],
        )
        assert lease["metadata"]["name"] == f"{RELEASE}-controller"
        job = f"chart-job-{tag}"
        for i in range(2):
            pod = stage_pod(job, i, 2, 4, gated=True, namespace=TARGETS, scheduler="snnrm-chart-none")
            for key in ("uid", "creationTimestamp"):
                pod["metadata"].pop(key, None)
            k.create(f"/api/v1/namespaces/{TARGETS}/pods", pod)
            pods.append(pod["metadata"]["name"])

        def released() -> bool:
            got = [k.get(f"/api/v1/namespaces/{TARGETS}/pods/{p}") for p in pods]
            return all(
                not g["spec"].get("schedulingGates") and (g["metadata"].get("annotations") or {}).get(PLANNED_NODE)
                for g in got
            )

        wait_until("both stage pods ungated with a plan", released, procs=[proc])
        planned = {
            (k.get(f"/api/v1/namespaces/{TARGETS}/pods/{p}")["metadata"]["annotations"][PLANNED_NODE]) for p in pods
        }
        assert planned == {node}
        events = k.get(f"/apis/events.k8s.io/v1/namespaces/{TARGETS}/events")["items"]
        assert {e["regarding"]["name"] for e in events if e["reason"] == "Planned"} >= set(pods)
    finally:
        proc.stop()
        for p in pods:
            with contextlib.suppress(KubeError):
                k.request("DELETE", f"/api/v1/namespaces/{TARGETS}/pods/{p}?gracePeriodSeconds=0")
        with contextlib.suppress(KubeError):
            k.delete(f"/api/v1/nodes/{node}")
    sa = f"{RELEASE}-controller"
    assert _can(k, sa, "create", "pods/eviction")
    assert _can(k, sa, "patch", "pods")
    assert not _can(k, sa, "delete", "pods")  # evictions only, through the Eviction API
    assert not _can(k, sa, "patch", "nodes")  # the controller only reads Nodes
    assert not _can(k, sa, "update", "leases", "coordination.k8s.io")  # only its own Lease, only in its namespace
    daemon = f"{RELEASE}-daemon"
    assert _can(k, daemon, "patch", "nodes", namespace="")
    assert not _can(k, daemon, "delete", "nodes", namespace="")
    assert not _can(k, daemon, "create", "pods/eviction")


# -- the KubeSchedulerConfiguration snippet with the real kube-scheduler ---------------------------------------------


@pytest.fixture
async def stub_extender() -> AsyncIterator[tuple[str, list[str]]]:
    """An extender that admits every node and records the paths kube-scheduler calls (the real one is issue 6's)."""
    calls: list[str] = []

    async def filter_(request: web.Request) -> web.Response:
        calls.append(request.path)
        args = await request.json()
        return web.json_response({"NodeNames": args.get("NodeNames"), "FailedNodes": {}, "Error": ""})

    async def prioritize(request: web.Request) -> web.Response:
        calls.append(request.path)
        args = await request.json()
        return web.json_response([{"Host": n, "Score": 5} for n in args.get("NodeNames") or []])

    app = web.Application()
    app.router.add_post("/extender/filter", filter_)
    app.router.add_post("/extender/prioritize", prioritize)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/extender", calls
    finally:
        await runner.cleanup()


async def test_kube_scheduler_loads_the_extender_snippet_and_calls_it(
    helm: Helm, control_plane: ControlPlane, stub_extender: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, calls = stub_extender
    manifests = helm.render(set_=("controller.enabled=true", f"controller.schedulerExtender.urlPrefix={url}"))
    extenders = yaml.safe_load(one(manifests, "ConfigMap", "snnrm-scheduler-extender")["data"]["extenders.yaml"])
    scheduler_name = "snnrm-chart-test"
    config = tmp_path / "scheduler.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {"kubeconfig": str(control_plane.kubeconfig)},
                "leaderElection": {"leaderElect": False},
                "profiles": [{"schedulerName": scheduler_name}],
                "extenders": extenders,
            }
        )
    )
    log = tmp_path / "kube-scheduler.log"
    port = free_port()
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(control_plane.scheduler_bin),
            f"--config={config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={tmp_path / 'certs'}",
            "--v=2",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while True:
                assert proc.returncode is None, f"kube-scheduler refused the configuration:\n{tail(log)}"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"https://127.0.0.1:{port}/readyz", ssl=insecure) as r:
                        if r.status == 200:
                            break
                assert time.monotonic() < deadline, f"kube-scheduler not ready:\n{tail(log)}"
                await asyncio.sleep(0.25)
        k = control_plane.client()
        node = f"chart-node-{uuid.uuid4().hex[:6]}"
        k.create(
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
            },
        )
        res = {"cpu": "8", "memory": "16Gi", "pods": "110", NEURON_CORE: "8"}
        k.merge_patch(
            f"/api/v1/nodes/{node}/status",
            {
                "status": {
                    "capacity": res,
                    "allocatable": res,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "E2E", "message": "fake node"}],
                }
            },
        )
        k.merge_patch(f"/api/v1/nodes/{node}", {"spec": {"taints": None}})
        pod = f"stage-{uuid.uuid4().hex[:6]}"
        limits = {NEURON_CORE: "2"}
        k.create(
            "/api/v1/namespaces/default/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod},
                "spec": {
                    "schedulerName": scheduler_name,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [
                        {
                            "name": "s",
                            "image": "registry.invalid/s:1",
                            "resources": {"limits": limits, "requests": limits},
                        }
                    ],
                },
            },
        )
        deadline = time.monotonic() + 30
        while not k.get(f"/api/v1/namespaces/default/pods/{pod}")["spec"].get("nodeName"):
            assert time.monotonic() < deadline, f"pod not bound; scheduler log:\n{tail(log)}"
            await asyncio.sleep(0.2)
        assert "/extender/filter" in calls
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
