"""The product's one Kubernetes client: :class:`~snnrm.kube.api.ClusterApi` over kubernetes-asyncio.

kubernetes-asyncio does what a client must get right and snnrm should not re-implement: kubeconfig loading (files,
inline ``*-data``, exec plugins), the in-cluster service account (its projected token refreshed as it rotates), TLS.
:meth:`KubeAsyncApi.connect` is the only place the product loads credentials; the app modules connect once and
hand the client (or a :meth:`~KubeAsyncApi.with_timeout` view of it, sharing its connections) to every part that
talks to the apiserver. Requests go through the client's connection pool with its auth headers, but the JSON is
ours: bodies are serialised once with :func:`json.dumps` (not walked by the generated client's sanitiser first), and
answers over 1 MiB (a node's ResourceSlices at 16k cores are ~10 MB) are parsed off the event loop. Failures become
:class:`~snnrm.kube.api.KubeError` here, at the boundary (``status`` 0 for a network error or timeout).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlencode

import aiohttp
import yaml
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from snnrm.kube import lean
from snnrm.kube.api import JSON, KubeConfigError, KubeError, NotFoundError, Resource, error_for

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

WATCH_SECONDS = 240
"""Server-side watch timeout: the apiserver ends watches after 5-10 min anyway; 4 min re-lists nothing (we resume
from the last resourceVersion) and keeps a silently dead connection from lasting long."""
USER_AGENT = "snnrm"
BIG_ANSWER = 1 << 20
"""Bytes above which an answer is parsed in a worker thread (about 10 ms of json.loads on the event loop)."""


@dataclass(eq=False)
class _Session:
    """The HTTP session over the ApiClient's connection pool, shared by a client and its :meth:`with_timeout` views.

    kubernetes-asyncio's own session trusts the environment, so aiohttp would look up ``~/.netrc`` and the proxy
    variables in worker threads on every request (two thread hops per call: +1.5 ms of CPU per ResourceSlice write
    at 4k cores, measured). Ours shares its connector (TLS, connection limit) without that: the proxy is the
    kubeconfig's ``proxy-url`` or the environment's, looked up once; netrc is not a Kubernetes credential."""

    client: ApiClient
    http: aiohttp.ClientSession | None = None
    proxy: dict[str, Any] = field(default_factory=dict)

    def get(self) -> aiohttp.ClientSession:
        if self.http is None:  # created on first use, inside the event loop that uses it
            rest = self.client.rest_client
            self.http = aiohttp.ClientSession(
                connector=rest.pool_manager.connector, connector_owner=False, read_bufsize=2**21
            )
            if rest.proxy:
                self.proxy = {"proxy": rest.proxy, "proxy_headers": rest.proxy_headers}
            else:
                with contextlib.suppress(LookupError):
                    proxy, auth = get_env_proxy_for_url(URL(str(self.client.configuration.host)))
                    self.proxy = {"proxy": proxy, "proxy_auth": auth}
            if rest.server_hostname:
                self.proxy["server_hostname"] = rest.server_hostname
        return self.http

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None


def _check_kubeconfig(path: Path) -> None:
    """Raise KubeConfigError unless the YAML file at ``path`` holds a mapping: the library's error for an empty
    file is a TypeError about NoneType. OSError and YAML errors propagate to the caller."""
    if not isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict):
        raise KubeConfigError(f"{path} is not a kubeconfig: empty, or not a YAML mapping")


class KubeAsyncApi:
    """:class:`~snnrm.kube.api.ClusterApi` over kubernetes-asyncio. Use as an async context manager (it owns an
    ApiClient, unless it is a :meth:`with_timeout` view of another client)."""

    def __init__(
        self, client: ApiClient, *, timeout: float = 10.0, owner: bool = True, _session: _Session | None = None
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._owner = owner
        self._session = _session or _Session(client)

    @classmethod
    async def connect(cls, kubeconfig: Path | None = None, *, request_timeout: float = 10.0) -> KubeAsyncApi:
        """From a kubeconfig file, else the pod's service account (in cluster); :class:`KubeConfigError` if neither
        gives usable credentials."""
        k8s = lean.load()  # without the generated models: 38 MB of the node's RSS
        cfg = k8s.Configuration()
        try:
            if kubeconfig is not None:
                await asyncio.to_thread(_check_kubeconfig, kubeconfig)
                await k8s.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
            else:
                k8s.config.load_incluster_config(client_configuration=cfg)
        except KubeConfigError:
            raise
        except (k8s.config.ConfigException, OSError, ValueError, TypeError, KeyError, yaml.YAMLError) as e:
            where = kubeconfig if kubeconfig is not None else "the pod's service account"
            raise KubeConfigError(f"no usable cluster credentials from {where}: {e}") from e
        client: ApiClient = k8s.ApiClient(configuration=cfg)
        client.user_agent = USER_AGENT
        return cls(client, timeout=request_timeout)

    def with_timeout(self, seconds: float) -> KubeAsyncApi:
        """The same client (credentials, connections) with another per-call timeout; closing it closes nothing."""
        return KubeAsyncApi(self._client, timeout=seconds, owner=False, _session=self._session)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owner:
            await self._session.aclose()
            await self._client.close()

    @asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: builtins.list[tuple[str, str]] | None = None,
        data: bytes | None = None,
        content_type: str = "application/json",
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One HTTP exchange through the client's session, with its credentials (a refreshed token if it rotates)."""
        client = self._client
        headers: dict[str, str] = {"Accept": "application/json", "User-Agent": client.user_agent or USER_AGENT}
        if data is not None:
            headers["Content-Type"] = content_type
        query = list(query or [])
        await client.update_params_for_auth(headers, query, ["BearerToken"])
        url = str(client.configuration.host) + path + ("?" + urlencode(query) if query else "")
        http = self._session.get()
        async with http.request(
            method,
            url,
            data=data,
            headers=headers,
            timeout=client_timeout or aiohttp.ClientTimeout(total=self._timeout),
            **self._session.proxy,
        ) as resp:
            yield resp

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: builtins.list[tuple[str, str]] | None = None,
        body: JSON | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self._request(method, path, query=query, data=data, content_type=content_type) as resp:
                raw = await resp.read()
                status, reason = resp.status, resp.reason
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise KubeError(0, repr(e), method=method, path=path) from e
        if status >= 300:
            message, why = _status(raw, reason)
            raise error_for(status, message, method=method, path=path, reason=why)
        if not raw:
            return {}
        try:
            out = await asyncio.to_thread(json.loads, raw) if len(raw) > BIG_ANSWER else json.loads(raw)
        except ValueError as e:
            raise KubeError(status, f"answer is not JSON: {raw[:200]!r}", method=method, path=path) from e
        return out if isinstance(out, dict) else {}

    async def get(
        self, res: Resource, name: str, *, namespace: str | None = None, subresource: str | None = None
    ) -> JSON:
        return await self._call("GET", res.path(namespace=namespace, name=name, subresource=subresource))

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
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=WATCH_SECONDS + 30)
        try:
            async with self._request("GET", path, query=query, client_timeout=timeout) as resp:
                if resp.status != 200:
                    message, why = _status(await resp.read(), resp.reason)
                    raise error_for(resp.status, message, method="WATCH", path=path, reason=why)
                buf = b""
                # Lines can be longer than aiohttp's readline limit (Nodes carry image lists): split by hand.
                async for chunk in resp.content.iter_chunked(1 << 16):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip():
                            yield _event(line, path)
        except (aiohttp.ClientError, TimeoutError, OSError, asyncio.IncompleteReadError) as e:
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

    async def delete(
        self, res: Resource, name: str, *, namespace: str | None = None, resource_version: str = ""
    ) -> None:
        body: JSON | None = None
        if resource_version:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"resourceVersion": resource_version}}
        await self._call("DELETE", res.path(namespace=namespace, name=name), body=body)

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


def _status(body: bytes, fallback: str | None) -> tuple[str, str]:
    """(message, reason) of an error answer: the ``Status`` object's, else the start of the body."""
    text = body.decode(errors="replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500] or str(fallback or ""), ""
    if not isinstance(parsed, dict):
        return text[:500], ""
    return str(parsed.get("message") or text[:500]), str(parsed.get("reason") or "")


def _event(line: bytes, path: str) -> tuple[str, JSON]:
    try:
        ev = json.loads(line)
    except ValueError as e:
        raise KubeError(0, f"watch sent a line that is not JSON: {line[:200]!r}", method="WATCH", path=path) from e
    kind = str(ev.get("type") or "")
    obj = ev.get("object") if isinstance(ev.get("object"), dict) else {}
    if kind == "ERROR":
        code = int(obj.get("code") or 0)
        raise error_for(
            code, str(obj.get("message") or obj), method="WATCH", path=path, reason=str(obj.get("reason") or "")
        )
    return kind, obj
