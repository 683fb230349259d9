"""Workloads: SNNs cut into pipeline stages, with the spike rates that load the simulated cores.

A :class:`Job` is a chain of :class:`Stage` s (a split model: each stage a layer group, later a pod). Stage ``i``
receives the spikes of stage ``i - 1`` over the mesh (stage 0 receives the sensor/host input) and its own
internal spikes (layers inside the group), and emits ``spike_rate`` spikes per second to stage ``i + 1``.

The layer sizes follow published networks (marked [m]: from memory of the papers, check before citing):
SLAYER's DVS128-Gesture CSNN and N-MNIST CSNN (Shrestha & Orchard, NeurIPS 2018) and the 700-256-20 recurrent
net used on SHD (Cramer+ 2020). Rates are synthetic: each layer fires a fraction ``sparsity`` (2-20%) of its
neurons per SNN timestep, drawn from a seeded generator, as the experiment design prescribes when measured
rates are not available.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


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


def _split(sizes: Sequence[int], n: int) -> list[range]:
    """Cut a layer list into ``n`` contiguous groups of roughly equal neuron count."""
    n = max(1, min(n, len(sizes)))
    total = float(sum(sizes))
    cum = np.cumsum(sizes) / total
    cuts = [0]
    for k in range(1, n):
        # first layer index where the running total passes k/n, keeping every group non-empty
        idx = int(np.searchsorted(cum, k / n)) + 1
        idx = max(idx, cuts[-1] + 1)
        idx = min(idx, len(sizes) - (n - k))
        cuts.append(idx)
    cuts.append(len(sizes))
    return [range(a, b) for a, b in itertools.pairwise(cuts)]


def build_job(
    name: str,
    layers: Sequence[tuple[str, int]],
    *,
    input_neurons: int,
    stages: int,
    neurons_per_core: int = 256,
    sparsity: float | tuple[float, float] = (0.02, 0.2),
    timestep: float = 1e-3,
    seed: int = 0,
) -> Job:
    """A job from a layer list ``[(name, neurons), ...]``, cut into ``stages`` groups.

    Each layer's spike rate is ``neurons * sparsity / timestep``; a ``(lo, hi)`` sparsity draws one value per
    layer (and for the input) uniformly from a generator seeded with ``seed``.
    """
    if neurons_per_core < 1 or timestep <= 0:
        raise ValueError("neurons_per_core must be >= 1 and timestep > 0")
    rng = np.random.default_rng(seed)
    lo, hi = sparsity if isinstance(sparsity, tuple) else (sparsity, sparsity)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"sparsity must be in (0, 1], got {sparsity!r}")
    rates = [n * float(rng.uniform(lo, hi)) / timestep for _, n in layers]
    input_rate = input_neurons * float(rng.uniform(lo, hi)) / timestep
    out: list[Stage] = []
    for group in _split([n for _, n in layers], stages):
        neurons = sum(layers[i][1] for i in group)
        out.append(
            Stage(
                name="+".join(layers[i][0] for i in group),
                neurons=neurons,
                cores=math.ceil(neurons / neurons_per_core),
                spike_rate=rates[group[-1]],
                internal_rate=sum(rates[i] for i in group[:-1]),
            )
        )
    return Job(name=name, stages=tuple(out), input_rate=input_rate)


# [m] SLAYER DVS128-Gesture: 128x128x2 -> pool 4 -> 32x32x2 -> 16c5 -> pool 2 -> 32c3 -> pool 2 -> 512 -> 11.
DVS_GESTURE_LAYERS: tuple[tuple[str, int], ...] = (
    ("pool1", 32 * 32 * 2),
    ("conv1", 32 * 32 * 16),
    ("pool2", 16 * 16 * 16),
    ("conv2", 16 * 16 * 32),
    ("pool3", 8 * 8 * 32),
    ("fc1", 512),
    ("fc2", 11),
)
# [m] SLAYER N-MNIST: 34x34x2 -> 12c5 -> pool 2 -> 64c5 -> pool 2 -> 10.
NMNIST_LAYERS: tuple[tuple[str, int], ...] = (
    ("conv1", 30 * 30 * 12),
    ("pool1", 15 * 15 * 12),
    ("conv2", 11 * 11 * 64),
    ("pool2", 5 * 5 * 64),
    ("fc", 10),
)
# [m] SHD recurrent net: 700 input channels -> 256 recurrent LIF -> 20 classes.
SHD_LAYERS: tuple[tuple[str, int], ...] = (("encoder", 700), ("recurrent", 256), ("readout", 20))


def dvs_gesture_csnn(stages: int = 4, *, name: str = "dvs-gesture", neurons_per_core: int = 256, seed: int = 0) -> Job:
    """DVS128-Gesture convolutional SNN (11 classes) split into 3-5 stages (more are capped at 7 layers)."""
    return build_job(
        name, DVS_GESTURE_LAYERS, input_neurons=128 * 128 * 2, stages=stages,
        neurons_per_core=neurons_per_core, sparsity=(0.02, 0.2), seed=seed,
    )  # fmt: skip


def nmnist_classifier(stages: int = 3, *, name: str = "nmnist", neurons_per_core: int = 256, seed: int = 0) -> Job:
    """N-MNIST convolutional SNN (34x34x2 input, 10 classes)."""
    return build_job(
        name, NMNIST_LAYERS, input_neurons=34 * 34 * 2, stages=stages,
        neurons_per_core=neurons_per_core, sparsity=(0.02, 0.2), seed=seed,
    )  # fmt: skip


def shd_recurrent(stages: int = 3, *, name: str = "shd", neurons_per_core: int = 256, seed: int = 0) -> Job:
    """Spiking Heidelberg Digits recurrent net (700 -> 256 recurrent -> 20); the recurrence stays in a stage.

    The recurrent layer's own spikes feed back into it, so they count as its internal events as well.
    """
    job = build_job(
        name, SHD_LAYERS, input_neurons=700, stages=stages,
        neurons_per_core=neurons_per_core, sparsity=(0.02, 0.2), seed=seed,
    )  # fmt: skip
    recurrent = [i for i, s in enumerate(job.stages) if "recurrent" in s.name]
    stages_ = list(job.stages)
    for i in recurrent:
        stages_[i] = replace(stages_[i], internal_rate=stages_[i].internal_rate + stages_[i].spike_rate)
    return replace(job, stages=tuple(stages_))
