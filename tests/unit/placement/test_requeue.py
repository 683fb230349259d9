"""Pods the extender turned away for lack of cores are handed back to the scheduler when a newer summary has room
(snnrm/core/requeue.py), through the controller process as ``snnrm controller`` runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp

from snnrm.core.devices import NEURON_CORE
from snnrm.core.requeue import REQUESTED_AT, TurnedAway
from snnrm.core.summary import ANNOTATION
from snnrm.kube.api import NODES, PODS
from snnrm.testing.fake_apiserver import FakeApiServer
from snnrm.testing.fake_cluster import node_summary


def test_a_pod_is_due_only_where_it_was_turned_away_and_only_when_it_fits() -> None:
    t = TurnedAway(ttl=300.0, max_pods=3)
    t.record("ns", "a", "uid-a", 4, ["n1"], now=0.0)
    t.record("ns", "b", "uid-b", 1, ["n1", "n2"], now=1.0)
    assert t.due("n3", 100, now=2.0) == []  # never turned away there
    assert [p.name for p in t.due("n1", 2, now=2.0)] == ["b"]  # a needs 4
    assert t.due("n2", 100, now=2.0) == []  # b was handed back once; the scheduler asks the extender again
    assert [p.name for p in t.due("n1", 4, now=3.0)] == ["a"]
    assert len(t) == 0


def test_a_pod_that_passed_or_aged_out_is_forgotten_and_the_ledger_is_bounded() -> None:
    t = TurnedAway(ttl=10.0, max_pods=2)
    t.record("ns", "a", "", 1, ["n1"], now=0.0)
    t.record("ns", "a", "", 1, [], now=1.0)  # it fit somewhere on the next try
    assert len(t) == 0
    t.record("ns", "old", "", 1, ["n1"], now=0.0)
    assert t.due("n1", 10, now=11.0) == []  # past the scheduler's own flush
    for k in range(5):
        t.record("ns", f"p{k}", "", 1, ["n1"], now=20.0 + k)
    assert len(t) == 2
    assert [p.name for p in t.due("n1", 10, now=25.0)] == ["p3", "p4"]  # the oldest went first


def _pod(name: str, cores: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": {NEURON_CORE: str(cores)}}}]},
    }


def _node(name: str, free: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": {ANNOTATION: node_summary(time.time(), free=free).encode()}}}


async def test_a_pod_turned_away_by_a_stale_summary_is_handed_back_when_the_node_has_room(
    controller_process: Callable[[FakeApiServer, str], AbstractAsyncContextManager[str]],
) -> None:
    """The scheduler's retry can reach the extender before the controller has the summary that says the cores
    are back; then nothing else wakes the pod for 5 min. The controller touches it when the summary arrives."""
    async with FakeApiServer() as apiserver:
        api = apiserver.api
        api.put(NODES, _node("n1", free=0))
        pod = api.put(PODS, _pod("starved", 1))
        async with controller_process(apiserver, "r") as base, aiohttp.ClientSession() as http:
            for _ in range(200):
                async with http.get(base + "/readyz") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.05)
            async with http.post(base + "/extender/filter", json={"Pod": pod, "NodeNames": ["n1"]}) as r:
                answer = await r.json()
            assert answer["NodeNames"] == []
            assert "needs 1 free healthy" in answer["FailedNodes"]["n1"]
            # A summary that still has no room hands nothing back.
            api.put(NODES, _node("n1", free=0))
            await asyncio.sleep(0.3)
            assert REQUESTED_AT not in (api.get_obj(PODS, "starved") or {})["metadata"].get("annotations", {})
            api.put(NODES, _node("n1", free=4))
            for _ in range(100):
                notes = (api.get_obj(PODS, "starved") or {})["metadata"].get("annotations") or {}
                if REQUESTED_AT in notes:
                    break
                await asyncio.sleep(0.05)
            assert REQUESTED_AT in notes
