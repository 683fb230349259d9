"""Builders shared by the placement unit tests (the builders themselves ship in snnrm.testing.fake_cluster)."""

from __future__ import annotations

from typing import Any

from snnrm.core.cluster import ClusterIndex
from snnrm.core.jobs import stage_of
from snnrm.core.summary import NodeSummary
from snnrm.testing.fake_cluster import SMALL_TOPOLOGY as TOPO
from snnrm.testing.fake_cluster import stage_pod

__all__ = ["TOPO", "index_with", "stage_pod", "summary"]


def summary(now: float = 1000.0, *, free: int | None = None, fill: float = 0.0, link: float = 0.0) -> NodeSummary:
    from snnrm.testing.fake_cluster import node_summary

    return node_summary(now, free=free, fill=fill, link=link)


def index_with(nodes: dict[str, NodeSummary], pods: list[dict[str, Any]] | None = None) -> ClusterIndex:
    idx = ClusterIndex()
    for name, s in nodes.items():
        idx.set_summary(name, s)
    for p in pods or []:
        ref = stage_of(p)
        assert ref is not None
        idx.set_pod(ref)
    return idx
