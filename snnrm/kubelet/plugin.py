"""One device plugin per extended resource: its gRPC server, its registration, and its restart loop.

:class:`DevicePlugin` owns everything with a lifetime for one resource. ``run()`` loops until cancelled:

1. start a fresh ``grpc.aio`` server on ``<kubelet_dir>/snnrm-<name>.sock`` (serving *before* registering,
   since the kubelet calls back into it while ``Register`` is in flight; one event loop serves both sides);
2. register, retrying while ``kubelet.sock`` is missing (cheap polling) or the kubelet refuses (backoff);
3. watch, by ``stat`` every ``poll_interval``, for a kubelet restart (our socket deleted, ``kubelet.sock``
   replaced); a ListAndWatch stream that ends is not a restart (any client can open and cancel one), and only
   when no stream has been open for ``ORPHAN_GRACE_S`` does the plugin register again, on the same server;
4. on a restart, stop the server and go back to 1. Cycles that follow one another quickly back off.

On cancellation the server is stopped (streams end at once, unary calls get ``shutdown_grace``) and the socket
removed. The app runs one per resource inside its ``asyncio.TaskGroup``::

    plugin = DevicePlugin(
        kubelet_dir=Path("/var/lib/kubelet/device-plugins"),
        resource=NEURON_CORE,
        feed=core_feed,                 # DeviceFeed the health pipeline publishes to
        state=hardware_state,           # AllocationState: topology, blocks, queue fill, chip headroom
        state_dir=Path("/var/lib/snnrm"),
        cdi_dir=Path("/var/run/cdi"),
        pre_start_required=False,
    )
    tg.create_task(plugin.run(), name=f"device-plugin {NEURON_CORE}")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.kubelet.allocator import (
    AllocationFiles,
    CoreAllocator,
    PlacementHints,
    ResourceAllocator,
    ThroughputAllocator,
)
from snnrm.kubelet.cdi import CdiSpecWriter
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.registration import FileIdentity, identity, register
from snnrm.kubelet.servicer import DevicePluginServicer
from snnrm.kubelet.state import AllocationState
from snnrm.kubelet.wire import KUBELET_SOCKET, ListAndWatchEncoder, plugin_socket_name

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.1
"""Socket ``stat`` period: re-registration well inside a second of a kubelet restart, ~20 stats/s per plugin."""
MAX_BACKOFF_S = 5.0
"""Upper bound between attempts when the kubelet refuses registration or keeps dropping us."""
ORPHAN_GRACE_S = 5.0
"""Seconds without any ListAndWatch stream (same kubelet) before registering again on the same server."""
WAITING_LOG_EVERY = 30.0
"""Seconds between "waiting for kubelet" lines while its socket is absent."""
QUICK_CYCLE_S = 2.0
"""A serve-register-watch cycle shorter than this counts as quick; consecutive quick cycles back off."""


class DevicePlugin:
    """Device plugin of one resource; see the module docstring for the lifecycle and an example.

    :param kubelet_dir: the kubelet's device-plugins directory (holds ``kubelet.sock`` and our socket).
    :param resource: ``snnrm.io/neuron-core`` or ``snnrm.io/event-throughput``.
    :param feed: the resource's :class:`DeviceFeed`; ListAndWatch streams it and Allocate validates against it.
    :param state: live hardware state (:class:`~snnrm.kubelet.state.AllocationState`) for preferences.
    :param state_dir: per-allocation JSON files go to ``<state_dir>/allocations/``.
    :param cdi_dir: where the CDI spec for the chips is written (``/var/run/cdi`` on a node).
    :param pre_start_required: advertise PreStartContainer (a no-op here) to the kubelet.
    :param allocator: override the resource's allocator (tests); chosen from ``resource`` by default.
    :param hints: planned cores of stage pods (neuron cores only), for GetPreferredAllocation.
    :param poll_interval: seconds between restart checks.
    :param orphan_grace: seconds without any ListAndWatch stream before registering again (same server).
    :param shutdown_grace: seconds unary calls in flight get when the server stops.
    """

    def __init__(
        self,
        *,
        kubelet_dir: Path,
        resource: str,
        feed: DeviceFeed,
        state: AllocationState,
        state_dir: Path,
        cdi_dir: Path,
        pre_start_required: bool = False,
        allocator: ResourceAllocator | None = None,
        hints: PlacementHints | None = None,
        poll_interval: float = POLL_INTERVAL_S,
        orphan_grace: float = ORPHAN_GRACE_S,
        shutdown_grace: float = 1.0,
        instrument: Callable[[grpc.GenericRpcHandler], grpc.GenericRpcHandler] | None = None,
    ) -> None:
        if feed.resource != resource:
            raise ValueError(f"feed is for {feed.resource}, plugin for {resource}")
        self.resource = resource
        self.kubelet_dir = Path(kubelet_dir)
        self.endpoint = plugin_socket_name(resource)
        self.socket_path = self.kubelet_dir / self.endpoint
        self.kubelet_socket = self.kubelet_dir / KUBELET_SOCKET
        self._feed = feed
        self._cdi = CdiSpecWriter(Path(cdi_dir), state.topology.n_chips)
        self._allocator = allocator or _default_allocator(resource, state, AllocationFiles(state_dir), self._cdi, hints)
        self._encoder = ListAndWatchEncoder()
        self._pre_start_required = pre_start_required
        self._poll = poll_interval
        self._orphan_grace = orphan_grace
        self._grace = shutdown_grace
        self._instrument = instrument
        self._servicer: DevicePluginServicer | None = None
        self.registrations = 0
        """Successful registrations so far."""
        self.registered = asyncio.Event()
        """Set while registered with the current kubelet; cleared during a restart cycle."""

    @property
    def servicer(self) -> DevicePluginServicer | None:
        """The servicer of the server running now, if any."""
        return self._servicer

    async def run(self) -> None:
        """Serve, register and re-register until cancelled (see module docstring)."""
        self._cdi.write()
        quick_cycles = 0
        try:
            while True:
                started = time.monotonic()
                reason = await self._cycle()
                self.registered.clear()
                quick_cycles = quick_cycles + 1 if time.monotonic() - started < QUICK_CYCLE_S else 0
                delay = 0.0 if quick_cycles <= 1 else min(0.1 * 2 ** (quick_cycles - 2), MAX_BACKOFF_S)
                log.info("restarting device plugin", resource=self.resource, reason=reason, delay=delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            log.info("device plugin stopped", resource=self.resource)
            raise

    async def _cycle(self) -> str:
        """One serve-register-watch cycle; returns why it ended."""
        # A restarting kubelet deletes every socket in the directory before it recreates kubelet.sock. A socket
        # created while kubelet.sock is missing may be deleted under a Register the kubelet then cannot dial
        # back (a 10 s dial timeout), so the server starts only once kubelet.sock exists again.
        await self._wait_for_kubelet()
        servicer = DevicePluginServicer(
            feed=self._feed,
            allocator=self._allocator,
            encoder=self._encoder,
            pre_start_required=self._pre_start_required,
        )
        server, ours = await self._serve(servicer)
        self._servicer = servicer
        try:
            kubelet = await self._register_until_ok(servicer, ours)
            if isinstance(kubelet, str):
                return kubelet
            return await self._watch(servicer, ours, kubelet)
        finally:
            self._servicer = None
            servicer.close()
            await server.stop(self._grace)
            if identity(self.socket_path) == ours:
                self.socket_path.unlink(missing_ok=True)

    async def _wait_for_kubelet(self) -> None:
        since, next_log = time.monotonic(), 0.0
        while identity(self.kubelet_socket) is None:
            next_log = self._log_waiting(since, next_log)
            await asyncio.sleep(self._poll)

    def _log_waiting(self, since: float, next_log: float) -> float:
        """Say we are waiting for the kubelet at once, then every WAITING_LOG_EVERY s (a wrong --kubelet-dir must
        not look like a quiet, healthy daemon). Returns when to say it next."""
        now = time.monotonic()
        if now >= next_log:
            log.info("waiting for kubelet", resource=self.resource, socket=str(self.kubelet_socket),
                     waited_s=round(now - since, 1))  # fmt: skip
            return now + WAITING_LOG_EVERY
        return next_log

    async def _serve(self, servicer: DevicePluginServicer) -> tuple[grpc.aio.Server, FileIdentity | None]:
        self.kubelet_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)  # a stale socket from an earlier run would make bind fail
        server = grpc.aio.server()
        handler = servicer.handler()
        server.add_generic_rpc_handlers((self._instrument(handler) if self._instrument else handler,))
        server.add_insecure_port(f"unix://{self.socket_path}")
        await server.start()
        ours = identity(self.socket_path)
        log.debug("serving", resource=self.resource, socket=str(self.socket_path))
        return server, ours

    async def _register_until_ok(self, servicer: DevicePluginServicer, ours: FileIdentity | None) -> FileIdentity | str:
        """Register; returns the kubelet socket's identity, or why this cycle must start over.

        A failed Register ends the cycle instead of retrying on the same server: when the kubelet could not dial
        back (its 10 s dial timed out), our listener is the suspect (e.g. its socket file was replaced under it
        during a kubelet restart), and a fresh server on a fresh socket is what the next attempt needs. The run
        loop backs off when cycles keep ending quickly, so a kubelet that refuses us is not hammered.
        """
        since, next_log = time.monotonic(), 0.0
        while True:
            if identity(self.socket_path) != ours:
                return "plugin socket removed before registration"
            kubelet = identity(self.kubelet_socket)
            if kubelet is None:
                next_log = self._log_waiting(since, next_log)
                await asyncio.sleep(self._poll)
                continue
            try:
                await register(
                    self.kubelet_socket, endpoint=self.endpoint, resource=self.resource, options=servicer.options
                )
            except grpc.aio.AioRpcError as e:
                log.warning("registration failed", resource=self.resource, code=e.code().name, details=e.details())
                return f"registration failed: {e.code().name}"
            self.registrations += 1
            self.registered.set()
            log.info("registered", resource=self.resource, endpoint=self.endpoint, count=self.registrations)
            return kubelet

    async def _watch(self, servicer: DevicePluginServicer, ours: FileIdentity | None, kubelet: FileIdentity) -> str:
        """Poll until there is evidence of a new kubelet (its socket replaced, or ours deleted); returns why.

        A ListAndWatch stream that ends is *not* such evidence: any client may open and cancel one, and tearing
        the server down for it would fail the kubelet's Allocate calls in flight. When the last stream has been
        gone for ``ORPHAN_GRACE_S`` and the kubelet is the same one, it may have dropped our endpoint, so we
        register again on the same server: in-flight calls are untouched and the socket never disappears.
        """
        orphaned_since: float | None = None
        while True:
            try:
                async with asyncio.timeout(self._poll):
                    await servicer.dropped.wait()
            except TimeoutError:
                pass
            else:
                servicer.dropped.clear()
                orphaned_since = time.monotonic()
                log.info("list-and-watch ended; not a kubelet restart", resource=self.resource)
            if identity(self.socket_path) != ours:
                return "plugin socket removed"
            if identity(self.kubelet_socket) != kubelet:
                return "kubelet.sock recreated"
            if servicer.open_streams > 0:
                orphaned_since = None
            elif orphaned_since is not None and time.monotonic() - orphaned_since >= self._orphan_grace:
                orphaned_since = None
                again = await self._register_until_ok(servicer, ours)
                if isinstance(again, str):
                    return again
                kubelet = again


def _default_allocator(
    resource: str, state: AllocationState, files: AllocationFiles, cdi: CdiSpecWriter, hints: PlacementHints | None
) -> ResourceAllocator:
    if resource == NEURON_CORE:
        return CoreAllocator(state=state, files=files, cdi=cdi, hints=hints)
    if resource == EVENT_THROUGHPUT:
        return ThroughputAllocator(state=state, files=files, cdi=cdi)
    raise ValueError(f"no allocator for resource {resource!r}")
