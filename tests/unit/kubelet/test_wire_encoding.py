"""The pre-encoded ListAndWatch message is byte-for-byte what protobuf produces, and parses back."""

from __future__ import annotations

import numpy as np

from snnrm.core.devices import NEURON_CORE, DeviceSet
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.wire import HEALTHY, UNHEALTHY, ListAndWatchEncoder, plugin_socket_name


def _devices(n: int, healthy: np.ndarray) -> DeviceSet:
    return DeviceSet(
        resource=NEURON_CORE,
        ids=tuple(f"chip{i // 130}-core{i % 130}" for i in range(n)),
        healthy=healthy,
        numa=(np.arange(n, dtype=np.int64) // 300),
    )


def _protobuf(devices: DeviceSet) -> bytes:
    msg = api_pb2.ListAndWatchResponse(
        devices=[
            api_pb2.Device(
                ID=i,
                health=HEALTHY if h else UNHEALTHY,
                topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=int(m))]),
            )
            for i, h, m in zip(devices.ids, devices.healthy.tolist(), devices.numa.tolist(), strict=True)
        ]
    )
    return msg.SerializeToString(deterministic=True)


def test_encoding_equals_protobuf() -> None:
    """Same bytes as protobuf's serializer, across health changes (entries are reused)."""
    rng = np.random.default_rng(1)
    enc = ListAndWatchEncoder()
    for _ in range(3):
        devices = _devices(1000, rng.random(1000) > 0.3)
        assert enc.encode(devices) == _protobuf(devices)


def test_encoding_equals_protobuf_for_every_run_pattern() -> None:
    """Runs of equal health at the edges, alternating, one device, all one state; a NUMA change re-encodes."""
    enc = ListAndWatchEncoder()
    patterns = [
        np.ones(7, bool),
        np.zeros(7, bool),
        np.array([True]),
        np.array([False]),
        np.arange(9) % 2 == 0,
        np.array([False, True, True, True, False]),
        np.array([True, False, False, True]),
    ]
    for healthy in patterns:
        devices = _devices(healthy.size, healthy)
        assert enc.encode(devices) == _protobuf(devices)
    moved = DeviceSet(resource=NEURON_CORE, ids=devices.ids, healthy=devices.healthy, numa=devices.numa + 1)
    assert enc.encode(moved) == _protobuf(moved)


def test_encoding_parses_with_exact_strings_and_numa() -> None:
    """Parsed back, every device has its ID, exact health string and NUMA node."""
    healthy = np.array([True, False, True])
    devices = _devices(3, healthy)
    msg = api_pb2.ListAndWatchResponse.FromString(ListAndWatchEncoder().encode(devices))
    assert [d.ID for d in msg.devices] == list(devices.ids)
    assert [d.health for d in msg.devices] == ["Healthy", "Unhealthy", "Healthy"]
    assert [[n.ID for n in d.topology.nodes] for d in msg.devices] == [[0], [0], [0]]


def test_empty_list_encodes_to_empty_message() -> None:
    """No devices: the empty message."""
    empty = DeviceSet(resource=NEURON_CORE, ids=(), healthy=np.zeros(0, bool), numa=np.zeros(0, np.int64))
    assert ListAndWatchEncoder().encode(empty) == b""


def test_socket_names() -> None:
    """Plugin sockets are named after the resource."""
    assert plugin_socket_name("snnrm.io/neuron-core") == "snnrm-neuron-core.sock"
    assert plugin_socket_name("snnrm.io/event-throughput") == "snnrm-event-throughput.sock"
