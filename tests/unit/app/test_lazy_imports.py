"""Heavy optional packages stay out of a daemon that does not use them (node RSS budget: < 150 MB at 16,384 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["kubernetes_asyncio", "opentelemetry", "nir", "h5py"])
def test_the_node_daemon_does_not_import(package: str) -> None:
    """kubernetes-asyncio loads when the first Kubernetes client is made, not at import."""
    code = (
        "import sys, snnrm.cli, snnrm.app\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] == {package!r})\n"
        "assert not loaded, loaded\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr


async def test_a_client_is_made_on_first_need() -> None:
    """KubeClients loads the client module when asked; a missing kubeconfig is a clear KubeConfigError."""
    from snnrm.app import KubeClients
    from snnrm.kube.api import KubeConfigError

    clients = KubeClients()
    with pytest.raises(KubeConfigError):
        await clients.get(Path("/nonexistent/kubeconfig"))
    assert len(clients) == 0
    await clients.aclose()


def test_a_client_loads_kubernetes_asyncio_without_its_generated_models() -> None:
    """A daemon with placement, hooks or DRA on connects through kubernetes-asyncio's credentials core only (the
    generated API and model classes are 38 MB): the client works against an apiserver, no model module is loaded,
    and code that then asks for the full package (a model, the watch module) still gets it."""
    code = """
import asyncio, sys, tempfile
from pathlib import Path
from snnrm.kube.api import NODES
from snnrm.kube.client import KubeAsyncApi
from snnrm.testing.fake_apiserver import FakeApiServer

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeApiServer() as server:
            server.api.add_node("n1")
            async with await KubeAsyncApi.connect(server.kubeconfig(Path(tmp) / "kubeconfig")) as api:
                node = await api.get(NODES, "n1")
                assert node["metadata"]["name"] == "n1", node
    models = [m for m in sys.modules if m.startswith("kubernetes_asyncio.client.models.")]
    assert not models, models[:5]
    from snnrm.kube import lean
    assert lean.load().lean
    import kubernetes_asyncio.watch
    from kubernetes_asyncio.client import CoreV1Api, V1Pod
    assert V1Pod(metadata={"name": "p"}).metadata == {"name": "p"}
    assert kubernetes_asyncio.watch.Watch and CoreV1Api

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
