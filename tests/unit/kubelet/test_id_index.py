"""GetPreferredAllocation's request decoded into device indices: the C path and the protobuf path agree on any bytes.

The C extension (snnrm/kubelet/_id_index.c) decodes only the plain encoding of a request naming advertised IDs
and declines everything else, which the protobuf path then answers. These tests hold both halves: it really
decodes what the kubelet sends (else the agreement below would hold trivially), it declines what it must, and on
hostile bytes (random requests, truncated, bit-flipped, with unknown fields or IDs) the answer is protobuf's.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snnrm.core.topology import ChipGeometry, Topology
from snnrm.kubelet.id_index import NATIVE, IdIndex, PreferredRequest
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.testing.tools import missing

TOPOLOGY = Topology.grid(chips=12, geometry=ChipGeometry(cols=4, rows=4))  # IDs of 11 to 14 characters
IDS = TOPOLOGY.ids
LIMIT = 4  # containers decoded per request (the servicer's is 64)


def require_native() -> None:
    if not NATIVE:
        missing("the C extension snnrm.kubelet._id_index is not built (pip install needs a C compiler)")


@pytest.fixture(scope="module")
def native() -> IdIndex:
    require_native()
    index = IdIndex(IDS, index_of=TOPOLOGY.index_of)
    assert index.native
    return index


PURE = IdIndex(IDS, native=False)


def request(*containers: tuple[list[str], list[str], int]) -> bytes:
    return api_pb2.PreferredAllocationRequest(
        container_requests=[
            api_pb2.ContainerPreferredAllocationRequest(
                available_deviceIDs=avail, must_include_deviceIDs=must, allocation_size=size
            )
            for avail, must, size in containers
        ]
    ).SerializeToString()


def as_plain(decoded: PreferredRequest | None) -> object:
    if decoded is None:
        return None
    asks = [(a.available.dtype, a.available.tolist(), a.must_include.tolist(), a.size) for a in decoded.asks]
    return decoded.containers, asks


def test_the_c_path_decodes_what_the_kubelet_sends(native: IdIndex) -> None:
    """Every free core listed, one container: decoded in C (no fallback), in request order, as int64 indices."""
    shuffled = list(np.random.default_rng(3).permutation(len(IDS)))
    raw = request(([IDS[i] for i in shuffled], [IDS[5], IDS[0]], 16))
    assert native._native is not None
    decoded = native._native.decode_preferred(raw, LIMIT)
    assert decoded is not None
    got = native.preferred_request(raw, LIMIT)
    assert got is not None
    assert got.containers == 1
    (ask,) = got.asks
    assert ask.available.dtype == np.int64
    assert ask.available.tolist() == shuffled
    assert ask.must_include.tolist() == [5, 0]
    assert ask.size == 16
    assert as_plain(got) == as_plain(PURE.preferred_request(raw, LIMIT))


def test_a_fresh_index_decodes_requests_without_must_include_or_any_id() -> None:
    """Its arrays have no buffer until an ID needs one (the first request the daemon gets looks like these)."""
    require_native()
    for raw in (request((list(IDS[:3]), [], 2)), request(([], [], 0)), request(([], [IDS[1]], 1))):
        fresh = IdIndex(IDS)
        assert fresh._native is not None
        assert fresh._native.decode_preferred(raw, LIMIT) is not None
        assert as_plain(fresh.preferred_request(raw, LIMIT)) == as_plain(PURE.preferred_request(raw, LIMIT))


@pytest.mark.parametrize(
    ("case", "raw"),
    [
        ("an unknown ID (protobuf drops it)", request(([IDS[0], "chip99-core0"], [], 1))),
        ("an ID that is not UTF-8 (protobuf refuses)", b"\x0a\x04\x0a\x02\xff\xfe"),
        ("a field the request does not have", request(([IDS[0]], [], 1)) + b"\x10\x01"),
        ("an unknown field inside a container", b"\x0a\x02\x20\x01"),
        ("a truncated request", request(([IDS[0], IDS[1]], [], 2))[:-3]),
        ("a length in more bytes than it needs", b"\x0a\x82\x00"),
        ("a negative allocation size", request(([IDS[0]], [], -1))),
        ("more containers than the limit", request(*[([IDS[0]], [], 1)] * (LIMIT + 1))),
    ],
)
def test_the_c_path_declines_what_only_protobuf_may_answer(native: IdIndex, case: str, raw: bytes) -> None:
    assert native._native is not None
    assert native._native.decode_preferred(raw, LIMIT) is None, case
    assert as_plain(native.preferred_request(raw, LIMIT)) == as_plain(PURE.preferred_request(raw, LIMIT)), case


def test_over_the_limit_nothing_is_looked_up_and_the_count_is_kept(native: IdIndex) -> None:
    decoded = native.preferred_request(request(*[([IDS[0]], [], 1)] * (LIMIT + 3)), LIMIT)
    assert decoded is not None
    assert (decoded.containers, decoded.asks) == (LIMIT + 3, ())


def test_bytes_that_are_not_a_request_decode_to_none(native: IdIndex) -> None:
    for raw in (b"\x0a\x05\x0a", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b"):
        assert native.preferred_request(raw, LIMIT) is None
        assert PURE.preferred_request(raw, LIMIT) is None


known = st.sampled_from(IDS)
# Mostly requests the C path takes (advertised IDs, sizes >= 0), so the edits below hit its decoding, not only its
# declining; some with unknown or non-ASCII IDs and negative sizes.
ids = st.one_of(st.lists(known, max_size=30), st.lists(st.one_of(known, st.text(max_size=20)), max_size=30))
sizes = st.one_of(st.integers(0, 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
containers = st.lists(st.tuples(ids, ids, sizes), max_size=LIMIT + 2)


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    raw = request(*draw(containers))
    edit = draw(st.sampled_from(["none", "truncate", "flip", "insert", "append"]))
    if edit == "none" or not raw:
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    if edit == "truncate":
        return raw[:at]
    if edit == "flip":
        return raw[:at] + bytes([raw[at] ^ (1 << draw(st.integers(0, 7)))]) + raw[at + 1 :]
    extra = draw(st.binary(min_size=1, max_size=6))
    return raw[:at] + extra + raw[at:] if edit == "insert" else raw + extra


@settings(max_examples=800, deadline=None)
@given(raw=hostile())
def test_on_any_bytes_both_paths_give_protobufs_answer(native: IdIndex, raw: bytes) -> None:
    assert as_plain(native.preferred_request(raw, LIMIT)) == as_plain(PURE.preferred_request(raw, LIMIT))


def test_ids_must_be_distinct_strings() -> None:
    with pytest.raises(ValueError, match="distinct"):
        IdIndex(["a", "b", "a"])
    if NATIVE:
        from snnrm.kubelet import _id_index

        with pytest.raises(ValueError, match="duplicate"):
            _id_index.IdIndex(["a", "b", "a"])
        with pytest.raises(TypeError):
            _id_index.IdIndex(["a", 3])  # type: ignore[list-item]


def test_a_request_moves_onto_a_renumbered_index_by_id() -> None:
    """The event-throughput blocks can be re-planned between decoding a request and answering it."""
    before = IdIndex(["b0", "b1", "b2", "b3"])
    after = IdIndex(["b3", "b2", "b1", "b0", "b4"])
    decoded = before.preferred_request(request((["b1", "b3"], ["b0"], 2)), LIMIT)
    assert decoded is not None
    moved = decoded.onto(after)
    assert moved.index is after
    assert [after.ids[i] for i in moved.asks[0].available.tolist()] == ["b1", "b3"]
    assert [after.ids[i] for i in moved.asks[0].must_include.tolist()] == ["b0"]
    assert decoded.onto(before) is decoded
