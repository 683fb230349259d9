"""The PodResources client against a fake ``v1.PodResourcesLister`` served by grpc.aio on a real unix socket."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.kubelet.podresources import EMPTY, ContainerRef, PodResourcesClient, PodResourcesError
from snnrm.kubelet.protos.podresources.v1 import api_pb2, api_pb2_grpc
from snnrm.testing.fake_podresources import FakePodResourcesLister

OURS = (NEURON_CORE, EVENT_THROUGHPUT)


@pytest.fixture
def sock() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    yield d / "pod-resources" / "kubelet.sock"
    shutil.rmtree(d, ignore_errors=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_list_maps_devices_to_containers_for_our_resources_only(sock: Path) -> None:
    async with FakePodResourcesLister(sock) as fake, PodResourcesClient(sock, resources=OURS) as client:
        fake.assign("ml", "trainer-0", "stage-1", NEURON_CORE, ["chip0-core1", "chip0-core2"])
        fake.assign("ml", "trainer-0", "stage-1", EVENT_THROUGHPUT, ["chip0-ev0"])
        fake.assign("ml", "trainer-0", "stage-2", NEURON_CORE, ["chip1-core0"])
        fake.assign("default", "cuda", "main", "nvidia.com/gpu", ["GPU-1"])
        got = await client.list()
        assert got.pods == 2
        assert dict(got.owners[NEURON_CORE]) == {
            "chip0-core1": ContainerRef("ml", "trainer-0", "stage-1"),
            "chip0-core2": ContainerRef("ml", "trainer-0", "stage-1"),
            "chip1-core0": ContainerRef("ml", "trainer-0", "stage-2"),
        }
        assert dict(got.owners[EVENT_THROUGHPUT]) == {"chip0-ev0": ContainerRef("ml", "trainer-0", "stage-1")}
        assert "nvidia.com/gpu" not in got.owners


async def test_answers_are_cached_and_concurrent_callers_share_one_call(sock: Path) -> None:
    clock = Clock()
    async with FakePodResourcesLister(sock) as fake, PodResourcesClient(sock, cache_seconds=2.0, clock=clock) as client:
        fake.assign("ml", "p", "c", NEURON_CORE, ["chip0-core0"])
        fake.delay = 0.05
        results = await asyncio.gather(*(client.refresh() for _ in range(10)))
        assert fake.calls["List"] == 1
        assert all(r is results[0] for r in results)
        assert client.owners() is results[0].owners
        clock.now += 1.0
        await client.refresh()
        assert fake.calls["List"] == 1  # within cache_seconds: no call
        fake.assign("ml", "p2", "c", NEURON_CORE, ["chip0-core1"])
        clock.now += 1.5
        fresh = await client.refresh()
        assert fake.calls["List"] == 2
        assert set(fresh.owners[NEURON_CORE]) == {"chip0-core0", "chip0-core1"}
        clock.now += 2.5
        assert await client.refresh() is fresh  # asked again, nothing changed: the same object (collector caches hold)
        assert fake.calls["List"] == 3
        assert client.request_counts["ok"] == 3


async def test_absent_socket_means_no_labels_and_no_dialling(sock: Path) -> None:
    async with PodResourcesClient(sock) as client:
        available = client.available  # a local: mypy would carry `not client.available` past the fake's start
        assert not available
        assert await client.refresh() is EMPTY
        assert client.owners() == {}
        assert client._channel is None  # nothing was dialled
        async with FakePodResourcesLister(sock) as fake:
            fake.assign("ml", "p", "c", NEURON_CORE, ["chip0-core0"])
            assert client.available
            assert set((await client.refresh()).owners[NEURON_CORE]) == {"chip0-core0"}
        # the kubelet (and its socket) went away: labels go too, rather than going stale
        assert await client.refresh() is EMPTY


async def test_rate_limited_keeps_the_last_answer_and_backs_off(sock: Path) -> None:
    clock = Clock()
    async with (
        FakePodResourcesLister(sock) as fake,
        PodResourcesClient(sock, cache_seconds=1.0, backoff_seconds=5.0, clock=clock) as client,
    ):
        fake.assign("ml", "p", "c", NEURON_CORE, ["chip0-core0"])
        good = await client.refresh()
        fake.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, "rejected by rate limit")
        clock.now += 1.5
        assert await client.refresh() is good
        assert client.request_counts["rate_limited"] == 1
        clock.now += 2.0
        await client.refresh()
        assert fake.calls["List"] == 2  # backing off: no call within backoff_seconds
        clock.now += 4.0
        await client.refresh()
        assert fake.calls["List"] == 3
        assert client.request_counts == {"ok": 2, "error": 0, "rate_limited": 1}


async def test_a_hung_kubelet_never_stalls_the_caller(sock: Path) -> None:
    async with FakePodResourcesLister(sock) as fake, PodResourcesClient(sock, timeout=0.1) as client:
        fake.delay = 2.0
        before = asyncio.get_running_loop().time()
        assert await client.refresh() is EMPTY
        assert asyncio.get_running_loop().time() - before < 1.5
        assert client.request_counts["error"] == 1
        with pytest.raises(PodResourcesError) as e:
            await client.list()
        assert e.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_large_answers_need_the_raised_receive_limit(sock: Path) -> None:
    """About 5 MiB of device IDs: past gRPC's default 4 MiB limit, inside the client's 16 MiB."""
    async with FakePodResourcesLister(sock) as fake:
        for p in range(40):
            fake.assign("ml", f"pod-{p}", "c", NEURON_CORE, [f"chip{p}-core{i}-{'x' * 100}" for i in range(1200)])
        async with PodResourcesClient(sock) as client:
            got = await client.list()
            assert len(got.owners[NEURON_CORE]) == 40 * 1200
        async with PodResourcesClient(sock, max_receive_bytes=4 * 1024 * 1024) as small:
            with pytest.raises(PodResourcesError) as e:
                await small.list()
            assert e.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_the_fake_limits_rate_like_the_kubelet(sock: Path) -> None:
    """100 QPS, burst 10: a tight loop of raw calls gets RESOURCE_EXHAUSTED after the burst."""
    async with (
        FakePodResourcesLister(sock, qps=1.0, burst=10) as fake,
        grpc.aio.insecure_channel(f"unix://{sock}") as ch,
    ):
        stub = api_pb2_grpc.PodResourcesListerStub(ch)
        codes = []
        details = set()
        for _ in range(15):
            try:
                await stub.List(api_pb2.ListPodResourcesRequest())
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
                details.add(e.details())
        assert details == {"rejected by rate limit"}
        assert codes[:10] == [grpc.StatusCode.OK] * 10
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[10:]
        fake.set_rate_limit(1000.0, 10)
        fake.assign("ml", "p", "c", NEURON_CORE, ["chip0-core0"])
        fake.allocatable = {NEURON_CORE: ["chip0-core0", "chip0-core1"]}
        got = await stub.Get(api_pb2.GetPodResourcesRequest(pod_name="p", pod_namespace="ml"))
        assert got.pod_resources.containers[0].devices[0].device_ids == ["chip0-core0"]
        alloc = await stub.GetAllocatableResources(api_pb2.AllocatableResourcesRequest())
        assert list(alloc.devices[0].device_ids) == ["chip0-core0", "chip0-core1"]
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.Get(api_pb2.GetPodResourcesRequest(pod_name="nope", pod_namespace="ml"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
