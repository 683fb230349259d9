"""The three reference workloads as NIR graphs, their event input, and their measured stage traffic.

``scripts/make-nir-workloads.py`` (or ``python -m snnrm.job.workloads``) builds the graphs, generates their input,
runs them through the product's own interpreter (:func:`snnrm.job.interpret.run`, fed by the same
:func:`snnrm.job.plan.load_graph` / :func:`snnrm.job.plan.input_frames` as ``snnrm job plan``) and splits them with
the product's planner (:func:`snnrm.core.split.split` on :func:`snnrm.job.plan.budget_for`). The measured numbers go
to ``sim_hw/nir/workloads.json``, which :mod:`sim_hw.networks` reads, so the simulator and the daemon never import
``nir`` or ``h5py``. Everything is seeded: the same code gives the same file.

Layer shapes, and where each number comes from (checked against the source named, except where "assumed"):

- **DVS128 Gesture CSNN** (11 classes): the SLAYER network of Shrestha & Orchard, "SLAYER: Spike Layer Error
  Reassignment in Time", NeurIPS 2018, as published in its code (github.com/bamsumit/slayerPytorch,
  ``exampleLoihi/03_IBMGesture/ibmGestureTrain.py``): 128x128x2 -> sum-pool 4 -> 32x32x2 -> conv 16 5x5 (pad 2)
  -> 32x32x16 -> pool 2 -> 16x16x16 -> conv 32 3x3 (pad 1) -> 16x16x32 -> pool 2 -> 8x8x32 -> dense 512 -> dense
  11; every pool and conv is followed by spiking neurons, as there. Dataset: Amir et al., "A Low Power, Fully
  Event-Based Gesture Recognition System", CVPR 2017 (DVS128 sensor, 128x128 pixels, 2 polarities, 11 classes).
- **N-MNIST CSNN** (10 classes): the SLAYER N-MNIST CNN from the same repository
  (``example/03_NMNIST_CNN/nmnistCNN.py``): 34x34x2 -> conv 16 5x5 (pad 1) -> 32x32x16 -> pool 2 -> 16x16x16 ->
  conv 32 3x3 (pad 1) -> 16x16x32 -> pool 2 -> 8x8x32 -> conv 64 3x3 (pad 1) -> 8x8x64 -> dense 10. (The network
  table of the NeurIPS paper itself was not checked here.) Dataset: Orchard et al., "Converting Static Image
  Datasets to Spiking Neuromorphic Datasets Using Saccades", Frontiers in Neuroscience 2015 (34x34 pixels, 2
  polarities, three saccades per digit).
- **SHD recurrent net** (20 classes): Cramer et al., "The Heidelberg Spiking Data Sets for the Systematic Evaluation
  of Spiking Neural Networks", IEEE TNNLS 2020 (700 input channels from an artificial cochlea, 20 classes, a
  recurrent hidden layer). The hidden size 200, the current-based neurons (tau_syn 5 ms, tau_mem 10 ms) and the
  non-spiking leaky readout are those of Zenke's SHD surrogate-gradient tutorial (github.com/fzenke/spytorch,
  tutorial 4: nb_inputs 700, nb_hidden 200, nb_outputs 20, 1 ms steps). The paper's own hidden sizes were not
  checked here.

Assumed (no published value used): LIF time constant 10 ms, threshold 1 and reset to 0 in the two CSNNs (SLAYER
uses an SRM neuron); the event generators' speeds, contrast threshold and noise; the cochlea's firing rates.

Weights are random: normal with variance ``1/fan_in``, zero bias. Each spiking layer's input gain (NIR's ``r``),
in network order, is set by bisection so that the layer fires in :data:`TARGET_ACTIVITY` of its neurons per 1 ms
step on the first generated sample (capped by what the input can drive). NeuroBench's SNN baselines report an
activation sparsity of 0.916 (keyword spotting) to 0.997-0.999 (primate motor decoding), i.e. 0.1-8 % of neurons
active per step (Yik et al., "The neurobench framework for benchmarking neuromorphic computing algorithms and
systems", Nature Communications 2025; leaderboard in github.com/NeuroBench/neurobench, ``leaderboard.md``); 3 %
sits inside that range. Trained weights give other rates: plan a real network from its trained export with
``snnrm job plan --recorded`` (activity the framework recorded) or ``--input`` (your own events).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nir
import numpy as np
import numpy.typing as npt

from snnrm.core.split import SplitError, split
from snnrm.job.interpret import run
from snnrm.job.plan import Graph, budget_for, input_frames, load_graph

Array = npt.NDArray[np.float64]

DT = 1e-3
"""Seconds per step: the 1 ms of SLAYER's examples and of the SHD tutorial."""
TARGET_ACTIVITY = 0.03
"""Fraction of a layer's neurons that spike per step, the calibration target (see the module docstring)."""
PRESET = "loihi2"
"""The preset the stored plans are cut for (the experiments' machine)."""
SAMPLES = 3
"""Generated input samples per network; rates are their mean."""
TAU = 0.01
"""Assumed LIF membrane time constant of the CSNNs (seconds)."""
DATA_FILE = Path(__file__).resolve().parents[2] / "sim_hw" / "nir" / "workloads.json"


# ---------------------------------------------------------------------------------------------------------- input


def dvs_from_intensity(
    frames: Array, rng: np.random.Generator, *, contrast: float = 0.15, noise_hz: float = 0.05
) -> dict[str, Array]:
    """Events of an idealised DVS pixel array watching ``frames`` (T, H, W intensities, one per ``DT``).

    Each pixel keeps the log intensity of its last event and emits one event per ``contrast`` step of change (ON,
    polarity 1, when brighter; OFF, polarity 0, when darker), as a DVS does; timestamps are spread uniformly within
    the step. ``noise_hz`` adds background events per pixel (assumed, of the order of DVS leak noise).
    """
    log_i = np.log(frames + 0.1)
    ref = log_i[0].copy()
    ts, xs, ys, ps = [], [], [], []
    h, w = frames.shape[1:]
    for k in range(1, len(frames)):
        diff = log_i[k] - ref
        n = np.floor(np.abs(diff) / contrast).astype(np.int64)
        yy, xx = np.nonzero(n)
        if len(yy):
            counts = n[yy, xx]
            pol = (diff[yy, xx] > 0).astype(np.int64)
            ref[yy, xx] += np.sign(diff[yy, xx]) * counts * contrast
            yy, xx, pol = np.repeat(yy, counts), np.repeat(xx, counts), np.repeat(pol, counts)
            ts.append((k + rng.random(len(yy))) * DT)
            xs.append(xx)
            ys.append(yy)
            ps.append(pol)
    t_end = len(frames) * DT
    n_noise = int(rng.poisson(noise_hz * h * w * t_end))
    ts.append(rng.random(n_noise) * t_end)
    xs.append(rng.integers(0, w, n_noise))
    ys.append(rng.integers(0, h, n_noise))
    ps.append(rng.integers(0, 2, n_noise))
    t = np.concatenate(ts)
    order = np.argsort(t, kind="stable")
    return {
        "t": t[order],
        "x": np.concatenate(xs)[order],
        "y": np.concatenate(ys)[order],
        "p": np.concatenate(ps)[order],
    }


GESTURES = ("wave", "circle", "swipe")


def gesture_intensity(kind: str, seed: int, *, steps: int = 500, size: int = 128) -> Array:
    """Frames of a bright hand (a disk, radius 10 px) on its forearm (a 12 px bar to the lower edge) over a dim
    textured background, moving as ``kind``: ``wave`` (side to side, 30 px at 2 Hz), ``circle`` (radius 25 px at
    1.5 turns per second) or ``swipe`` (across the field in 0.4 s). Speeds are assumed (a hand crosses the
    sensor's field in about half a second)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    background = 0.2 + 0.1 * rng.random((size, size))
    cx0, cy0 = size / 2 + rng.uniform(-8, 8), size / 2 + rng.uniform(-8, 8)
    phase = rng.uniform(0, 2 * np.pi)
    frames = np.empty((steps, size, size))
    for k in range(steps):
        t = k * DT
        if kind == "wave":
            cx, cy = cx0 + 30 * np.sin(2 * np.pi * 2.0 * t + phase), cy0
        elif kind == "circle":
            cx, cy = cx0 + 25 * np.cos(2 * np.pi * 1.5 * t + phase), cy0 + 25 * np.sin(2 * np.pi * 1.5 * t + phase)
        elif kind == "swipe":
            cx, cy = 10 + (size - 20) * ((t / 0.4 + phase / (2 * np.pi)) % 1.0), cy0
        else:
            raise ValueError(f"unknown gesture {kind!r}")
        # soft edges (1 px ramp), so sub-pixel motion changes intensities as on a real sensor
        hand = np.clip(10.5 - np.hypot(xx - cx, yy - cy), 0.0, 1.0)
        arm = np.clip(6.5 - np.abs(xx - cx), 0.0, 1.0) * (yy > cy)
        frames[k] = np.maximum(background, np.maximum(hand, arm))
    return frames


def digit_image(seed: int, size: int = 28) -> Array:
    """A handwriting-like glyph: three or four thick random strokes (a stand-in for an MNIST digit)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.zeros((size, size))
    point = rng.uniform(6, size - 6, 2)
    for _ in range(int(rng.integers(3, 5))):
        nxt = np.clip(point + rng.normal(0, 7, 2), 4, size - 4)
        d = nxt - point
        # distance of each pixel to the segment point -> nxt
        u = np.clip(((xx - point[0]) * d[0] + (yy - point[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
        dist = np.hypot(xx - point[0] - u * d[0], yy - point[1] - u * d[1])
        img = np.maximum(img, np.clip(2.0 - dist, 0.0, 1.0))
        point = nxt
    return img


def saccade_intensity(seed: int, *, size: int = 34) -> Array:
    """Frames of a glyph seen by a sensor making three saccades along a triangle, 100 ms each, as N-MNIST's
    recordings do (Orchard et al. 2015; the 3 px amplitude and the timing are assumed)."""
    img = np.zeros((size, size))
    img[3:31, 3:31] = digit_image(seed)
    corners = np.array([[0.0, 0.0], [3.0, 3.0], [-3.0, 3.0], [0.0, 0.0]])  # (dx, dy) per saccade end
    frames = []
    for a, b in itertools.pairwise(corners):
        for k in range(100):
            dx, dy = a + (b - a) * (k + 1) / 100
            frames.append(_shift(img, dx, dy))
    return 0.1 + np.stack(frames)


def _shift(img: Array, dx: float, dy: float) -> Array:
    """``img`` moved by a sub-pixel offset (bilinear), zeros flowing in."""
    out = np.zeros_like(img)
    ix, iy = math.floor(dx), math.floor(dy)
    fx, fy = dx - ix, dy - iy
    for ox, oy, wgt in (
        (ix, iy, (1 - fx) * (1 - fy)),
        (ix + 1, iy, fx * (1 - fy)),
        (ix, iy + 1, (1 - fx) * fy),
        (ix + 1, iy + 1, fx * fy),
    ):
        out += wgt * np.roll(np.roll(img, oy, axis=0), ox, axis=1)
    return out


def cochlea_spikes(seed: int, *, steps: int = 700, channels: int = 700) -> Array:
    """Poisson spikes of 700 cochlea channels for a spoken-digit-like sound: three formant bands (width 20
    channels) gliding in frequency under a syllable envelope, peak 80 Hz per channel, 1 Hz spontaneous. The
    channel count is SHD's (Cramer et al. 2020); band shapes and rates are assumed."""
    rng = np.random.default_rng(seed)
    t = np.arange(steps) * DT
    c = np.arange(channels, dtype=np.float64)
    onset, length = rng.uniform(0.05, 0.1), rng.uniform(0.45, 0.55)
    env = np.clip(np.sin(np.pi * np.clip((t - onset) / length, 0, 1)), 0, None) ** 0.5
    rate = np.full((steps, channels), 1.0)
    for k in range(3):
        start, end = rng.uniform(100 + 180 * k, 220 + 180 * k, 2)
        centre = start + (end - start) * np.clip((t - onset) / length, 0, 1)
        rate += 80.0 * env[:, None] * np.exp(-0.5 * ((c[None, :] - centre[:, None]) / 20.0) ** 2)
    spikes: Array = (rng.random((steps, channels)) < rate * DT).astype(np.float64)
    return spikes


# -------------------------------------------------------------------------------------------------------- graphs


def _lif(shape: tuple[int, ...]) -> nir.LIF:
    return nir.LIF(
        tau=np.full(shape, TAU),
        r=np.ones(shape),
        v_leak=np.zeros(shape),
        v_threshold=np.ones(shape),
        v_reset=np.zeros(shape),
    )


def _conv(rng: np.random.Generator, c_in: int, c_out: int, k: int, pad: int, hw: int) -> nir.Conv2d:
    w = rng.normal(0.0, 1.0 / math.sqrt(c_in * k * k), (c_out, c_in, k, k))
    return nir.Conv2d(input_shape=(hw, hw), weight=w, stride=1, padding=pad, dilation=1, groups=1, bias=np.zeros(c_out))


def _pool(k: int) -> nir.SumPool2d:
    return nir.SumPool2d(kernel_size=np.array([k, k]), stride=np.array([k, k]), padding=np.array([0, 0]))


def _dense(rng: np.random.Generator, n_in: int, n_out: int) -> nir.Affine:
    return nir.Affine(weight=rng.normal(0.0, 1.0 / math.sqrt(n_in), (n_out, n_in)), bias=np.zeros(n_out))


def _chain(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(itertools.pairwise(names))


def dvs_gesture_graph(seed: int = 1) -> nir.NIRGraph:
    """SLAYER's DVS128 Gesture CSNN (shapes in the module docstring), random weights, unit gains."""
    rng = np.random.default_rng(seed)
    nodes: dict[str, Any] = {
        "input": nir.Input(input_type={"input": np.array([2, 128, 128])}),
        "pool1": _pool(4),
        "pool1_lif": _lif((2, 32, 32)),
        "conv1": _conv(rng, 2, 16, 5, 2, 32),
        "conv1_lif": _lif((16, 32, 32)),
        "pool2": _pool(2),
        "pool2_lif": _lif((16, 16, 16)),
        "conv2": _conv(rng, 16, 32, 3, 1, 16),
        "conv2_lif": _lif((32, 16, 16)),
        "pool3": _pool(2),
        "pool3_lif": _lif((32, 8, 8)),
        "flat": nir.Flatten(input_type={"input": np.array([32, 8, 8])}, start_dim=0, end_dim=-1),
        "fc1": _dense(rng, 8 * 8 * 32, 512),
        "fc1_lif": _lif((512,)),
        "fc2": _dense(rng, 512, 11),
        "fc2_lif": _lif((11,)),
        "output": nir.Output(output_type={"output": np.array([11])}),
    }
    return nir.NIRGraph(nodes=nodes, edges=_chain(list(nodes)))


def nmnist_graph(seed: int = 2) -> nir.NIRGraph:
    """SLAYER's N-MNIST CNN (shapes in the module docstring), random weights, unit gains."""
    rng = np.random.default_rng(seed)
    nodes: dict[str, Any] = {
        "input": nir.Input(input_type={"input": np.array([2, 34, 34])}),
        "conv1": _conv(rng, 2, 16, 5, 1, 34),
        "conv1_lif": _lif((16, 32, 32)),
        "pool1": _pool(2),
        "pool1_lif": _lif((16, 16, 16)),
        "conv2": _conv(rng, 16, 32, 3, 1, 16),
        "conv2_lif": _lif((32, 16, 16)),
        "pool2": _pool(2),
        "pool2_lif": _lif((32, 8, 8)),
        "conv3": _conv(rng, 32, 64, 3, 1, 8),
        "conv3_lif": _lif((64, 8, 8)),
        "flat": nir.Flatten(input_type={"input": np.array([64, 8, 8])}, start_dim=0, end_dim=-1),
        "fc": _dense(rng, 8 * 8 * 64, 10),
        "fc_lif": _lif((10,)),
        "output": nir.Output(output_type={"output": np.array([10])}),
    }
    return nir.NIRGraph(nodes=nodes, edges=_chain(list(nodes)))


def shd_graph(seed: int = 3) -> nir.NIRGraph:
    """The SHD recurrent net: 700 -> 200 recurrent current-based LIF -> 20 leaky readout, random weights."""
    rng = np.random.default_rng(seed)
    hidden, out = 200, 20

    def cuba(n: int, spiking: bool) -> Any:
        common = {"tau_syn": np.full(n, 5e-3), "tau_mem": np.full(n, 1e-2), "r": np.ones(n), "v_leak": np.zeros(n)}
        if spiking:
            return nir.CubaLIF(**common, v_threshold=np.ones(n), v_reset=np.zeros(n), w_in=np.ones(n))
        return nir.CubaLI(**common, w_in=np.ones(n))

    nodes: dict[str, Any] = {
        "input": nir.Input(input_type={"input": np.array([700])}),
        "fc_in": nir.Linear(weight=rng.normal(0.0, 1.0 / math.sqrt(700), (hidden, 700))),
        "hidden_lif": cuba(hidden, True),
        "recurrent": nir.Linear(weight=rng.normal(0.0, 1.0 / math.sqrt(hidden), (hidden, hidden))),
        "fc_out": nir.Linear(weight=rng.normal(0.0, 1.0 / math.sqrt(hidden), (out, hidden))),
        "readout": cuba(out, False),
        "output": nir.Output(output_type={"output": np.array([out])}),
    }
    edges = [
        ("input", "fc_in"),
        ("fc_in", "hidden_lif"),
        ("hidden_lif", "recurrent"),
        ("recurrent", "hidden_lif"),
        ("hidden_lif", "fc_out"),
        ("fc_out", "readout"),
        ("readout", "output"),
    ]
    return nir.NIRGraph(nodes=nodes, edges=edges)


@dataclass(frozen=True, slots=True)
class Workload:
    """One reference network: how to build it and its input, and what it is."""

    name: str
    build: Callable[[], nir.NIRGraph]
    sample: Callable[[int], dict[str, Array]]
    """Sample ``i`` as the arrays of an ``--input`` .npz file."""
    input_desc: str
    source: str


def _gesture_sample(i: int) -> dict[str, Array]:
    rng = np.random.default_rng(100 + i)
    return dvs_from_intensity(gesture_intensity(GESTURES[i % len(GESTURES)], seed=100 + i), rng)


def _nmnist_sample(i: int) -> dict[str, Array]:
    rng = np.random.default_rng(200 + i)
    return dvs_from_intensity(saccade_intensity(seed=200 + i), rng)


def _shd_sample(i: int) -> dict[str, Array]:
    return {"spikes": cochlea_spikes(seed=300 + i)}


WORKLOADS: dict[str, Workload] = {
    "dvs-gesture": Workload(
        "dvs-gesture",
        dvs_gesture_graph,
        _gesture_sample,
        "moving-edge DVS gestures, (t, x, y, p) events on 2x128x128: a hand and forearm waving, circling or swiping "
        "(0.5 s each), events at log-intensity steps of 0.15, 0.05 Hz/pixel noise",
        "Shrestha & Orchard, SLAYER: Spike Layer Error Reassignment in Time, NeurIPS 2018 (slayerPytorch "
        "exampleLoihi/03_IBMGesture); dataset Amir et al., A Low Power, Fully Event-Based Gesture Recognition "
        "System, CVPR 2017",
    ),
    "nmnist": Workload(
        "nmnist",
        nmnist_graph,
        _nmnist_sample,
        "N-MNIST-like saccade events, (t, x, y, p) on 2x34x34: a stroke glyph seen through three 100 ms saccades "
        "along a triangle, events at log-intensity steps of 0.15, 0.05 Hz/pixel noise",
        "Shrestha & Orchard, SLAYER, NeurIPS 2018 (slayerPytorch example/03_NMNIST_CNN); dataset Orchard et al., "
        "Converting Static Image Datasets to Spiking Neuromorphic Datasets Using Saccades, Front. Neurosci. 2015",
    ),
    "shd": Workload(
        "shd",
        shd_graph,
        _shd_sample,
        "Poisson cochlea, (time, 700 channels) spikes per 1 ms: three gliding formant bands under a ~0.5 s "
        "syllable envelope, 80 Hz peak, 1 Hz spontaneous",
        "Cramer et al., The Heidelberg Spiking Data Sets for the Systematic Evaluation of Spiking Neural Networks, "
        "IEEE TNNLS 2020 (700 channels, 20 classes); hidden layer as Zenke's SpyTorch SHD tutorial (200 recurrent)",
    ),
}


# --------------------------------------------------------------------------------------------- measuring it all


def _npz(path: Path, arrays: Mapping[str, Array]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _spiking_layers(graph: nir.NIRGraph) -> list[str]:
    return [n for n, node in graph.nodes.items() if type(node).__name__ in ("LIF", "CubaLIF")]


def calibrate(
    graph: nir.NIRGraph, frames: Mapping[str, Array], *, target: float = TARGET_ACTIVITY, iterations: int = 16
) -> dict[str, float]:
    """Set each spiking layer's gain ``r`` in network order so it fires in ``target`` of its neurons per step on
    ``frames`` (bisection in log ``r`` over [0.1, 1e4]). The interpreter runs the calibrated part of the graph
    once per layer to record the layer's input current, then the layer alone (with its recurrent loop, if any) on
    that current for each bisection step. Returns the gains; the graph's nodes are updated in place."""
    names = list(graph.nodes)  # the graphs here list their nodes in network order
    edges = [(a, b) for a, b in graph.edges]
    gains: dict[str, float] = {}
    for layer in _spiking_layers(graph):
        node = graph.nodes[layer]
        loop = {n for n in names if (layer, n) in edges and (n, layer) in edges}
        feeders = [a for a, b in edges if b == layer and a not in loop]
        upstream = [n for n in names[: names.index(layer)] if n not in loop]
        up_edges = [(a, b) for a, b in edges if a in upstream and b in upstream]
        res = run({n: graph.nodes[n] for n in upstream}, up_edges, frames, dt=DT, keep=feeders)
        current = np.sum([np.stack(res.outputs[f]) for f in feeders], axis=0)
        mini = {
            "current": nir.Input(input_type={"input": np.array(current.shape[1:])}),
            layer: node,
            **{n: graph.nodes[n] for n in loop},
        }
        mini_edges = [("current", layer)] + [(a, b) for a, b in edges if a in mini and b in mini]
        neurons = int(np.asarray(node.v_threshold).size)
        lo, hi = math.log(0.1), math.log(1e4)
        best = (math.inf, 1.0)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            node.r = np.full_like(np.asarray(node.r, dtype=np.float64), math.exp(mid))
            out = run(mini, mini_edges, {"current": current}, dt=DT)
            activity = out.spikes[layer] / (neurons * out.steps)
            best = min(best, (abs(activity - target), math.exp(mid)))
            if activity < target:
                lo = mid
            else:
                hi = mid
        gains[layer] = best[1]
        node.r = np.full_like(np.asarray(node.r, dtype=np.float64), best[1])
    return gains


def _sig(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def measure(w: Workload, workdir: Path, *, samples: int = SAMPLES) -> dict[str, Any]:
    """Build, calibrate, write and measure one workload; the result is its entry in the data file."""
    graph = w.build()
    path = workdir / f"{w.name}.nir"
    # calibrate on sample 0 as the product reads it (the graph file and input_frames), then write the final graph
    nir.write(str(path), graph)
    first = input_frames(_npz(workdir / f"{w.name}-0.npz", w.sample(0)), load_graph(path), DT)
    gains = calibrate(graph, first)
    nir.write(str(path), graph)
    loaded: Graph = load_graph(path)
    per_sample: list[dict[str, float]] = []
    steps: list[int] = []
    for i in range(samples):
        frames = input_frames(_npz(workdir / f"{w.name}-{i}.npz", w.sample(i)), loaded, DT)
        res = run(loaded.nodes, loaded.edges, frames, dt=DT)
        per_sample.append(res.rates_hz())
        steps.append(res.steps)
    rates = {k: float(np.mean([r[k] for r in per_sample])) for k in per_sample[0]}
    budget = budget_for(PRESET)
    view = {v.name: v for v in loaded.view}
    plans: dict[str, list[dict[str, Any]]] = {}
    for k in range(1, len(graph.nodes) + 1):
        try:
            parts = split(loaded.view, loaded.edges, rates, budget, stages=k)
        except SplitError:
            continue  # e.g. one stage would not fit a chip
        plans[str(k)] = [
            {
                "nodes": list(s.nodes),
                "layers": [n for n in s.nodes if view[n].neurons > 0],
                "neurons": s.neurons,
                "synapses": s.synapses,
                "cores": s.cores,
                "in_keps": _sig(s.in_keps),
                "out_keps": _sig(s.out_keps),
                "internal_keps": _sig(s.internal_keps),
            }
            for s in parts
        ]
    layers = []
    for name in _spiking_layers(graph):
        neurons = int(np.asarray(graph.nodes[name].v_threshold).size)
        layers.append(
            {
                "node": name,
                "neurons": neurons,
                "gain_r": _sig(gains[name]),
                "rate_hz": _sig(rates[name]),
                "activity": _sig(rates[name] * DT / neurons),
            }
        )
    outputs = sorted({a for a, b in loaded.edges if view[b].kind == "Output" and view[a].spiking})
    return {
        "source": w.source,
        "input": {"desc": w.input_desc, "samples": samples, "steps": steps},
        "input_node": "input",
        "output_feeders": outputs,
        "node_rates_hz": {k: _sig(v) for k, v in rates.items()},
        "layers": layers,
        "plans": plans,
    }


def generate(samples: int = SAMPLES, only: Sequence[str] = ()) -> dict[str, Any]:
    """The whole data file's content (deterministic)."""
    out: dict[str, Any] = {
        "generated_by": "scripts/make-nir-workloads.py (snnrm.job.workloads)",
        "dt_s": DT,
        "target_activity": TARGET_ACTIVITY,
        "preset": PRESET,
        "neurons_per_core": budget_for(PRESET).neurons_per_core,
        "networks": {},
    }
    with tempfile.TemporaryDirectory(prefix="nir-workloads-") as tmp:
        for name, w in WORKLOADS.items():
            if only and name not in only:
                continue
            out["networks"][name] = measure(w, Path(tmp), samples=samples)
    return out


def write_graphs(directory: Path, only: Sequence[str] = ()) -> list[Path]:
    """The calibrated graphs and sample 0 of each input, to try ``snnrm job plan`` on."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, w in WORKLOADS.items():
        if only and name not in only:
            continue
        graph = w.build()
        path, events = directory / f"{name}.nir", _npz(directory / f"{name}-events.npz", w.sample(0))
        nir.write(str(path), graph)
        calibrate(graph, input_frames(events, load_graph(path), DT))
        nir.write(str(path), graph)
        written += [path, events]
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate ``sim_hw/nir/workloads.json`` (or ``--check`` it), optionally writing the graphs."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=DATA_FILE, help="data file to write")
    ap.add_argument("--check", action="store_true", help="regenerate and compare with --out instead of writing")
    ap.add_argument("--graphs", type=Path, default=None, help="also write the .nir graphs and sample events here")
    args = ap.parse_args(argv)
    data = generate()
    text = json.dumps(data, indent=1) + "\n"
    if args.graphs is not None:
        for p in write_graphs(args.graphs):
            print(f"wrote {p}")
    if args.check:
        same = args.out.exists() and json.loads(args.out.read_text()) == json.loads(text)
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from a fresh run'}")
        return 0 if same else 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
