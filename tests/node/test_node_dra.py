"""snnrm's DRA driver on a real node: the chart with ``dra.mode: on``, the real kubelet's DRA manager, the
controller-manager's ResourceClaim controller (claims from templates) and the scheduler's DRA plugin.

Runs after test_node.py (it switches the chart to DRA and back: in mode ``on`` core groups are sold through DRA
and ``snnrm.io/neuron-core`` is no longer advertised by the device plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from snnrm.testing.real_node import NEURON_CORE, Node, wait_for


@pytest.fixture
def dra(node: Node) -> Iterator[Node]:
    node.cluster("chart", "--set", "dra.mode=on")
    try:
        yield node
    finally:
        node.cluster("chart")  # back to the device plugins for the rest of the session
        wait_for("neuron cores advertised again", lambda: int(node.allocatable().get(NEURON_CORE, "0")) > 0, 90)


def _slices(node: Node) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = node.get("resourceslices")["items"]
    return [s for s in items if s["spec"].get("driver") == "snnrm.io"]


def test_a_pod_with_a_claim_template_gets_prepared_core_groups(dra: Node, ns: str) -> None:
    node = dra
    slices = wait_for("ResourceSlices published by the daemon", lambda: _slices(node) or None, 90)
    devices = [d for s in slices for d in s["spec"].get("devices", [])]
    assert devices, slices
    template = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "two-groups", "namespace": ns},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [{"name": "cores", "exactly": {"deviceClassName": "snnrm-core-group", "count": 2}}]
                }
            }
        },
    }
    node.apply(template)
    script = 'env | grep "^SNNRM_DRA_" | sort; echo DONE; exec sleep 3600'
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "dra-stage", "namespace": ns},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "resourceClaims": [{"name": "snn", "resourceClaimTemplateName": "two-groups"}],
            "containers": [
                {
                    "name": "stage",
                    "image": node.image(),
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                    "resources": {"claims": [{"name": "snn", "request": "cores"}]},
                }
            ],
        },
    }
    node.apply(pod)
    wait_for("the DRA pod Running", lambda: node.get("pod", "-n", ns, "dra-stage")["status"].get("phase") == "Running")
    out = wait_for(
        "the pod's DRA environment",
        lambda: (lambda o: o if "DONE" in o else None)(node.kubectl("logs", "-n", ns, "dra-stage")),
        30,
    )
    env = [line for line in out.splitlines() if line.startswith("SNNRM_DRA_CHIP")]
    claim_env = {line.partition("=")[2] for line in out.splitlines() if line.startswith("SNNRM_DRA_CLAIM_")}
    assert len(env) == 2, out
    # The claim the controller-manager made from the template is allocated to this node's devices.
    claims = node.get("resourceclaims", "-n", ns)["items"]
    assert len(claims) == 1
    assert claim_env == {claims[0]["metadata"]["uid"]}  # each device names the claim it was prepared for
    results = claims[0]["status"]["allocation"]["devices"]["results"]
    assert len(results) == 2
    assert {r["driver"] for r in results} == {"snnrm.io"}
    names = {d["name"] for d in devices}
    assert {r["device"] for r in results} <= names
    # Every core named in the environment belongs to one of the two allocated devices, and none twice.
    cores = [c for line in env for c in line.partition("=")[2].split(",") if c]
    assert len(cores) == len(set(cores)) > 0
