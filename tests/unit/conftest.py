"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from snnrm.cluster.controller import ControllerSettings
from snnrm.controller_app import ControllerConfig, run
from snnrm.testing.fake_apiserver import FakeApiServer

ControllerStarter = Callable[[FakeApiServer, str], AbstractAsyncContextManager[str]]


@pytest.fixture
def controller_process(tmp_path: Path) -> ControllerStarter:
    """``start(apiserver, identity)``: ``snnrm controller`` as the process runs it (:func:`snnrm.controller_app.run`),
    connected to the in-memory apiserver through a kubeconfig; yields its base URL, and stops it (cleanly, within
    10 s) on exit."""

    @contextlib.asynccontextmanager
    async def start(apiserver: FakeApiServer, identity: str) -> AsyncIterator[str]:
        config = ControllerConfig(
            host="127.0.0.1",
            port=0,
            kubeconfig=apiserver.kubeconfig(tmp_path / f"kubeconfig-{identity}"),
            settings=ControllerSettings(identity=identity, lease_duration=3.0, renew_deadline=2.0, retry_period=0.2),
        )
        stop = asyncio.Event()
        port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        # Awaited below, not in a TaskGroup: a failed assertion in the test then surfaces as itself.
        task = asyncio.create_task(run(config, stop=stop, on_started=port.set_result))
        try:
            yield f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}"
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    return start
