"""Builders shared by the sim_hw tests (a uniquely named module: test directories are not packages)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from sim_hw import Job, MachineSpec, Stage, load_preset


def small_spec(chips: int = 4, cols: int = 4, rows: int = 4, cores_per_router: int = 1) -> MachineSpec:
    """A Loihi 2-like spec shrunk to a few small chips."""
    spec = load_preset("loihi2", chips=chips, cores_per_chip=cols * rows * cores_per_router)
    return MachineSpec(
        name="test",
        chips=chips,
        cols=cols,
        rows=rows,
        cores_per_router=cores_per_router,
        core_service_rate=spec.core_service_rate,
        core_queue_capacity=spec.core_queue_capacity,
        link_capacity=spec.link_capacity,
        inter_chip_link_capacity=spec.inter_chip_link_capacity,
        hop_latency=spec.hop_latency,
        inter_chip_hop_latency=spec.inter_chip_hop_latency,
    )


def two_stage_job(name: str = "job", input_rate: float = 2.0e5, spike_rate: float = 1.0e5) -> Job:
    """Stage 0 receives ``input_rate`` events/s and sends ``spike_rate`` spikes/s to stage 1."""
    return Job(
        name=name,
        stages=(Stage("in", 256, 1, spike_rate), Stage("out", 256, 1, 1.0e3)),
        input_rate=input_rate,
    )


def cores(*idx: int) -> npt.NDArray[np.int64]:
    """An int64 core array."""
    return np.asarray(idx, dtype=np.int64)
