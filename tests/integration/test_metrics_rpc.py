"""RPC instrumentation around the real device plugin servicer, over real grpc.aio on a unix socket: durations,
codes, allocation counts, ListAndWatch messages and streams, and server spans for Allocate and
GetPreferredAllocation (SDK in-memory exporter)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message import Message
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import parser as openmetrics_parser

from snnrm.core.devices import NEURON_CORE, ThroughputBlocks, neuron_core_devices
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.kubelet.allocator import AllocationFiles, CoreAllocator
from snnrm.kubelet.cdi import CdiSpecWriter
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.servicer import DevicePluginServicer
from snnrm.kubelet.state import StaticAllocationState
from snnrm.kubelet.wire import DEVICE_PLUGIN_SERVICE, ListAndWatchEncoder
from snnrm.obs.exposition import Format, MetricsRegistry
from snnrm.obs.rpc import RpcInstrumentation
from snnrm.obs.tracing import tracing_with_exporter

# prometheus_client annotates its text-format parser but not this OpenMetrics one: the same function, typed alike.
parse_openmetrics: Callable[[str], Iterable[Metric]] = openmetrics_parser.text_string_to_metric_families

TOPOLOGY = Topology.grid(chips=2, geometry=ChipGeometry(cols=4, rows=2))
N = TOPOLOGY.n_cores


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


@dataclass
class Served:
    registry: MetricsRegistry
    spans: InMemorySpanExporter
    feed: DeviceFeed
    servicer: DevicePluginServicer
    channel: grpc.aio.Channel

    def call(self, method: str, response: type[Message]) -> grpc.aio.UnaryUnaryMultiCallable:
        return self.channel.unary_unary(
            f"/{DEVICE_PLUGIN_SERVICE}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response.FromString,
        )

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"node": "n1", "resource": NEURON_CORE, **labels})
        return 0.0 if value is None else value

    async def settled(self, rpc: str, calls: int) -> None:
        """Wait until ``calls`` calls of ``rpc`` were booked: an aborting handler sends its status to the client
        *before* the exception unwinds through the instrumentation, so the client can be a little early. (The
        bookkeeping has no await in it: once the duration is observed, the counters are done too.)"""
        for _ in range(400):
            if self.sample("snnrm_device_plugin_rpc_duration_seconds_count", rpc=rpc) >= calls:
                return
            await asyncio.sleep(0.005)


@pytest.fixture
async def served(short_dir: Path) -> AsyncIterator[Served]:
    registry = MetricsRegistry()
    spans = InMemorySpanExporter()
    tracing = tracing_with_exporter(spans, node="n1")
    obs = RpcInstrumentation(registry=registry, node="n1", tracer=tracing.tracer)
    state = StaticAllocationState(topology=TOPOLOGY, blocks=ThroughputBlocks.plan(TOPOLOGY, block_keps=1000.0))
    feed = DeviceFeed(NEURON_CORE, neuron_core_devices(TOPOLOGY, np.ones(N, dtype=bool)))
    cdi = CdiSpecWriter(short_dir / "cdi", TOPOLOGY.n_chips)
    servicer = DevicePluginServicer(
        feed=feed,
        allocator=CoreAllocator(state=state, files=AllocationFiles(short_dir / "state"), cdi=cdi),
        encoder=ListAndWatchEncoder(),
    )
    server = grpc.aio.server()
    # The hook the device plugin needs: wrap the servicer's handler where it is added to the server.
    server.add_generic_rpc_handlers((obs.wrap(servicer.handler(), resource=NEURON_CORE),))
    sock = short_dir / "dp.sock"
    server.add_insecure_port(f"unix://{sock}")
    await server.start()
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        yield Served(registry, spans, feed, servicer, channel)
    servicer.close()
    await server.stop(0)
    tracing.shutdown()


def _allocate(*ids: str) -> api_pb2.AllocateRequest:
    return api_pb2.AllocateRequest(container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=list(ids))])


async def test_allocate_is_timed_counted_and_traced(served: Served) -> None:
    allocate = served.call("Allocate", api_pb2.AllocateResponse)
    await allocate(_allocate("chip0-core0", "chip0-core1"))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await allocate(_allocate("chip0-core0", "chip9-core0"))
    assert e.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    await served.settled("Allocate", 2)
    rpc = {"rpc": "Allocate"}
    assert served.sample("snnrm_device_plugin_rpc_duration_seconds_count", **rpc) == 2
    assert 0 < served.sample("snnrm_device_plugin_rpc_duration_seconds_sum", **rpc) < 1
    assert served.sample("snnrm_device_plugin_rpcs_total", **rpc, code="OK") == 1
    assert served.sample("snnrm_device_plugin_rpcs_total", **rpc, code="INVALID_ARGUMENT") == 1
    assert served.sample("snnrm_allocations_total", result="ok") == 1
    assert served.sample("snnrm_allocations_total", result="invalid_argument") == 1
    assert served.sample("snnrm_allocations_total", result="failed_precondition") == 0  # pre-created at zero
    assert served.sample("snnrm_allocated_devices_total") == 2
    ok, bad = served.spans.get_finished_spans()
    assert ok.name == "v1beta1.DevicePlugin/Allocate"
    assert ok.kind is SpanKind.SERVER
    attrs = dict(ok.attributes or {})
    assert attrs["snnrm.device_ids"] == ("chip0-core0", "chip0-core1")
    assert attrs["rpc.grpc.status_code"] == 0
    assert bad.status.status_code is StatusCode.ERROR
    assert "INVALID_ARGUMENT" in (bad.status.description or "")
    assert dict(bad.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_unhealthy_allocation_counts_as_failed_precondition(served: Served) -> None:
    healthy = np.ones(N, dtype=bool)
    healthy[3] = False
    served.feed.publish(neuron_core_devices(TOPOLOGY, healthy))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await served.call("Allocate", api_pb2.AllocateResponse)(_allocate("chip0-core3"))
    assert e.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    await served.settled("Allocate", 1)
    assert served.sample("snnrm_allocations_total", result="failed_precondition") == 1


async def test_preferred_allocation_is_traced_with_its_answer(served: Served) -> None:
    preferred = served.call("GetPreferredAllocation", api_pb2.PreferredAllocationResponse)
    request = api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=list(TOPOLOGY.ids), must_include_deviceIDs=["chip1-core0"], allocation_size=4
            )
        ]
    )
    response = await preferred(request)
    chosen = tuple(response.container_responses[0].deviceIDs)
    assert served.sample("snnrm_device_plugin_rpc_duration_seconds_count", rpc="GetPreferredAllocation") == 1
    [span] = served.spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert (attrs["snnrm.allocation_size"], attrs["snnrm.available"], attrs["snnrm.must_include"]) == (4, N, 1)
    assert attrs["snnrm.preferred_ids"] == chosen


async def test_options_are_timed_but_not_traced(served: Served) -> None:
    await served.call("GetDevicePluginOptions", api_pb2.DevicePluginOptions)(api_pb2.Empty())
    assert served.sample("snnrm_device_plugin_rpcs_total", rpc="GetDevicePluginOptions", code="OK") == 1
    assert served.spans.get_finished_spans() == ()


async def test_list_and_watch_messages_and_streams(served: Served) -> None:
    stream = served.channel.unary_stream(
        f"/{DEVICE_PLUGIN_SERVICE}/ListAndWatch",
        request_serializer=api_pb2.Empty.SerializeToString,
        response_deserializer=api_pb2.ListAndWatchResponse.FromString,
    )(api_pb2.Empty())
    first = await stream.read()
    assert len(first.devices) == N
    assert served.sample("snnrm_list_and_watch_streams") == 1
    healthy = np.ones(N, dtype=bool)
    healthy[0] = False
    served.feed.publish(neuron_core_devices(TOPOLOGY, healthy))
    second = await stream.read()
    assert second.devices[0].health == "Unhealthy"
    assert served.sample("snnrm_list_and_watch_messages_total") == 2
    stream.cancel()
    # The kubelet leaving ends the inner stream at once: the servicer notices (it re-registers on that).
    await asyncio.wait_for(served.servicer.dropped.wait(), 5)
    for _ in range(100):
        if served.sample("snnrm_list_and_watch_streams") == 0:
            break
        await asyncio.sleep(0.01)
    assert served.sample("snnrm_list_and_watch_streams") == 0
    body = served.registry.render(served.registry.snapshot(), Format.OPENMETRICS).decode()
    families = {f.name: f for f in parse_openmetrics(body)}
    assert families["snnrm_device_plugin_rpc_duration_seconds"].type == "histogram"
    assert families["snnrm_list_and_watch_messages"].type == "counter"
