"""The DRA driver on a cluster whose optional DRA features are switched off: a second control plane (v1.37.2) with
``DRAPartitionableDevices``, ``DRAConsumableCapacity``, ``DRADeviceTaints`` (and ``DRADeviceTaintRules``, which
needs it) disabled on kube-apiserver and kube-scheduler, as on a 1.34/1.35 cluster with default gates.

The driver must notice (a dry-run create shows which fields the apiserver drops) and publish only what is safe:
core groups without counters (no chips, which without counters could be handed out together with their groups),
no shared throughput devices, and, with no taints to carry health, a degraded device withheld from its slice
until it recovers. The real scheduler then never chooses it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_dra import (
    CHIPS,
    CORES,
    DraNode,
    GatedControlPlane,
    allocation,
    bound,
    claim_with_pod,
    node_slices,
    release,
    request,
    running_dra_node,
    unschedulable,
    wait_until,
)
from e2e_support import tool

pytestmark = pytest.mark.e2e

GATES = "DRAPartitionableDevices=false,DRAConsumableCapacity=false,DRADeviceTaints=false,DRADeviceTaintRules=false"


@pytest.fixture(scope="module")
def gated_control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatedControlPlane]:
    cp = GatedControlPlane(
        workdir=tmp_path_factory.mktemp("control-plane-gated"),
        etcd_bin=tool("SNNRM_ETCD", "etcd"),
        apiserver_bin=tool("SNNRM_KUBE_APISERVER", "kube-apiserver"),
        scheduler_bin=tool("SNNRM_KUBE_SCHEDULER", "kube-scheduler"),
        feature_gates=GATES,
    )
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


@pytest.fixture
async def plain_node(gated_control_plane: GatedControlPlane, short_tmp: Path, tmp_path: Path) -> AsyncIterator[DraNode]:
    async with running_dra_node(gated_control_plane, short_tmp, tmp_path, expect=CHIPS * CORES) as n:
        yield n


async def test_only_core_groups_without_counters_are_published(plain_node: DraNode) -> None:
    slices = node_slices(plain_node.k, plain_node.name)
    assert len(slices) == 1  # 64 plain devices fit one slice (128 without counters or taints)
    devs = plain_node.devices()
    assert {d["attributes"]["type"]["string"] for d in devs.values()} == {"core-group"}
    assert not any("consumesCounters" in d or "taints" in d for d in devs.values())
    log = plain_node.daemon.log.read_text()
    assert "cluster=none" in log  # the dry-run probe came back with every optional field dropped
    assert "publishing=none" in log


async def test_a_degraded_device_is_withheld_so_the_scheduler_cannot_choose_it(plain_node: DraNode) -> None:
    k = plain_node.k
    only_g9 = 'device.attributes["snnrm.io"].chip == 2 && device.attributes["snnrm.io"].routerDomain == 41'
    fault = await plain_node.fault(chip=2, core=9)
    await wait_until(lambda: "chip2-g9" not in plain_node.devices(), what="chip2-g9 withheld")
    claim, pod = claim_with_pod(k, plain_node.name, [request("s", "snnrm-core-group", cel=only_g9)])
    unschedulable(k, pod)
    await plain_node.clear(fault)
    await wait_until(lambda: "chip2-g9" in plain_node.devices(), within=30, what="chip2-g9 back")
    bound(k, pod, plain_node.name, within=60)
    assert [r["device"] for r in allocation(k, claim)] == ["chip2-g9"]
    release(k, claim, pod)
