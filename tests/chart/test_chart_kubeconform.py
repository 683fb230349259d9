"""Every manifest the chart renders validates, strictly, against the Kubernetes OpenAPI schema of the release the e2e
tier runs (v1.37.2, from the k8s.io/kubernetes module) and the prometheus-operator / KEDA CRD schemas, with
kubeconform (built from its Go module). Schemas: scripts/build-chart-tools.sh; nothing here is hand-written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import ALL_FEATURES, OPERATOR_API, SCHEMA_TEMPLATE, Helm

RENDERS = [
    pytest.param((), (), id="default"),
    pytest.param(
        (), ("monitoring.monitor=ServiceMonitor", "monitoring.prometheusRule.enabled=true"), id="default+servicemonitor"
    ),
    pytest.param((ALL_FEATURES,), (), id="all-features"),
    pytest.param(
        (ALL_FEATURES,), ("monitoring.monitor=PodMonitor", "daemon.config.backend=sim"), id="all-features+podmonitor"
    ),
]


def kubeconform_run(kubeconform: Path, schemas: Path, manifests: str, tmp_path: Path) -> list[dict[str, Any]]:
    """Per-resource results (kubeconform -output json -verbose); every kind must have a schema (no skips)."""
    src = tmp_path / "manifests.yaml"
    src.write_text(manifests)
    r = subprocess.run(
        [
            str(kubeconform),
            "-strict",
            "-summary",
            "-verbose",
            "-output",
            "json",
            "-schema-location",
            f"{schemas}/{SCHEMA_TEMPLATE}",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = json.loads(r.stdout)
    resources: list[dict[str, Any]] = out["resources"]
    return resources


@pytest.mark.parametrize(("values", "set_"), RENDERS)
def test_every_rendered_manifest_validates(
    helm: Helm, kubeconform: Path, kube_schemas: Path, tmp_path: Path, values: tuple[Path, ...], set_: tuple[str, ...]
) -> None:
    rendered = helm.template(*values, set_=set_, api_versions=(OPERATOR_API,)).stdout
    results = kubeconform_run(kubeconform, kube_schemas, rendered, tmp_path)
    n_docs = len([d for d in yaml.safe_load_all(rendered) if d])
    assert len(results) == n_docs
    bad = [
        f"{r['kind']}/{r['name']}: {r['status']} {r.get('msg', '')}" for r in results if r["status"] != "statusValid"
    ]
    assert bad == []


def test_kubeconform_rejects_what_the_apiserver_would(
    helm: Helm, kubeconform: Path, kube_schemas: Path, tmp_path: Path
) -> None:
    """A negative control: the same schemas catch a misspelt field, a wrong type and a wrong CR field."""
    docs = [d for d in yaml.safe_load_all(helm.template(ALL_FEATURES).stdout) if d]
    for d in docs:
        if d["kind"] == "DaemonSet":
            d["spec"]["minReadySecond"] = 5
        elif d["kind"] == "Service":
            d["spec"]["ports"][0]["port"] = "9400"
        elif d["kind"] == "ServiceMonitor":
            d["spec"]["endpoints"][0]["scrapeTimeOut"] = "10s"
        elif d["kind"] == "ScaledObject":
            d["spec"]["minReplicaCount"] = "one"
    results = kubeconform_run(kubeconform, kube_schemas, yaml.safe_dump_all(docs), tmp_path)
    invalid = {r["kind"] for r in results if r["status"] == "statusInvalid"}
    assert invalid == {"DaemonSet", "Service", "ServiceMonitor", "ScaledObject"}
