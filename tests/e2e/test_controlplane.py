"""Smoke test of the control-plane fixture: the real kube-scheduler places a pod on a node by its snnrm.io capacity."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from e2e_controlplane import ControlPlane

pytestmark = pytest.mark.e2e

NEURON_CORE = "snnrm.io/neuron-core"


def make_node(cp: ControlPlane, cores: int) -> str:
    """A Node created through the API with ``cores`` neuron cores in its status (as our plugin + kubelet would)."""
    k = cp.client()
    name = f"e2e-node-{uuid.uuid4().hex[:6]}"
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}  # what a kubelet would set
    k.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    resources = {"cpu": "8", "memory": "16Gi", "pods": "110", NEURON_CORE: str(cores)}
    # A plain update ignores .status: capacity goes through the status subresource, as the kubelet's does.
    k.merge_patch(
        f"/api/v1/nodes/{name}/status",
        {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True", "reason": "E2E", "message": "fake node"}],
            }
        },
    )
    # The apiserver's TaintNodesByCondition admission taints new Nodes not-ready; the node lifecycle
    # controller (controller-manager, not run here) would lift it once Ready. Lift it as that controller would.
    k.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})
    return name


def make_pod(cp: ControlPlane, cores: int, node_selector: dict[str, str] | None = None) -> str:
    name = f"e2e-pod-{uuid.uuid4().hex[:6]}"
    limits = {NEURON_CORE: str(cores)}
    spec: dict[str, Any] = {
        "containers": [
            {"name": "main", "image": "registry.invalid/none", "resources": {"limits": limits, "requests": limits}}
        ]
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    cp.client().create(
        "/api/v1/namespaces/default/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec},
    )
    return name


def test_scheduler_binds_pod_to_node_with_neuron_cores(control_plane: ControlPlane) -> None:
    k = control_plane.client()
    node = make_node(control_plane, cores=4)
    assert k.get(f"/api/v1/nodes/{node}")["status"]["allocatable"][NEURON_CORE] == "4"
    pod = make_pod(control_plane, cores=2, node_selector={"kubernetes.io/hostname": node})
    bound = k.wait_for(
        f"/api/v1/namespaces/default/pods/{pod}", lambda p: p["spec"].get("nodeName") == node, what="binding"
    )
    assert bound["spec"]["nodeName"] == node


def test_scheduler_refuses_pod_needing_more_cores_than_any_node_has(control_plane: ControlPlane) -> None:
    k = control_plane.client()
    make_node(control_plane, cores=4)
    pod = make_pod(control_plane, cores=1000)

    def unschedulable(p: dict[str, Any]) -> bool:
        return any(
            c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
            for c in p.get("status", {}).get("conditions", [])
        )

    p = k.wait_for(f"/api/v1/namespaces/default/pods/{pod}", unschedulable, what="Unschedulable")
    assert not p["spec"].get("nodeName")
    message = next(c["message"] for c in p["status"]["conditions"] if c["type"] == "PodScheduled")
    assert f"Insufficient {NEURON_CORE}" in message
