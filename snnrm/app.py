"""Wiring and lifecycle: one TaskGroup owns every long-running task of the daemon.

Root tasks are named; if any of them fails, the TaskGroup cancels the rest and the daemon exits with the
error (a half-working device plugin is worse than a restarted one). A stop request (SIGINT/SIGTERM, or the
demo's timer) cancels everything; each owner cleans up in its ``finally`` (sockets removed, servers stopped).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from snnrm.backends.base import HardwareBackend
from snnrm.backends.sim import SimBackend
from snnrm.cluster.events import EventRecorder
from snnrm.cluster.hints import PlanHints
from snnrm.cluster.hooks import HookCollector
from snnrm.cluster.node_agent import KubeStageReporter, NodeAgent
from snnrm.cluster.reallocation import ReallocationMetrics
from snnrm.cluster.remap import NodeReallocator, RemapLedger, remapped_allocation_files
from snnrm.cluster.sim_workload import SimWorkloads
from snnrm.cluster.stage_metrics import StageCollector
from snnrm.cluster.timeline import TimelineReporter
from snnrm.config import Config, ConfigError
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, BlockSizeError
from snnrm.core.placement import INTER_CHIP_WEIGHT
from snnrm.core.reallocation import ReallocationSettings
from snnrm.core.summary import PublishPolicy
from snnrm.dra.plugin import DraPlugin, node_plugin
from snnrm.http.extender import setup_stage_view
from snnrm.http.history import StatusHistory
from snnrm.http.hooks import HookEndpoint, HookSetupError, build_endpoint, setup_hooks, token_from_env
from snnrm.http.server import FaultAccess, build_app, serve
from snnrm.http.status import fault_recorder
from snnrm.kube.api import ClusterApi, KubeConfigError
from snnrm.kube.dra import DRA_TIMEOUT, DraApi
from snnrm.kubelet.allocator import AllocationFiles, verify_allocation_files
from snnrm.kubelet.files import writable_problem
from snnrm.kubelet.plugin import DevicePlugin
from snnrm.kubelet.podresources import PodResourcesClient, PodResourcesError
from snnrm.node import NodeService
from snnrm.obs.exposition import MetricsRegistry
from snnrm.obs.http_metrics import HttpMetrics
from snnrm.obs.metrics import NodeCollector
from snnrm.obs.rpc import RpcInstrumentation
from snnrm.obs.timeline import Timeline
from snnrm.obs.tracing import Tracer, Tracing, setup_tracing
from snnrm.obs.transitions import HealthTransitions

if TYPE_CHECKING:
    # kubernetes-asyncio costs ~34 MB of RSS at import: a daemon that never talks to the apiserver never loads it.
    from snnrm.kube.client import KubeAsyncApi

log = structlog.get_logger(__name__)


class _StopRequestedError(Exception):
    """Raised inside the TaskGroup to cancel every root task on a stop request."""


def make_backend(config: Config) -> HardwareBackend:
    """The hardware backend named by the configuration."""
    if config.backend == "sim":
        return SimBackend(
            preset=config.sim_preset,
            chips=config.sim_chips,
            cores_per_chip=config.sim_cores,
            seed=config.sim_seed,
            speed=config.sim_speed,
        )
    from snnrm.backends.sysfs import SysfsBackend  # imported lazily: only real nodes need it

    return SysfsBackend(config.sysfs_root)


@dataclass(eq=False)
class KubeClients:
    """The daemon's Kubernetes clients: one per credentials source (a kubeconfig, or the pod's service account),
    made on first need and shared by the hooks, the DRA driver and the placement agent, closed with the daemon.
    A chart points all three at the same source, so a daemon loads its credentials once."""

    _clients: dict[Path | None, KubeAsyncApi] = field(default_factory=dict)

    async def get(self, kubeconfig: Path | None) -> KubeAsyncApi:
        """The client for ``kubeconfig`` (None: in cluster); :class:`KubeConfigError` without usable credentials."""
        if kubeconfig not in self._clients:
            from snnrm.kube.client import KubeAsyncApi  # lazily: see the TYPE_CHECKING import

            self._clients[kubeconfig] = await KubeAsyncApi.connect(kubeconfig)
        return self._clients[kubeconfig]

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def freeze_long_lived() -> None:
    """Take what is built by now, which lives as long as the process, out of the cyclic GC's reach.

    A full collection over the ~76k objects of a started daemon takes ~50 ms here, and one landing between a hard
    fault and its ListAndWatch message would break the 5 ms budget ten times over. Startup's own garbage is
    collected first, or it would be kept for good; ``gc.unfreeze()`` undoes it.
    """
    gc.collect()
    gc.freeze()


LOOP_SWITCH_INTERVAL_S = 0.001
"""How long a worker thread may hold the GIL while the event loop's thread waits for it (CPython's default is
5 ms). Remap evaluations run in a worker thread (~25 ms of numpy and Python at 16,384 cores); at the default a
hard fault landing meanwhile could wait a whole interval for its ListAndWatch send, the fault path's whole 5 ms
budget. Set while the daemon runs, restored at stop."""


@dataclass(slots=True, eq=False)
class Daemon:
    """Everything one node runs, built from a :class:`Config`."""

    config: Config
    backend: HardwareBackend
    node: NodeService
    plugins: list[DevicePlugin]
    registry: CollectorRegistry
    tracing: Tracing
    pods: PodResourcesClient
    transitions: HealthTransitions
    timeline: Timeline
    """What happened on this node (health transitions, stage verdicts, injected faults): ``GET /api/v1/events``."""
    http_metrics: HttpMetrics
    """``snnrm_http_*`` of the daemon's HTTP server, in ``registry`` (made once: a registry refuses a family twice)."""
    hooks: HookEndpoint | None = None
    """``POST /hooks/alertmanager`` when hooks are configured."""
    dra: DraPlugin | None = None
    """The DRA kubelet plugin when ``--dra on|only`` (snnrm/dra, docs/dra.md)."""
    placement: NodeAgent | None = None
    """The node's part of split-learning placement when ``placement.enabled`` (snnrm/cluster/node_agent.py)."""
    workloads: SimWorkloads | None = None
    """With placement on simulated chips: the admitted stages' traffic in the simulator (cluster/sim_workload.py)."""
    stage_view: Callable[[], dict[str, Any]] | None = None
    """``GET /api/v1/stages``: the stages running here and their cores (for the status page); read per request,
    so it may be set after the server started (the demo sets it once its job is admitted). None: no stages."""
    kube: KubeClients = field(default_factory=KubeClients)
    """The Kubernetes clients the components above share (none unless a feature needs the apiserver)."""
    http_port: int | None = field(default=None, init=False)
    http_started: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @classmethod
    async def create(
        cls,
        config: Config,
        *,
        backend: HardwareBackend | None = None,
        hooks_kube: ClusterApi | None = None,
        dra_kube: ClusterApi | None = None,
        hints: PlanHints | None = None,
    ) -> Daemon:
        """Discover the hardware and build (not yet start) every component. ``hooks_kube`` and ``dra_kube`` replace
        the Kubernetes client the hooks and the DRA driver would get (tests pass the in-memory one)."""
        fault_access(config)  # a token mode without its token refuses to start, before anything is served
        for flag, directory in (("--state-dir", config.state_dir), ("--cdi-dir", config.cdi_dir)):
            if (problem := writable_problem(directory)) is not None:
                raise ConfigError(f"{flag} {directory}: cannot write there ({problem}); Allocate could not answer")
        backend = backend or make_backend(config)
        try:
            node = await NodeService.start(backend, block_keps=config.block_keps, sample_period=config.sample_period)
        except BlockSizeError as e:  # the block size depends on the chips found, so the config cannot check it
            raise ConfigError(f"--block-keps {config.block_keps:g}: {e}") from None
        node_name = socket.gethostname()
        tracing = setup_tracing(node=node_name)  # off unless OTEL_* asks; then nothing of OpenTelemetry is imported
        registry = MetricsRegistry(pause=node.yield_to_faults)  # a scrape's render stands back for a fault's send
        rpc = RpcInstrumentation(registry=registry, node=node_name, tracer=tracing.tracer)
        if hints is None and config.placement.enabled:
            hints = PlanHints()  # GetPreferredAllocation follows stage plans (the demo brings its own)
        plugins = [
            DevicePlugin(
                kubelet_dir=config.kubelet_dir,
                resource=resource,
                feed=feed,
                state=node,
                state_dir=config.state_dir,
                cdi_dir=config.cdi_dir,
                pre_start_required=config.pre_start_required,
                instrument=functools.partial(rpc.wrap, resource=resource),
                hints=hints,
            )
            for resource, feed in node.feeds.items()
            if _device_plugin_serves(config, resource)
        ]
        pods = PodResourcesClient(config.pod_resources_socket, resources=tuple(node.feeds))
        registry.register(
            NodeCollector(node, node=node_name, granularity=config.metrics_granularity, plugins=plugins, pods=pods)
        )
        registry.add_scrape_hook(pods.refresh)  # pod labels: one List per 2 s at most, and only while scraped
        ProcessCollector(registry=registry)  # process_resident_memory_bytes & co.
        timeline = Timeline()
        transitions = HealthTransitions(
            registry=registry,
            node=node_name,
            tracer=tracing.tracer,
            core_reasons=lambda: node.monitor.health.reasons,
            core_withheld=lambda: node.withheld,
            timeline=timeline,
        )
        if isinstance(backend, SimBackend):
            backend.on_inject.append(fault_recorder(timeline, node.topology))
        hooks = None
        kube = KubeClients()
        try:
            if config.hooks.enabled:  # alert-driven autoscaling hooks: snnrm/http/hooks.py, docs/autoscaling-hooks.md
                if hooks_kube is None and config.hooks.needs_kube:
                    try:
                        hooks_kube = await kube.get(config.kubeconfig)
                    except KubeConfigError as e:
                        raise HookSetupError(f"scaling hooks need the Kubernetes API: {e}") from None
                hooks = await build_endpoint(
                    config.hooks, node=socket.gethostname(), token=token_from_env(), kube=hooks_kube
                )
                registry.register(HookCollector(hooks.runner, node=socket.gethostname()))
            dra = await _dra_plugin(config, node, dra_kube, kube) if config.dra != "off" else None
            placement = workloads = None
            if config.placement.enabled and hints is not None:  # snnrm/cluster/node_agent.py, docs/split-learning.md
                placement = await _placement_agent(
                    config, backend, node, pods, hints, registry, tracing.tracer, timeline, kube
                )
                if isinstance(backend, SimBackend):  # simulated chips run the admitted stages' traffic
                    workloads = SimWorkloads(backend.sim, placement.stages)
                # The stages this node runs, without the controller: what the split-learning dashboard reads.
                registry.register(
                    StageCollector(
                        node=node_name,
                        stages=placement.stages,
                        ledger=placement.ledger,
                        latency=workloads.latencies if workloads is not None else None,
                    )
                )
        except BaseException:
            await kube.aclose()  # a half-built daemon leaves no open connection
            raise

        return cls(
            config=config,
            backend=backend,
            node=node,
            plugins=plugins,
            registry=registry,
            tracing=tracing,
            pods=pods,
            transitions=transitions,
            timeline=timeline,
            http_metrics=HttpMetrics(registry, node=node_name),
            hooks=hooks,
            dra=dra,
            placement=placement,
            workloads=workloads,
            kube=kube,
        )

    def _ready_checks(self) -> list[Callable[[], str | None]]:
        def telemetry() -> str | None:
            return None if self.node.ready.is_set() else "no telemetry frame yet"

        def plugins() -> str | None:
            missing = [p.resource for p in self.plugins if not p.registered.is_set()]
            return f"not registered with the kubelet: {', '.join(missing)}" if missing else None

        def writable() -> str | None:
            # Allocate writes an allocation file and needs the CDI spec: without them every Allocate fails, so
            # the pod must not look ready (the kubelet would keep sending pods here).
            for flag, directory in (("--state-dir", self.config.state_dir), ("--cdi-dir", self.config.cdi_dir)):
                if (problem := writable_problem(directory)) is not None:
                    return f"{flag} {directory} is not writable: {problem}"
            return None

        def dra() -> str | None:
            if self.dra is None:
                return None
            if not self.dra.registered.is_set():
                return f"DRA driver {self.dra.driver} not registered with the kubelet"
            if self.dra.publisher is not None and not self.dra.publisher.synced.is_set():
                return "ResourceSlices not published yet"
            return None

        return [telemetry, plugins, writable, dra]

    def _http_started(self, port: int) -> None:
        self.http_port = port
        self.http_started.set()
        log.info("http_serving", address=f"http://{self.config.http_host}:{port}")

    async def verify_allocation_files(self) -> None:
        """Verify, and rewrite where missing or corrupt, the allocation file of every container the kubelet still
        holds devices for (PodResources persists admissions; a file's content is a function of its IDs). Without
        a kubelet answering, nothing is verified (logged): Allocate rewrites a file the next time its IDs come."""
        resources = {p.resource for p in self.plugins}
        if not resources:
            return
        if not self.pods.available:
            log.warning("allocation_files_unverified", reason="no PodResources socket", at=str(self.pods.socket_path))
            return
        try:
            assignments = await self.pods.list()
        except PodResourcesError as e:
            log.warning("allocation_files_unverified", reason=str(e))
            return
        held: dict[str, list[list[str]]] = {}
        for resource, owners in assignments.owners.items():
            if resource not in resources:
                continue
            per_container: dict[object, list[str]] = {}
            for device_id, ref in owners.items():
                per_container.setdefault(ref, []).append(device_id)
            held[resource] = list(per_container.values())
        found = verify_allocation_files(
            AllocationFiles(self.config.state_dir),
            self.node,
            held,
            remapped=remapped_allocation_files(self.config.state_dir),
        )
        log.info("allocation_files_verified", intact=found.intact, rewritten=found.rewritten, skipped=found.skipped)

    async def run(self, *, stop: asyncio.Event, extra: tuple[Coroutine[Any, Any, None], ...] = ()) -> None:
        """Run every root task until ``stop`` is set or one of them fails."""
        await self.verify_allocation_files()  # before the plugins register: no Allocate races the repair
        sim = self.backend if isinstance(self.backend, SimBackend) else None
        history = StatusHistory(self.node)
        app = build_app(
            self.node,
            registry=self.registry,
            ready_checks=self._ready_checks(),
            sim=sim,
            fault_access=fault_access(self.config),
            history=history,
            timeline=self.timeline,
            http_metrics=self.http_metrics,
        )
        if self.hooks is not None:
            setup_hooks(app, self.hooks)
        if self.stage_view is None and self.placement is not None:
            self.stage_view = self.placement.stage_view
        # Always served, and the view looked up per request: a stage view set after the server started (the demo
        # admits its job once the plugins registered) must still be seen; no view is no stages, not a 404.
        setup_stage_view(app, lambda: self.stage_view() if self.stage_view is not None else {"jobs": []})
        freeze_long_lived()  # undone at stop (tests run many daemons)
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(LOOP_SWITCH_INTERVAL_S)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.backend.run(), name="backend")
                tg.create_task(self.node.sample_forever(), name="telemetry-sampler")
                tg.create_task(self.node.watch_hard_faults(), name="hard-fault-watch")
                tg.create_task(history.run(), name="status-history")
                for plugin in self.plugins:
                    tg.create_task(plugin.run(), name=f"device-plugin:{plugin.resource}")
                if self.dra is not None:
                    tg.create_task(self.dra.run(), name="dra-plugin")
                if self.placement is not None:
                    tg.create_task(self.placement.run(), name="placement-agent")
                if self.workloads is not None:
                    tg.create_task(self.workloads.run(), name="sim-workloads")
                for resource, feed in self.node.feeds.items():
                    tg.create_task(self.transitions.watch(feed), name=f"health-transitions:{resource}")
                tg.create_task(
                    serve(app, self.config.http_host, self.config.http_port, on_started=self._http_started),
                    name="http",
                )
                for i, coro in enumerate(extra):
                    tg.create_task(coro, name=f"extra-{i}")
                await stop.wait()
                log.info("stopping")
                raise _StopRequestedError  # noqa: TRY301 - raising inside the TaskGroup is how it cancels the rest
        except* _StopRequestedError:
            pass
        finally:
            for coro in extra:
                coro.close()  # never-started extras must not warn "coroutine was never awaited"
            await self.pods.aclose()
            await self.kube.aclose()
            await asyncio.to_thread(self.tracing.shutdown)  # flush queued spans (bounded by the exporter's timeout)
            gc.unfreeze()
            sys.setswitchinterval(switch_interval)
        log.info("stopped")


def fault_access(config: Config) -> FaultAccess:
    """Who may inject simulator faults: ``--sim-fault-injection``, with the token from ``$SNNRM_SIM_FAULT_TOKEN``."""
    if config.sim_fault_injection != "token":
        return FaultAccess(mode=config.sim_fault_injection)
    token = os.environ.get("SNNRM_SIM_FAULT_TOKEN", "").strip()
    if len(token) < 16:
        raise ConfigError("--sim-fault-injection token needs SNNRM_SIM_FAULT_TOKEN set to at least 16 characters")
    return FaultAccess(mode="token", token=token.encode())


# -- DRA wiring (snnrm/dra; docs/dra.md) --------------------------------------------------------------------------


def _device_plugin_serves(config: Config, resource: str) -> bool:
    """``--dra off``: device plugins for every resource; ``on``: only event throughput (DRA sells the cores and
    chips, so nothing is sold twice); ``only``: none."""
    return config.dra == "off" or (config.dra == "on" and resource == EVENT_THROUGHPUT)


async def _dra_plugin(config: Config, node: NodeService, api: ClusterApi | None, kube: KubeClients) -> DraPlugin:
    """The DRA kubelet plugin, with the apiserver client from ``--kubeconfig`` or the pod's service account."""
    if api is None:
        try:
            api = (await kube.get(config.kubeconfig)).with_timeout(DRA_TIMEOUT)
        except KubeConfigError as e:
            raise ConfigError(f"--dra {config.dra} needs the apiserver: {e}") from None
    return node_plugin(
        monitor=node.monitor,
        core_feed=node.feeds[NEURON_CORE],
        node=config.dra_node_name or socket.gethostname(),
        api=DraApi(api),
        registry_dir=config.dra_registry_dir,
        plugin_dir=config.dra_plugin_dir,
        state_dir=config.state_dir,
        cdi_dir=config.cdi_dir,
        tile=config.dra_tile,
        model=config.sim_preset if config.backend == "sim" else None,
        block_keps=config.block_keps,
        share_throughput=config.dra == "only",
    )


# -- split-learning placement, node side (snnrm/cluster/node_agent.py; docs/split-learning.md) --------------------


async def _placement_agent(
    config: Config,
    backend: HardwareBackend,
    node: NodeService,
    pods: PodResourcesClient,
    hints: PlanHints,
    registry: CollectorRegistry,
    tracer: Tracer,
    timeline: Timeline,
    kube: KubeClients,
) -> NodeAgent:
    """Summary publisher, plan hints and live remaps, with an apiserver client from the config or in cluster."""
    pc = config.placement
    try:
        api = await kube.get(config.kubeconfig)
    except KubeConfigError as e:
        raise ConfigError(f"placement.enabled needs the apiserver: {e}") from None
    name = pc.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    # A chip crossing costs what the hardware's latencies say, in on-chip hops; a backend that cannot say gets the
    # documented fallback of the pure core.
    weight = backend.inter_chip_weight if isinstance(backend, SimBackend) else INTER_CHIP_WEIGHT
    ledger = RemapLedger(config.state_dir, node.topology)
    recorder = EventRecorder(api, instance=f"snnrm-node/{name}")
    metrics = ReallocationMetrics(registry)
    settings = ReallocationSettings(dwell=pc.dwell, cooldown=pc.cooldown)

    def remapper(agent: NodeAgent) -> NodeReallocator:
        return NodeReallocator(
            node,
            agent,
            TimelineReporter(KubeStageReporter(api, recorder), timeline, node.topology),
            ledger,
            agent.allocated,
            metrics=metrics,
            settings=settings,
            period=pc.remap_period,
            inter_chip_weight=weight,
            dry_run=pc.dry_run,
            remap_allowed=pc.live_remap,
            tracer=tracer,
        )

    return NodeAgent(
        api,
        name,
        node,
        ledger,
        hints,
        pods,
        recorder,
        reallocator_factory=remapper,
        policy=PublishPolicy(min_interval=pc.publish_min_interval, max_interval=pc.publish_max_interval),
        inter_chip_weight=weight,
    )
