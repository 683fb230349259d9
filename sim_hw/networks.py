"""Workloads: SNNs cut into pipeline stages, with the spike rates that load the simulated cores.

A :class:`Job` is a chain of :class:`Stage` s (a split model: each stage a layer group, later a pod). Stage ``i``
receives the spikes of stage ``i - 1`` over the mesh (stage 0 receives the sensor/host input) and its own
internal spikes (layers inside the group), and emits ``spike_rate`` spikes per second to stage ``i + 1``.

The three networks are NIR graphs with published layer shapes, measured rather than assumed:
``scripts/make-nir-workloads.py`` builds them (SLAYER's DVS128-Gesture CSNN and N-MNIST CSNN, Shrestha & Orchard,
NeurIPS 2018; the 700-200-20 recurrent net on SHD, Cramer et al., IEEE TNNLS 2020 - shapes, sources and what is
assumed in ``snnrm/job/workloads.py``), runs them on event input it generates (moving-edge DVS gestures,
N-MNIST-like saccades, Poisson cochlea channels) through ``snnrm job plan``'s interpreter and splits them with its
planner for the Loihi 2 preset. The numbers are cached in ``sim_hw/nir/workloads.json``; this module only reads
that file (no ``nir``, no ``h5py``, no ``snnrm``).

Stage rates are the planner's, converted to this simulator's conventions: ``Job.input_rate`` is stage 0's input
(the sensor's events), ``Stage.spike_rate`` what a stage sends to the next (the last stage: its output layer's
spikes to the host), ``Stage.internal_rate`` the spikes its own layers deliver to layers inside it (the planner's
"inside" traffic without the sensor input and the output layer's spikes to the host, which no core processes).
Weights are random with each layer's gain set for about 3 % of neurons spiking per 1 ms step (NeuroBench's
published SNN activation sparsities); trained weights give other rates, and ``snnrm job plan --recorded`` plans
from a trained network's own activity.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Stage:
    """One layer group of a split SNN."""

    name: str
    neurons: int
    """Neurons in the group."""
    cores: int
    """Cores the group needs at the machine's neurons per core (placements may give it more or fewer)."""
    spike_rate: float
    """Spikes per second the group sends to the next stage (its last layer's output)."""
    internal_rate: float = 0.0
    """Events per second the group processes from its own inner layers (they never leave its cores)."""


@dataclass(frozen=True, slots=True)
class Job:
    """A split SNN: an ordered chain of stages plus the external input rate into stage 0."""

    name: str
    stages: tuple[Stage, ...]
    input_rate: float
    """Events per second from the sensor/host into stage 0."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a job needs at least one stage")
        if self.input_rate < 0 or any(s.spike_rate < 0 or s.internal_rate < 0 for s in self.stages):
            raise ValueError("rates must be >= 0")

    @property
    def cores_needed(self) -> int:
        """Cores all stages need together."""
        return sum(s.cores for s in self.stages)

    def stage_input_rate(self, i: int) -> float:
        """Nominal events per second arriving at stage ``i`` from outside it (input or previous stage)."""
        return self.input_rate if i == 0 else self.stages[i - 1].spike_rate

    def renamed(self, name: str) -> Job:
        """The same job under another name (jobs are keyed by name in the simulator)."""
        return replace(self, name=name)

    def scaled(self, factor: float) -> Job:
        """The same job with every rate multiplied by ``factor`` (a load sweep)."""
        stages = tuple(
            replace(s, spike_rate=s.spike_rate * factor, internal_rate=s.internal_rate * factor) for s in self.stages
        )
        return replace(self, stages=stages, input_rate=self.input_rate * factor)


DATA_FILE = Path(__file__).parent / "nir" / "workloads.json"
"""Measured layer sizes and stage traffic, written by ``scripts/make-nir-workloads.py`` (package data)."""


@functools.cache
def measurements() -> dict[str, Any]:
    """The data file's content: per network its source, input, per-node rates and the planner's stages."""
    data: dict[str, Any] = json.loads(DATA_FILE.read_text())
    return data


def stage_counts(network: str) -> tuple[int, ...]:
    """Stage counts the planner could cut ``network`` into on the preset (each stage fits one chip)."""
    return tuple(sorted(int(k) for k in _network(network)["plans"]))


def _network(network: str) -> dict[str, Any]:
    nets: dict[str, Any] = measurements()["networks"]
    if network not in nets:
        raise KeyError(f"unknown network {network!r}; measured: {', '.join(nets)}")
    entry: dict[str, Any] = nets[network]
    return entry


def measured_job(network: str, stages: int, *, name: str | None = None, neurons_per_core: int = 256) -> Job:
    """``network`` cut into ``stages`` stages as the planner cut it, at its measured rates.

    A stage count the graph does not allow is clamped to the nearest one it does (DVS-Gesture: 2-7, N-MNIST: 2-6,
    SHD: 1-2). Cores are the planner's (neurons or synapses per core, whichever binds) at the preset's neurons per
    core; at another ``neurons_per_core`` they are the stage's neurons over it.
    """
    entry = _network(network)
    counts = stage_counts(network)
    k = min(counts, key=lambda c: (abs(c - stages), -c))
    plan = entry["plans"][str(k)]
    rates: dict[str, float] = entry["node_rates_hz"]
    feeders = set(entry["output_feeders"])
    npc_plan = measurements().get("neurons_per_core", 256)
    out: list[Stage] = []
    for i, st in enumerate(plan):
        last = i + 1 == len(plan)
        to_host = sum(rates.get(n, 0.0) for n in st["nodes"] if n in feeders)
        internal = max(0.0, st["internal_keps"] * 1e3 - to_host)  # the sensor's events are the input, not internal
        cores = st["cores"] if neurons_per_core == npc_plan else max(1, math.ceil(st["neurons"] / neurons_per_core))
        out.append(
            Stage(
                name="+".join(n.removesuffix("_lif") for n in st["layers"]),
                neurons=st["neurons"],
                cores=cores,
                spike_rate=to_host if last else st["out_keps"] * 1e3,
                internal_rate=internal,
            )
        )
    return Job(name=name or network, stages=tuple(out), input_rate=plan[0]["in_keps"] * 1e3)


def dvs_gesture_csnn(stages: int = 4, *, name: str = "dvs-gesture", neurons_per_core: int = 256, seed: int = 0) -> Job:
    """SLAYER's DVS128-Gesture CSNN (11 classes) in 2-7 stages at its measured rates.

    ``seed`` is accepted for callers that draw jobs and does not change anything: the rates are the measured ones.
    """
    del seed
    return measured_job("dvs-gesture", stages, name=name, neurons_per_core=neurons_per_core)


def nmnist_classifier(stages: int = 3, *, name: str = "nmnist", neurons_per_core: int = 256, seed: int = 0) -> Job:
    """SLAYER's N-MNIST CSNN (34x34x2 input, 10 classes) in 2-6 stages at its measured rates (``seed``: unused)."""
    del seed
    return measured_job("nmnist", stages, name=name, neurons_per_core=neurons_per_core)


def shd_recurrent(stages: int = 2, *, name: str = "shd", neurons_per_core: int = 256, seed: int = 0) -> Job:
    """The SHD recurrent net (700 channels -> 200 recurrent -> 20 readout) in 1-2 stages (``seed``: unused).

    The recurrent layer's own spikes feed back into it inside its stage, so they count as its internal events.
    """
    del seed
    return measured_job("shd", stages, name=name, neurons_per_core=neurons_per_core)


def mixed_in_core_order(n_cores: int, fill: float) -> list[tuple[Job, list[range]]]:
    """A load for a big machine: DVS-Gesture (4 stages), N-MNIST (3) and SHD (2) jobs in turn, each stage
    on the next free cores in index order, until the next job would take more than ``fill`` of ``n_cores``.

    Returns each job with its stages' core ranges (what :meth:`Simulator.add_job` takes).
    """
    makers = (
        lambda k: dvs_gesture_csnn(4, name=f"dvs-{k}"),
        lambda k: nmnist_classifier(3, name=f"nmnist-{k}"),
        lambda k: shd_recurrent(2, name=f"shd-{k}"),
    )
    budget = int(fill * n_cores)
    placed: list[tuple[Job, list[range]]] = []
    nxt = 0
    while True:
        job = makers[len(placed) % len(makers)](len(placed))
        if nxt + job.cores_needed > budget:
            return placed
        placement = []
        for stage in job.stages:
            placement.append(range(nxt, nxt + stage.cores))
            nxt += stage.cores
        placed.append((job, placement))
