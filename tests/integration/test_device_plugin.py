"""The device plugin against the kubelet stand-in: real grpc.aio over real unix sockets in temporary dirs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import structlog

from snnrm.core.devices import (
    EVENT_THROUGHPUT,
    NEURON_CORE,
    ThroughputBlocks,
    event_throughput_devices,
    neuron_core_devices,
)
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.plugin import DevicePlugin
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.standin import AdmissionError, KubeletStandIn
from snnrm.kubelet.state import StaticAllocationState
from snnrm.kubelet.wire import DEVICE_PLUGIN_SERVICE

CHIPS = 2
GEOMETRY = ChipGeometry(cols=4, rows=4)
N_CORES = CHIPS * GEOMETRY.cores


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths are limited to 108 bytes."""
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Node:
    kubelet: KubeletStandIn
    topology: Topology
    blocks: ThroughputBlocks
    cores: DeviceFeed
    throughput: DeviceFeed
    plugins: dict[str, DevicePlugin]
    tasks: dict[str, asyncio.Task[None]]
    dir: Path

    def set_core_health(self, healthy: np.ndarray) -> None:
        self.cores.publish(neuron_core_devices(self.topology, healthy))


@pytest.fixture
async def node(short_dir: Path) -> AsyncIterator[Node]:
    topo = Topology.grid(chips=CHIPS, geometry=GEOMETRY, nominal_keps=100.0)
    blocks = ThroughputBlocks.plan(topo, block_keps=400.0)
    state = StaticAllocationState(topology=topo, blocks=blocks)
    cores = DeviceFeed(NEURON_CORE, neuron_core_devices(topo, np.ones(N_CORES, dtype=bool)))
    every_block = np.bincount(blocks.chip_of_block, minlength=CHIPS)  # healthy blocks per chip: all of them
    throughput = DeviceFeed(EVENT_THROUGHPUT, event_throughput_devices(blocks, topo, every_block))
    kdir = short_dir / "dp"
    async with KubeletStandIn(kdir) as kubelet:
        plugins = {
            feed.resource: DevicePlugin(
                kubelet_dir=kdir,
                resource=feed.resource,
                feed=feed,
                state=state,
                state_dir=short_dir / "state",
                cdi_dir=short_dir / "cdi",
                poll_interval=0.05,
                orphan_grace=0.5,
            )
            for feed in (cores, throughput)
        }
        tasks = {r: asyncio.create_task(p.run(), name=f"plugin {r}") for r, p in plugins.items()}
        try:
            yield Node(kubelet, topo, blocks, cores, throughput, plugins, tasks, short_dir)
        finally:
            for t in tasks.values():
                t.cancel()
            for t in tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await t


async def _plugin_stub(node: Node, resource: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"unix://{node.plugins[resource].socket_path}") as ch:
        yield ch


async def test_plugins_register_and_capacity_matches(node: Node) -> None:
    """Both plugins register with the right request; capacity and allocatable equal the published lists."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    n_blocks = len(node.blocks.ids)
    await node.kubelet.wait_capacity(EVENT_THROUGHPUT, n_blocks, allocatable=n_blocks)
    by_resource = {r.resource_name: r for r in node.kubelet.registrations}
    assert by_resource[NEURON_CORE].version == "v1beta1"
    assert by_resource[NEURON_CORE].endpoint == "snnrm-neuron-core.sock"
    assert by_resource[EVENT_THROUGHPUT].endpoint == "snnrm-event-throughput.sock"
    assert by_resource[NEURON_CORE].options.get_preferred_allocation_available
    assert not by_resource[NEURON_CORE].options.pre_start_required
    assert set(node.kubelet.devices(NEURON_CORE)) == set(node.topology.ids)


async def test_health_change_reaches_kubelet(node: Node) -> None:
    """Marking cores unhealthy through the feed lowers allocatable and keeps capacity; recovery restores it."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    healthy = np.ones(N_CORES, dtype=bool)
    healthy[[1, 5, 20]] = False
    node.set_core_health(healthy)
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES - 3)
    devices = node.kubelet.devices(NEURON_CORE)
    assert not devices["chip0-core1"]
    assert not devices["chip1-core4"]
    assert devices["chip0-core0"]
    node.set_core_health(np.ones(N_CORES, dtype=bool))
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)


async def test_unchanged_publication_sends_nothing(node: Node) -> None:
    """Publishing the same health again sends no ListAndWatch message."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    before = node.kubelet.messages(NEURON_CORE)
    node.set_core_health(np.ones(N_CORES, dtype=bool))
    healthy = np.ones(N_CORES, dtype=bool)
    healthy[0] = False
    node.set_core_health(healthy)
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES - 1)
    assert node.kubelet.messages(NEURON_CORE) == before + 1


async def test_admit_allocates_compact_cores_with_env_mount_and_cdi(node: Node) -> None:
    """Admission goes through GetPreferredAllocation and Allocate; the answer describes the cores."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    await node.kubelet.wait_capacity(EVENT_THROUGHPUT, len(node.blocks.ids))
    out = await node.kubelet.admit("pod-a", "stage0", {NEURON_CORE: 4, EVENT_THROUGHPUT: 2})
    core_resp = out[NEURON_CORE]
    ids = core_resp.envs["SNNRM_CORES"].split(",")
    assert len(ids) == 4
    idx = node.topology.indices(ids)
    assert len(set(node.topology.chip_of[idx].tolist())) == 1  # one chip
    assert float(node.topology.hops(idx[:, None], idx[None, :]).max()) <= 2  # a 2x2 square
    chip = f"chip{int(node.topology.chip_of[idx[0]])}"
    assert core_resp.envs["SNNRM_CHIPS"] == chip
    assert [d.name for d in core_resp.cdi_devices] == [f"snnrm.io/chip={chip}"]
    (mount,) = core_resp.mounts
    assert mount.container_path == "/var/run/snnrm/allocation.json"
    assert mount.read_only
    described = json.loads(Path(mount.host_path).read_bytes())  # noqa: ASYNC240 - tiny local file
    assert [c["id"] for c in described["cores"]] == sorted(ids, key=node.topology.index_of.__getitem__)
    assert Path(mount.host_path).parent == node.dir / "state" / "allocations"
    spec = json.loads((node.dir / "cdi" / "snnrm.io-chip.json").read_text())
    assert spec["kind"] == "snnrm.io/chip"
    assert [d["name"] for d in spec["devices"]] == ["chip0", "chip1"]
    tp = out[EVENT_THROUGHPUT]
    assert tp.envs["SNNRM_EVENT_THROUGHPUT_KEPS"] == "800"
    assert tp.mounts[0].container_path == "/var/run/snnrm/event-throughput.json"
    # The second container gets different cores.
    out2 = await node.kubelet.admit("pod-a", "stage1", {NEURON_CORE: 4})
    assert not set(out2[NEURON_CORE].envs["SNNRM_CORES"].split(",")) & set(ids)


async def test_allocate_rejects_unknown_and_unhealthy_ids(node: Node) -> None:
    """Unknown IDs give INVALID_ARGUMENT, unhealthy ones FAILED_PRECONDITION; no file is written."""
    healthy = np.ones(N_CORES, dtype=bool)
    healthy[3] = False
    node.set_core_health(healthy)
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES - 1)
    async for ch in _plugin_stub(node, NEURON_CORE):
        allocate = ch.unary_unary(
            f"/{DEVICE_PLUGIN_SERVICE}/Allocate",
            request_serializer=api_pb2.AllocateRequest.SerializeToString,
            response_deserializer=api_pb2.AllocateResponse.FromString,
        )

        def req(*ids: str) -> api_pb2.AllocateRequest:
            return api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])

        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await allocate(req("chip0-core0", "chip9-core0", "bogus"))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "chip9-core0" in (unknown.value.details() or "")
        assert "bogus" in (unknown.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as unhealthy:
            await allocate(req("chip0-core0", "chip0-core3"))
        assert unhealthy.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "chip0-core3" in (unhealthy.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as dup:
            await allocate(req("chip0-core0", "chip0-core0"))
        assert dup.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        alloc_dir = node.dir / "state" / "allocations"
        assert not alloc_dir.exists() or not list(alloc_dir.iterdir())
        ok = await allocate(req("chip0-core0"))
        assert ok.container_responses[0].envs["SNNRM_CORES"] == "chip0-core0"
    assert node.kubelet.assigned() == {}


async def test_a_rejected_container_changes_nothing(node: Node) -> None:
    """Issue 16: several containers where a later one is invalid (unknown, or an ID another container holds):
    rejected as a whole, no allocation file written, no plan marked admitted."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    async for ch in _plugin_stub(node, NEURON_CORE):
        allocate = ch.unary_unary(
            f"/{DEVICE_PLUGIN_SERVICE}/Allocate",
            request_serializer=api_pb2.AllocateRequest.SerializeToString,
            response_deserializer=api_pb2.AllocateResponse.FromString,
        )
        for second in (["chip0-core1", "nope"], ["chip0-core0"]):
            request = api_pb2.AllocateRequest(
                container_requests=[
                    api_pb2.ContainerAllocateRequest(devices_ids=["chip0-core0"]),
                    api_pb2.ContainerAllocateRequest(devices_ids=second),
                ]
            )
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await allocate(request)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    alloc_dir = node.dir / "state" / "allocations"
    assert not alloc_dir.exists() or not list(alloc_dir.iterdir())


async def test_hostile_requests_are_invalid_argument_and_change_nothing(node: Node) -> None:
    """From an outside gRPC audit: bytes that are not the message (grpc's default answer was UNKNOWN and an error
    traceback per call), an empty container (it got a zero-device file shared by both resources), a million
    containers in one call (the loop stalled for up to a minute) and a 20 KB ID echoed into the status (the client
    refused it as oversized metadata and saw RESOURCE_EXHAUSTED)."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    async for ch in _plugin_stub(node, NEURON_CORE):
        raw = {
            rpc: ch.unary_unary(f"/{DEVICE_PLUGIN_SERVICE}/{rpc}")  # bytes in, bytes out
            for rpc in ("Allocate", "GetPreferredAllocation", "GetDevicePluginOptions", "PreStartContainer")
        }
        many = api_pb2.ContainerPreferredAllocationRequest(allocation_size=1)
        cases: list[tuple[str, bytes, str]] = [
            (rpc, b"\xff\xff\xff\xff", "not a valid protobuf message") for rpc in raw
        ] + [
            (
                "Allocate",
                api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest()]).SerializeToString(),
                "a container asks for no device",
            ),
            (
                "GetPreferredAllocation",
                api_pb2.PreferredAllocationRequest(container_requests=[many] * 65).SerializeToString(),
                "65 container requests in one call, at most 64",
            ),
            (
                "Allocate",
                api_pb2.AllocateRequest(
                    container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=["x" * 20_000])]
                ).SerializeToString(),
                "unknown device IDs: " + "x" * 61 + "...",
            ),
        ]
        for rpc, body, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await raw[rpc](body)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, refused.value)
            assert message in (refused.value.details() or ""), (rpc, refused.value.details())
    alloc_dir = node.dir / "state" / "allocations"
    assert not alloc_dir.exists() or not list(alloc_dir.iterdir())


async def test_preferred_allocation_keeps_must_include(node: Node) -> None:
    """GetPreferredAllocation keeps must-include IDs and grows the rest next to them."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    async for ch in _plugin_stub(node, NEURON_CORE):
        preferred = ch.unary_unary(
            f"/{DEVICE_PLUGIN_SERVICE}/GetPreferredAllocation",
            request_serializer=api_pb2.PreferredAllocationRequest.SerializeToString,
            response_deserializer=api_pb2.PreferredAllocationResponse.FromString,
        )
        must = ["chip1-core5"]
        answer = await preferred(
            api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=list(node.topology.ids), must_include_deviceIDs=must, allocation_size=3
                    )
                ]
            )
        )
    ids = list(answer.container_responses[0].deviceIDs)
    assert "chip1-core5" in ids
    assert len(ids) == 3 == len(set(ids))
    idx = node.topology.indices(ids)
    assert (node.topology.hops(idx, node.topology.index_of["chip1-core5"]) <= 1).all()


async def test_kubelet_restart_leads_to_reregistration(node: Node) -> None:
    """After a stand-in restart (sockets deleted, kubelet.sock recreated) both plugins register again."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    before = len(node.kubelet.registrations)
    await node.kubelet.restart()
    assert node.kubelet.capacity(NEURON_CORE) == 0
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    await node.kubelet.wait_capacity(EVENT_THROUGHPUT, len(node.blocks.ids))
    assert len(node.kubelet.registrations) >= before + 2
    out = await node.kubelet.admit("pod-b", "c", {NEURON_CORE: 1})
    assert out[NEURON_CORE].envs["SNNRM_CORES"]


async def test_list_and_watch_drop_leads_to_reregistration(node: Node) -> None:
    """When the kubelet drops ListAndWatch and opens none again, the plugin registers again on the same server
    (its socket never goes away) and devices are healthy again."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    plugin = node.plugins[NEURON_CORE]
    registrations = plugin.registrations
    socket_before = plugin.socket_path.stat().st_ino
    await node.kubelet.drop_list_and_watch(NEURON_CORE)
    await node.kubelet.wait_until(lambda: plugin.registrations > registrations)
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    assert plugin.socket_path.stat().st_ino == socket_before


async def test_a_foreign_stream_held_open_does_not_hide_the_kubelet_dropping_its_own(node: Node) -> None:
    """From an outside gRPC audit: with any other client's ListAndWatch open (one that never reads is enough), the
    kubelet dropping its own stream went unnoticed, since only the last stream ending counted, and the node's
    devices stayed unusable as long as that client held on."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    plugin = node.plugins[NEURON_CORE]
    registrations = plugin.registrations
    async for ch in _plugin_stub(node, NEURON_CORE):
        watch = ch.unary_stream(
            f"/{DEVICE_PLUGIN_SERVICE}/ListAndWatch",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.ListAndWatchResponse.FromString,
        )
        foreign = watch(api_pb2.Empty())
        assert len((await foreign.read()).devices) == N_CORES  # open, and then never read again
        await node.kubelet.drop_list_and_watch(NEURON_CORE)
        await node.kubelet.wait_until(lambda: plugin.registrations > registrations)
        await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
        assert foreign.done() is False  # the foreign stream was left alone throughout
        foreign.cancel()


async def test_foreign_list_and_watch_streams_never_disturb_the_kubelet(node: Node) -> None:
    """Issue 16: 20 foreign ListAndWatch open/cancel cycles, interleaved with the kubelet's GetPreferredAllocation
    and Allocate calls: zero failed calls, one registration, the same socket throughout."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    plugin = node.plugins[NEURON_CORE]
    registrations = plugin.registrations
    socket_before = plugin.socket_path.stat().st_ino
    failures: list[BaseException] = []
    async for ch in _plugin_stub(node, NEURON_CORE):
        watch = ch.unary_stream(
            f"/{DEVICE_PLUGIN_SERVICE}/ListAndWatch",
            request_serializer=api_pb2.Empty.SerializeToString,
            response_deserializer=api_pb2.ListAndWatchResponse.FromString,
        )
        for i in range(20):
            call = watch(api_pb2.Empty())
            first = await call.read()  # the stream is really open: the current device list arrived
            assert len(first.devices) == N_CORES
            try:
                out = await node.kubelet.admit(f"pod-{i}", "c", {NEURON_CORE: 1})
                assert out[NEURON_CORE].envs["SNNRM_CORES"]
            except (grpc.aio.AioRpcError, AdmissionError) as e:
                failures.append(e)
            call.cancel()
            node.kubelet.release(f"pod-{i}")
        assert plugin.registrations == registrations  # the kubelet's own stream stayed open throughout
        # Now the kubelet's stream ends too, and foreign streams keep coming and going: still no failed call and
        # no teardown; once no stream has been open for orphan_grace, exactly one registration on the same socket.
        # (The stand-in, like a kubelet, stops admitting on a lost endpoint, so the calls go straight to our socket.)
        allocate = ch.unary_unary(
            f"/{DEVICE_PLUGIN_SERVICE}/Allocate",
            request_serializer=api_pb2.AllocateRequest.SerializeToString,
            response_deserializer=api_pb2.AllocateResponse.FromString,
        )
        await node.kubelet.drop_list_and_watch(NEURON_CORE)
        for i in range(20):
            call = watch(api_pb2.Empty())
            await call.read()
            ids = [f"chip{i % CHIPS}-core{i % GEOMETRY.cores}"]
            request = api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=ids)])
            try:
                await allocate(request)
            except grpc.aio.AioRpcError as e:
                failures.append(e)
            call.cancel()
    await node.kubelet.wait_until(lambda: plugin.registrations > registrations)
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    assert failures == []
    assert plugin.registrations == registrations + 1
    assert plugin.socket_path.stat().st_ino == socket_before


async def test_registration_waits_for_kubelet(short_dir: Path) -> None:
    """A plugin started before the kubelet registers once kubelet.sock appears."""
    topo = Topology.grid(chips=1, geometry=GEOMETRY)
    feed = DeviceFeed(NEURON_CORE, neuron_core_devices(topo, np.ones(topo.n_cores, dtype=bool)))
    state = StaticAllocationState(topology=topo, blocks=ThroughputBlocks.plan(topo, block_keps=1000.0))
    kdir = short_dir / "dp"
    plugin = DevicePlugin(
        kubelet_dir=kdir,
        resource=NEURON_CORE,
        feed=feed,
        state=state,
        state_dir=short_dir / "s",
        cdi_dir=short_dir / "c",
        poll_interval=0.05,
    )
    task = asyncio.create_task(plugin.run())  # it first runs at the first await below, inside the capture
    try:
        with structlog.testing.capture_logs() as logs:
            # Said once the plugin has looked for kubelet.sock and found none: it is waiting, not registered.
            async with asyncio.timeout(10):
                while not any(e["event"] == "waiting for kubelet" for e in logs):  # noqa: ASYNC110 - a log line
                    await asyncio.sleep(0.01)
        assert plugin.registrations == 0
        assert not plugin.registered.is_set()
        async with KubeletStandIn(kdir) as kubelet:
            await kubelet.wait_capacity(NEURON_CORE, topo.n_cores, allocatable=topo.n_cores)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_cancelling_run_stops_server_and_removes_socket(node: Node) -> None:
    """Cancelling run() stops the gRPC server, removes the plugin socket, and the kubelet sees the drop."""
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=N_CORES)
    plugin = node.plugins[NEURON_CORE]
    assert plugin.socket_path.exists()
    task = node.tasks[NEURON_CORE]
    task.cancel()
    async with asyncio.timeout(5):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()
    assert not plugin.socket_path.exists()
    await node.kubelet.wait_capacity(NEURON_CORE, N_CORES, allocatable=0)
    with pytest.raises(AdmissionError):
        await node.kubelet.admit("pod-c", "c", {NEURON_CORE: 1})


async def test_standin_rejects_bad_registrations(short_dir: Path) -> None:
    """The stand-in refuses unsupported versions and non-extended resource names, like the kubelet."""
    from snnrm.kubelet.registration import register

    async with KubeletStandIn(short_dir / "dp", dial_timeout=0.5) as kubelet:
        async with grpc.aio.insecure_channel(f"unix://{kubelet.socket}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as bad_version:
                await ch.unary_unary(
                    "/v1beta1.Registration/Register",
                    request_serializer=api_pb2.RegisterRequest.SerializeToString,
                    response_deserializer=api_pb2.Empty.FromString,
                )(api_pb2.RegisterRequest(version="v1alpha", endpoint="x.sock", resource_name="snnrm.io/x"))
        assert "not supported" in (bad_version.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as bad_name:
            await register(
                kubelet.socket, endpoint="x.sock", resource="neuron-core", options=api_pb2.DevicePluginOptions()
            )
        assert "extended resource name" in (bad_name.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as no_plugin:
            await register(
                kubelet.socket,
                endpoint="missing.sock",
                resource="snnrm.io/neuron-core",
                options=api_pb2.DevicePluginOptions(),
                rpc_timeout=15.0,
            )
        assert "dial" in (no_plugin.value.details() or "")
