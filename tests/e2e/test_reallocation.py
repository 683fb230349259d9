"""The reallocation controller against the real apiserver: Lease leader election (one actor of two replicas),
eviction of a degraded stage through the Eviction API with the target reserved first, a PodDisruptionBudget
refusing an eviction, Events on the pods, and ``snnrm_reallocations_total{reason,action}``.

The node daemons' part (watching the stages' cores, live remaps, reporting ``snnrm.io/stage-health``) is played
by the test: it writes the report a node whose stage lost cores would write. Nodes are fake (no kubelet), so an
evicted pod stays Terminating with a deletionTimestamp, as it would until a kubelet confirms.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_controlplane import ControlPlane
from e2e_placement import Proc, Rig, get_json, start_controller, wait_until

from snnrm.core.jobs import PLANNED_CORES, PLANNED_NODE, STAGE_HEALTH, StageHealth
from snnrm.testing.fake_cluster import stage_pod

pytestmark = pytest.mark.e2e

LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/snnrm-placement-controller"


@pytest.fixture(scope="module")
def controllers(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[tuple[Proc, str]]]:
    """Two replicas of ``snnrm controller`` (confirm window 1 s, no minimum stage age for the test)."""
    workdir = tmp_path_factory.mktemp("reallocation")
    out = []
    try:
        for identity in ("replica-a", "replica-b"):
            out.append(start_controller(control_plane, workdir, identity=identity))
        yield out
    finally:
        for proc, _ in out:
            proc.stop()


def leader(controllers: list[tuple[Proc, str]]) -> tuple[Proc, str]:
    def find() -> tuple[Proc, str] | None:
        leading = [c for c in controllers if get_json(c[1] + "/api/v1/leader")["leading"]]
        return leading[0] if len(leading) == 1 else None

    found: tuple[Proc, str] | None = wait_until(
        "exactly one leader", find, within=60, procs=[p for p, _ in controllers]
    )
    assert found is not None
    return found


@pytest.fixture
def rig(control_plane: ControlPlane, controllers: list[tuple[Proc, str]]) -> Iterator[Rig]:
    _, base = leader(controllers)
    r = Rig(control_plane, base, [p for p, _ in controllers])
    try:
        yield r
    finally:
        r.cleanup()


def running_job(rig: Rig, base: str, node: str, n: int = 3, cores: int = 2) -> tuple[str, list[str]]:
    """Stage pods bound to ``node`` with their plan, Running and Ready (as a kubelet would report them)."""
    job = rig.name(base)
    names = []
    for i in range(n):
        ids = ",".join(f"chip0-core{i * cores + k}" for k in range(cores))
        pod = stage_pod(job, i, n, cores, node=node, annotations={PLANNED_NODE: node, PLANNED_CORES: ids})
        for key in ("uid", "creationTimestamp"):
            pod["metadata"].pop(key)
        rig.create_pod(pod)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rig.k.merge_patch(
            f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}/status",
            {
                "status": {
                    "phase": "Running",
                    "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now},
                        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    ],
                }
            },
        )
        names.append(pod["metadata"]["name"])
    return job, names


def report_degraded(rig: Rig, pod: str, reasons: tuple[str, ...] = ("failed-core",)) -> None:
    """What the node's daemon writes when a stage's cores fail and no live remap is possible."""
    health = StageHealth("degraded", reasons, time.time(), "unavailable", 1e6)
    rig.k.merge_patch(
        f"/api/v1/namespaces/default/pods/{pod}", {"metadata": {"annotations": {STAGE_HEALTH: health.encode()}}}
    )


def metric(base: str, reason: str, action: str) -> float:
    """``snnrm_reallocations_total`` summed over jobs and stages, from the controller's /metrics."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        text = r.read().decode()
    wanted = ("snnrm_reallocations_total{", f'reason="{reason}"', f'action="{action}"')
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if all(w in line for w in wanted))


def test_one_replica_leads_through_a_lease(rig: Rig, controllers: list[tuple[Proc, str]]) -> None:
    """The Lease names the leader; the other replica follows (and acts on nothing)."""
    _, base = leader(controllers)
    lease = rig.k.get(LEASE)
    holder = lease["spec"]["holderIdentity"]
    assert holder == ("replica-a" if base == controllers[0][1] else "replica-b")
    follower = next(b for _, b in controllers if b != base)
    assert get_json(follower + "/api/v1/leader")["leading"] is False


def test_a_degraded_stage_is_evicted_with_its_target_reserved(rig: Rig, controllers: list[tuple[Proc, str]]) -> None:
    """Failed cores under stage 1 and no live remap: the leader reserves a new home, evicts through the Eviction
    API, records an Event and counts it; the follower never acts."""
    _, base = leader(controllers)
    sick = rig.node("sick", healthy=28)  # four cores lost
    rig.node("spare")
    job, pods = running_job(rig, "evict", sick)
    report_degraded(rig, pods[1])

    def evicted() -> dict[str, Any] | None:
        pod = rig.pod(pods[1])
        return pod if pod["metadata"].get("deletionTimestamp") else None

    rig.wait("stage 1 evicted (graceful delete started)", evicted, within=30)
    events = rig.events(pods[1])
    assert any(e["reason"] == "Evicted" and e["type"] == "Warning" for e in events), events
    assert metric(base, "failed-core", "evict") == 1.0
    with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
        assert f'snn_job="{job}"' in r.read().decode()  # the labels the dashboards and alert rules sum by
    follower = next(b for _, b in controllers if b != base)
    assert metric(follower, "failed-core", "evict") == 0.0
    # Only stage 1 moved: the rest of the pipeline keeps running.
    assert not rig.pod(pods[0])["metadata"].get("deletionTimestamp")
    assert not rig.pod(pods[2])["metadata"].get("deletionTimestamp")
    stage = next(s for j in rig.placement()["jobs"] if j["job"] == job for s in j["stages"] if s["stage"] == 1)
    assert stage["reservation"] is not None
    assert stage["reservation"]["committed"] is False  # held for the replacement pod


def test_a_disruption_budget_blocks_the_eviction(rig: Rig, controllers: list[tuple[Proc, str]]) -> None:
    """With a PodDisruptionBudget that allows no disruption, the Eviction API answers 429: the pod stays, the
    refusal is an Event and ``action="blocked"``."""
    _, base = leader(controllers)
    sick = rig.node("pdb", healthy=28)
    job, pods = running_job(rig, "guarded", sick, n=2)
    pdb_name = rig.name("pdb")
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": pdb_name, "namespace": "default"},
        "spec": {"minAvailable": 2, "selector": {"matchLabels": {"snnrm.io/job": job}}},
    }
    rig.k.create("/apis/policy/v1/namespaces/default/poddisruptionbudgets", pdb)
    rig.other.append(f"/apis/policy/v1/namespaces/default/poddisruptionbudgets/{pdb_name}")
    before = metric(base, "failed-core", "blocked")
    report_degraded(rig, pods[1])
    rig.wait(
        "an EvictionBlocked event",
        lambda: any(e["reason"] == "EvictionBlocked" for e in rig.events(pods[1])),
        within=30,
    )
    assert not rig.pod(pods[1])["metadata"].get("deletionTimestamp")
    assert metric(base, "failed-core", "blocked") >= before + 1
