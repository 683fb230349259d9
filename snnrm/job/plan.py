"""``snnrm job plan``: a NIR graph → pipeline stages with measured spike traffic → one pod manifest per stage.

The I/O shell around :mod:`snnrm.core.split` (the pure split) and :mod:`snnrm.job.interpret` (the interpreter):
reads the ``.nir`` file (``nir.read``), the activity (``--input`` events to run the graph on, or ``--recorded``
``nir.NIRGraphData`` spike observables), sizes nodes in neurons and synapses, and renders the job contract of
docs/split-learning.md. ``nir`` and ``h5py`` are imported here only (the ``nir`` extra); the daemon never loads
them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from snnrm.core.jobs import GATE, INPUT_RATE, JOB, SPIKE_RATE, STAGE, STAGES
from snnrm.core.split import CoreBudget, GraphNode, SplitError, Stage, split
from snnrm.job.interpret import SPIKING, SUPPORTED, GraphError, run

NEURON_KINDS = frozenset({"LIF", "CubaLIF", "IF", "LI", "CubaLI", "I"})
BLOCK_KEPS = 1000.0
"""KEPS behind one snnrm.io/event-throughput device (the daemon's default ``--block-keps``)."""


class PlanError(ValueError):
    """A bad graph, activity file or option: one line naming the node or field."""


@dataclass(frozen=True, slots=True)
class Graph:
    """A NIR graph as the planner needs it: the nir node objects, edges and the splitter's view of each node."""

    nodes: dict[str, Any]
    edges: list[tuple[str, str]]
    view: list[GraphNode]


def _base(name: str) -> str:
    return name.split(".", 1)[0]  # NIR edges may name a port: "node.output"


def load_graph(path: Path) -> Graph:
    """Read a ``.nir`` file; nested subgraphs are refused (export a flat graph)."""
    import nir  # lazily: only `snnrm job` needs it

    try:
        g = nir.read(str(path))
    except FileNotFoundError:
        raise PlanError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - h5py and nir raise many types for a corrupt or truncated file
        raise PlanError(f"{path}: not a readable NIR graph ({type(e).__name__}: {str(e)[:120]})") from None
    nodes = dict(g.nodes)
    for name, node in nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise PlanError(f"node {name!r} is a nested subgraph; export the network as one flat NIR graph")
        kind = type(node).__name__
        if kind not in SUPPORTED:
            raise PlanError(f"node {name!r}: type {kind} is not supported (supported: {', '.join(SUPPORTED)})")
    edges = [(_base(a), _base(b)) for a, b in g.edges]
    for a, b in edges:
        for end in (a, b):
            if end not in nodes:
                raise PlanError(f"edge {a} -> {b}: no node named {end!r}")
    return Graph(nodes, edges, [_view(name, node) for name, node in nodes.items()])


def _size(node: Any, port: str) -> int:
    types = node.output_type if port == "output" else node.input_type
    shape = np.asarray((types or {}).get(port, []))
    return int(np.prod(shape)) if shape.size else 0


def _view(name: str, node: Any) -> GraphNode:
    kind = type(node).__name__
    neurons = _size(node, "output") if kind in NEURON_KINDS else 0
    synapses = 0
    if kind in ("Affine", "Linear"):
        synapses = int(np.asarray(node.weight).size)
    elif kind == "Conv2d":
        # Each output neuron has C_in/groups x kh x kw synapses (weights shared in memory on some chips, but a
        # core stores one synapse list per neuron it hosts).
        w = np.asarray(node.weight)
        synapses = _size(node, "output") * int(np.prod(w.shape[1:])) if _size(node, "output") else int(w.size)
    return GraphNode(name, kind, neurons=neurons, synapses=synapses, spiking=kind in SPIKING)


def budget_for(preset: str) -> CoreBudget:
    """Neurons and synapses per core and cores per chip of a sim_hw preset (cited in its YAML)."""
    from sim_hw.spec import load_preset

    try:
        spec = load_preset(preset)
    except (KeyError, FileNotFoundError, ValueError):
        raise PlanError(f"--preset {preset!r}: unknown (loihi2, spinnaker2, akida)") from None
    return CoreBudget(
        neurons_per_core=spec.neurons_per_core,
        synapses_per_core=spec.synapses_per_core,
        cores_per_chip=spec.cores_per_chip,
    )


def input_frames(path: Path, graph: Graph, dt: float) -> dict[str, np.ndarray]:
    """``--input EVENTS.npz``: ``spikes`` (T, channels) per step, or ``t`` (seconds), ``x``, ``y``, ``p`` events."""
    inputs = [n for n, node in graph.nodes.items() if type(node).__name__ == "Input"]
    if len(inputs) != 1:
        raise PlanError(f"--input needs a graph with exactly one Input node, this one has {len(inputs)}")
    name = inputs[0]
    shape = tuple(int(v) for v in np.asarray(graph.nodes[name].input_type["input"]).tolist())
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise PlanError(f"--input {path}: not a readable .npz file ({e})") from None
    with data:
        keys = set(data.files)
        if "spikes" in keys:
            spikes = np.asarray(data["spikes"], dtype=np.float64)
            if spikes.ndim < 2 or int(np.prod(spikes.shape[1:])) != int(np.prod(shape)):
                raise PlanError(
                    f"--input {path}: 'spikes' has {int(np.prod(spikes.shape[1:]))} channels per step, "
                    f"Input node {name!r} has {int(np.prod(shape))} {list(shape)}"
                )
            if not np.isfinite(spikes).all() or (spikes < 0).any():
                raise PlanError(f"--input {path}: 'spikes' must hold finite counts >= 0")
            return {name: spikes.reshape((len(spikes), *shape))}
        if {"t", "x", "y", "p"} <= keys:
            return {name: _bin_events(data, shape, dt, path, name)}
    raise PlanError(f"--input {path}: expected an array 'spikes' (time, channels) or arrays 't', 'x', 'y', 'p'")


def _bin_events(data: Any, shape: tuple[int, ...], dt: float, path: Path, name: str) -> np.ndarray:
    if len(shape) != 3:
        raise PlanError(f"--input {path}: events need an Input of shape (polarity, height, width), {name!r} is {shape}")
    t, x, y, p = (np.asarray(data[k]) for k in ("t", "x", "y", "p"))
    if not (len(t) == len(x) == len(y) == len(p)) or len(t) == 0:
        raise PlanError(f"--input {path}: 't', 'x', 'y', 'p' must be non-empty and equally long")
    c, h, w = shape
    bad = (x < 0) | (x >= w) | (y < 0) | (y >= h) | (p < 0) | (p >= c) | ~np.isfinite(t) | (t < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PlanError(f"--input {path}: event {i} (t={t[i]}, x={x[i]}, y={y[i]}, p={p[i]}) is outside {shape}")
    steps = math.floor(float(t.max()) / dt) + 1
    if steps > 1_000_000:
        raise PlanError(f"--input {path}: {steps} steps of {dt} s; shorten the recording or raise --dt")
    frames = np.zeros((steps, c, h, w))
    np.add.at(frames, ((t / dt).astype(np.int64), p.astype(np.int64), y.astype(np.int64), x.astype(np.int64)), 1.0)
    return frames


def recorded_rates(path: Path, graph: Graph) -> dict[str, float]:
    """``--recorded``: spikes per second per node from ``nir.NIRGraphData`` spike observables."""
    import nir

    try:
        data = nir.read_data(str(path))
    except FileNotFoundError:
        raise PlanError(f"--recorded {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - as for the graph file
        raise PlanError(f"--recorded {path}: not NIR graph data ({type(e).__name__}: {str(e)[:120]})") from None
    rates: dict[str, float] = {}
    for name, node_data in data.nodes.items():
        if name not in graph.nodes:
            raise PlanError(f"--recorded {path}: data for node {name!r}, which the graph does not have")
        obs = getattr(node_data, "observables", {}).get("spikes")
        if obs is None:
            continue
        # Both layouts are per sample: TimeGriddedData (samples, steps, neurons); EventData idx/time (samples,
        # events) padded with -1 / inf. The rate is the mean over samples.
        if isinstance(obs, nir.TimeGriddedData):
            arr = np.asarray(obs.data, dtype=np.float64)
            seconds = arr.shape[0] * arr.shape[1] * float(obs.dt)
            total = float(arr.sum())
        else:
            idx = np.atleast_2d(np.asarray(obs.idx))
            total = float(np.count_nonzero(idx >= 0))
            seconds = idx.shape[0] * float(obs.t_max)
        if not (seconds > 0 and math.isfinite(total)):
            raise PlanError(f"--recorded {path}: node {name!r} has no duration or a non-finite spike count")
        rates[name] = total / seconds
    if not rates:
        raise PlanError(f"--recorded {path}: no node has a 'spikes' observable")
    return rates


@dataclass(frozen=True, slots=True)
class JobPlan:
    job: str
    preset: str
    stages: list[Stage]
    rates_hz: dict[str, float]
    source: str
    """How the rates were obtained: ``run on EVENTS.npz (T steps of dt s)`` or ``recorded in RATES.h5``."""


def plan_job(
    graph_path: Path,
    *,
    preset: str,
    stages: int | None,
    max_cores_per_stage: int | None,
    input_path: Path | None,
    recorded_path: Path | None,
    dt: float,
    job: str,
) -> JobPlan:
    """Everything ``snnrm job plan`` computes; raises :class:`PlanError` with one line on bad input."""
    if (input_path is None) == (recorded_path is None):
        raise PlanError("give exactly one of --input EVENTS.npz (run the graph) and --recorded RATES.h5")
    budget = budget_for(preset)
    graph = load_graph(graph_path)
    if input_path is not None:
        frames = input_frames(input_path, graph, dt)
        try:
            result = run(graph.nodes, graph.edges, frames, dt=dt)
        except GraphError as e:
            raise PlanError(str(e)) from None
        rates = result.rates_hz()
        source = f"run on {input_path.name} ({result.steps} steps of {dt:g} s)"
    else:
        assert recorded_path is not None
        rates = recorded_rates(recorded_path, graph)
        source = f"recorded in {recorded_path.name}"
    try:
        parts = split(graph.view, graph.edges, rates, budget, stages=stages, max_cores_per_stage=max_cores_per_stage)
    except SplitError as e:
        raise PlanError(str(e)) from None
    return JobPlan(job, preset, parts, rates, source)


_DNS = re.compile(r"[^a-z0-9-]+")


def job_name(raw: str) -> str:
    """A DNS-1123 label from a file stem or a user's name."""
    name = _DNS.sub("-", raw.lower()).strip("-")[:40].strip("-")
    if not name:
        raise PlanError(f"--job {raw!r}: cannot make a Kubernetes name of it")
    return name


def manifests(plan: JobPlan, *, image: str, namespace: str | None) -> list[dict[str, Any]]:
    """One gated stage Pod per stage, as docs/split-learning.md's job contract describes."""
    out = []
    n = len(plan.stages)
    for st in plan.stages:
        annotations = {STAGES: str(n), SPIKE_RATE: f"{st.out_keps:.3f}"}
        if st.index == 0 and st.in_keps > 0:
            annotations[INPUT_RATE] = f"{st.in_keps:.3f}"
        limits: Mapping[str, int] = {
            "snnrm.io/neuron-core": st.cores,
            "snnrm.io/event-throughput": max(1, math.ceil((st.in_keps + st.internal_keps) / BLOCK_KEPS)),
        }
        meta: dict[str, Any] = {
            "name": f"{plan.job}-stage{st.index}",
            "labels": {JOB: plan.job, STAGE: str(st.index)},
            "annotations": annotations,
        }
        if namespace:
            meta["namespace"] = namespace
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": meta,
                "spec": {
                    "schedulingGates": [{"name": GATE}],
                    "containers": [{"name": "snn", "image": image, "resources": {"limits": dict(limits)}}],
                },
            }
        )
    return out
