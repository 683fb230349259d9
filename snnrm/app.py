"""Wiring and lifecycle: one TaskGroup owns every long-running task of the daemon.

Root tasks are named; if any of them fails, the TaskGroup cancels the rest and the daemon exits with the
error (a half-working device plugin is worse than a restarted one). A stop request (SIGINT/SIGTERM, or the
demo's timer) cancels everything; each owner cleans up in its ``finally`` (sockets removed, servers stopped).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector

from snnrm.backends.base import HardwareBackend
from snnrm.backends.sim import SimBackend
from snnrm.cluster.hooks import HookCollector
from snnrm.cluster.kube import KubeApi
from snnrm.config import Config
from snnrm.http.history import StatusHistory
from snnrm.http.hooks import HookEndpoint, build_endpoint, setup_hooks, token_from_env
from snnrm.http.server import build_app, serve
from snnrm.kubelet.plugin import DevicePlugin
from snnrm.kubelet.podresources import PodResourcesClient
from snnrm.node import NodeService
from snnrm.obs.exposition import MetricsRegistry
from snnrm.obs.metrics import NodeCollector
from snnrm.obs.rpc import RpcInstrumentation
from snnrm.obs.tracing import Tracing, setup_tracing
from snnrm.obs.transitions import HealthTransitions

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
    hooks: HookEndpoint | None = None
    """``POST /hooks/alertmanager`` when hooks are configured (its runner's reallocator is the controller's intake)."""
    http_port: int | None = field(default=None, init=False)
    http_started: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @classmethod
    async def create(
        cls, config: Config, *, backend: HardwareBackend | None = None, hooks_kube: KubeApi | None = None
    ) -> Daemon:
        """Discover the hardware and build (not yet start) every component."""
        backend = backend or make_backend(config)
        node = await NodeService.start(backend, block_keps=config.block_keps, sample_period=config.sample_period)
        node_name = socket.gethostname()
        tracing = setup_tracing(node=node_name)  # off unless OTEL_* asks; then nothing of OpenTelemetry is imported
        registry = MetricsRegistry()
        rpc = RpcInstrumentation(registry=registry, node=node_name, tracer=tracing.tracer)
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
            )
            for resource, feed in node.feeds.items()
        ]
        pods = PodResourcesClient(config.pod_resources_socket, resources=tuple(node.feeds))
        registry.register(
            NodeCollector(node, node=node_name, granularity=config.metrics_granularity, plugins=plugins, pods=pods)
        )
        registry.add_scrape_hook(pods.refresh)  # pod labels: one List per 2 s at most, and only while scraped
        ProcessCollector(registry=registry)  # process_resident_memory_bytes & co.
        transitions = HealthTransitions(
            registry=registry, node=node_name, tracer=tracing.tracer, core_reasons=lambda: node.monitor.health.reasons
        )
        hooks = None
        if config.hooks.enabled:  # alert-driven autoscaling hooks: snnrm/http/hooks.py, docs/autoscaling-hooks.md
            hooks = await build_endpoint(
                config.hooks,
                node=socket.gethostname(),
                scratch=config.state_dir / "kube",
                token=token_from_env(),
                kube=hooks_kube,
            )
            registry.register(HookCollector(hooks.runner, node=socket.gethostname()))
        return cls(
            config=config,
            backend=backend,
            node=node,
            plugins=plugins,
            registry=registry,
            tracing=tracing,
            pods=pods,
            transitions=transitions,
            hooks=hooks,
        )

    def _ready_checks(self) -> list[Callable[[], str | None]]:
        def telemetry() -> str | None:
            return None if self.node.ready.is_set() else "no telemetry frame yet"

        def plugins() -> str | None:
            missing = [p.resource for p in self.plugins if not p.registered.is_set()]
            return f"not registered with the kubelet: {', '.join(missing)}" if missing else None

        return [telemetry, plugins]

    def _http_started(self, port: int) -> None:
        self.http_port = port
        self.http_started.set()
        log.info("http_serving", address=f"http://{self.config.http_host}:{port}")

    async def run(self, *, stop: asyncio.Event, extra: tuple[Coroutine[Any, Any, None], ...] = ()) -> None:
        """Run every root task until ``stop`` is set or one of them fails."""
        sim = self.backend if isinstance(self.backend, SimBackend) else None
        history = StatusHistory(self.node)
        app = build_app(self.node, registry=self.registry, ready_checks=self._ready_checks(), sim=sim, history=history)
        if self.hooks is not None:
            setup_hooks(app, self.hooks)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.backend.run(), name="backend")
                tg.create_task(self.node.sample_forever(), name="telemetry-sampler")
                tg.create_task(self.node.watch_hard_faults(), name="hard-fault-watch")
                tg.create_task(history.run(), name="status-history")
                for plugin in self.plugins:
                    tg.create_task(plugin.run(), name=f"device-plugin:{plugin.resource}")
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
            await asyncio.to_thread(self.tracing.shutdown)  # flush queued spans (bounded by the exporter's timeout)
        log.info("stopped")
