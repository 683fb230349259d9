"""Fixtures of the real-Kubernetes tier: binaries built from upstream Go modules by scripts/build-tools.sh.

``make test`` always builds them first (``make tools``), so a missing binary only skips a test when pytest is
run by hand before ``make tools``; the skip reason says which binary and how to build it.

* ``devicemanager``: ``devicemanager-harness`` (tests/e2e/devicemanager), the upstream kubelet device manager
  serving ``kubelet.sock`` in a fresh directory, driven over stdin/stdout JSON lines.
* ``daemon``: the real ``snnrm run --backend sim`` registering with that ``kubelet.sock``.
* ``control_plane`` (session): etcd + kube-apiserver + kube-scheduler on loopback (tests/e2e/e2e_controlplane.py);
  ``control_plane.kubeconfig`` is an admin kubeconfig, ``control_plane.client()`` a small REST client.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from e2e_controlplane import ControlPlane
from e2e_support import Daemon, DeviceManagerHarness, tool


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path is 108 bytes; pytest's tmp_path can be longer)."""
    d = Path(tempfile.mkdtemp(prefix="snnrm-e2e-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def harness_bin() -> Path:
    return tool("SNNRM_DEVICEMANAGER_HARNESS", "devicemanager-harness")


@pytest.fixture
async def devicemanager(harness_bin: Path, short_tmp: Path, tmp_path: Path) -> AsyncIterator[DeviceManagerHarness]:
    """The real kubelet device manager serving ``<short_tmp>/dp/kubelet.sock``."""
    socket_dir = short_tmp / "dp"
    log = tmp_path / "devicemanager-harness.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(harness_bin),
            f"--socket-dir={socket_dir}",
            "-v=2",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    h = DeviceManagerHarness(proc, socket_dir, log)
    try:
        await h.start()
        yield h
    finally:
        await h.close()


@pytest.fixture
async def daemon(devicemanager: DeviceManagerHarness, tmp_path: Path) -> AsyncIterator[Daemon]:
    """``snnrm run --backend sim`` (2 chips x 64 cores) registering with the harness's kubelet.sock."""
    d = Daemon(devicemanager.socket_dir, tmp_path)
    try:
        await d.start()
        yield d
    finally:
        await d.stop()


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-scheduler on loopback, once per test run; torn down at the end."""
    cp = ControlPlane(
        workdir=tmp_path_factory.mktemp("control-plane"),
        etcd_bin=tool("SNNRM_ETCD", "etcd"),
        apiserver_bin=tool("SNNRM_KUBE_APISERVER", "kube-apiserver"),
        scheduler_bin=tool("SNNRM_KUBE_SCHEDULER", "kube-scheduler"),
    )
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()
