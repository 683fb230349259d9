"""The DRA kubelet plugin over real grpc.aio on real unix sockets: registration as the kubelet's plugin watcher does
it, NodePrepareResources / NodeUnprepareResources (batched, idempotent, CDI spec on disk before the answer,
surviving a plugin restart), and the resource health stream. The apiserver is the in-memory fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from snnrm.core.dra import DRIVER, TAINT_KEY, DraLayout, HardwareInfo
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.dra.plugin import DraPlugin
from snnrm.dra.view import DraView
from snnrm.kube.api import RESOURCE_CLAIMS
from snnrm.kube.dra import DraApi
from snnrm.kubelet.protos.dra.v1 import api_pb2 as dra
from snnrm.kubelet.protos.dra_health.v1 import api_pb2 as health
from snnrm.kubelet.protos.pluginregistration.v1 import api_pb2 as reg
from snnrm.testing.fake_cluster import FakeClusterApi
from snnrm.testing.fake_telemetry import StaticTelemetry

NODE = "node-1"
V1 = "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"
V1BETA1 = "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-dra-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Node:
    plugin: DraPlugin
    task: asyncio.Task[None]
    kube: FakeClusterApi
    telemetry: StaticTelemetry
    dir: Path

    @property
    def cdi_dir(self) -> Path:
        return self.dir / "cdi"


def make_plugin(d: Path, kube: FakeClusterApi, tel: StaticTelemetry, layout: DraLayout) -> DraPlugin:
    view = DraView(layout, tel, period=0.02)
    return DraPlugin(
        node=NODE,
        registry_dir=d / "plugins_registry",
        plugin_dir=d / "plugins" / DRIVER,
        view=view,
        api=DraApi(kube),
        state_dir=d / "state",
        cdi_dir=d / "cdi",
        info=HardwareInfo(model="loihi2"),
        publish=False,
        heartbeat=0.3,
        poll_interval=0.05,
    )


@contextlib.asynccontextmanager
async def running(
    d: Path, kube: FakeClusterApi | None = None, tel: StaticTelemetry | None = None
) -> AsyncIterator[Node]:
    t = Topology.grid(chips=2, geometry=ChipGeometry(cols=2, rows=2, cores_per_router=2))
    kube = kube or FakeClusterApi()
    tel = tel or StaticTelemetry(t)
    plugin = make_plugin(d, kube, tel, DraLayout.build(t))
    task = asyncio.create_task(plugin.run())
    try:
        await asyncio.wait_for(plugin.serving.wait(), 5)
        yield Node(plugin, task, kube, tel, d)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def node(short_dir: Path) -> AsyncIterator[Node]:
    async with running(short_dir) as n:
        yield n


def allocated(uid: str, name: str, *results: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": name, "uid": uid},
        "status": {"allocation": {"devices": {"results": list(results)}}, "reservedFor": []},
    }


def result(device: str, request: str = "stage", **extra: Any) -> dict[str, Any]:
    return {"request": request, "driver": DRIVER, "pool": NODE, "device": device, **extra}


async def call(socket: Path, method: str, request: Any, response_type: Any) -> Any:
    async with grpc.aio.insecure_channel(f"unix://{socket}") as ch:
        rpc = ch.unary_unary(
            method, request_serializer=type(request).SerializeToString, response_deserializer=response_type.FromString
        )
        return await rpc(request, timeout=10)


async def prepare(n: Node, *claims: tuple[str, str], service: str = V1) -> dra.NodePrepareResourcesResponse:
    req = dra.NodePrepareResourcesRequest(claims=[dra.Claim(namespace="ml", uid=u, name=m) for u, m in claims])
    out: dra.NodePrepareResourcesResponse = await call(
        n.plugin.service_socket, f"{service}/NodePrepareResources", req, dra.NodePrepareResourcesResponse
    )
    return out


async def unprepare(n: Node, *claims: tuple[str, str]) -> dra.NodeUnprepareResourcesResponse:
    req = dra.NodeUnprepareResourcesRequest(claims=[dra.Claim(namespace="ml", uid=u, name=m) for u, m in claims])
    out: dra.NodeUnprepareResourcesResponse = await call(
        n.plugin.service_socket, f"{V1}/NodeUnprepareResources", req, dra.NodeUnprepareResourcesResponse
    )
    return out


# --- registration -----------------------------------------------------------------------------------------------


async def test_registration_as_the_kubelet_plugin_watcher_sees_it(node: Node) -> None:
    sock = node.dir / "plugins_registry" / f"{DRIVER}-reg.sock"
    assert sock.exists()
    info = await call(sock, "/pluginregistration.Registration/GetInfo", reg.InfoRequest(), reg.PluginInfo)
    assert info.type == "DRAPlugin"
    assert info.name == DRIVER
    assert info.endpoint == str(node.plugin.service_socket)
    assert Path(info.endpoint).is_absolute()
    assert list(info.supported_versions) == [
        "v1.DRAPlugin",
        "v1beta1.DRAPlugin",
        "v1.DRAResourceHealth",
        "v1alpha1.DRAResourceHealth",
    ]
    assert not node.plugin.registered.is_set()
    await call(
        sock,
        "/pluginregistration.Registration/NotifyRegistrationStatus",
        reg.RegistrationStatus(plugin_registered=True),
        reg.RegistrationStatusResponse,
    )
    assert node.plugin.registered.is_set()
    failed = reg.RegistrationStatus(plugin_registered=False, error="bad")
    await call(
        sock, "/pluginregistration.Registration/NotifyRegistrationStatus", failed, reg.RegistrationStatusResponse
    )
    assert not node.plugin.registered.is_set()
    assert node.plugin.registration.last_error == "bad"


async def test_a_deleted_registration_socket_is_recreated(node: Node) -> None:
    sock = node.dir / "plugins_registry" / f"{DRIVER}-reg.sock"
    sock.unlink()
    async with asyncio.timeout(5):
        while not sock.exists():  # noqa: ASYNC110 - polling the file system, as the kubelet's watcher does
            await asyncio.sleep(0.02)
    info = await call(sock, "/pluginregistration.Registration/GetInfo", reg.InfoRequest(), reg.PluginInfo)
    assert info.name == DRIVER
    assert node.plugin.restarts == 1


async def test_sockets_are_removed_on_stop(short_dir: Path) -> None:
    async with running(short_dir) as n:
        sockets = [n.plugin.service_socket, n.plugin.registry_socket]
        assert all(s.exists() for s in sockets)
    assert not any(s.exists() for s in sockets)


# --- prepare / unprepare ----------------------------------------------------------------------------------------


async def test_prepare_batch_answers_every_claim_and_writes_cdi_first(node: Node) -> None:
    node.kube.put_claim(allocated("u1", "good", result("chip0-g1"), result("chip1", request="whole")))
    node.kube.put_claim({"metadata": {"namespace": "ml", "name": "pending", "uid": "u2"}, "status": {}})
    node.kube.put_claim(allocated("u4", "elsewhere", {**result("chip0-g0"), "pool": "node-2"}))
    resp = await prepare(node, ("u1", "good"), ("u2", "pending"), ("u3", "missing"), ("u4", "elsewhere"))
    assert set(resp.claims) == {"u1", "u2", "u3", "u4"}
    assert "not allocated" in resp.claims["u2"].error
    assert "404" in resp.claims["u3"].error
    assert "pool 'node-2'" in resp.claims["u4"].error
    good = resp.claims["u1"]
    assert good.error == ""
    assert [(d.device_name, d.pool_name, list(d.request_names)) for d in good.devices] == [
        ("chip0-g1", NODE, ["stage"]),
        ("chip1", NODE, ["whole"]),
    ]
    spec = json.loads((node.cdi_dir / "snnrm.io-claim-u1.json").read_text())
    names = {f"{spec['kind']}={d['name']}" for d in spec["devices"]}
    assert {i for d in good.devices for i in d.cdi_device_ids} == names
    envs = [e for d in spec["devices"] for e in d["containerEdits"]["env"]]
    assert "SNNRM_DRA_CHIP0_G1=chip0-core2,chip0-core3" in envs
    assert any(e.startswith("SNNRM_DRA_CHIP1=chip1-core0,") for e in envs)
    assert not (node.cdi_dir / "snnrm.io-claim-u2.json").exists()
    checkpoint = json.loads((node.dir / "state" / "dra" / "prepared.json").read_text())
    assert set(checkpoint["claims"]) == {"u1"}


async def test_prepare_is_idempotent_and_restores_a_deleted_spec(node: Node) -> None:
    node.kube.put_claim(allocated("u1", "c", result("chip0-g0")))
    first = await prepare(node, ("u1", "c"))
    reads = node.plugin.servicer.api_reads
    spec = node.cdi_dir / "snnrm.io-claim-u1.json"
    spec.unlink()
    again = await prepare(node, ("u1", "c"))
    assert again == first
    assert node.plugin.servicer.api_reads == reads  # answered from what was prepared, not from the apiserver
    assert spec.exists()


async def test_v1beta1_service_answers_the_same(node: Node) -> None:
    node.kube.put_claim(allocated("u1", "c", result("chip0-g0")))
    assert await prepare(node, ("u1", "c"), service=V1BETA1) == await prepare(node, ("u1", "c"))


async def test_shared_throughput_devices_carry_their_share_id(node: Node) -> None:
    node.kube.put_claim(
        allocated("u1", "c", result("chip0-ev", shareID="6c1a", consumedCapacity={"snnrm.io/keps": "4k"}))
    )
    d = (await prepare(node, ("u1", "c"))).claims["u1"].devices[0]
    assert d.share_id == "6c1a"
    spec = json.loads((node.cdi_dir / "snnrm.io-claim-u1.json").read_text())
    assert spec["devices"][0]["containerEdits"]["env"][0] == "SNNRM_DRA_CHIP0_EV_6C1A=keps=4k"


async def test_unprepare_removes_spec_and_checkpoint_and_is_idempotent(node: Node) -> None:
    node.kube.put_claim(allocated("u1", "c", result("chip0-g0")))
    await prepare(node, ("u1", "c"))
    resp = await unprepare(node, ("u1", "c"), ("u9", "never-prepared"))
    assert set(resp.claims) == {"u1", "u9"}
    assert all(r.error == "" for r in resp.claims.values())
    assert not (node.cdi_dir / "snnrm.io-claim-u1.json").exists()
    assert json.loads((node.dir / "state" / "dra" / "prepared.json").read_text())["claims"] == {}
    assert (await unprepare(node, ("u1", "c"))).claims["u1"].error == ""


async def test_prepared_claims_survive_a_plugin_restart(short_dir: Path) -> None:
    kube = FakeClusterApi()
    kube.put_claim(allocated("u1", "c", result("chip0-g0")))
    async with running(short_dir, kube) as n:
        first = await prepare(n, ("u1", "c"))
    for claim in kube.all(RESOURCE_CLAIMS):  # the restarted plugin must not need the apiserver for a claim it prepared
        kube.delete_obj(RESOURCE_CLAIMS, claim["metadata"]["name"], claim["metadata"]["namespace"])
    async with running(short_dir, kube) as n:
        assert await prepare(n, ("u1", "c")) == first
        await unprepare(n, ("u1", "c"))
        assert not (n.cdi_dir / "snnrm.io-claim-u1.json").exists()


async def test_a_failed_device_is_refused_unless_tolerated(node: Node) -> None:
    node.telemetry.fail(2)  # chip0, router 1 -> chip0-g1
    async with asyncio.timeout(5):
        while not (node.plugin.view.snapshot and node.plugin.view.snapshot.conditions.effect.any()):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    node.kube.put_claim(allocated("u1", "c", result("chip0-g1")))
    node.kube.put_claim(
        allocated("u2", "t", result("chip0-g1", tolerations=[{"key": TAINT_KEY, "operator": "Exists"}]))
    )
    resp = await prepare(node, ("u1", "c"), ("u2", "t"))
    assert "unhealthy" in resp.claims["u1"].error
    assert resp.claims["u2"].error == ""


# --- health stream ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth"])
async def test_health_stream_reports_every_device_and_follows_faults(node: Node, service: str) -> None:
    async with grpc.aio.insecure_channel(f"unix://{node.plugin.service_socket}") as ch:
        rpc = ch.unary_stream(
            f"/{service}/NodeWatchResources",
            request_serializer=health.NodeWatchResourcesRequest.SerializeToString,
            response_deserializer=health.NodeWatchResourcesResponse.FromString,
        )
        stream = rpc(health.NodeWatchResourcesRequest())
        first = await asyncio.wait_for(stream.read(), 5)
        by_name = {d.device.device_name: d for d in first.devices}
        assert set(by_name) == set(node.plugin.view.layout.names)
        assert all(d.health == health.HEALTHY and d.device.pool_name == NODE for d in first.devices)
        assert all(d.health_check_timeout_seconds == 30 and d.last_updated_time > 0 for d in first.devices)
        node.telemetry.fail(2)
        msg = await asyncio.wait_for(stream.read(), 5)
        while msg.devices[node.plugin.view.layout.index_of["chip0-g1"]].health != health.UNHEALTHY:
            msg = await asyncio.wait_for(stream.read(), 5)
        bad = {d.device.device_name: d.message for d in msg.devices if d.health == health.UNHEALTHY}
        assert bad == {"chip0-g1": "1 of 2 cores not healthy (failed)", "chip0": "1 of 8 cores not healthy (failed)"}
        # Heartbeats keep coming without changes (0.3 s here), so the kubelet never times devices out.
        beat = await asyncio.wait_for(stream.read(), 2)
        assert len(beat.devices) == len(first.devices)
        stream.cancel()
