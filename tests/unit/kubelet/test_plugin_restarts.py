"""Kubelet restarts as the device plugin sees them (issue 16), over real gRPC on unix sockets.

A *killed* kubelet is a kubelet stand-in in a child process that gets SIGKILL: its ``kubelet.sock`` stays behind,
refusing connections, exactly as a killed kubelet's does. The next stand-in, like the kubelet, deletes every
socket in the directory at start-up and only then listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from structlog.typing import EventDict

from snnrm.core.devices import NEURON_CORE, ThroughputBlocks, neuron_core_devices
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.plugin import DevicePlugin
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.registration import identity
from snnrm.kubelet.standin import KubeletStandIn, registration_server
from snnrm.kubelet.state import StaticAllocationState
from snnrm.kubelet.wire import KUBELET_SOCKET

TOPOLOGY = Topology.grid(chips=1, geometry=ChipGeometry(cols=2, rows=2))
WITHIN = 20.0  # liveness bound only: nothing here asserts how long anything took

# A stand-in kubelet in its own process, printing one JSON line per registration it accepts.
CHILD = """
import asyncio, json, sys
from pathlib import Path
import structlog
from snnrm.kubelet.standin import KubeletStandIn, registration_server

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))  # stdout carries our JSON lines

async def main():
    async with KubeletStandIn(Path(sys.argv[1])) as kubelet:
        print(json.dumps({"ready": True}), flush=True)
        seen = 0
        while True:
            while len(kubelet.registrations) > seen:
                print(json.dumps({"registered": kubelet.registrations[seen].resource_name}), flush=True)
                seen += 1
            await asyncio.sleep(0.005)

asyncio.run(main())
"""


class ChildKubelet:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(self.directory), stdout=asyncio.subprocess.PIPE
        )
        assert await self.line() == {"ready": True}

    async def line(self) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WITHIN)
        assert raw, "stand-in kubelet exited"
        msg: dict[str, Any] = json.loads(raw)
        return msg

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def make_plugin(root: Path) -> DevicePlugin:
    return DevicePlugin(
        kubelet_dir=root / "dp",
        resource=NEURON_CORE,
        feed=DeviceFeed(NEURON_CORE, neuron_core_devices(TOPOLOGY, np.ones(TOPOLOGY.n_cores, dtype=bool))),
        state=StaticAllocationState(topology=TOPOLOGY, blocks=ThroughputBlocks.plan(TOPOLOGY, block_keps=1000.0)),
        state_dir=root / "state",
        cdi_dir=root / "cdi",
        poll_interval=0.02,
        orphan_grace=0.2,
    )


@contextlib.asynccontextmanager
async def running(plugin: DevicePlugin) -> AsyncIterator[None]:
    task = asyncio.create_task(plugin.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WITHIN):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


def events(logs: list[EventDict], name: str) -> list[EventDict]:
    return [e for e in logs if e["event"] == name]


async def test_a_killed_kubelet_is_never_registered_with_and_the_next_one_gets_one_registration(
    short_dir: Path,
) -> None:
    """SIGKILL leaves a dead kubelet.sock: the plugin stops serving (no socket of ours for the next kubelet's
    start-up clean-up to delete), never registers against the dead socket, and registers exactly once with the
    next kubelet. Before the fix it re-registered against the dead socket after the orphan grace (UNAVAILABLE)
    and kept a fresh socket of its own in the directory meanwhile."""
    plugin = make_plugin(short_dir)
    kdir = short_dir / "dp"
    first, second = ChildKubelet(kdir), ChildKubelet(kdir)
    with structlog.testing.capture_logs() as logs:
        await first.start()
        async with running(plugin):
            assert await first.line() == {"registered": NEURON_CORE}
            await until(plugin.registered.is_set)
            await first.kill()
            assert (kdir / "kubelet.sock").exists()  # dead: nobody listens
            await until(lambda: bool(events(logs, "restarting device plugin")))  # it noticed
            assert not plugin.socket_path.exists()
            assert not plugin.registered.is_set()
            await second.start()
            assert await second.line() == {"registered": NEURON_CORE}
            await until(plugin.registered.is_set)
            assert plugin.socket_path.exists()
            assert plugin.registrations == 2
        await second.kill()
    assert events(logs, "registration failed") == []


async def test_back_to_back_restarts_never_back_off(short_dir: Path) -> None:
    """Ten kubelet restarts, each as soon as the plugin is back: one registration per kubelet and no back-off
    between cycles (before the fix, cycles shorter than 2 s backed off 0.1 s doubling to 5 s)."""
    plugin = make_plugin(short_dir)
    with structlog.testing.capture_logs() as logs:
        async with KubeletStandIn(short_dir / "dp") as kubelet, running(plugin):
            await kubelet.wait_capacity(NEURON_CORE, TOPOLOGY.n_cores, allocatable=TOPOLOGY.n_cores, within=WITHIN)
            for _ in range(10):
                await kubelet.restart()
                await kubelet.wait_capacity(NEURON_CORE, TOPOLOGY.n_cores, allocatable=TOPOLOGY.n_cores, within=WITHIN)
            assert len(kubelet.registrations) == 11
            assert plugin.registrations == 11
    restarts = events(logs, "restarting device plugin")
    assert len(restarts) == 10
    assert [e["delay"] for e in restarts] == [0.0] * 10


async def test_our_socket_deleted_after_registration_is_recreated_and_registered_once(short_dir: Path) -> None:
    """Someone deletes our socket while the kubelet stays: the plugin serves a new one and registers it once."""
    plugin = make_plugin(short_dir)
    async with KubeletStandIn(short_dir / "dp") as kubelet, running(plugin):
        await kubelet.wait_capacity(NEURON_CORE, TOPOLOGY.n_cores, allocatable=TOPOLOGY.n_cores, within=WITHIN)
        plugin.socket_path.unlink()
        await until(lambda: len(kubelet.registrations) == 2)
        await kubelet.wait_capacity(NEURON_CORE, TOPOLOGY.n_cores, allocatable=TOPOLOGY.n_cores, within=WITHIN)
        assert plugin.socket_path.exists()
        assert plugin.registrations == 2


async def test_a_registration_whose_socket_is_deleted_meanwhile_is_abandoned_and_redone(short_dir: Path) -> None:
    """The kubelet start-up clean-up deletes our socket while our Register is in flight, and the kubelet hangs
    dialing the deleted path (upstream: a 10 s blocking dial). The plugin gives that call up as soon as its socket
    is gone and registers a fresh socket, instead of waiting out the dial (before the fix: the whole 15 s
    Register timeout, then "registration failed")."""
    plugin = make_plugin(short_dir)
    kdir = short_dir / "dp"
    kdir.mkdir(parents=True)
    calls: list[api_pb2.RegisterRequest] = []

    async def register(request: api_pb2.RegisterRequest, context: Any) -> api_pb2.Empty:
        calls.append(request)
        if len(calls) == 1:
            (kdir / request.endpoint).unlink()  # the clean-up race
            await asyncio.Event().wait()  # dialing a deleted path; ends only when the plugin cancels
        return api_pb2.Empty()

    server = await registration_server(kdir / KUBELET_SOCKET, register)
    try:
        with structlog.testing.capture_logs() as logs:
            async with running(plugin):
                await until(plugin.registered.is_set)
                assert len(calls) == 2
                assert plugin.registrations == 1
                assert plugin.socket_path.exists()
    finally:
        await server.stop(None)
    assert events(logs, "registration failed") == []  # abandoned, not timed out
    assert [e["reason"] for e in events(logs, "restarting device plugin")] == [
        "plugin socket removed during registration"
    ]


async def test_a_kubelet_sock_caught_between_bind_and_listen_is_probed_again(short_dir: Path) -> None:
    """A new kubelet's socket file exists, refusing, between its bind() and listen(); a plugin that probes it then
    must not write that file off (found by the restarts benchmark: the plugin waited for a newer kubelet.sock that
    never came, and one resource stayed unregistered)."""
    plugin = make_plugin(short_dir)
    path = plugin.kubelet_socket
    path.parent.mkdir(parents=True)
    kubelet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        kubelet.bind(str(path))  # the file is there; nobody listens yet
        with structlog.testing.capture_logs() as logs:
            waiting = asyncio.create_task(plugin._wait_for_kubelet())
            await until(lambda: bool(events(logs, "kubelet.sock refuses connections; waiting for a new kubelet")))
            kubelet.listen()  # the same file now answers
            async with asyncio.timeout(WITHIN):
                assert await waiting == identity(path)
    finally:
        kubelet.close()
