"""The DRA driver's seam to the apiserver: a Protocol of exactly the calls it makes, and an aiohttp client.

The driver reads ResourceClaims (NodePrepareResources carries only claim identities), writes the node's
ResourceSlices (list, watch, create, update, delete, and a dry-run create to learn which optional fields the
cluster keeps) and reads its Node (to own the slices, so they are garbage-collected with it). Tests use the in-memory
:class:`snnrm.dra.testing.FakeDraKube`.

Credentials are anything with ``server``, ``ssl_context()`` and ``bearer()`` (the wiring passes
:class:`snnrm.cluster.kube.KubeCredentials`, in cluster or from a kubeconfig), so kubeconfig parsing lives in one
place and this package stays below ``snnrm.cluster`` in the layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

import aiohttp

from snnrm.core.errors import ApiError
from snnrm.core.types import JSON

RESOURCE_API = "/apis/resource.k8s.io/v1"


class DraApiError(ApiError):
    """An API call of the DRA driver failed (``status``, ``reason``, ``retryable``:
    :class:`~snnrm.core.errors.ApiError`)."""


class DraKubeApi(Protocol):
    """The apiserver calls of the DRA driver."""

    async def get_claim(self, namespace: str, name: str) -> JSON: ...

    async def list_slices(self, *, node: str, driver: str) -> tuple[list[JSON], str]:
        """The node's slices of ``driver`` and the list's resourceVersion (to start a watch from)."""
        ...

    def watch_slices(self, *, node: str, driver: str, resource_version: str) -> AsyncIterator[tuple[str, JSON]]:
        """(event type, object) of changes after ``resource_version``; ends when the server closes the watch."""
        ...

    async def create_slice(self, obj: JSON, *, dry_run: bool = False) -> JSON: ...

    async def update_slice(self, obj: JSON) -> JSON: ...

    async def delete_slice(self, name: str, *, resource_version: str = "") -> None:
        """Delete (a missing slice is fine); with ``resource_version``, only if it is still that version."""
        ...

    async def get_node(self, name: str) -> JSON | None: ...


class Credentials(Protocol):
    @property
    def server(self) -> str: ...

    def ssl_context(self) -> ssl.SSLContext: ...

    def bearer(self) -> str | None: ...


def _selector(node: str, driver: str) -> str:
    return urllib.parse.quote(f"spec.nodeName={node},spec.driver={driver}")


@dataclass(eq=False)
class RestDraApi:
    """:class:`DraKubeApi` over aiohttp. It owns one ClientSession, opened on first use; close it with
    :meth:`aclose` (or use it as an async context manager)."""

    credentials: Credentials
    timeout: float = 20.0
    """Seconds per call: a claim GET sits inside NodePrepareResources, which the kubelet gives 45 s."""
    watch_timeout: int = 300
    """Seconds the apiserver keeps a watch open before we re-list (it closes watches on its own too)."""
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _open(self) -> aiohttp.ClientSession:
        """The session, created on first use (inside the event loop that will use it)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context())
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "snnrm-dra"}
        if content_type:
            headers["Content-Type"] = content_type
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _call(self, method: str, path: str, body: JSON | None = None) -> JSON:
        session = self._open()
        url = self.credentials.server.rstrip("/") + path
        data = None if body is None else json.dumps(body).encode()
        try:
            async with session.request(
                method,
                url,
                data=data,
                headers=self._headers("application/json" if body is not None else None),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DraApiError(0, repr(e), method=method, path=path) from e
        if status >= 300:
            message, reason = text[:500], ""
            with contextlib.suppress(ValueError, AttributeError):
                doc = json.loads(text)
                message, reason = doc.get("message", message), doc.get("reason", "")
            raise DraApiError(status, message, method=method, path=path, reason=reason)
        try:
            # A node's whole pool can be megabytes (16k cores: ~10 MB); parse big answers off the event loop.
            out = (
                (await asyncio.to_thread(json.loads, text) if len(text) > 1 << 20 else json.loads(text)) if text else {}
            )
        except ValueError as e:
            raise DraApiError(status, f"answer is not JSON: {text[:200]!r}", method=method, path=path) from e
        if not isinstance(out, dict):
            raise DraApiError(status, "answer is not a JSON object", method=method, path=path)
        return out

    async def get_claim(self, namespace: str, name: str) -> JSON:
        return await self._call("GET", f"{RESOURCE_API}/namespaces/{namespace}/resourceclaims/{name}")

    async def list_slices(self, *, node: str, driver: str) -> tuple[list[JSON], str]:
        doc = await self._call("GET", f"{RESOURCE_API}/resourceslices?fieldSelector={_selector(node, driver)}")
        return list(doc.get("items") or []), str(doc.get("metadata", {}).get("resourceVersion", ""))

    async def watch_slices(self, *, node: str, driver: str, resource_version: str) -> AsyncIterator[tuple[str, JSON]]:
        session = self._open()
        path = (
            f"{RESOURCE_API}/resourceslices?watch=1&allowWatchBookmarks=true&fieldSelector={_selector(node, driver)}"
            f"&resourceVersion={urllib.parse.quote(resource_version)}&timeoutSeconds={self.watch_timeout}"
        )
        url = self.credentials.server.rstrip("/") + path
        try:
            async with session.get(
                url,
                headers=self._headers(None),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.watch_timeout + 30),
            ) as r:
                if r.status >= 300:
                    raise DraApiError(r.status, (await r.text())[:500], method="WATCH", path=path)
                async for line in r.content:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except ValueError as e:
                        raise DraApiError(r.status, f"bad watch event {line[:200]!r}", method="WATCH") from e
                    if event.get("type") == "ERROR":
                        obj = event.get("object", {})
                        raise DraApiError(int(obj.get("code", 0) or 410), str(obj.get("message", "")), method="WATCH")
                    yield str(event.get("type", "")), dict(event.get("object") or {})
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as e:
            raise DraApiError(0, repr(e), method="WATCH", path=path) from e

    async def create_slice(self, obj: JSON, *, dry_run: bool = False) -> JSON:
        return await self._call("POST", f"{RESOURCE_API}/resourceslices" + ("?dryRun=All" if dry_run else ""), obj)

    async def update_slice(self, obj: JSON) -> JSON:
        return await self._call("PUT", f"{RESOURCE_API}/resourceslices/{obj['metadata']['name']}", obj)

    async def delete_slice(self, name: str, *, resource_version: str = "") -> None:
        body: JSON | None = None
        if resource_version:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": resource_version}}
        try:
            await self._call("DELETE", f"{RESOURCE_API}/resourceslices/{name}", body)
        except DraApiError as e:
            if e.status != 404:
                raise

    async def get_node(self, name: str) -> JSON | None:
        try:
            return await self._call("GET", f"/api/v1/nodes/{name}")
        except DraApiError as e:
            if e.status == 404:
                return None
            raise
