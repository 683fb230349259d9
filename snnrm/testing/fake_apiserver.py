"""The in-memory apiserver (:class:`~snnrm.testing.fake_cluster.FakeClusterApi`) over HTTP, for a daemon subprocess.

A daemon run as ``snnrm run`` talks to the apiserver through a kubeconfig (:class:`snnrm.kube.client.KubeAsyncApi`),
so the in-process fake cannot be handed to it. :class:`FakeApiServer` serves the REST paths that client uses on
plain HTTP (get, list, watch as JSON lines, create, merge patch, replace, delete) and :meth:`FakeApiServer.kubeconfig`
writes a kubeconfig pointing at it. Errors come back as ``Status`` objects with the fake's HTTP status. The test
still reads and writes objects through :attr:`FakeApiServer.api` directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import yaml
from aiohttp import web

from snnrm.core.types import JSON
from snnrm.kube.api import KubeError, Resource
from snnrm.testing.fake_cluster import FakeClusterApi
from snnrm.testing.promstack import free_port

CLUSTER_SCOPED = {"nodes", "namespaces", "persistentvolumes", "resourceslices", "deviceclasses"}
"""Plurals that live outside namespaces (a :class:`Resource` compares equal only with the same ``namespaced``)."""


def _parse(parts: list[str]) -> tuple[Resource, str | None, str | None, str | None]:
    """(resource, namespace, name, subresource) of an API path split on ``/`` (without the leading empty part)."""
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise KubeError(404, f"/{'/'.join(parts)}: not an API path")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        raise KubeError(404, f"/{'/'.join(parts)}: no resource")
    plural = rest[0]
    namespaced = plural not in CLUSTER_SCOPED
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return Resource(group, version, plural, namespaced), namespace, name, sub


def _status(e: KubeError) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": e.message, "code": e.status}
    return web.json_response(body, status=e.status or 500)


@dataclass(eq=False)
class FakeApiServer:
    """Serves :attr:`api` on ``http://127.0.0.1:<port>``; use as an async context manager."""

    api: FakeClusterApi = field(default_factory=FakeClusterApi)
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = field(default=None, init=False)
    _streams: set[web.StreamResponse] = field(default_factory=set, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for this server (token auth, which the fake does not check) and return its path."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        q = request.query
        try:
            res, ns, name, sub = _parse(parts)
            if request.method == "GET" and name is None and q.get("watch") in ("true", "1"):
                return await self._watch(request, res, ns)
            if request.method == "GET" and name is None:
                items, rv = await self.api.list(
                    res, namespace=ns, label_selector=q.get("labelSelector"), field_selector=q.get("fieldSelector")
                )
                return web.json_response({"kind": "List", "items": items, "metadata": {"resourceVersion": rv}})
            if request.method == "GET" and name is not None:
                return web.json_response(await self.api.get(res, name, namespace=ns, subresource=sub))
            body: JSON = await request.json() if request.can_read_body else {}
            if request.method == "POST":
                dry = q.get("dryRun") == "All"
                out = await self.api.create(res, body, namespace=ns, name=name, subresource=sub, dry_run=dry)
                return web.json_response(out, status=201)
            if request.method == "PATCH" and name is not None:
                return web.json_response(await self.api.merge_patch(res, name, body, namespace=ns, subresource=sub))
            if request.method == "PUT" and name is not None:
                return web.json_response(await self.api.replace(res, name, body, namespace=ns))
            if request.method == "DELETE" and name is not None:
                rv = str((body.get("preconditions") or {}).get("resourceVersion") or "")
                await self.api.delete(res, name, namespace=ns, resource_version=rv)
                return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Success"})
        except KubeError as e:
            return _status(e)
        return _status(KubeError(405, f"{request.method} {request.path} is not served by the fake"))

    async def _watch(self, request: web.Request, res: Resource, ns: str | None) -> web.StreamResponse:
        q = request.query
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        self._streams.add(resp)
        try:
            timeout = float(q.get("timeoutSeconds", "240"))
            events = self.api.watch(
                res,
                resource_version=q.get("resourceVersion", ""),
                namespace=ns,
                label_selector=q.get("labelSelector"),
                field_selector=q.get("fieldSelector"),
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    async for kind, obj in events:
                        await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        except ConnectionResetError:
            pass  # the client went away: the watch ends here
        finally:
            self._streams.discard(resp)
        return resp
