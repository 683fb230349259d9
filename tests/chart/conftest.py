"""Fixtures of the Helm chart tests (tests/chart): the real helm, kubeconform and its schemas, and a control plane.

The control plane is tests/e2e's ``ControlPlane`` (etcd + kube-apiserver + kube-scheduler built from upstream Go
modules), started once for this package and stopped before the e2e tier starts its own.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from chart_support import Helm, need

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_controlplane import ControlPlane
from e2e_support import tool


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(need("SNNRM_HELM", "helm", "build-tools.sh helm"))


@pytest.fixture(scope="session")
def kubeconform() -> Path:
    return need("SNNRM_KUBECONFORM", "kubeconform", "build-chart-tools.sh")


@pytest.fixture(scope="session")
def kube_schemas() -> Path:
    return need("SNNRM_KUBE_SCHEMAS", "the JSON schemas for kubeconform", "build-chart-tools.sh")


@pytest.fixture(scope="session")
def chart_crds() -> Path:
    return need("SNNRM_CHART_CRDS", "the prometheus-operator and KEDA CRDs", "build-chart-tools.sh")


@pytest.fixture(scope="package")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = ControlPlane(
        workdir=tmp_path_factory.mktemp("chart-control-plane"),
        etcd_bin=tool("SNNRM_ETCD", "etcd"),
        apiserver_bin=tool("SNNRM_KUBE_APISERVER", "kube-apiserver"),
        scheduler_bin=tool("SNNRM_KUBE_SCHEDULER", "kube-scheduler"),
    )
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
