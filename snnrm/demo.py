"""``snnrm demo``: the main job on the embedded default, no cluster needed.

Simulated Loihi-2-like chips, the real daemon (device plugins over real unix sockets, telemetry pipeline, HTTP),
an in-process kubelet stand-in that admits the stages of a split-learning job (a DVS-Gesture CSNN cut into four
stages, one pod per stage) through GetPreferredAllocation and Allocate, one injected fault on a stage's cores,
and the reallocation that answers it: the stage is admitted again on healthy cores and moved there.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

import sim_hw
from snnrm.app import Daemon
from snnrm.backends.sim import SimBackend
from snnrm.config import Config
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.obs.console import LiveSummary, SummaryView

log = structlog.get_logger("snnrm.demo")

FAULT_AT = 6.0
"""Seconds after the job is placed when the fault hits: long enough to see the healthy baseline first."""


async def _scenario(daemon: Daemon, kubelet: KubeletStandIn, sim: SimBackend, summary: LiveSummary) -> None:
    topo = daemon.node.topology
    await kubelet.wait_capacity(NEURON_CORE, topo.n_cores, within=30.0)
    await kubelet.wait_capacity(EVENT_THROUGHPUT, len(daemon.node.blocks.ids), within=30.0)
    log.info(
        "registered",
        chips=topo.n_chips,
        neuron_cores=kubelet.allocatable(NEURON_CORE),
        event_throughput_devices=kubelet.allocatable(EVENT_THROUGHPUT),
    )
    job = sim_hw.networks.dvs_gesture_csnn(stages=4, name="dvs-gesture")
    placement: list[np.ndarray] = []
    pods: list[str] = []
    for i, stage in enumerate(job.stages):
        pod = f"{job.name}-stage{i}"
        keps_blocks = max(1, int(np.ceil(stage.spike_rate / 1e3 / daemon.node.blocks.block_keps)))
        answer = await kubelet.admit(pod, "snn", {NEURON_CORE: stage.cores, EVENT_THROUGHPUT: keps_blocks})
        ids = answer[NEURON_CORE].envs["SNNRM_CORES"].split(",")
        placement.append(topo.indices(ids))
        pods.append(pod)
        log.info("stage_admitted", pod=pod, cores=len(ids), first=ids[0], chips=answer[NEURON_CORE].envs["SNNRM_CHIPS"])
    sim.sim.add_job(job, placement)

    started = time.monotonic()
    fault_stage = 1
    fault_id: int | None = None
    reallocations = 0
    last_summary = -math.inf
    while True:
        await asyncio.sleep(0.1)
        now = time.monotonic() - started
        if fault_id is None and now >= FAULT_AT:
            victims = placement[fault_stage][:2].tolist()
            fault_id = sim.inject({"kind": "core_failure", "cores": victims})
            log.warning("fault_injected", kind="core-failure", cores=[topo.ids[c] for c in victims], stage=fault_stage)
        healthy = daemon.node.core_healthy()
        for i, cores in enumerate(placement):
            if healthy[cores].all():
                continue
            # Reallocation: admit the stage again on healthy cores, move it, then release the old pod.
            bad = [topo.ids[c] for c in cores[~healthy[cores]]]
            new_pod = f"{job.name}-stage{i}-r{reallocations + 1}"
            answer = await kubelet.admit(new_pod, "snn", {NEURON_CORE: len(cores)})
            new = topo.indices(answer[NEURON_CORE].envs["SNNRM_CORES"].split(","))
            sim.sim.move_stage(job.name, i, new)
            kubelet.release(pods[i])
            pods[i], placement[i] = new_pod, new
            reallocations += 1
            log.warning("stage_reallocated", stage=i, unhealthy=bad, pod=new_pod, first=topo.ids[int(new[0])])
        if now - last_summary >= summary.interval:
            last_summary = now
            metrics = sim.sim.stage_metrics(job.name)
            port = daemon.http_port
            summary.update(
                SummaryView(
                    elapsed_s=now,
                    chips=topo.n_chips,
                    cores_healthy=int(healthy.sum()),
                    cores_total=topo.n_cores,
                    blocks_healthy=kubelet.allocatable(EVENT_THROUGHPUT),
                    blocks_total=kubelet.capacity(EVENT_THROUGHPUT),
                    block_keps=daemon.node.blocks.block_keps,
                    measured_keps=float(daemon.node.chip_headroom_keps().sum()),
                    faults=len(sim.faults),
                    reallocations=reallocations,
                    stage_latency_s=tuple(m.latency_s for m in metrics),
                    dropped_per_s=sum(m.events_dropped_per_s for m in metrics),
                    kubelet_allocatable=kubelet.allocatable(NEURON_CORE),
                    url=None if port is None else f"http://{daemon.config.http_host}:{port}/",
                )
            )


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
    with tempfile.TemporaryDirectory(prefix="snnrm-demo-") as tmp:
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
            daemon = await Daemon.create(config)
            assert isinstance(daemon.backend, SimBackend)
            log.info("demo_starting", http=f"http://{http}", kubelet_dir=str(config.kubelet_dir), seconds=seconds)

            async def timer() -> None:
                if seconds is not None:
                    await asyncio.sleep(seconds)
                    stop.set()

            # The live summary refreshes in place on a terminal (log lines scroll above it), else logs a line.
            summary = LiveSummary()
            with summary.capture_logs():
                await daemon.run(stop=stop, extra=(_scenario(daemon, kubelet, daemon.backend, summary), timer()))
            summary.close()
    with contextlib.suppress(Exception):
        log.info("demo_finished")
