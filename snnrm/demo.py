"""``snnrm demo``: the main job on the embedded default, no cluster needed.

Simulated Loihi-2-like chips, the real daemon (device plugins over real unix sockets, telemetry pipeline, HTTP),
an in-process kubelet stand-in, and a split-learning job (SLAYER's N-MNIST CSNN cut into four stages, one pod per
stage, at the spike rates measured by running its NIR graph: sim_hw/nir/workloads.json) placed by snnrm's planner:
GetPreferredAllocation follows the plan when the stand-in admits each stage.
Then a hot spot under stage 1 saturates its event queues; the node's reallocator (the same code a node runs in a
cluster) sees it persist for the dwell time, finds cooler cores on the node and live-remaps the stage by
rewriting its per-allocation file, which the stage's "runtime" (the simulator) follows. Later a core under
stage 2 fails and that stage moves at once. The end-to-end spike latency is logged before the hot spot, at its worst
during it and after the remap; ``GET /api/v1/stages`` shows each stage's cores for the status page, and
``GET /api/v1/events`` the faults, health transitions and remaps with their reasons.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

import sim_hw
from snnrm.app import Daemon
from snnrm.backends.sim import SimBackend
from snnrm.cluster.hints import PlanHints, PlannedPod
from snnrm.cluster.remap import LocalStage, NodeReallocator, RemapLedger, read_allocation, stages_body
from snnrm.cluster.timeline import TimelineReporter
from snnrm.config import SOCKET_NAME_MAX, UNIX_PATH_MAX, Config
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.jobs import StageHealth
from snnrm.core.placement import PlacementView, StageDemand, first_fit_plan, plan_job
from snnrm.core.reallocation import ReallocationSettings
from snnrm.core.topology import Topology
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.node import NodeService
from snnrm.obs.console import LiveSummary, SummaryView

log = structlog.get_logger("snnrm.demo")

HOT_SPOT_AT = 6.0
"""Seconds after the job is placed when a hot spot hits stage 1: long enough to see the healthy baseline first."""
CORE_FAILURE_AT = 24.0
SHORT_TMPDIR = UNIX_PATH_MAX - SOCKET_NAME_MAX - len("/snnrm-demo-XXXXXXXX/device-plugins/")
"""Seconds after placement when a core under stage 2 fails (after the job's cooldown from the first move)."""
JOB_NAMESPACE = "demo"


# -- the stages as the node sees them, a reporter that logs, and a runtime that follows its allocation file ------


@dataclass(eq=False)
class _DemoStages:
    """StageSource: the demo's stage pods, their admitted cores, and the cores a remap moved them to."""

    job: str
    demands: tuple[StageDemand, ...]
    pods: list[str]
    admitted: list[tuple[str, ...]]
    ledger: RemapLedger

    def stages(self) -> list[LocalStage]:
        topo = self.ledger.topology
        out = []
        for i, pod in enumerate(self.pods):
            rec = self.ledger.current(JOB_NAMESPACE, pod, "")
            ids = rec.cores if rec is not None else self.admitted[i]
            cores = np.array(sorted(topo.index_of[c] for c in ids), dtype=np.int64)
            out.append(LocalStage(JOB_NAMESPACE, pod, "", self.job, i, self.demands, self.admitted[i], cores, True))
        return out


class _LogReporter:
    """StageReporter for a node without a cluster: the verdicts go to the log."""

    async def report(
        self, stage: LocalStage, health: StageHealth, *, cores: list[str] | None, moved_at: float | None
    ) -> None:
        if health.degraded:
            log.warning("stage_degraded", stage=stage.index, reasons=list(health.reasons), remap=health.remap)

    async def event(self, stage: LocalStage, *, reason: str, note: str, warning: bool = False) -> None:
        log.warning("stage_event", stage=stage.index, reason=reason, note=note)


@dataclass(eq=False)
class _Latency:
    """End-to-end spike latency samples (sum over stages of hop latency + queueing delay, from sim_hw)."""

    samples: list[tuple[float, float]] = field(default_factory=list)

    def add(self, t: float, metrics: tuple[Any, ...]) -> None:
        self.samples.append((t, float(sum(m.latency_s for m in metrics))))

    def mean(self, t0: float, t1: float) -> float:
        xs = [v for t, v in self.samples if t0 <= t < t1 and math.isfinite(v)]
        return float(np.mean(xs)) if xs else math.nan

    def peak(self, t0: float, t1: float) -> float:
        xs = [v for t, v in self.samples if t0 <= t <= t1 and math.isfinite(v)]
        return float(max(xs)) if xs else math.nan


async def _runtime(sim: SimBackend, job: str, files: list[Path], moved: Callable[[int, np.ndarray], None]) -> None:
    """The SNN runtime inside each stage pod, as the simulator plays it: it reads the allocation file the device
    plugin mounted and, when a remap rewrites it (a higher ``generation``), moves the stage to the new cores."""
    seen = [0] * len(files)
    while True:
        await asyncio.sleep(0.1)
        for i, path in enumerate(files):
            body = read_allocation(path)
            if body is None or int(body.get("generation", 0)) <= seen[i]:
                continue
            seen[i] = int(body["generation"])
            cores = np.array([c["index"] for c in body["cores"]], dtype=np.int64)
            sim.sim.move_stage(job, i, cores)
            moved(i, cores)


async def scenario(
    daemon: Daemon, kubelet: KubeletStandIn, sim: SimBackend, summary: LiveSummary, hints: PlanHints
) -> None:
    """The demo's story on a running daemon: plan and admit the job, then the faults and the reallocator's answers
    (runs until cancelled; the status page test and the screenshot script run it too)."""
    node = daemon.node
    topo = node.topology
    await kubelet.wait_capacity(NEURON_CORE, topo.n_cores, within=30.0)
    await kubelet.wait_capacity(EVENT_THROUGHPUT, len(node.blocks.ids), within=30.0)
    log.info(
        "registered",
        chips=topo.n_chips,
        neuron_cores=kubelet.allocatable(NEURON_CORE),
        event_throughput_devices=kubelet.allocatable(EVENT_THROUGHPUT),
    )
    await node.ready.wait()
    # SLAYER's N-MNIST CSNN at the spike rates measured by running its NIR graph (sim_hw/nir/workloads.json), real
    # time, unscaled: its stage 1 (the first pooling layer, 16 cores) is the busiest per core, where a hot spot bites.
    job = sim_hw.networks.nmnist_classifier(stages=4, name="nmnist")
    # The job contract's numbers: cores per stage, spikes to the next stage (KEPS), sensor input into stage 0.
    demands = tuple(
        StageDemand(
            s.cores,
            out_keps=s.spike_rate / 1e3 if i + 1 < len(job.stages) else 0.0,
            in_keps=job.input_rate / 1e3 if i == 0 else 0.0,
        )
        for i, s in enumerate(job.stages)
    )
    weight = sim.inter_chip_weight
    view = PlacementView.measured(
        topo,
        free=node.core_healthy(),
        queue_fill=node.queue_fill(),
        link_utilization=node.monitor.link_utilization,
        inter_chip_weight=weight,
    )
    plan, baseline = plan_job(view, demands), first_fit_plan(view, demands)
    assert plan is not None, "the demo job must fit an idle node"
    assert baseline is not None
    log.info(
        "job_planned",
        job=job.name,
        stages=[len(p) for p in plan.stages],
        cost=round(plan.total_cost),
        first_fit_cost=round(baseline.total_cost),
        mean_hops=[round(h, 2) for h in plan.cost.mean_hops],
        first_fit_mean_hops=[round(h, 2) for h in baseline.cost.mean_hops],
    )
    pods = [f"{job.name}-stage{i}" for i in range(len(job.stages))]
    hints.set_plans(
        PlannedPod(JOB_NAMESPACE, pod, f"2026-01-01T00:00:0{i}Z", plan.stages[i]) for i, pod in enumerate(pods)
    )
    placement: list[np.ndarray] = []
    admitted: list[tuple[str, ...]] = []
    for i, stage in enumerate(job.stages):
        keps_blocks = max(1, int(np.ceil(stage.spike_rate / 1e3 / node.blocks.block_keps)))
        answer = await kubelet.admit(pods[i], "snn", {NEURON_CORE: stage.cores, EVENT_THROUGHPUT: keps_blocks})
        ids = answer[NEURON_CORE].envs["SNNRM_CORES"].split(",")
        placement.append(topo.indices(ids))
        admitted.append(tuple(sorted(ids)))
        followed = bool(np.array_equal(np.sort(placement[-1]), plan.stages[i]))
        chips = answer[NEURON_CORE].envs["SNNRM_CHIPS"]
        log.info("stage_admitted", pod=pods[i], cores=len(ids), first=ids[0], followed_plan=followed, chips=chips)
    sim.sim.add_job(job, placement)

    ledger = RemapLedger(daemon.config.state_dir, topo)
    source = _DemoStages(job.name, demands, pods, admitted, ledger)
    daemon.stage_view = lambda: stages_body(topo, source.stages(), ledger)

    def allocated() -> np.ndarray:
        mask = np.zeros(topo.n_cores, dtype=bool)
        for (_, _, resource), ids in kubelet.assigned().items():
            if resource == NEURON_CORE:
                mask[topo.indices(ids)] = True
        return mask

    realloc = NodeReallocator(
        node,
        source,
        TimelineReporter(_LogReporter(), daemon.timeline, topo),  # verdicts on the status page's timeline too
        ledger,
        allocated,
        settings=ReallocationSettings(dwell=2.0, cooldown=8.0, min_age=0.0),
        inter_chip_weight=weight,
    )
    latency = _Latency()
    started = time.monotonic()
    marks: dict[str, float] = {}

    def moved(i: int, cores: np.ndarray) -> None:
        now = time.monotonic() - started
        marks.setdefault(f"moved{i}", now)
        log.warning("runtime_followed_remap", stage=i, cores=len(cores), first=topo.ids[int(cores.min())])

    files = [ledger.allocation_file(ids) for ids in admitted]
    try:
        await _scenario_loop(
            sim, source, topo, node, kubelet, daemon, realloc, latency, marks, started, files, moved, summary, job.name
        )
    finally:
        _recap(marks, sim, realloc.remaps)


def _recap(marks: dict[str, float], sim: SimBackend, remaps: int) -> None:
    """The story in one line at the end: latency around the hot spot, how fast each fault was answered, losses."""
    counters = sim.sim.counters()
    dropped = float(np.nansum(counters.events_dropped))
    total = float(np.nansum(counters.events_in))

    def span(a: str, b: str) -> float | None:
        return round(marks[b] - marks[a], 2) if a in marks and b in marks else None

    def us(key: str) -> float | None:
        return round(marks[key] * 1e6, 3) if key in marks and math.isfinite(marks[key]) else None

    log.warning(
        "demo_recap",
        latency_before_us=us("lat_before"),
        latency_during_hot_spot_us=us("lat_during"),
        latency_after_remap_us=us("lat_after"),
        hot_spot_to_remap_s=span("hot", "moved1"),
        core_failure_to_remap_s=span("failure", "moved2"),
        remaps=remaps,
        events_dropped=int(dropped),
        events_dropped_pct=round(100.0 * dropped / total, 3) if total > 0 else None,
    )


async def _scenario_loop(
    sim: SimBackend,
    source: _DemoStages,
    topo: Topology,
    node: NodeService,
    kubelet: KubeletStandIn,
    daemon: Daemon,
    realloc: NodeReallocator,
    latency: _Latency,
    marks: dict[str, float],
    started: float,
    files: list[Path],
    moved: Callable[[int, np.ndarray], None],
    summary: LiveSummary,
    job_name: str,
) -> None:
    """Faults on a schedule, latency phases, the live summary; runs until cancelled."""
    last_summary = -math.inf
    async with asyncio.TaskGroup() as tg:
        tg.create_task(realloc.run(), name="demo-reallocator")
        tg.create_task(_runtime(sim, job_name, files, moved), name="demo-runtime")
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic() - started
            metrics = sim.sim.stage_metrics(job_name)
            latency.add(now, metrics)
            if "hot" not in marks and now >= HOT_SPOT_AT:
                marks["hot"] = now
                marks["lat_before"] = _log_latency("before", latency.mean(now - 3.0, now))
                victims = source.stages()[1].cores.tolist()
                sim.inject({"kind": "hot_spot", "cores": victims, "load_factor": 4.0, "service_divisor": 16.0})
                log.warning("fault_injected", kind="hot-spot", stage=1, cores=len(victims), first=topo.ids[victims[0]])
            if "moved1" in marks and "during" not in marks:
                marks["during"] = now
                # The worst sample before the move: the reallocator answers within a few telemetry frames, so the
                # hot spot's latency is a short ramp, not a plateau to average.
                marks["lat_during"] = _log_latency("during", latency.peak(marks["hot"], marks["moved1"]))
            if "during" in marks and "after" not in marks and now >= marks["moved1"] + 3.0:
                marks["after"] = now
                marks["lat_after"] = _log_latency("after", latency.mean(marks["moved1"] + 1.0, now))
            if "failure" not in marks and now >= CORE_FAILURE_AT:
                marks["failure"] = now
                victim = int(source.stages()[2].cores[0])
                sim.inject({"kind": "core_failure", "cores": [victim]})
                log.warning("fault_injected", kind="core-failure", stage=2, cores=[topo.ids[victim]])
            if now - last_summary >= summary.interval:
                last_summary = now
                counts = node.core_counts()
                port = daemon.http_port
                summary.update(
                    SummaryView(
                        elapsed_s=now,
                        chips=topo.n_chips,
                        cores_healthy=counts["healthy"],
                        cores_withheld=counts["withheld_for_remap"],
                        cores_total=topo.n_cores,
                        blocks_healthy=kubelet.allocatable(EVENT_THROUGHPUT),
                        blocks_total=kubelet.capacity(EVENT_THROUGHPUT),
                        block_keps=node.blocks.block_keps,
                        measured_keps=float(node.chip_headroom_keps().sum()),
                        faults=len(sim.faults),
                        reallocations=realloc.remaps,
                        stage_latency_s=tuple(m.latency_s for m in metrics),
                        dropped_per_s=sum(m.events_dropped_per_s for m in metrics),
                        kubelet_allocatable=kubelet.allocatable(NEURON_CORE),
                        url=None if port is None else f"http://{daemon.config.http_host}:{port}/",
                    )
                )


def _log_latency(phase: str, seconds: float) -> float:
    log.warning("spike_latency", phase=phase, e2e_us=round(seconds * 1e6, 3))
    return seconds


async def run_demo(
    *,
    http: str,
    seconds: float | None,
    chips: int,
    seed: int,
    install_stop: Callable[[asyncio.Event], None],
) -> None:
    """Run the demo until Ctrl-C, or for ``seconds``."""
    stop = asyncio.Event()
    install_stop(stop)
    # The kubelet's sockets live in here: a deep $TMPDIR would push them past the unix socket path limit.
    base = None if len(tempfile.gettempdir()) <= SHORT_TMPDIR else "/tmp"  # noqa: S108 (mkdtemp: private, unique)
    with tempfile.TemporaryDirectory(prefix="snnrm-demo-", dir=base) as tmp:
        root = Path(tmp)
        config = Config(
            backend="sim",
            kubelet_dir=root / "device-plugins",
            http=http,
            sim_chips=chips,
            sim_seed=seed,
            state_dir=root / "state",
            cdi_dir=root / "cdi",
        )
        async with KubeletStandIn(config.kubelet_dir) as kubelet:
            hints = PlanHints()  # GetPreferredAllocation follows the job's plan
            daemon = await Daemon.create(config, hints=hints)
            assert isinstance(daemon.backend, SimBackend)
            log.info("demo_starting", http=f"http://{http}", kubelet_dir=str(config.kubelet_dir), seconds=seconds)

            async def timer() -> None:
                if seconds is not None:
                    await asyncio.sleep(seconds)
                    stop.set()

            # The live summary refreshes in place on a terminal (log lines scroll above it), else logs a line.
            summary = LiveSummary()
            with summary.capture_logs():
                await daemon.run(stop=stop, extra=(scenario(daemon, kubelet, daemon.backend, summary, hints), timer()))
            summary.close()
    with contextlib.suppress(Exception):
        log.info("demo_finished")
