"""The DRA driver against real Kubernetes components (v1.37.2, built from Go modules): the real kube-apiserver
stores our ResourceSlices, the real kube-scheduler allocates ResourceClaims from them (partitionable chips,
consumable throughput, matchAttribute constraints, device taints), and the upstream kubelet DRA manager
(pkg/kubelet/cm/dra + pkg/kubelet/pluginmanager, in tests/e2e/dra) registers ``snnrm run --dra only`` and drives
NodePrepareResources / NodeUnprepareResources and the resource health stream.

No feature gate is set: in 1.37 DRA is GA, partitionable devices and consumable capacity are beta (on by
default), device taints are GA. test_dra_e2e_gates.py runs an apiserver with those features off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_controlplane import ControlPlane, KubeClient, KubeError
from e2e_dra import (
    CHIPS,
    CORES,
    DRIVER,
    RESOURCE,
    DraNode,
    allocation,
    bound,
    claim_with_pod,
    first_bound,
    node_slices,
    release,
    request,
    running_dra_node,
    unschedulable,
    wait_until,
)
from e2e_support import REPO, tool

pytestmark = pytest.mark.e2e


@pytest.fixture
async def dra_node(control_plane: ControlPlane, short_tmp: Path, tmp_path: Path) -> AsyncIterator[DraNode]:
    """A fresh Node, the upstream kubelet DRA manager for it, and ``snnrm run --dra only`` publishing its pool."""
    async with running_dra_node(control_plane, short_tmp, tmp_path, expect=CHIPS * CORES + 2 * CHIPS) as n:
        yield n


async def test_pool_is_published_within_api_limits_and_does_not_churn(dra_node: DraNode) -> None:
    slices = node_slices(dra_node.k, dra_node.name)
    # one slice of counter sets, then 72 devices cut at 64 (counters and taints in use)
    assert len(slices) == 3
    assert {s["spec"]["pool"]["name"] for s in slices} == {dra_node.name}
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {3}
    assert len({s["spec"]["pool"]["generation"] for s in slices}) == 1
    counters = [s for s in slices if s["spec"].get("sharedCounters")]
    assert len(counters) == 1
    assert counters[0]["spec"]["sharedCounters"][0] == {"name": "chip0", "counters": {"cores": {"value": "16"}}}
    assert all(s["metadata"]["ownerReferences"][0]["name"] == dra_node.name for s in slices)
    devs = dra_node.devices()
    assert devs["chip2-g5"]["consumesCounters"] == [{"counterSet": "chip2", "counters": {"cores": {"value": "1"}}}]
    assert devs["chip2-ev"]["capacity"]["snnrm.io/keps"]["value"] == "32k"
    assert devs["chip2-ev"]["allowMultipleAllocations"] is True
    versions = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in slices}
    await asyncio.sleep(6)  # more than the attribute rate limit: headroom noise must not rewrite anything
    assert {
        s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in node_slices(dra_node.k, dra_node.name)
    } == (versions)


async def test_scheduler_allocates_split_stages_on_one_chip_and_kubelet_prepares_them(dra_node: DraNode) -> None:
    """Two stages of a split model, matchAttribute snnrm.io/chip: the real scheduler picks two core groups of one
    chip; the upstream kubelet DRA manager prepares the claim through our plugin and gets CDI devices back."""
    k = dra_node.k
    claim, pod = claim_with_pod(
        k,
        dra_node.name,
        [request("stage-a", "snnrm-core-group"), request("stage-b", "snnrm-core-group")],
        constraints=[{"requests": ["stage-a", "stage-b"], "matchAttribute": "snnrm.io/chip"}],
    )
    bound(k, pod, dra_node.name)
    results = allocation(k, claim)
    assert {r["request"] for r in results} == {"stage-a", "stage-b"}
    assert {r["driver"] for r in results} == {DRIVER}
    assert {r["pool"] for r in results} == {dra_node.name}
    chips = {r["device"].split("-")[0] for r in results}
    assert len(chips) == 1, results

    reply = await dra_node.harness.cmd(f"prepare default {pod}")
    ids = reply["cdi"]["stage"]
    assert len(ids) == 2
    assert all(i.startswith("snnrm.io/claim=") for i in ids)
    claim_uid = k.get(f"/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/{claim}")["metadata"]["uid"]
    spec = json.loads((dra_node.cdi_dir / f"snnrm.io-claim-{claim_uid}.json").read_text())
    assert {f"{spec['kind']}={d['name']}" for d in spec["devices"]} == set(ids)
    # Prepared again (a kubelet retry, or a second pod): answered from our checkpoint, same devices.
    assert (await dra_node.harness.cmd(f"prepare default {pod}"))["cdi"] == reply["cdi"]

    health = await dra_node.harness.cmd(f"health default {pod}")
    entries = health["containers"]["stage"]["claim:snn"]
    assert {e["id"] for e in entries} == set(ids)
    assert {e["health"] for e in entries} == {"Healthy"}

    await dra_node.harness.cmd(f"unprepare default {pod}")
    assert not (dra_node.cdi_dir / f"snnrm.io-claim-{claim_uid}.json").exists()


async def test_a_fault_taints_the_device_and_the_scheduler_stops_choosing_it(dra_node: DraNode) -> None:
    k = dra_node.k
    # A prepared pod on chip 1's group 6: its health turns Unhealthy through the kubelet's health stream.
    only_g6 = 'device.attributes["snnrm.io"].chip == 1 && device.attributes["snnrm.io"].routerDomain == 22'
    held_claim, held = claim_with_pod(k, dra_node.name, [request("s", "snnrm-core-group", cel=only_g6)])
    bound(k, held, dra_node.name)
    assert [r["device"] for r in allocation(k, held_claim)] == ["chip1-g6"]
    prepared = await dra_node.harness.cmd(f"prepare default {held}")

    fault = await dra_node.fault(chip=1, core=6)
    await wait_until(lambda: "taints" in dra_node.devices()["chip1-g6"], what="taint on chip1-g6")
    taint = dra_node.devices()["chip1-g6"]["taints"][0]
    assert (taint["key"], taint["value"], taint["effect"]) == ("snnrm.io/unhealthy", "failed", "NoExecute")
    assert taint.get("timeAdded")  # set by the apiserver, kept by us on later updates
    assert dra_node.devices()["chip1"]["taints"][0]["effect"] == "NoExecute"

    # What the kubelet would write into the pod's status.containerStatuses[].allocatedResourcesStatus:
    for _ in range(100):
        reply = await dra_node.harness.cmd(f"health default {held}")
        if {e["health"] for e in reply["containers"]["stage"]["claim:snn"]} == {"Unhealthy"}:
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError(f"pod status never showed the device Unhealthy: {reply}")
    assert reply["containers"]["stage"]["claim:snn"][0]["message"] == "1 of 1 cores not healthy (failed)"
    updates = await dra_node.harness.cmd("updates")
    assert prepared["pod_uid"] in updates["pod_uids"]

    # The scheduler refuses the tainted device (and the chip, tainted too) to claims that do not tolerate it...
    refused_claim, refused = claim_with_pod(k, dra_node.name, [request("s", "snnrm-core-group", cel=only_g6)])
    chip1 = 'device.attributes["snnrm.io"].chip == 1'
    refused_chip_claim, refused_chip = claim_with_pod(k, dra_node.name, [request("s", "snnrm-chip", cel=chip1)])
    unschedulable(k, refused)
    unschedulable(k, refused_chip)
    # ...but not to one that tolerates it (so the taint is the reason), nor are the chip's other groups affected.
    tolerant_claim, tolerant = claim_with_pod(
        k, dra_node.name, [request("s", "snnrm-core-group", cel=only_g6, tolerate=True)]
    )
    await dra_node.harness.cmd(f"unprepare default {held}")  # free chip1-g6 for the tolerant claim
    release(k, held_claim, held)
    bound(k, tolerant, dra_node.name)
    assert [r["device"] for r in allocation(k, tolerant_claim)] == ["chip1-g6"]
    other_claim, other = claim_with_pod(k, dra_node.name, [request("s", "snnrm-core-group", cel=chip1)])
    bound(k, other, dra_node.name)
    assert allocation(k, other_claim)[0]["device"] != "chip1-g6"

    # Recovery: the taint goes (after the health machine's recover dwell) and the scheduler chooses the device
    # again for the claim that waited for it; once that one is gone, the whole chip is allocatable too.
    release(k, other_claim, other)
    release(k, tolerant_claim, tolerant)
    await dra_node.clear(fault)
    await wait_until(lambda: "taints" not in dra_node.devices()["chip1-g6"], within=30, what="taint cleared")
    assert "taints" not in dra_node.devices()["chip1"]
    # Both waiting pods are schedulable again and compete for chip 1 (the chip and its groups are never allocated
    # together): whichever the scheduler's queue takes first binds (its backoff decides), and the other waits for it.
    waiting = {refused: (refused_claim, ["chip1-g6"]), refused_chip: (refused_chip_claim, ["chip1"])}
    first = await first_bound(k, list(waiting), dra_node.name, within=60)
    claim, want = waiting.pop(first)
    assert [r["device"] for r in allocation(k, claim)] == want
    unschedulable(k, next(iter(waiting)))
    release(k, claim, first)
    [(second, (claim, want))] = waiting.items()
    bound(k, second, dra_node.name, within=60)
    assert [r["device"] for r in allocation(k, claim)] == want


async def test_partitionable_chip_and_its_groups_are_never_allocated_together(dra_node: DraNode) -> None:
    k = dra_node.k
    chip3 = 'device.attributes["snnrm.io"].chip == 3'
    group_claim, group_pod = claim_with_pod(k, dra_node.name, [request("s", "snnrm-core-group", cel=chip3)])
    bound(k, group_pod, dra_node.name)
    _, chip_pod = claim_with_pod(k, dra_node.name, [request("s", "snnrm-chip", cel=chip3)])
    unschedulable(k, chip_pod)  # chip3's counter set has 15 of 16 cores left; the chip needs 16
    whole_claim, whole_pod = claim_with_pod(k, dra_node.name, [request("s", "snnrm-chip")])
    bound(k, whole_pod, dra_node.name)
    assert allocation(k, whole_claim)[0]["device"] != "chip3"
    assert allocation(k, group_claim)[0]["device"].startswith("chip3-g")


async def test_event_throughput_is_shared_by_capacity(dra_node: DraNode) -> None:
    k = dra_node.k
    chip0 = 'device.attributes["snnrm.io"].chip == 0'
    a_claim, a = claim_with_pod(k, dra_node.name, [request("ev", "snnrm-event-throughput", cel=chip0, keps="20k")])
    bound(k, a, dra_node.name)
    result = allocation(k, a_claim)[0]
    assert result["device"] == "chip0-ev"
    assert result["consumedCapacity"] == {"snnrm.io/keps": "20k"}
    assert result.get("shareID")
    _, too_much = claim_with_pod(k, dra_node.name, [request("ev", "snnrm-event-throughput", cel=chip0, keps="20k")])
    unschedulable(k, too_much)  # 20k + 20k > 32k on chip0
    b_claim, b = claim_with_pod(k, dra_node.name, [request("ev", "snnrm-event-throughput", cel=chip0, keps="2500")])
    bound(k, b, dra_node.name)
    rb = allocation(k, b_claim)[0]
    assert rb["device"] == "chip0-ev"
    assert rb["consumedCapacity"] == {"snnrm.io/keps": "3k"}  # rounded up to the 1k step of the request policy
    assert rb["shareID"] != result["shareID"]
    reply = await dra_node.harness.cmd(f"prepare default {b}")
    (cdi_id,) = reply["cdi"]["stage"]
    assert cdi_id.endswith(rb["shareID"])


async def test_kubelet_restart_wipes_the_pool_and_we_publish_it_again(dra_node: DraNode) -> None:
    k = dra_node.k
    before = max(s["spec"]["pool"]["generation"] for s in node_slices(k, dra_node.name))
    claim, pod = claim_with_pod(k, dra_node.name, [request("s", "snnrm-core-group")])
    bound(k, pod, dra_node.name)
    first = await dra_node.harness.cmd(f"prepare default {pod}")
    # A restarted kubelet deletes every ResourceSlice of its node, rescans plugins_registry and registers us again.
    await dra_node.harness.cmd("restart")
    await dra_node.harness.cmd(f"registered {DRIVER} 30")
    expected = CHIPS * CORES + 2 * CHIPS

    def republished() -> bool:
        slices = node_slices(k, dra_node.name)
        gens = {s["spec"]["pool"]["generation"] for s in slices}
        return len(slices) == 3 and gens == {max(gens)} and max(gens) > before and len(dra_node.devices()) == expected

    await wait_until(republished, within=30, what="pool republished after the kubelet wiped it")
    # The kubelet's checkpoint and ours agree: preparing the running pod again gives the same devices.
    assert (await dra_node.harness.cmd(f"prepare default {pod}"))["cdi"] == first["cdi"]
    await dra_node.harness.cmd(f"unprepare default {pod}")
    del claim


# --- the chart's DRA objects, applied to the real apiserver and allocated by the real scheduler -----------------


def chart_objects(namespace: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart's dra-* templates with DRA on (schema skipped: the dra values are documented
    in docs/dra.md until values.schema.json lists them), as JSON objects."""
    out = subprocess.run(
        [
            str(tool("SNNRM_HELM", "helm")),
            "template",
            "e2e",
            str(REPO / "charts" / "snnrm"),
            "--namespace",
            namespace,
            "--skip-schema-validation",
            "--set",
            "dra.mode=only",
            "--set",
            "dra.classPrefix=chart",
            "--set",
            "dra.examples.enabled=true",
            "--set",
            "dra.coreGroupExtendedResourceName=snnrm.io/chart-core-group",
            "--show-only",
            "templates/dra-deviceclasses.yaml",
            "--show-only",
            "templates/dra-split-learning-example.yaml",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def apply(k: KubeClient, obj: dict[str, Any]) -> None:
    ns = obj["metadata"].get("namespace")
    plural = {"DeviceClass": "deviceclasses", "ResourceClaimTemplate": "resourceclaimtemplates"}[obj["kind"]]
    path = f"/apis/resource.k8s.io/v1{f'/namespaces/{ns}' if ns else ''}/{plural}"
    with contextlib.suppress(KubeError):
        k.delete(f"{path}/{obj['metadata']['name']}")
    k.create(path, obj)


async def test_chart_split_learning_template_allocates_stages_per_container(dra_node: DraNode) -> None:
    k = dra_node.k
    objs = {o["metadata"]["name"]: o for o in chart_objects("default")}
    assert set(objs) == {
        "chart-core-group",
        "chart-chip",
        "chart-event-throughput",
        "chart-split-learning-one-chip",
        "chart-split-learning-adjacent",
    }
    for o in objs.values():
        apply(k, o)  # the apiserver validates every CEL expression, constraint and capacity request
    # What the resourceclaim controller does for a pod's resourceClaimTemplateName: a claim with the template's spec.
    spec = objs["chart-split-learning-one-chip"]["spec"]["spec"]
    claim, pod = f"split-{uuid.uuid4().hex[:6]}", f"split-{uuid.uuid4().hex[:6]}"
    k.create(f"{RESOURCE}/namespaces/default/resourceclaims", {"metadata": {"name": claim}, "spec": spec})
    containers = [
        {
            "name": "encoder",
            "image": "registry.invalid/none",
            "resources": {"claims": [{"name": "snn", "request": "encoder"}, {"name": "snn", "request": "spikes"}]},
        },
        {
            "name": "decoder",
            "image": "registry.invalid/none",
            "resources": {"claims": [{"name": "snn", "request": "decoder"}]},
        },
    ]
    k.create(
        "/api/v1/namespaces/default/pods",
        {
            "metadata": {"name": pod},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": dra_node.name},
                "resourceClaims": [{"name": "snn", "resourceClaimName": claim}],
                "containers": containers,
            },
        },
    )
    bound(k, pod, dra_node.name)
    results = {r["request"]: r["device"] for r in allocation(k, claim)}
    assert set(results) == {"encoder", "decoder", "spikes"}
    chips = {d.split("-")[0] for d in results.values()}
    assert len(chips) == 1, results
    assert results["spikes"].endswith("-ev")
    reply = await dra_node.harness.cmd(f"prepare default {pod}")
    # Each container gets the CDI devices of exactly its own requests.
    assert len(reply["cdi"]["encoder"]) == 2
    assert len(reply["cdi"]["decoder"]) == 1
    assert results["decoder"] in reply["cdi"]["decoder"][0]

    adjacent = objs["chart-split-learning-adjacent"]["spec"]["spec"]
    claim2, pod2 = claim_with_pod(
        k, dra_node.name, adjacent["devices"]["requests"], constraints=adjacent["devices"]["constraints"]
    )
    bound(k, pod2, dra_node.name)
    pair = {int(r["device"].removeprefix("chip")) for r in allocation(k, claim2)}
    assert len(pair) == 2
    assert pair in ({0, 1}, {2, 3})  # a 2x2 board: chips 0,1 and 2,3 are row neighbours


async def test_extended_resource_requests_are_served_by_dra(dra_node: DraNode) -> None:
    """KEP-5004: with the chart's extendedResourceName on the core-group class, a pod that asks for
    ``snnrm.io/chart-core-group: 2`` the device-plugin way is allocated two core groups from our slices."""
    k = dra_node.k
    for o in chart_objects("default"):
        if o["kind"] == "DeviceClass":
            apply(k, o)
    pod = f"ext-{uuid.uuid4().hex[:6]}"
    limits = {"snnrm.io/chart-core-group": "2"}
    k.create(
        "/api/v1/namespaces/default/pods",
        {
            "metadata": {"name": pod},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": dra_node.name},
                "containers": [
                    {
                        "name": "stage",
                        "image": "registry.invalid/none",
                        "resources": {"limits": limits, "requests": limits},
                    },
                ],
            },
        },
    )
    p = bound(k, pod, dra_node.name)
    status = k.get(f"/api/v1/namespaces/default/pods/{pod}")["status"].get("extendedResourceClaimStatus") or {}
    assert status.get("resourceClaimName"), p
    results = allocation(k, status["resourceClaimName"])
    assert len(results) == 2
    assert all(r["driver"] == DRIVER and "-g" in r["device"] for r in results)
    reply = await dra_node.harness.cmd(f"prepare default {pod}")
    assert len(reply["cdi"]["stage"]) == 2


async def test_daemon_restart_keeps_the_pool_and_the_prepared_claims(dra_node: DraNode) -> None:
    """A DaemonSet rollout: the daemon goes away (the kubelet deregisters it and would wipe its slices after 30 s)
    and comes back well within that. The pool is still there under the same names, the kubelet unprepares the
    claim through the new process (its CDI spec goes), and preparing again gives the same device."""
    k = dra_node.k
    claim, pod = claim_with_pod(k, dra_node.name, [request("s", "snnrm-core-group")])
    bound(k, pod, dra_node.name)
    first = await dra_node.harness.cmd(f"prepare default {pod}")
    uid = k.get(f"{RESOURCE}/namespaces/default/resourceclaims/{claim}")["metadata"]["uid"]
    spec = dra_node.cdi_dir / f"snnrm.io-claim-{uid}.json"
    assert spec.exists()
    before = {s["metadata"]["name"] for s in node_slices(k, dra_node.name)}
    await dra_node.daemon.restart()
    await dra_node.harness.cmd(f"registered {DRIVER} 30")
    await wait_until(lambda: len(dra_node.devices()) == CHIPS * CORES + 2 * CHIPS, what="pool after restart")
    assert {s["metadata"]["name"] for s in node_slices(k, dra_node.name)} == before
    assert spec.exists()
    await dra_node.harness.cmd(f"unprepare default {pod}")
    assert not spec.exists()
    again = await dra_node.harness.cmd(f"prepare default {pod}")
    assert again["cdi"] == first["cdi"]
    assert allocation(k, claim)[0]["device"] in first["cdi"]["stage"][0]


async def test_the_readme_dra_example_runs(dra_node: DraNode) -> None:
    """The YAML of docs/dra.md's "Device plugin or DRA?" section, as written (pinned to this node, names made
    unique): the scheduler allocates it and the kubelet gives each stage container its own core group."""
    text = (REPO / "docs" / "dra.md").read_text()
    section = text[text.index("## Device plugin or DRA?") :]
    block = section[section.index("**DRA**") :]
    block = block[block.index("```yaml") + len("```yaml") : block.index("```", block.index("```yaml") + 7)]
    docs = {d["kind"]: d for d in yaml.safe_load_all(block)}
    assert set(docs) == {"DeviceClass", "ResourceClaim", "Pod"}
    k = dra_node.k
    with contextlib.suppress(KubeError):  # the fixture created the same class already
        k.create(f"{RESOURCE}/deviceclasses", docs["DeviceClass"])
    suffix = uuid.uuid4().hex[:6]
    claim, pod = docs["ResourceClaim"], docs["Pod"]
    claim["metadata"]["name"] = f"split-job-{suffix}"
    pod["metadata"]["name"] = f"split-job-{suffix}"
    pod["spec"]["resourceClaims"][0]["resourceClaimName"] = claim["metadata"]["name"]
    pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": dra_node.name}
    k.create(f"{RESOURCE}/namespaces/default/resourceclaims", claim)
    k.create("/api/v1/namespaces/default/pods", pod)
    bound(k, pod["metadata"]["name"], dra_node.name)
    results = {r["request"]: r["device"] for r in allocation(k, claim["metadata"]["name"])}
    assert results["encoder"].split("-")[0] == results["decoder"].split("-")[0]
    reply = await dra_node.harness.cmd(f"prepare default {pod['metadata']['name']}")
    assert results["encoder"] in reply["cdi"]["encoder"][0]
    assert results["decoder"] in reply["cdi"]["decoder"][0]
    spec = json.loads(next(dra_node.cdi_dir.glob("snnrm.io-claim-*.json")).read_text())
    env = {e.split("=")[0] for d in spec["devices"] for e in d["containerEdits"]["env"]}
    assert f"SNNRM_DRA_{results['encoder'].upper().replace('-', '_')}" in env


async def test_rest_client_against_the_real_apiserver(control_plane: ControlPlane, tmp_path: Path) -> None:
    """snnrm.kube.dra.DraApi over the one client (snnrm.kube.client.KubeAsyncApi): optimistic concurrency,
    preconditioned deletes, dry runs, watches and errors as the real apiserver gives them."""
    from snnrm.core.dra import probe_slice
    from snnrm.kube.api import ConflictError, KubeError, NotFoundError
    from snnrm.kube.client import KubeAsyncApi
    from snnrm.kube.dra import DRA_TIMEOUT, DraApi

    node = f"rest-{uuid.uuid4().hex[:6]}"
    async with await KubeAsyncApi.connect(control_plane.kubeconfig) as client:
        api = DraApi(client.with_timeout(DRA_TIMEOUT))
        body = probe_slice(node, DRIVER)
        body["metadata"]["name"] = f"{node}-x"
        dry = await api.create_slice(body, dry_run=True)
        assert dry["spec"]["devices"][0]["taints"][0]["effect"] == "NoSchedule"
        assert (await api.list_slices(node=node, driver=DRIVER))[0] == []  # a dry run stores nothing
        created = await api.create_slice(body)
        rv = created["metadata"]["resourceVersion"]
        items, list_rv = await api.list_slices(node=node, driver=DRIVER)
        assert [i["metadata"]["name"] for i in items] == [body["metadata"]["name"]]
        with pytest.raises(ConflictError) as exists:
            await api.create_slice(body)
        assert (exists.value.status, exists.value.reason) == (409, "AlreadyExists")
        stale = {**created, "metadata": {**created["metadata"], "resourceVersion": "1"}}
        with pytest.raises(ConflictError) as conflict:
            await api.update_slice(stale)
        assert conflict.value.status == 409
        fewer = {**created, "spec": {**created["spec"], "devices": created["spec"]["devices"][:1]}}
        updated = await api.update_slice(fewer)
        with pytest.raises(ConflictError) as precondition:
            await api.delete_slice(body["metadata"]["name"], resource_version=rv)
        assert precondition.value.status == 409
        events: list[tuple[str, str]] = []

        async def watch() -> None:
            async for kind, obj in api.watch_slices(node=node, driver=DRIVER, resource_version=list_rv):
                events.append((kind, obj["metadata"]["name"]))
                if kind == "DELETED":
                    return

        watcher = asyncio.create_task(watch())
        await api.delete_slice(body["metadata"]["name"], resource_version=updated["metadata"]["resourceVersion"])
        await asyncio.wait_for(watcher, 10)
        assert events == [("MODIFIED", body["metadata"]["name"]), ("DELETED", body["metadata"]["name"])]
        await api.delete_slice(body["metadata"]["name"])  # already gone: fine
        with pytest.raises(NotFoundError) as missing:
            await api.get_claim("default", "no-such-claim")
        assert missing.value.status == 404
        assert isinstance(missing.value, KubeError)
        assert not missing.value.retryable
        assert await api.get_node("no-such-node") is None
