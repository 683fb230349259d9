"""What the product asks of the Kubernetes API: :class:`ClusterApi` (JSON in, JSON out), the resources it names, and
the one error tree its calls raise.

Everything snnrm asks of the apiserver is a get (also of a subresource such as ``/scale``), a list, a watch, a
create (including the Eviction subresource and dry runs), a JSON merge patch, a replace (optimistic concurrency),
a delete with a resourceVersion precondition, or API discovery. :class:`ClusterApi` is those calls on plain JSON
objects (``dict``) addressed by a :class:`Resource`. :class:`snnrm.kube.client.KubeAsyncApi` implements it over
kubernetes-asyncio (the only module that loads a kubeconfig or the pod's service account), and
:class:`snnrm.testing.fake_cluster.FakeClusterApi` in memory for every layer's unit tests.

Errors are translated at the client into :class:`KubeError` (an :class:`~snnrm.core.errors.ApiError`, so the one
retry rule holds: no answer, 409, 429 and 5xx are worth retrying), with :class:`NotFoundError` (404),
:class:`ConflictError` (409), :class:`GoneError` (410: list again) and :class:`TooManyRequestsError` (429: throttled,
or an eviction a PodDisruptionBudget refuses) as their own types, since callers act on them.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from snnrm.core.errors import ApiError, CredentialsError
from snnrm.core.types import JSON as JSON  # re-exported: the layer's JSON type


class KubeConfigError(CredentialsError):
    """No usable cluster credentials (kubeconfig unreadable or incomplete, not in a cluster)."""


class KubeError(ApiError):
    """A Kubernetes API call failed (``status``, ``reason``, ``retryable``: :class:`~snnrm.core.errors.ApiError`);
    the subclasses below name the statuses callers handle."""


class NotFoundError(KubeError):
    """404: no such object (or the API group is not served)."""


class ConflictError(KubeError):
    """409: someone else changed the object (optimistic concurrency) or it already exists."""


class TooManyRequestsError(KubeError):
    """429: throttled, or an eviction refused by a PodDisruptionBudget."""


class GoneError(KubeError):
    """410: the watch's resourceVersion is too old; list again."""


def error_for(status: int, message: str, *, method: str = "", path: str = "", reason: str = "") -> KubeError:
    """The :class:`KubeError` (sub)class of an HTTP status."""
    cls = {404: NotFoundError, 409: ConflictError, 410: GoneError, 429: TooManyRequestsError}.get(status, KubeError)
    return cls(status, message, method=method, path=path, reason=reason)


@dataclass(frozen=True, slots=True)
class Resource:
    """An API resource: group ("" for core), version, plural, and whether it lives in namespaces."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    def path(self, *, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The API path: the collection, or with ``name`` one object, with ``subresource`` its subresource."""
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


PODS = Resource("", "v1", "pods")
NODES = Resource("", "v1", "nodes", namespaced=False)
CORE_EVENTS = Resource("", "v1", "events")
"""core/v1 Events (``involvedObject``): what the hooks record on their targets."""
LEASES = Resource("coordination.k8s.io", "v1", "leases")
EVENTS = Resource("events.k8s.io", "v1", "events")
"""events.k8s.io/v1 Events (``regarding``): what the placement controller and node agent record."""
RESOURCE_SLICES = Resource("resource.k8s.io", "v1", "resourceslices", namespaced=False)
RESOURCE_CLAIMS = Resource("resource.k8s.io", "v1", "resourceclaims")


class ClusterApi(Protocol):
    """JSON in, JSON out; every method raises :class:`KubeError` (or a subclass) on failure."""

    async def get(
        self, res: Resource, name: str, *, namespace: str | None = None, subresource: str | None = None
    ) -> JSON: ...

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[JSON], str]:
        """Items and the list's resourceVersion (to watch from)."""
        ...

    def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[tuple[str, JSON]]:
        """``(type, object)`` events (ADDED, MODIFIED, DELETED, BOOKMARK) until the server ends the watch;
        raises :class:`GoneError` when the resourceVersion is too old."""
        ...

    async def create(
        self,
        res: Resource,
        obj: JSON,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JSON: ...

    async def merge_patch(
        self, res: Resource, name: str, patch: JSON, *, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        """RFC 7386 merge patch; a ``metadata.resourceVersion`` in the patch is a precondition (409 if stale)."""
        ...

    async def replace(self, res: Resource, name: str, obj: JSON, *, namespace: str | None = None) -> JSON: ...

    async def delete(
        self, res: Resource, name: str, *, namespace: str | None = None, resource_version: str = ""
    ) -> None:
        """Delete; with ``resource_version``, only if the object is still that version (409 otherwise)."""
        ...

    async def served_versions(self, group: str) -> dict[str, builtins.list[str]]:
        """``version -> resource plurals`` the apiserver serves for an API group ({} when the group is absent)."""
        ...


async def evict(api: ClusterApi, namespace: str, name: str, *, dry_run: bool = False) -> None:
    """Evict a pod through the Eviction API (so PodDisruptionBudgets hold); TooManyRequestsError if one refuses."""
    body: JSON = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
    await api.create(PODS, body, namespace=namespace, name=name, subresource="eviction", dry_run=dry_run)
