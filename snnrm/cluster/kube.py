"""The Kubernetes API seam: a tiny JSON client Protocol, its aiohttp implementation, and its errors.

Everything snnrm asks of the apiserver for hooks is GET, a JSON merge patch, or a create; so the seam is those three
calls on API paths, and :class:`snnrm.testing.fake_kube.FakeKubeApi` implements them in memory for unit tests. The
real client is aiohttp (already the daemon's HTTP stack) rather than kubernetes-asyncio: three verbs do not justify
an untyped 20 MB dependency. It authenticates the two ways a node daemon needs:

* in cluster: the pod's service-account token (re-read on every request, since projected tokens rotate) and CA;
* from a kubeconfig: the current context's server, CA, client certificate/key or bearer token (files or inline
  ``*-data``). Exec plugins and auth providers are not supported (a DaemonSet never needs them).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import aiohttp
import yaml

from snnrm.core.errors import ApiError, CredentialsError
from snnrm.core.types import JSON as JSON  # re-exported: older importers (node_agent, hooks) name it here

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeApiError(ApiError):
    """An API call of the hooks' client failed (``status``, ``retryable``: :class:`~snnrm.core.errors.ApiError`)."""


class KubeConfigError(CredentialsError):
    """No usable cluster credentials."""


class KubeApi(Protocol):
    """Just the calls the hooks make; paths are API paths such as ``/apis/apps/v1/namespaces/x/deployments/y``."""

    async def get(self, path: str) -> JSON: ...

    async def merge_patch(self, path: str, patch: JSON) -> JSON: ...

    async def create(self, path: str, obj: JSON) -> JSON: ...


@dataclass(frozen=True, slots=True)
class KubeCredentials:
    """Where the apiserver is and how to prove who we are."""

    server: str
    ca_file: Path | None = None
    ca_data: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None
    token_file: Path | None = None
    insecure: bool = False

    @classmethod
    def in_cluster(cls) -> KubeCredentials:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are unset; pass a kubeconfig")
        if ":" in host:
            host = f"[{host}]"
        return cls(
            server=f"https://{host}:{port}",
            ca_file=SERVICE_ACCOUNT / "ca.crt",
            token_file=SERVICE_ACCOUNT / "token",
        )

    @classmethod
    def from_kubeconfig(cls, path: Path, *, scratch: Path) -> KubeCredentials:
        """The current context of a kubeconfig; inline ``*-data`` fields are written to files under ``scratch``."""
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise KubeConfigError(f"cannot read kubeconfig {path}: {e}") from e
        try:
            ctx_name = doc["current-context"]
            ctx = next(c["context"] for c in doc["contexts"] if c["name"] == ctx_name)
            cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == ctx["cluster"])
            user: dict[str, Any] = next((u["user"] for u in doc.get("users", []) if u["name"] == ctx.get("user")), {})
        except (KeyError, TypeError, StopIteration) as e:
            raise KubeConfigError(f"kubeconfig {path}: no usable current context ({e!r})") from e
        if "exec" in user or "auth-provider" in user:
            raise KubeConfigError(f"kubeconfig {path}: exec plugins and auth providers are not supported")

        def file_of(key: str, data_key: str, d: dict[str, Any]) -> Path | None:
            if d.get(data_key):
                scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd, name = tempfile.mkstemp(dir=scratch, prefix=key + "-")
                with os.fdopen(fd, "wb") as f:
                    f.write(base64.b64decode(d[data_key]))
                return Path(name)
            if d.get(key):
                p = Path(d[key])
                return p if p.is_absolute() else path.parent / p
            return None

        return cls(
            server=str(cluster["server"]),
            ca_file=file_of("certificate-authority", "certificate-authority-data", cluster),
            cert_file=file_of("client-certificate", "client-certificate-data", user),
            key_file=file_of("client-key", "client-key-data", user),
            token=user.get("token"),
            token_file=Path(user["tokenFile"]) if user.get("tokenFile") else None,
            insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        )

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


@dataclass(eq=False)
class RestKubeApi:
    """:class:`KubeApi` over aiohttp. Use as an async context manager (it owns one ClientSession)."""

    credentials: KubeCredentials
    timeout: float = 10.0
    """Seconds per call: Alertmanager's own webhook timeout is usually 10 s or more, and we answer it after acting."""
    _session: aiohttp.ClientSession | None = field(default=None, init=False)

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context())
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def _base(self) -> str:
        return self.credentials.server.rstrip("/")

    async def _call(self, method: str, path: str, body: JSON | None, content_type: str) -> JSON:
        if self._session is None:
            raise RuntimeError("RestKubeApi used outside `async with`")
        headers = {"Accept": "application/json", "User-Agent": "snnrm-hooks"}
        if body is not None:
            headers["Content-Type"] = content_type
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        try:
            async with self._session.request(method, self._base + path, data=data, headers=headers) as r:
                text = await r.text()
                if r.status >= 300:
                    message = text[:500]
                    with contextlib.suppress(ValueError, AttributeError):
                        message = json.loads(text).get("message", message)
                    raise KubeApiError(r.status, message, method=method, path=path)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise KubeApiError(0, repr(e), method=method, path=path) from e
        try:
            out = json.loads(text) if text else {}
        except ValueError as e:
            raise KubeApiError(r.status, f"answer is not JSON: {text[:200]!r}", method=method, path=path) from e
        if not isinstance(out, dict):
            raise KubeApiError(r.status, "answer is not a JSON object", method=method, path=path)
        return out

    async def get(self, path: str) -> JSON:
        return await self._call("GET", path, None, "")

    async def merge_patch(self, path: str, patch: JSON) -> JSON:
        return await self._call("PATCH", path, patch, "application/merge-patch+json")

    async def create(self, path: str, obj: JSON) -> JSON:
        return await self._call("POST", path, obj, "application/json")
