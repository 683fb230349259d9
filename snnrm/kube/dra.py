"""The DRA driver's calls, typed: its node's ResourceSlices, the ResourceClaims it prepares, its Node.

The driver reads ResourceClaims (NodePrepareResources carries only claim identities), writes the node's
ResourceSlices (list, watch, create, update, delete, and a dry-run create to learn which optional fields the
cluster keeps) and reads its Node (to own the slices, so they are garbage-collected with it). :class:`DraApi` is
those calls over any :class:`~snnrm.kube.api.ClusterApi`: the product's one client
(:class:`snnrm.kube.client.KubeAsyncApi`, with a longer per-call timeout) or the in-memory fake in unit tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from snnrm.kube.api import JSON, NODES, RESOURCE_CLAIMS, RESOURCE_SLICES, ClusterApi, NotFoundError

DRA_TIMEOUT = 20.0
"""Seconds per call for the DRA driver: a claim GET sits inside NodePrepareResources, which the kubelet gives 45 s."""


def _selector(node: str, driver: str) -> str:
    return f"spec.nodeName={node},spec.driver={driver}"


@dataclass(frozen=True, slots=True)
class DraApi:
    """The apiserver calls of the DRA driver, on ``api``."""

    api: ClusterApi

    async def get_claim(self, namespace: str, name: str) -> JSON:
        return await self.api.get(RESOURCE_CLAIMS, name, namespace=namespace)

    async def list_slices(self, *, node: str, driver: str) -> tuple[list[JSON], str]:
        """The node's slices of ``driver`` and the list's resourceVersion (to start a watch from)."""
        return await self.api.list(RESOURCE_SLICES, field_selector=_selector(node, driver))

    def watch_slices(self, *, node: str, driver: str, resource_version: str) -> AsyncIterator[tuple[str, JSON]]:
        """(event type, object) of changes after ``resource_version``; ends when the server closes the watch."""
        return self.api.watch(
            RESOURCE_SLICES, resource_version=resource_version, field_selector=_selector(node, driver)
        )

    async def create_slice(self, obj: JSON, *, dry_run: bool = False) -> JSON:
        return await self.api.create(RESOURCE_SLICES, obj, dry_run=dry_run)

    async def update_slice(self, obj: JSON) -> JSON:
        return await self.api.replace(RESOURCE_SLICES, str(obj["metadata"]["name"]), obj)

    async def delete_slice(self, name: str, *, resource_version: str = "") -> None:
        """Delete (a missing slice is fine); with ``resource_version``, only if it is still that version."""
        with contextlib.suppress(NotFoundError):
            await self.api.delete(RESOURCE_SLICES, name, resource_version=resource_version)

    async def get_node(self, name: str) -> JSON | None:
        try:
            return await self.api.get(NODES, name)
        except NotFoundError:
            return None
