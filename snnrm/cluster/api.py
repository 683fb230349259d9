"""The controller's seam to the Kubernetes API: a small JSON Protocol, its kubernetes-asyncio implementation, errors.

Everything the placement controller asks of the apiserver is a get, a list, a watch, a create (including the
Eviction subresource), a JSON merge patch, a replace (Leases, with optimistic concurrency) or API discovery, so
:class:`ClusterApi` is those calls on plain JSON objects (``dict``), addressed by a :class:`Resource`.
:class:`KubeAsyncApi` implements them over kubernetes-asyncio's ``ApiClient`` (its kubeconfig and in-cluster
loaders, token refresh and TLS; the generic ``call_api`` keeps objects as JSON rather than generated models),
and :class:`snnrm.testing.fake_cluster.FakeClusterApi` in memory for unit tests.

Errors are translated at this boundary into :class:`KubeError` (``status`` 0 for a network error or timeout),
with :class:`ConflictError` (409) and :class:`TooManyRequestsError` (429: an eviction a PodDisruptionBudget refuses, or
throttling) as their own types, since callers act on them.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

from snnrm.core.errors import ApiError, CredentialsError
from snnrm.core.types import JSON as JSON  # re-exported: older importers (node_agent, hooks) name it here

WATCH_SECONDS = 240
"""Server-side watch timeout: the apiserver ends watches after 5-10 min anyway; 4 min re-lists nothing (we resume
from the last resourceVersion) and keeps a silently dead connection from lasting long."""


class ApiConfigError(CredentialsError):
    """No usable cluster credentials (kubeconfig unreadable, not in a cluster)."""


class KubeError(ApiError):
    """An API call of the controller's and node agent's client failed (``status``, ``retryable``:
    :class:`~snnrm.core.errors.ApiError`); the subclasses below name the statuses callers handle."""


class NotFoundError(KubeError):
    pass


class ConflictError(KubeError):
    """409: someone else changed the object (optimistic concurrency) or it already exists."""


class TooManyRequestsError(KubeError):
    """429: throttled, or an eviction refused by a PodDisruptionBudget."""


class GoneError(KubeError):
    """410: the watch's resourceVersion is too old; list again."""


def error_for(status: int, message: str, *, method: str = "", path: str = "") -> KubeError:
    cls = {404: NotFoundError, 409: ConflictError, 410: GoneError, 429: TooManyRequestsError}.get(status, KubeError)
    return cls(status, message, method=method, path=path)


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
LEASES = Resource("coordination.k8s.io", "v1", "leases")
EVENTS = Resource("events.k8s.io", "v1", "events")


class ClusterApi(Protocol):
    """JSON in, JSON out; every method raises :class:`KubeError` (or a subclass) on failure."""

    async def get(self, res: Resource, name: str, *, namespace: str | None = None) -> JSON: ...

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
    ) -> JSON: ...

    async def replace(self, res: Resource, name: str, obj: JSON, *, namespace: str | None = None) -> JSON: ...

    async def served_versions(self, group: str) -> dict[str, builtins.list[str]]:
        """``version -> resource plurals`` the apiserver serves for an API group ({} when the group is absent)."""
        ...


async def evict(api: ClusterApi, namespace: str, name: str, *, dry_run: bool = False) -> None:
    """Evict a pod through the Eviction API (so PodDisruptionBudgets hold); TooManyRequestsError if one refuses."""
    body: JSON = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
    await api.create(PODS, body, namespace=namespace, name=name, subresource="eviction", dry_run=dry_run)


class KubeAsyncApi:
    """:class:`ClusterApi` over kubernetes-asyncio. Use as an async context manager (it owns an ApiClient)."""

    def __init__(self, client: ApiClient, *, timeout: float = 10.0) -> None:
        self._client = client
        self._timeout = timeout

    @classmethod
    async def connect(cls, kubeconfig: Path | None = None, *, request_timeout: float = 10.0) -> KubeAsyncApi:
        """From a kubeconfig file, else the pod's service account (in cluster)."""
        cfg = Configuration()
        try:
            if kubeconfig is not None:
                await kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            else:
                kube_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except (kube_config.ConfigException, OSError, ValueError, TypeError, KeyError) as e:  # garbled kubeconfig
            where = kubeconfig if kubeconfig is not None else "the pod's service account"
            raise ApiConfigError(f"no usable cluster credentials from {where}: {e}") from e
        return cls(ApiClient(configuration=cfg), timeout=request_timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.close()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: builtins.list[tuple[str, str]] | None = None,
        body: JSON | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            out = await self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=self._timeout,
            )
        except ApiException as e:
            raise error_for(int(e.status or 0), _message(e.body, e.reason), method=method, path=path) from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise KubeError(0, repr(e), method=method, path=path) from e
        return out if isinstance(out, dict) else {}

    async def get(self, res: Resource, name: str, *, namespace: str | None = None) -> JSON:
        return await self._call("GET", res.path(namespace=namespace, name=name))

    async def list(
        self,
        res: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> tuple[builtins.list[JSON], str]:
        query = _selectors(label_selector, field_selector)
        body = await self._call("GET", res.path(namespace=namespace), query=query)
        items = [i for i in body.get("items") or [] if isinstance(i, dict)]
        return items, str((body.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self,
        res: Resource,
        *,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> AsyncIterator[tuple[str, JSON]]:
        path = res.path(namespace=namespace)
        query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(WATCH_SECONDS))]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        query += _selectors(label_selector, field_selector)
        try:
            resp = await self._client.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._timeout, sock_read=WATCH_SECONDS + 30
                ),
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise KubeError(0, repr(e), method="WATCH", path=path) from e
        async with resp:
            if resp.status != 200:
                raise error_for(resp.status, _message(await resp.read(), resp.reason), method="WATCH", path=path)
            buf = b""
            try:
                # Lines can be longer than aiohttp's readline limit (Nodes carry image lists): split by hand.
                async for chunk in resp.content.iter_chunked(1 << 16):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield _event(line, path)
            except (aiohttp.ClientError, TimeoutError) as e:
                raise KubeError(0, f"watch broke: {e!r}", method="WATCH", path=path) from e

    async def create(
        self,
        res: Resource,
        obj: JSON,
        *,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> JSON:
        query = [("dryRun", "All")] if dry_run else None
        return await self._call(
            "POST", res.path(namespace=namespace, name=name, subresource=subresource), query=query, body=obj
        )

    async def merge_patch(
        self, res: Resource, name: str, patch: JSON, *, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        return await self._call(
            "PATCH",
            res.path(namespace=namespace, name=name, subresource=subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def replace(self, res: Resource, name: str, obj: JSON, *, namespace: str | None = None) -> JSON:
        return await self._call("PUT", res.path(namespace=namespace, name=name), body=obj)

    async def served_versions(self, group: str) -> dict[str, builtins.list[str]]:
        try:
            body = await self._call("GET", f"/apis/{group}")
        except NotFoundError:
            return {}
        out: dict[str, builtins.list[str]] = {}
        for v in body.get("versions") or []:
            version = str((v or {}).get("version") or "")
            if not version:
                continue
            try:
                rl = await self._call("GET", f"/apis/{group}/{version}")
            except NotFoundError:
                continue
            out[version] = [str(r.get("name")) for r in rl.get("resources") or [] if isinstance(r, dict)]
        return out


def _selectors(label_selector: str | None, field_selector: str | None) -> builtins.list[tuple[str, str]]:
    q: list[tuple[str, str]] = []
    if label_selector:
        q.append(("labelSelector", label_selector))
    if field_selector:
        q.append(("fieldSelector", field_selector))
    return q


def _message(body: Any, fallback: Any) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500] or str(fallback or "")
    return str(parsed.get("message") or text[:500]) if isinstance(parsed, dict) else text[:500]


def _event(line: bytes, path: str) -> tuple[str, JSON]:
    try:
        ev = json.loads(line)
    except ValueError as e:
        raise KubeError(0, f"watch sent a line that is not JSON: {line[:200]!r}", method="WATCH", path=path) from e
    kind = str(ev.get("type") or "")
    obj = ev.get("object") if isinstance(ev.get("object"), dict) else {}
    if kind == "ERROR":
        code = int(obj.get("code") or 0)
        raise error_for(code, str(obj.get("message") or obj), method="WATCH", path=path)
    return kind, obj
