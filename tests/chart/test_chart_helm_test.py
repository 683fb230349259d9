"""The `helm test` pod's check (charts/snnrm/files/helm-test.py, rendered into the test Pod) run against a real
daemon: it passes when the daemon is ready and exporting metrics, and fails when there is no daemon to reach."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from chart_support import Helm, one

from snnrm.app import Daemon
from snnrm.config import Config
from snnrm.core.devices import NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn


@pytest.fixture
async def daemon_port(tmp_path: Path) -> AsyncIterator[int]:
    config = Config.model_validate(
        {
            "backend": "sim",
            "kubelet_dir": tmp_path / "dp",
            "http": "127.0.0.1:0",
            "sim_chips": 1,
            "sim_cores": 16,
            "state_dir": tmp_path / "state",
            "cdi_dir": tmp_path / "cdi",
            "sample_period": 0.05,
            "pod_resources_socket": tmp_path / "pr" / "kubelet.sock",
        }
    )
    async with KubeletStandIn(config.kubelet_dir) as kubelet:
        daemon = await Daemon.create(config)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop=stop))
        try:
            await asyncio.wait_for(daemon.http_started.wait(), 10)
            await kubelet.wait_capacity(NEURON_CORE, 16, within=10)
            assert daemon.http_port is not None
            yield daemon.http_port
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)


async def _run_check(helm: Helm, port: int) -> tuple[int, str]:
    pod = one(helm.render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["command"] == ["python", "-c"]
    env = {**os.environ, "TARGET_HOST": "127.0.0.1", "TARGET_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", c["args"][0], env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_helm_test_check_passes_against_a_ready_daemon(helm: Helm, daemon_port: int) -> None:
    # /readyz answers 503 until both plugins are registered; the check must see it ready.
    rc, out = await _run_check(helm, daemon_port)
    assert rc == 0, out
    assert "ok: daemon 127.0.0.1 ready, metrics exported" in out


async def test_helm_test_check_fails_without_a_daemon(helm: Helm) -> None:
    from e2e_support import free_port

    rc, out = await _run_check(helm, free_port())
    assert rc == 1
    assert "FAIL: daemon 127.0.0.1" in out, out
