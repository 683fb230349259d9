"""Heavy optional packages stay out of a daemon that does not use them (node RSS budget: < 150 MB at 16,384 cores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["kubernetes_asyncio", "opentelemetry", "nir", "h5py"])
def test_the_node_daemon_does_not_import(package: str) -> None:
    """kubernetes-asyncio alone costs ~34 MB; it loads when the first Kubernetes client is made, not at import."""
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
