"""Device IDs to indices, and GetPreferredAllocation's request decoded straight into them.

The kubelet lists every free device of the resource in each GetPreferredAllocation: 4,096 IDs on a 4,096-core
node. Parsing that with protobuf makes a ``str`` per ID (~0.14 ms) and a dict lookup hashes each one again
(~0.2 ms), which together cost more than half of a trivial device plugin server's whole round trip (the target
in the README's Results is 1.5x of it). The C extension ``snnrm.kubelet._id_index`` (snnrm/kubelet/_id_index.c, built by
``pip install`` through setup.py) reads the request's wire bytes and looks every ID up in a table built once,
in ~0.04 ms, without a Python object per ID.

The extension decodes only the plain encoding an encoder writes (the kubelet's Go protobuf does) of a request
that names advertised IDs only; for any other bytes it declines and the request is parsed with protobuf here.
So the answer for any input is protobuf's: malformed bytes are refused, unknown IDs are dropped, the same
indices in the same order (tests/unit/kubelet/test_id_index.py checks both paths agree on hostile input).
Without a C compiler at install time the extension is absent and only the protobuf path runs (``NATIVE``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from snnrm.core.allocation import lookup
from snnrm.core.topology import IntArray
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2

_native: Any
try:
    from snnrm.kubelet import _id_index as _native
except ImportError:  # installed without a C compiler: the protobuf path alone, same answers
    _native = None

NATIVE: bool = _native is not None
"""Whether the C extension is installed (benchmarks print it; ``make test`` requires it)."""


@dataclass(frozen=True, slots=True)
class PreferredAsk:
    """One container's GetPreferredAllocation request, in device indices (unknown IDs dropped, order kept)."""

    available: IntArray
    must_include: IntArray
    size: int


@dataclass(frozen=True, slots=True)
class PreferredRequest:
    """A decoded GetPreferredAllocation request."""

    containers: int
    """Container requests the call lists."""
    asks: tuple[PreferredAsk, ...]
    """Each container's ask; empty when ``containers`` is over the limit it was decoded with (nothing looked up)."""
    index: IdIndex
    """The IDs the indices refer to."""

    def onto(self, index: IdIndex) -> PreferredRequest:
        """The same request in ``index``'s numbering (the resource's devices were renumbered after decoding)."""
        if index is self.index:
            return self
        ids = self.index.ids

        def moved(idx: IntArray) -> IntArray:
            return index.indices([ids[i] for i in idx.tolist()])

        asks = tuple(PreferredAsk(moved(a.available), moved(a.must_include), a.size) for a in self.asks)
        return PreferredRequest(self.containers, asks, index)


class IdIndex:
    """Indices of one resource's advertised device IDs (distinct), from ``str`` or from a request's bytes.

    :param index_of: the ID -> index mapping when the caller already holds one (the topology does), so a second
        dict of 16,384 entries is not built.
    :param native: use the C extension when it is installed (tests turn it off to compare both paths).
    """

    def __init__(self, ids: Sequence[str], *, index_of: Mapping[str, int] | None = None, native: bool = True) -> None:
        self.ids = ids
        self.index_of: Mapping[str, int] = index_of if index_of is not None else {s: i for i, s in enumerate(ids)}
        if len(self.index_of) != len(ids):
            raise ValueError(f"device IDs must be distinct: {len(ids)} IDs, {len(self.index_of)} distinct")
        self._native = _native.IdIndex(ids) if native and _native is not None else None

    @property
    def native(self) -> bool:
        """Whether requests are decoded by the C extension first."""
        return self._native is not None

    def indices(self, ids: Sequence[str]) -> IntArray:
        """Indices of the known IDs among ``ids``, in order; unknown IDs are dropped."""
        return lookup(self.index_of, ids)

    def preferred_request(self, raw: bytes, max_containers: int) -> PreferredRequest | None:
        """``raw`` (a PreferredAllocationRequest's bytes) in indices; None when it is not a valid message.

        Containers are looked up only when there are at most ``max_containers`` of them.
        """
        if self._native is not None:
            decoded = self._native.decode_preferred(raw, max_containers)
            if decoded is not None:
                asks = tuple(
                    PreferredAsk(np.frombuffer(a, dtype=np.int64), np.frombuffer(m, dtype=np.int64), size)
                    for a, m, size in decoded
                )
                return PreferredRequest(len(asks), asks, self)
        try:
            request = api_pb2.PreferredAllocationRequest.FromString(raw)
        except DecodeError:
            return None
        reqs = request.container_requests
        if len(reqs) > max_containers:
            return PreferredRequest(len(reqs), (), self)
        asks = tuple(
            PreferredAsk(self.indices(c.available_deviceIDs), self.indices(c.must_include_deviceIDs), c.allocation_size)
            for c in reqs
        )
        return PreferredRequest(len(reqs), asks, self)
