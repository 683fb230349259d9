"""A throwaway Kubernetes control plane on loopback: etcd + kube-apiserver + kube-scheduler, built from upstream
Go modules by scripts/build-tools.sh. No kubelet, no controller-manager: Nodes are created through the API.

Certificates come from the ``openssl`` CLI (a CA, the apiserver's serving cert for 127.0.0.1, an admin client
cert with ``O=system:masters``, and the service-account signing key pair), the way controller-runtime's envtest
sets up its apiserver. ``KubeClient`` is a small JSON-over-HTTPS client (stdlib only) for the tests.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e_support import free_port, tail


class ControlPlaneError(RuntimeError):
    pass


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as r:
            return bool(r.status == 200)
    except urllib.error.HTTPError as e:
        e.close()
        return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def issue_cert(d: Path, name: str, subject: str, ext: str) -> None:
    """``name``.{crt,key} in ``d``, for ``subject`` with the extensions ``ext``, signed by ``d``/ca.{crt,key}."""
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", *EC_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


def make_certs(d: Path) -> None:
    """ca.{crt,key}; apiserver.{crt,key} (SAN 127.0.0.1/localhost); admin.{crt,key} (O=system:masters); sa.{key,pub}."""
    if shutil.which("openssl") is None:
        raise ControlPlaneError("the control-plane fixture needs the openssl CLI")
    _openssl(
        "req", "-x509", *EC_KEY, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=snnrm-e2e-ca", cwd=d
    )
    leaves = {
        "apiserver": (
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,IP:10.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        "admin": ("/O=system:masters/CN=snnrm-e2e-admin", "extendedKeyUsage=clientAuth\n"),
    }
    for name, (subject, ext) in leaves.items():
        issue_cert(d, name, subject, ext)
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "sa.key", cwd=d)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def write_kubeconfig(path: Path, server: str, d: Path) -> None:
    """A kubeconfig (JSON is valid YAML) for the admin client cert."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(d / "ca.crt")}}],
        "users": [
            {"name": "admin", "user": {"client-certificate": str(d / "admin.crt"), "client-key": str(d / "admin.key")}}
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        "current-context": "e2e",
    }
    path.write_text(json.dumps(config, indent=2))


class KubeClient:
    """Just enough of the Kubernetes REST API: JSON in, JSON out, errors raise ``KubeError`` with the status."""

    def __init__(self, server: str, ca: Path, cert: Path | None = None, key: Path | None = None, token: str = ""):
        self.server = server.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            self.ctx.load_cert_chain(str(cert), str(key) if key else None)
        self.token = token

    def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json", timeout: float = 30
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            with e:  # an unclosed error response is a ResourceWarning, and warnings are errors here
                raise KubeError(e.code, e.read().decode(errors="replace"), method, path) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> Any:
        return self.request("POST", path, obj)

    def merge_patch(self, path: str, patch: dict[str, Any]) -> Any:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def wait_for(self, path: str, predicate: Any, *, within: float = 30, what: str = "condition") -> Any:
        """GET ``path`` until ``predicate(obj)`` is true; returns the object, or raises with the last one seen."""
        deadline = time.monotonic() + within
        obj: Any = None
        while True:
            with contextlib.suppress(KubeError):
                obj = self.get(path)
                if predicate(obj):
                    return obj
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what} not reached within {within}s on {path}; last seen: {json.dumps(obj)[:2000]}"
                )
            time.sleep(0.2)


class KubeError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:1000]}")
        self.status = status
        self.body = body


@dataclass
class ControlPlane:
    """Owns the three processes; ``start()`` returns once the apiserver is ready and the scheduler healthy."""

    workdir: Path
    etcd_bin: Path
    apiserver_bin: Path
    scheduler_bin: Path
    apiserver_args: list[str] = field(default_factory=list)
    """More kube-apiserver flags (the fleet benchmark adds an audit log)."""
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    server: str = ""
    kubeconfig: Path = Path()
    scheduler_config: Path = Path()
    scheduler_port: int = 0

    @property
    def certs(self) -> Path:
        return self.workdir / "pki"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def client(self) -> KubeClient:
        return KubeClient(self.server, self.certs / "ca.crt", self.certs / "admin.crt", self.certs / "admin.key")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with self.log(name).open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )
        self.procs.append((name, proc))
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{tail(self.log(name))}")

    def _wait(self, what: str, probe: Any, within: float) -> None:
        deadline = time.monotonic() + within
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if probe():
                    return
            except (OSError, KubeError, ssl.SSLError) as e:
                last = e
            time.sleep(0.25)
        logs = "\n".join(f"--- {n}.log\n{tail(self.log(n), 25)}" for n, _ in self.procs)
        raise ControlPlaneError(f"{what} not ready within {within}s (last error: {last})\n{logs}")

    def start(self) -> None:
        self.certs.mkdir(parents=True, exist_ok=True)
        make_certs(self.certs)
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        self.scheduler_port = free_port()

        etcd_url = f"http://127.0.0.1:{etcd_client}"
        self._spawn(
            "etcd",
            [
                str(self.etcd_bin),
                "--data-dir",
                str(self.workdir / "etcd-data"),
                "--name",
                "e2e",
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"e2e=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        self._wait("etcd", lambda: _http_ok(etcd_url + "/health"), 30)

        self.server = f"https://127.0.0.1:{api_port}"
        c = self.certs
        self._spawn(
            "kube-apiserver",
            [
                str(self.apiserver_bin),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--advertise-address=127.0.0.1",
                # 1.37 refuses a loopback advertise address for the kubernetes Service's endpoints; none needed here.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={c / 'apiserver.crt'}",
                f"--tls-private-key-file={c / 'apiserver.key'}",
                f"--client-ca-file={c / 'ca.crt'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                # No controller-manager runs, so nothing would create the default ServiceAccounts pods refer to.
                "--disable-admission-plugins=ServiceAccount",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={self.server}/",
                f"--service-account-key-file={c / 'sa.pub'}",
                f"--service-account-signing-key-file={c / 'sa.key'}",
                "--profiling=false",
                "--v=1",
                *self.apiserver_args,
            ],
        )
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server, c)
        client = self.client()
        self._wait("kube-apiserver /readyz", lambda: client.request("GET", "/readyz", timeout=5) == "ok", 120)

        self.scheduler_config = self.workdir / "scheduler.yaml"
        self.scheduler_config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(self.kubeconfig)},
                    "leaderElection": {"leaderElect": False},
                },
                indent=2,
            )
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.scheduler_bin),
                f"--config={self.scheduler_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--v=1",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # the scheduler serves a self-signed cert from --cert-dir
        url = f"https://127.0.0.1:{self.scheduler_port}/readyz"
        self._wait("kube-scheduler /readyz", lambda: _http_ok(url, insecure), 60)

    def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
