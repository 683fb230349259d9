"""Registering right after a kubelet restart must dial the new kubelet afresh (issue 16: back-to-back restarts).

gRPC shares subchannels between channels to the same target; one a going-away kubelet left in reconnect back-off
(connection reset, ~1 s and growing) made every Register to the *new* kubelet on the same path fail at once with
UNAVAILABLE, so the plugin only got through after the back-off ran out (1.5 s after the kubelet listened)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from snnrm.core.devices import NEURON_CORE
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.registration import answers, register
from snnrm.kubelet.standin import registration_server
from snnrm.kubelet.wire import KUBELET_SOCKET


@pytest.fixture
def short_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="snnrm-", dir="/tmp"))  # unix socket paths are limited to 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_register_after_a_kubelet_that_reset_us_reaches_the_new_one(short_dir: Path) -> None:
    path = short_dir / KUBELET_SOCKET

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # a kubelet going away under us: connection reset

    going = await asyncio.start_unix_server(reset, path=str(path))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await register(path, endpoint="x.sock", resource=NEURON_CORE, options=api_pb2.DevicePluginOptions())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    going.close()
    await going.wait_closed()
    path.unlink(missing_ok=True)

    calls: list[api_pb2.RegisterRequest] = []

    async def accept(request: api_pb2.RegisterRequest, context: Any) -> api_pb2.Empty:
        calls.append(request)
        return api_pb2.Empty()

    new = await registration_server(path, accept)
    try:
        await register(path, endpoint="x.sock", resource=NEURON_CORE, options=api_pb2.DevicePluginOptions())
    finally:
        await new.stop(None)
    assert [c.resource_name for c in calls] == [NEURON_CORE]


async def test_answers_tells_a_live_kubelet_sock_from_a_dead_one(short_dir: Path) -> None:
    path = short_dir / KUBELET_SOCKET
    assert await answers(path) is False  # no file
    live = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(path))
    assert await answers(path) is True
    live.close()
    await live.wait_closed()
    path.unlink(missing_ok=True)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # what SIGKILL leaves behind: the file, nobody listening
    dead.close()
    assert path.exists()
    assert await answers(path) is False
