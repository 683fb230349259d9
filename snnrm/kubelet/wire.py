"""Wire constants of the device plugin API and the pre-encoded ListAndWatch message.

A ListAndWatch message is the *complete* device list. Building 16,384 ``Device`` messages in Python on every
health change would cost tens of milliseconds, a good share of the 20 ms fault-to-kubelet budget. Instead each
device's ``devices`` entry (tag, length, ``Device`` bytes) is encoded once per health state by protobuf itself,
and a message is the concatenation of the right entry per device: one C-level ``map`` and a ``bytes.join``.
The server sends those bytes through a handler whose serializer is the identity. Protobuf's own encoding of the
same message is byte-for-byte identical (tested), because a repeated message field is exactly the concatenation
of its entries.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from snnrm.core.devices import DeviceSet
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2

VERSION = "v1beta1"
"""The only device plugin API version kubelets accept."""
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
DEVICE_PLUGIN_SERVICE = "v1beta1.DevicePlugin"
REGISTRATION_SERVICE = "v1beta1.Registration"
KUBELET_PRESTART_TIMEOUT_S = 30.0


def plugin_socket_name(resource: str) -> str:
    """``snnrm.io/neuron-core`` -> ``snnrm-neuron-core.sock`` (a file name in the kubelet's plugin dir)."""
    return f"snnrm-{resource.rsplit('/', 1)[-1]}.sock"


def _entry(device: api_pb2.Device) -> bytes:
    """One ``ListAndWatchResponse.devices`` entry: field 1, wire type 2, varint length, message bytes."""
    body = device.SerializeToString(deterministic=True)
    n = len(body)
    length = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            length.append(byte | 0x80)
        else:
            length.append(byte)
            break
    return b"\x0a" + bytes(length) + body


@dataclass(frozen=True, slots=True, eq=False)
class _Entries:
    ids: tuple[str, ...]
    numa: tuple[int, ...]
    pairs: tuple[tuple[bytes, bytes], ...]
    """Per device (unhealthy entry, healthy entry), indexed by the health bit."""


class ListAndWatchEncoder:
    """Serialized ``ListAndWatchResponse`` for a :class:`DeviceSet`, with per-device entries cached.

    Entries are rebuilt only when the IDs or NUMA nodes change (start-up, never on health changes).
    """

    def __init__(self) -> None:
        self._entries: _Entries | None = None

    def _prepare(self, devices: DeviceSet) -> _Entries:
        numa = tuple(devices.numa.tolist())
        e = self._entries
        if e is not None and e.ids == devices.ids and e.numa == numa:
            return e
        pairs = []
        for dev_id, node in zip(devices.ids, numa, strict=True):
            topo = api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=node)])
            pairs.append(
                (
                    _entry(api_pb2.Device(ID=dev_id, health=UNHEALTHY, topology=topo)),
                    _entry(api_pb2.Device(ID=dev_id, health=HEALTHY, topology=topo)),
                )
            )
        self._entries = _Entries(ids=devices.ids, numa=numa, pairs=tuple(pairs))
        return self._entries

    def encode(self, devices: DeviceSet) -> bytes:
        """The serialized ``ListAndWatchResponse`` listing every device of ``devices``."""
        entries = self._prepare(devices)
        return b"".join(map(operator.getitem, entries.pairs, devices.healthy.view("u1").tolist()))
