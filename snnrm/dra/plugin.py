"""The DRA kubelet plugin's lifecycle: its two gRPC servers, its device state, its slices, its health stream.

``run()`` owns, until cancelled:

* the **service server** on ``<plugin_dir>/dra.sock``: ``v1.DRAPlugin`` (+ ``v1beta1``) and
  ``v1.DRAResourceHealth`` (+ ``v1alpha1``);
* the **registration server** on ``<registry_dir>/<driver>-reg.sock``: ``pluginregistration.Registration``,
  started only once the service socket serves, so the kubelet never dials an endpoint that is not there yet;
* a socket watch (``stat`` every ``poll_interval``): if the registration socket vanished (an admin, a kubelet
  upgrade cleaning its directory) it is recreated, which registers the driver again; if the service socket
  vanished, both servers restart. Unlike device plugins, a kubelet restart needs nothing from us: the kubelet
  rescans the registry directory and calls ``GetInfo`` again;
* :class:`DraView` (device state from telemetry) and :class:`SlicePublisher` (the node's ResourceSlices).

On cancellation the registration socket is removed first (the kubelet deregisters the driver), then the service
server stops. Example (``app.py`` does this when ``--dra`` is on)::

    plugin = DraPlugin(node="node-1", registry_dir=Path("/var/lib/kubelet/plugins_registry"),
                       plugin_dir=Path("/var/lib/kubelet/plugins/snnrm.io"), view=view, api=api,
                       state_dir=Path("/var/lib/snnrm"), cdi_dir=Path("/var/run/cdi"), info=HardwareInfo())
    tg.create_task(plugin.run(), name="dra-plugin")
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import structlog

from snnrm import __version__
from snnrm.core.dra import DRIVER, DraFeatures, DraLayout, HardwareInfo, SliceSettings, parse_tile
from snnrm.core.monitor import NodeMonitor
from snnrm.dra.claims import ClaimStore
from snnrm.dra.health import HealthServicer
from snnrm.dra.publisher import SlicePublisher
from snnrm.dra.registration import RegistrationServicer
from snnrm.dra.servicer import DraPluginServicer
from snnrm.dra.view import DraView, MonitorTelemetry
from snnrm.kube.dra import DraApi
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.registration import FileIdentity, identity

log = structlog.get_logger(__name__)

SERVICE_SOCKET = "dra.sock"
POLL_INTERVAL_S = 0.5


def registration_socket_name(driver: str) -> str:
    return f"{driver}-reg.sock"


class DraPlugin:
    """The DRA driver ``driver`` of one node; see the module docstring."""

    def __init__(
        self,
        *,
        node: str,
        registry_dir: Path,
        plugin_dir: Path,
        view: DraView,
        api: DraApi,
        state_dir: Path,
        cdi_dir: Path,
        info: HardwareInfo,
        driver: str = DRIVER,
        allow: DraFeatures | None = None,
        slice_settings: SliceSettings | None = None,
        publish: bool = True,
        attribute_interval: float = 5.0,
        heartbeat: float = 10.0,
        poll_interval: float = POLL_INTERVAL_S,
        shutdown_grace: float = 1.0,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.driver = driver
        self._on_stop = on_stop
        self.node = node
        self.registry_socket = Path(registry_dir) / registration_socket_name(driver)
        self.service_socket = Path(plugin_dir) / SERVICE_SOCKET
        self.view = view
        self.store = ClaimStore(state_dir=state_dir, cdi_dir=cdi_dir)
        self.servicer = DraPluginServicer(
            driver=driver, pool=node, layout=view.layout, api=api, store=self.store, view=view
        )
        self.health = HealthServicer(view, pool=node, heartbeat=heartbeat)
        self.registration = RegistrationServicer(driver=driver, endpoint=str(self.service_socket.absolute()))
        self.publisher: SlicePublisher | None = (
            SlicePublisher(
                api,
                view,
                driver=driver,
                node=node,
                info=info,
                allow=allow,
                settings=slice_settings,
                attribute_interval=attribute_interval,
            )
            if publish
            else None
        )
        self._poll = poll_interval
        self._grace = shutdown_grace
        self.serving = asyncio.Event()
        """Set while both sockets serve."""
        self.restarts = 0

    @property
    def registered(self) -> asyncio.Event:
        """Set once the kubelet confirmed the registration."""
        return self.registration.registered

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.view.run(), name="dra-view")
                if self.publisher is not None:
                    tg.create_task(self.publisher.run(), name="dra-publisher")
                tg.create_task(self._serve_forever(), name="dra-servers")
        except asyncio.CancelledError:
            log.info("dra plugin stopped", driver=self.driver)
            raise
        finally:
            if self._on_stop is not None:
                await self._on_stop()

    async def _start(
        self, socket: Path, handlers: list[grpc.GenericRpcHandler]
    ) -> tuple[grpc.aio.Server, FileIdentity]:
        _clear_socket(socket)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(handlers)
        server.add_insecure_port(f"unix://{socket}")
        await server.start()
        ours = identity(socket)
        if ours is None:
            await server.stop(None)
            raise OSError(f"gRPC server did not create {socket}")
        return server, ours

    async def _stop(self, server: grpc.aio.Server | None, socket: Path, ours: FileIdentity | None) -> None:
        if server is None:
            return
        _remove_if_ours(socket, ours)
        await server.stop(self._grace)

    async def _serve_forever(self) -> None:
        svc: grpc.aio.Server | None = None
        reg: grpc.aio.Server | None = None
        svc_id: FileIdentity | None = None
        reg_id: FileIdentity | None = None
        try:
            while True:
                if svc is None:
                    svc, svc_id = await self._start(
                        self.service_socket, [*self.servicer.handlers(), *self.health.handlers()]
                    )
                    log.info("dra_serving", socket=str(self.service_socket))
                if reg is None:
                    reg, reg_id = await self._start(self.registry_socket, [self.registration.handler()])
                    log.info("dra_registration_socket", socket=str(self.registry_socket), driver=self.driver)
                self.serving.set()
                while True:
                    await asyncio.sleep(self._poll)
                    if identity(self.service_socket) != svc_id or identity(self.registry_socket) != reg_id:
                        break
                self.serving.clear()
                self.restarts += 1
                if identity(self.service_socket) != svc_id:
                    log.warning("dra_service_socket_gone", socket=str(self.service_socket))
                    await self._stop(reg, self.registry_socket, reg_id)
                    await self._stop(svc, self.service_socket, svc_id)
                    reg = svc = None
                else:
                    log.warning("dra_registration_socket_gone", socket=str(self.registry_socket))
                    await self._stop(reg, self.registry_socket, reg_id)
                    reg = None
                self.registration.registered.clear()
        finally:
            self.serving.clear()
            self.health.close()
            await self._stop(reg, self.registry_socket, reg_id)
            await self._stop(svc, self.service_socket, svc_id)


def _clear_socket(socket: Path) -> None:
    """Create the socket's directory and remove a stale socket (an earlier run's would make bind fail)."""
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.unlink(missing_ok=True)


def _remove_if_ours(socket: Path, ours: FileIdentity | None) -> None:
    """Remove the socket unless someone else's server replaced it meanwhile."""
    if identity(socket) == ours:
        socket.unlink(missing_ok=True)


def node_plugin(
    *,
    monitor: NodeMonitor,
    core_feed: DeviceFeed,
    node: str,
    api: DraApi,
    registry_dir: Path,
    plugin_dir: Path,
    state_dir: Path,
    cdi_dir: Path,
    tile: str = "1x1",
    model: str | None = None,
    block_keps: float = 1000.0,
    share_throughput: bool = True,
    on_stop: Callable[[], Awaitable[None]] | None = None,
) -> DraPlugin:
    """The daemon's DRA plugin over its telemetry monitor (what ``app.py`` builds for ``--dra on|only``).

    ``core_feed`` is the device plugin's neuron-core feed: it changes the moment a hard fault lands, so the DRA
    view folds at once. ``share_throughput=False`` leaves event throughput to the device plugin (``--dra on``).
    """
    layout = DraLayout.build(monitor.topology, tile=parse_tile(tile))
    view = DraView(layout, MonitorTelemetry(monitor), trigger=core_feed)
    m = re.search(r"(\d+)$", model or "")
    info = HardwareInfo(model=model, generation=int(m.group(1)) if m else None, driver_version=__version__)
    return DraPlugin(
        node=node,
        registry_dir=registry_dir,
        plugin_dir=plugin_dir,
        view=view,
        api=api,
        state_dir=state_dir,
        cdi_dir=cdi_dir,
        info=info,
        allow=DraFeatures(consumable=share_throughput),
        slice_settings=SliceSettings(throughput_step_keps=max(1, round(block_keps))),
        on_stop=on_stop,
    )
