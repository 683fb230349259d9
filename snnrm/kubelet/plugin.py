"""One device plugin per extended resource: its gRPC server, its registration, and its restart loop.

:class:`DevicePlugin` owns everything with a lifetime for one resource. ``run()`` loops until cancelled:

1. wait for a kubelet that *answers*: ``kubelet.sock`` exists and a connect to it succeeds. A killed kubelet leaves
   a dead ``kubelet.sock`` behind (connect refused); a new kubelet deletes every socket in the directory at
   start-up and only then listens, so a socket we create after it answered cannot be deleted by that clean-up
   (which would leave it blocked 10 s dialing a deleted path inside our Register);
2. start a fresh ``grpc.aio`` server on ``<kubelet_dir>/snnrm-<name>.sock`` (serving *before* registering,
   since the kubelet calls back into it while ``Register`` is in flight; one event loop serves both sides) and
   register, giving up at once if either socket changes while the call is in flight;
3. watch, by ``stat`` every ``poll_interval``, for a kubelet restart (our socket deleted, ``kubelet.sock``
   replaced or gone, or, once no ListAndWatch stream is open, ``kubelet.sock`` refusing connections: the kubelet
   was killed); a ListAndWatch stream that ends is not a restart (any client can open and cancel one), and only
   when no stream has been open for ``ORPHAN_GRACE_S`` and the kubelet still answers does the plugin register
   again, on the same server;
4. on a restart, stop the server (removing our socket) and go back to 1 with no pause: waiting is for evidence
   (a new ``kubelet.sock`` that answers), never a blind back-off. Only a kubelet that answers and *refuses* us
   is retried with back-off, cut short as soon as ``kubelet.sock`` changes.

Waiting is a short ``stat`` poll, not inotify: a poll at 0.1 s keeps re-registration well under the 1 s target
(``python -m benchmarks restarts``) with no extra dependency, and survives the directory itself being replaced.

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
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from snnrm.kubelet.registration import FileIdentity, answers, identity, register
from snnrm.kubelet.servicer import DevicePluginServicer
from snnrm.kubelet.state import AllocationState
from snnrm.kubelet.wire import KUBELET_SOCKET, ListAndWatchEncoder, plugin_socket_name

log = structlog.get_logger(__name__)

POLL_INTERVAL_S = 0.1
"""Socket ``stat`` period: re-registration well inside a second of a kubelet restart, ~20 stats/s per plugin."""
MAX_BACKOFF_S = 5.0
"""Upper bound between attempts when a kubelet that answers keeps refusing registration."""
ORPHAN_GRACE_S = 5.0
"""Seconds without any ListAndWatch stream (same kubelet) before registering again on the same server."""
WAITING_LOG_EVERY = 30.0
"""Seconds between "waiting for kubelet" lines while its socket is absent."""


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
        self._refused_by: FileIdentity | None = None  # the kubelet that refused our last registration(s)
        self._refusals = 0

    @property
    def servicer(self) -> DevicePluginServicer | None:
        """The servicer of the server running now, if any."""
        return self._servicer

    async def run(self) -> None:
        """Serve, register and re-register until cancelled (see module docstring)."""
        self._cdi.write()
        try:
            while True:
                outcome = await self._cycle()
                self.registered.clear()
                refused_by = outcome.refused_by
                if refused_by is None:
                    log.info("restarting device plugin", resource=self.resource, reason=outcome.reason, delay=0.0)
                    continue
                # A live kubelet said no: retry it with back-off, but a new kubelet.sock is tried at once.
                if refused_by == self._refused_by:
                    self._refusals += 1
                else:
                    self._refused_by, self._refusals = refused_by, 1
                delay = min(0.1 * 2 ** (self._refusals - 1), MAX_BACKOFF_S)
                log.info("restarting device plugin", resource=self.resource, reason=outcome.reason, delay=delay)
                await self._pause_unless_kubelet_changes(delay, refused_by)
        except asyncio.CancelledError:
            log.info("device plugin stopped", resource=self.resource)
            raise

    async def _cycle(self) -> _Outcome:
        """One wait-serve-register-watch cycle; returns why it ended."""
        kubelet = await self._wait_for_kubelet()
        servicer = DevicePluginServicer(
            feed=self._feed,
            allocator=self._allocator,
            encoder=self._encoder,
            pre_start_required=self._pre_start_required,
        )
        server, ours = await self._serve(servicer)
        self._servicer = servicer
        try:
            failed = await self._register(servicer, ours, kubelet)
            if failed is not None:
                return failed
            self._refused_by, self._refusals = None, 0
            return await self._watch(servicer, ours, kubelet)
        finally:
            self._servicer = None
            servicer.close()
            await server.stop(self._grace)
            if identity(self.socket_path) == ours:
                self.socket_path.unlink(missing_ok=True)

    async def _wait_for_kubelet(self) -> FileIdentity:
        """Wait for a ``kubelet.sock`` that accepts connections; returns its identity.

        Probed every ``poll_interval`` (a refused unix connect costs microseconds). A refusing file is not written
        off for good: a new kubelet's socket refuses too in the instant between its ``bind`` and ``listen``.
        """
        since, next_log = time.monotonic(), 0.0
        refusing: FileIdentity | None = None
        while True:
            kubelet = identity(self.kubelet_socket)
            if kubelet is not None:
                answered = await answers(self.kubelet_socket)
                if answered and identity(self.kubelet_socket) == kubelet:  # the file we probed is the one we stat'ed
                    return kubelet
                if answered is False and kubelet != refusing:
                    refusing = kubelet
                    log.info("kubelet.sock refuses connections; waiting for a new kubelet", resource=self.resource)
            next_log = self._log_waiting(since, next_log)
            await asyncio.sleep(self._poll)

    async def _pause_unless_kubelet_changes(self, delay: float, kubelet: FileIdentity) -> None:
        deadline = time.monotonic() + delay
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or identity(self.kubelet_socket) != kubelet:
                return
            await asyncio.sleep(min(self._poll, remaining))

    def _log_waiting(self, since: float, next_log: float) -> float:
        """Say we are waiting for the kubelet at once, then every WAITING_LOG_EVERY s (a wrong --kubelet-dir must
        not look like a quiet, healthy daemon). Returns when to say it next."""
        now = time.monotonic()
        if now >= next_log:
            log.info(
                "waiting for kubelet",
                resource=self.resource,
                socket=str(self.kubelet_socket),
                waited_s=round(now - since, 1),
            )
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

    async def _register(
        self, servicer: DevicePluginServicer, ours: FileIdentity | None, kubelet: FileIdentity
    ) -> _Outcome | None:
        """Register once with the kubelet at ``kubelet``; None when it accepted, else why this cycle must end.

        While the call is in flight both sockets are watched: if ours vanishes (a kubelet start-up clean-up) or
        ``kubelet.sock`` changes, the kubelet's dial-back cannot succeed or no longer matters, so the call is
        cancelled rather than left to its 10 s dial. A failed Register ends the cycle instead of retrying on the
        same server: a fresh server on a fresh socket is what the next attempt needs.
        """
        servicer.expect_kubelet()  # its dial-back may come before Register returns
        call = asyncio.create_task(
            register(self.kubelet_socket, endpoint=self.endpoint, resource=self.resource, options=servicer.options)
        )
        try:
            while True:
                done, _ = await asyncio.wait((call,), timeout=self._poll)
                if done:
                    break
                if identity(self.socket_path) != ours:
                    return _Outcome("plugin socket removed during registration")
                if identity(self.kubelet_socket) != kubelet:
                    return _Outcome("kubelet.sock replaced during registration")
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await call
        try:
            call.result()
        except grpc.aio.AioRpcError as e:
            log.warning("registration failed", resource=self.resource, code=e.code().name, details=e.details())
            # Counted as this kubelet's refusal (retried with back-off) unless kubelet.sock changed meanwhile; a
            # kubelet that died since the probe costs one short pause, then the probe finds its socket dead.
            refused = identity(self.kubelet_socket) == kubelet
            return _Outcome(f"registration failed: {e.code().name}", kubelet if refused else None)
        self.registrations += 1
        self.registered.set()
        log.info("registered", resource=self.resource, endpoint=self.endpoint, count=self.registrations)
        return None

    async def _watch(
        self, servicer: DevicePluginServicer, ours: FileIdentity | None, kubelet: FileIdentity
    ) -> _Outcome:
        """Poll until there is evidence of a new kubelet (its socket replaced or refusing, or ours deleted).

        A ListAndWatch stream that ends is *not* such evidence: any client may open and cancel one, and tearing
        the server down for it would fail the kubelet's Allocate calls in flight. While the kubelet's stream is gone the
        kubelet is probed each poll: a killed kubelet leaves ``kubelet.sock`` behind, refusing connections, and
        we then stop serving at once (so no socket of ours waits for the next kubelet's start-up clean-up). When
        the kubelet's stream (the first opened after our Register; other clients' streams do not count) has been
        gone for ``ORPHAN_GRACE_S`` and the kubelet still answers, it may have dropped our endpoint, so we register
        again on the same server: in-flight calls are untouched and the socket never disappears.
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
                return _Outcome("plugin socket removed")
            if identity(self.kubelet_socket) != kubelet:
                return _Outcome("kubelet.sock recreated")
            if servicer.kubelet_stream_open:
                orphaned_since = None
            elif orphaned_since is not None:
                if await answers(self.kubelet_socket) is False:
                    return _Outcome("kubelet.sock refuses connections (kubelet gone)")
                if time.monotonic() - orphaned_since >= self._orphan_grace:
                    orphaned_since = None
                    failed = await self._register(servicer, ours, kubelet)
                    if failed is not None:
                        return failed


@dataclass(slots=True, frozen=True)
class _Outcome:
    """Why a cycle ended; ``refused_by`` is the kubelet that answered and refused registration, if any."""

    reason: str
    refused_by: FileIdentity | None = None


def _default_allocator(
    resource: str, state: AllocationState, files: AllocationFiles, cdi: CdiSpecWriter, hints: PlacementHints | None
) -> ResourceAllocator:
    if resource == NEURON_CORE:
        return CoreAllocator(state=state, files=files, cdi=cdi, hints=hints)
    if resource == EVENT_THROUGHPUT:
        return ThroughputAllocator(state=state, files=files, cdi=cdi)
    raise ValueError(f"no allocator for resource {resource!r}")
