"""An in-memory :class:`snnrm.cluster.kube.KubeApi`: objects by API path, scale subresources, merge patches, Events.

Enough apiserver behaviour for the hooks' unit tests: ``resourceVersion`` preconditions (409 on a stale one),
``/scale`` reading and writing the parent's ``spec.replicas``, RFC 7386 merge patches, ``generateName`` on create,
404 for unknown objects, and injected failures (``fail_next``) to exercise retries and error paths.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from snnrm.cluster.kube import KubeApiError
from snnrm.core.types import JSON


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass(eq=False)
class FakeKubeApi:
    """Objects keyed by their API path (e.g. ``/apis/apps/v1/namespaces/ns/deployments/web``)."""

    objects: dict[str, JSON] = field(default_factory=dict)
    created: list[tuple[str, JSON]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_next: list[KubeApiError] = field(default_factory=list)
    """Errors raised by the next calls, in order (then calls behave normally again)."""
    _version: int = 0

    def put(self, path: str, obj: JSON) -> None:
        """Create or replace an object (test setup)."""
        self._version += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.objects[path] = obj

    def _maybe_fail(self, method: str, path: str) -> None:
        self.calls.append((method, path))
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _lookup(self, method: str, path: str) -> tuple[str, bool]:
        parent, scale = (path.removesuffix("/scale"), True) if path.endswith("/scale") else (path, False)
        if parent not in self.objects:
            raise KubeApiError(404, f"{parent} not found", method=method, path=path)
        return parent, scale

    async def get(self, path: str) -> JSON:
        self._maybe_fail("GET", path)
        parent, scale = self._lookup("GET", path)
        obj = self.objects[parent]
        if scale:
            meta = obj["metadata"]
            return {
                "kind": "Scale",
                "metadata": {"name": meta.get("name"), "resourceVersion": meta["resourceVersion"]},
                "spec": {"replicas": obj.get("spec", {}).get("replicas", 0)},
            }
        return copy.deepcopy(obj)

    async def merge_patch(self, path: str, patch: JSON) -> JSON:
        self._maybe_fail("PATCH", path)
        parent, scale = self._lookup("PATCH", path)
        obj = self.objects[parent]
        want = (patch.get("metadata") or {}).get("resourceVersion")
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise KubeApiError(409, "the object has been modified", method="PATCH", path=path)
        if scale:
            patch = {"spec": {"replicas": patch.get("spec", {}).get("replicas")}}
        new = merge_patch(obj, {k: v for k, v in patch.items() if k != "metadata"})
        self.put(parent, new)
        return await self.get(path)

    async def create(self, path: str, obj: JSON) -> JSON:
        self._maybe_fail("POST", path)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if "name" not in meta and "generateName" in meta:
            meta["name"] = f"{meta['generateName']}{len(self.created):05d}"
        self.created.append((path, obj))
        return obj

    def replicas(self, path: str, field_name: str = "replicas") -> int:
        return int(self.objects[path]["spec"][field_name])
