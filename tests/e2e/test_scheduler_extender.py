"""The real kube-scheduler with our extender, against the real apiserver: plans are followed whole or not at all.

``snnrm controller`` (gang planner + extender) and a kube-scheduler whose KubeSchedulerConfiguration lists our
extender (``filterVerb``/``prioritizeVerb``, ``nodeCacheCapable: true``, ``managedResources``) run as subprocesses
against the session's etcd + kube-apiserver; nodes are fake (created through the API with capacity and a
published snnrm summary), so pods bind but never run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_controlplane import ControlPlane
from e2e_placement import SCHEDULER, Proc, Rig, big_topology, start_controller, start_scheduler

from snnrm.core.jobs import GATE, PLANNED_CORES, PLANNED_NODE
from snnrm.testing.fake_cluster import stage_pod

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Proc]]]:
    workdir = tmp_path_factory.mktemp("placement")
    controller, base = start_controller(control_plane, workdir, identity="e2e-extender")
    try:
        scheduler = start_scheduler(control_plane, workdir, base)
    except BaseException:
        controller.stop()
        raise
    yield base, [controller, scheduler]
    scheduler.stop()
    controller.stop()


@pytest.fixture
def rig(control_plane: ControlPlane, stack: tuple[str, list[Proc]]) -> Iterator[Rig]:
    base, procs = stack
    r = Rig(control_plane, base, procs)
    try:
        yield r
    finally:
        r.cleanup()


def _bound(rig: Rig, pods: list[str]) -> dict[str, str] | None:
    nodes = {p: rig.pod(p)["spec"].get("nodeName") for p in pods}
    return nodes if all(nodes.values()) else None


def _gated(pod: dict[str, Any]) -> bool:
    return any(g.get("name") == GATE for g in pod["spec"].get("schedulingGates") or [])


def test_stage_pods_land_where_the_plan_put_them(rig: Rig) -> None:
    """A 3-stage job that fits only one node is planned there, released, and bound there by the scheduler."""
    crowded = rig.node("crowded", free=10)
    roomy = rig.node("roomy")
    _, pods = rig.job("pipe", [8, 6, 6])
    nodes = rig.wait("every stage bound", lambda: _bound(rig, pods))
    assert set(nodes.values()) == {roomy}, nodes
    cores: list[set[str]] = []
    for p in pods:
        pod = rig.pod(p)
        ann = pod["metadata"]["annotations"]
        assert ann[PLANNED_NODE] == pod["spec"]["nodeName"] == roomy
        cores.append(set(ann[PLANNED_CORES].split(",")))
        assert not _gated(pod)
        assert any(e["reason"] == "Planned" for e in rig.events(p))
    assert [len(c) for c in cores] == [8, 6, 6]
    assert not cores[0] & cores[1]
    assert not cores[1] & cores[2]
    assert not cores[0] & cores[2]
    # The scheduler really asked our extender (filter and prioritize) on the way.
    counts = rig.placement()["requests"]
    assert counts.get("filter:ok", 0) >= 3
    assert crowded not in nodes.values()


def test_a_job_that_cannot_fit_stays_gated_whole_until_a_node_can_hold_it(rig: Rig) -> None:
    """No stage binds while the job does not fit anywhere; when a big enough node appears, every stage binds."""
    rig.node("small-a")
    rig.node("small-b", free=20)
    _, pods = rig.job("big", [24, 24])  # 48 cores: too many for any 32-core node, and no 2-node split fits
    rig.wait(
        "a WaitingForCapacity event",
        lambda: all(any(e["reason"] == "WaitingForCapacity" for e in rig.events(p)) for p in pods),
    )
    time.sleep(2)
    for p in pods:
        pod = rig.pod(p)
        assert _gated(pod), "a stage was released while the job did not fit"
        assert not pod["spec"].get("nodeName")
    large = rig.node("large", topology=big_topology(4))  # 64 cores
    nodes = rig.wait("every stage bound", lambda: _bound(rig, pods))
    assert set(nodes.values()) == {large}


def test_two_jobs_competing_for_the_same_chips_never_deadlock_half_placed(rig: Rig) -> None:
    """Two jobs that each fill the only node: one is placed whole, the other waits whole, then follows."""
    only = rig.node("only")
    # Created interleaved, stage by stage, as two controllers racing would.
    a, b = rig.name("job-a"), rig.name("job-b")
    pods_a: list[str] = []
    pods_b: list[str] = []
    for i in range(2):
        for job, names in ((a, pods_a), (b, pods_b)):
            pod = stage_pod(job, i, 2, 12, keps=300, gated=True, scheduler=SCHEDULER)
            for key in ("uid", "creationTimestamp"):
                pod["metadata"].pop(key)
            rig.create_pod(pod)
            names.append(pod["metadata"]["name"])

    def one_whole() -> tuple[list[str], list[str]] | None:
        bound_a, bound_b = _bound(rig, pods_a), _bound(rig, pods_b)
        if bound_a and not bound_b:
            return pods_a, pods_b
        if bound_b and not bound_a:
            return pods_b, pods_a
        return None

    winner, loser = rig.wait("one job bound whole", one_whole)
    time.sleep(3)  # give the scheduler every chance to place a loser's stage, if it were going to
    for p in loser:
        pod = rig.pod(p)
        assert not pod["spec"].get("nodeName"), f"{p} bound while its job could not be placed whole"
        assert _gated(pod)
    assert all(rig.pod(p)["spec"]["nodeName"] == only for p in winner)
    # The winner finishes; the loser is then placed whole.
    for p in winner:
        rig.delete_pod(p)
    nodes = rig.wait("the waiting job bound whole", lambda: _bound(rig, loser))
    assert set(nodes.values()) == {only}


def test_an_unhealthy_node_is_filtered_out(rig: Rig) -> None:
    """A node whose daemon reports no healthy cores is filtered out (with our reason), though its status, which
    lags, still lists capacity; a pod that may only go there stays Pending with that reason."""
    healthy = rig.node("healthy")
    sick = rig.node("sick", healthy=0)
    selector = {"snnrm.io/e2e": rig.tag}
    pod = stage_pod(rig.name("solo"), 0, 1, 4, scheduler=SCHEDULER)
    for key in ("uid", "creationTimestamp"):
        pod["metadata"].pop(key)
    pod["spec"]["nodeSelector"] = selector
    rig.create_pod(pod)
    nodes = rig.wait("bound", lambda: _bound(rig, [pod["metadata"]["name"]]))
    assert nodes[pod["metadata"]["name"]] == healthy

    pinned = stage_pod(rig.name("pinned"), 0, 1, 4, scheduler=SCHEDULER)
    for key in ("uid", "creationTimestamp"):
        pinned["metadata"].pop(key)
    pinned["spec"]["nodeSelector"] = {"kubernetes.io/hostname": sick}
    rig.create_pod(pinned)

    def unschedulable_message() -> str | None:
        conds = rig.pod(pinned["metadata"]["name"]).get("status", {}).get("conditions", [])
        for c in conds:
            if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable":
                return str(c.get("message"))
        return None

    message = rig.wait("Unschedulable with our reason", unschedulable_message)
    assert "needs 4 free healthy snnrm.io/neuron-core, node has 0" in message
    assert not rig.pod(pinned["metadata"]["name"])["spec"].get("nodeName")


def test_prioritize_steers_an_ungated_stage_next_to_its_neighbour(rig: Rig) -> None:
    """Without a gate, the extender's score brings stage 1 to the node where stage 0 runs, over an emptier node."""
    near = rig.node("near", free=24)
    rig.node("empty")
    job = rig.name("steer")
    first = stage_pod(job, 0, 2, 4, keps=2000, scheduler=SCHEDULER, node=near)
    second = stage_pod(job, 1, 2, 4, scheduler=SCHEDULER)
    for pod in (first, second):
        for key in ("uid", "creationTimestamp"):
            pod["metadata"].pop(key)
        pod["spec"]["nodeSelector"] = {"snnrm.io/e2e": rig.tag}
    rig.create_pod(first)
    rig.wait("stage 0 seen by the controller", lambda: any(j["job"] == job for j in rig.placement()["jobs"]))
    rig.create_pod(second)
    nodes = rig.wait("stage 1 bound", lambda: _bound(rig, [second["metadata"]["name"]]))
    assert nodes[second["metadata"]["name"]] == near


def test_the_controller_reports_the_gang_mechanism(rig: Rig, stack: tuple[str, list[Proc]]) -> None:
    """This apiserver does not serve scheduling.k8s.io PodGroups (alpha, off), so the gate is the mechanism."""
    controller = stack[1][0]
    log = Path(controller.log).read_text(errors="replace")
    assert "gang_mechanism" in log
    assert "fallback_gate=True" in log or '"fallback_gate": true' in log
