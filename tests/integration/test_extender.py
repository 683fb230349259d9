"""The scheduler extender over real HTTP: exact ExtenderArgs/ExtenderFilterResult/HostPriorityList JSON, bad input."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import pytest

from snnrm.core.cluster import ClusterIndex, Reservation, StageKey
from snnrm.core.jobs import stage_of
from snnrm.http.extender import ExtenderContext, build_extender_app
from snnrm.http.server import serve
from snnrm.testing.fake_cluster import node_summary, stage_pod

NOW = 5000.0


@dataclass
class Extender:
    base: str
    index: ClusterIndex
    session: aiohttp.ClientSession

    async def post(self, verb: str, body: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else None
        kwargs: dict[str, Any] = {"data": data} if raw is not None else {"json": body}
        async with self.session.post(f"{self.base}/extender/{verb}", **kwargs) as r:
            return r.status, await r.json(content_type=None)


@pytest.fixture
async def extender() -> AsyncIterator[Extender]:
    index = ClusterIndex()
    index.set_summary("n-a", node_summary(NOW))
    index.set_summary("n-b", node_summary(NOW, free=2))
    index.set_summary("n-c", node_summary(NOW, fill=0.9, link=0.9))
    app = build_extender_app(ExtenderContext(index, clock=lambda: NOW))
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, "127.0.0.1", 0, on_started=started.set_result))
    port = await started
    async with aiohttp.ClientSession() as session:
        yield Extender(f"http://127.0.0.1:{port}", index, session)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_filter_with_node_names_answers_names_and_reasons(extender: Extender) -> None:
    """nodeCacheCapable: NodeNames in, NodeNames + FailedNodes + FailedAndUnresolvableNodes + Error out."""
    status, body = await extender.post(
        "filter", {"Pod": stage_pod("j", 0, 2, 4), "NodeNames": ["n-a", "n-b", "n-c", "n-x"]}
    )
    assert status == 200
    assert set(body) == {"NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    assert body["NodeNames"] == ["n-a", "n-c"]
    assert "needs 4" in body["FailedNodes"]["n-b"]
    assert "no snnrm summary" in body["FailedAndUnresolvableNodes"]["n-x"]
    assert body["Error"] == ""


async def test_filter_with_node_objects_answers_node_objects(extender: Extender) -> None:
    """Without nodeCacheCapable: Nodes (a NodeList) in, the passing Node objects out, untouched."""
    nodes = [{"metadata": {"name": n, "labels": {"x": n}}} for n in ("n-a", "n-b")]
    status, body = await extender.post("filter", {"Pod": stage_pod("j", 0, 2, 4), "Nodes": {"items": nodes}})
    assert status == 200
    assert "NodeNames" not in body
    assert body["Nodes"] == {"items": [nodes[0]]}
    assert set(body["FailedNodes"]) == {"n-b"}


async def test_every_filtered_out_node_still_answers_an_empty_list(extender: Extender) -> None:
    """NodeNames must be a list (not null) even when nothing passes, or the scheduler misreads it."""
    status, body = await extender.post("filter", {"Pod": stage_pod("j", 0, 2, 99), "NodeNames": ["n-a"]})
    assert status == 200
    assert body["NodeNames"] == []


async def test_prioritize_returns_host_priority_list(extender: Extender) -> None:
    """Scores 0-10 for every node, in order; the hot node scores below the idle one; the full one 0."""
    status, body = await extender.post(
        "prioritize", {"Pod": stage_pod("j", 0, 2, 4), "NodeNames": ["n-a", "n-b", "n-c"]}
    )
    assert status == 200
    assert [h["Host"] for h in body] == ["n-a", "n-b", "n-c"]
    assert all(set(h) == {"Host", "Score"} and 0 <= h["Score"] <= 10 for h in body)
    scores = {h["Host"]: h["Score"] for h in body}
    assert scores["n-a"] > scores["n-c"] > scores["n-b"] == 0


async def test_prioritize_gives_the_planned_node_ten(extender: Extender) -> None:
    extender.index.reserve(Reservation(StageKey("default", "j", 1), "n-c", np.arange(4), expires_at=NOW + 60))
    status, body = await extender.post("prioritize", {"Pod": stage_pod("j", 1, 2, 4), "NodeNames": ["n-a", "n-c"]})
    assert status == 200
    assert body == [{"Host": "n-a", "Score": 0}, {"Host": "n-c", "Score": 10}]


async def test_neighbour_placement_raises_the_score(extender: Extender) -> None:
    ref = stage_of(stage_pod("j", 0, 2, 4, node="n-c", keps=900))
    assert ref is not None
    extender.index.set_pod(ref)
    _, body = await extender.post("prioritize", {"Pod": stage_pod("j", 1, 2, 4), "NodeNames": ["n-a", "n-c"]})
    scores = {h["Host"]: h["Score"] for h in body}
    assert scores["n-c"] > scores["n-a"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"NodeNames": ["a"]}', "Pod"),
        (b'{"Pod": {}, "NodeNames": "a"}', "NodeNames"),
        (b'{"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}', "metadata.name"),
        (b"\xff\xfe", "not JSON"),
    ],
)
async def test_bad_input_is_a_400_with_a_reason(extender: Extender, raw: bytes, message: str) -> None:
    for verb in ("filter", "prioritize"):
        status, body = await extender.post(verb, None, raw=raw)
        assert status == 400
        assert message in body["Error"]


async def test_oversized_body_is_refused(extender: Extender) -> None:
    body = io.BytesIO(b" " * (33 * 1024 * 1024))
    async with extender.session.post(f"{extender.base}/extender/filter", data=body) as r:
        assert r.status == 413


async def test_lower_case_keys_are_accepted(extender: Extender) -> None:
    """Go decodes field names case-insensitively, so we do too."""
    status, body = await extender.post("filter", {"pod": stage_pod("j", 0, 2, 4), "nodenames": ["n-a"]})
    assert status == 200
    assert body["NodeNames"] == ["n-a"]


async def test_a_pod_without_snnrm_resources_passes_everywhere(extender: Extender) -> None:
    pod = {"metadata": {"name": "plain"}, "spec": {"containers": [{"name": "c"}]}}
    status, body = await extender.post("filter", {"Pod": pod, "NodeNames": ["n-a", "n-x"]})
    assert status == 200
    assert body["NodeNames"] == ["n-a", "n-x"]


class _BrokenIndex(ClusterIndex):
    def slot_of(self, name: str) -> int:
        raise RuntimeError("index is broken")


async def test_an_internal_failure_is_never_a_500() -> None:
    """Filter answers 200 with Error set (the scheduler retries); prioritize answers zeros."""
    index = _BrokenIndex()
    app = build_extender_app(ExtenderContext(index, clock=lambda: NOW))
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(app, "127.0.0.1", 0, on_started=started.set_result))
    port = await started
    try:
        async with aiohttp.ClientSession() as s:
            body = {"Pod": stage_pod("j", 0, 2, 4), "NodeNames": ["n-a"]}
            async with s.post(f"http://127.0.0.1:{port}/extender/filter", json=body) as r:
                assert r.status == 200
                assert "index is broken" in (await r.json())["Error"]
            async with s.post(f"http://127.0.0.1:{port}/extender/prioritize", json=body) as r:
                assert r.status == 200
                assert await r.json() == [{"Host": "n-a", "Score": 0}]
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_placement_route_lists_jobs_and_nodes(extender: Extender) -> None:
    ref = stage_of(stage_pod("j", 0, 2, 4, node="n-a"))
    assert ref is not None
    extender.index.set_pod(ref)
    async with extender.session.get(f"{extender.base}/api/v1/placement") as r:
        body = await r.json()
    assert body["jobs"][0]["job"] == "j"
    assert body["jobs"][0]["stages"][0]["node"] == "n-a"
    assert {n["node"] for n in body["nodes"]} == {"n-a", "n-b", "n-c"}
