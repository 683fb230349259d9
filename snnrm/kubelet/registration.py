"""Registering a device plugin with the kubelet, and noticing when the kubelet forgot it.

The kubelet (legacy socket mode) forgets every plugin when it restarts: it deletes every socket in its
device-plugins directory, recreates ``kubelet.sock`` and waits for plugins to register again. A plugin notices
by cheap ``stat`` polling: its own socket vanished, or ``kubelet.sock`` is a different file than the one it
registered with. File identity is (device, inode, ctime): inode numbers alone are reused at once on tmpfs.

A *killed* kubelet deletes nothing: its ``kubelet.sock`` stays, refusing connections, until the next kubelet's
start-up clean-up removes it and listens anew. :func:`answers` tells a live ``kubelet.sock`` from such a dead one.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from typing import NamedTuple

import grpc

from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.wire import REGISTRATION_SERVICE, VERSION

REGISTER_TIMEOUT_S = 15.0
"""Kubelet dials back into the plugin inside Register with a 10 s blocking dial; allow that plus slack."""
PROBE_TIMEOUT_S = 1.0
"""Bound on one connect to ``kubelet.sock`` (a unix connect answers at once unless the backlog is full)."""


class FileIdentity(NamedTuple):
    dev: int
    ino: int
    ctime_ns: int


def identity(path: Path) -> FileIdentity | None:
    """Identity of the file at ``path`` now, or None if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileIdentity(st.st_dev, st.st_ino, st.st_ctime_ns)


async def register(
    kubelet_socket: Path,
    *,
    endpoint: str,
    resource: str,
    options: api_pb2.DevicePluginOptions,
    rpc_timeout: float = REGISTER_TIMEOUT_S,
) -> None:
    """Call ``/v1beta1.Registration/Register``; raises ``grpc.aio.AioRpcError`` if the kubelet refuses.

    ``endpoint`` is the plugin socket's file name relative to the kubelet's directory. The plugin's server
    must already be serving: the kubelet calls back into it before this returns.
    """
    request = api_pb2.RegisterRequest(version=VERSION, endpoint=endpoint, resource_name=resource, options=options)
    # A channel of its own subchannels: gRPC shares subchannels between channels to the same target by default,
    # and one left in reconnect back-off by a kubelet that went away (up to ~1.6 s, then growing) would fail this
    # call at once against the new kubelet listening on the same path.
    local = (("grpc.use_local_subchannel_pool", 1),)
    async with grpc.aio.insecure_channel(f"unix://{kubelet_socket}", options=local) as channel:
        call = channel.unary_unary(
            f"/{REGISTRATION_SERVICE}/Register",
            request_serializer=api_pb2.RegisterRequest.SerializeToString,
            response_deserializer=api_pb2.Empty.FromString,
        )
        await call(request, timeout=rpc_timeout, wait_for_ready=False)


async def answers(path: Path) -> bool | None:
    """Whether a listener accepts connections on the unix socket ``path``: True, False when refused (nobody
    listens: a dead socket file) or gone, None when undecided (e.g. its backlog is full)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            await asyncio.get_running_loop().sock_connect(sock, str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:  # TimeoutError included
        return None
    finally:
        sock.close()
    return True
