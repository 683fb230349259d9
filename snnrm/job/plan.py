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
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from snnrm.core.jobs import GATE, INPUT_RATE, JOB, LIVE_REMAP, SPIKE_RATE, STAGE, STAGES
from snnrm.core.split import CoreBudget, GraphNode, SplitError, Stage, split
from snnrm.job.interpret import SPIKING, SUPPORTED, GraphError, check_node, run

if TYPE_CHECKING:
    from sim_hw.spec import MachineSpec

NEURON_KINDS = frozenset({"LIF", "CubaLIF", "IF", "LI", "CubaLI", "I"})
BLOCK_KEPS = 1000.0
"""KEPS behind one snnrm.io/event-throughput device (the daemon's default ``--block-keps``)."""
MAX_CORE_LOAD = 0.7
"""Share of a core's event rate a stage is planned to use at its measured mean rate (``--max-core-load``):
headroom for rate variation (the simulator's per-step input noise, 10 % CV, stays under the rate at 3 sigma:
0.7 x 1.3 = 0.91). Assumed; a stage with few neurons and many spikes gets the cores its events need."""
MAX_INPUT_VALUES = 100_000_000
"""Most input values (steps x polarity x height x width) ``--input`` may expand to: 800 MB as float64. A 6 s
DVS128 recording at 1 ms steps is 196,608,000 and needs a coarser ``--dt``; an unbounded one exhausted memory."""


class PlanError(ValueError):
    """A bad graph, activity file or option: one line naming the node or field."""


@dataclass(frozen=True, slots=True)
class Graph:
    """A NIR graph as the planner needs it: the nir node objects, edges and the splitter's view of each node."""

    nodes: dict[str, Any]
    edges: list[tuple[str, str]]
    view: list[GraphNode]


_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # h5py's corrupt-file errors, permissions, I/O
    EOFError,  # numpy on an empty or cut-off file
    ValueError,  # numpy's object arrays, bad headers; nir's type check
    LookupError,  # a group, dataset or attribute the file lacks
    TypeError,
    ArithmeticError,
    AssertionError,  # nir asserts parameter shapes while building nodes
    zipfile.BadZipFile,
    zlib.error,
)
"""What reading and interpreting one input file may raise; :func:`reading` turns each into a :class:`PlanError`."""


@contextmanager
def reading(label: str, path: Path, what: str) -> Iterator[None]:
    """The boundary around loading one input file: any failure becomes one :class:`PlanError` line.

    ``label`` starts the message (``--input ev.npz``), ``what`` says what the file should have been (``a readable
    .npz file``). Checks inside raise :class:`PlanError` or :class:`GraphError` with their own message.
    """
    try:
        yield
    except PlanError:
        raise
    except GraphError as e:
        raise PlanError(f"{label}: {e}") from None
    except FileNotFoundError:
        raise PlanError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise PlanError(f"{label}: is a directory, not {what}") from None
    except PermissionError:
        raise PlanError(f"{label}: permission denied") from None
    except _READ_ERRORS as e:
        if isinstance(e, EOFError | OSError) and path.is_file() and path.stat().st_size == 0:
            raise PlanError(f"{label}: the file is empty, not {what}") from None
        detail = " ".join(str(e).split())[:120]
        raise PlanError(f"{label}: not {what} ({type(e).__name__}: {detail})") from None


def _base(name: str) -> str:
    return name.split(".", 1)[0]  # NIR edges may name a port: "node.output"


def load_graph(path: Path) -> Graph:
    """Read and check a ``.nir`` file; nested subgraphs are refused (export a flat graph).

    The file's node dictionaries are checked (type supported, parameters finite, geometry sane) before nir builds
    node objects from them, so a bad parameter is named rather than failing inside nir with a division by zero.
    """
    import h5py  # type: ignore[import-untyped]  # lazily: only `snnrm job` needs it; ships no types
    import nir
    from nir.serialization import hdf2dict

    with reading(str(path), path, "a readable NIR graph"):
        with h5py.File(path, "r") as f:
            raw = hdf2dict(f["node"])
        raw_nodes = raw.get("nodes")
        if not isinstance(raw_nodes, dict) or "edges" not in raw:
            raise PlanError(f"{path}: not a NIR graph (no 'nodes' and 'edges' at its top)")
        for name, fields in raw_nodes.items():
            kind = fields.get("type") if isinstance(fields, dict) else None
            if kind == "NIRGraph":
                raise PlanError(f"{path}: node {name!r} is a nested subgraph; export the network as one flat NIR graph")
            if kind not in SUPPORTED:
                raise PlanError(
                    f"{path}: node {name!r}: type {kind} is not supported (supported: {', '.join(SUPPORTED)})"
                )
            check_node(name, kind, fields)
        raw["type_check"] = True  # as nir.read does
        # nir computes output shapes while building nodes; the values were checked above, so numpy's warnings
        # about them would only repeat a refusal already made (or be noise).
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = nir.dict2NIRNode(raw)
        if not isinstance(g, nir.NIRGraph):
            raise PlanError(f"{path}: holds a single {type(g).__name__} node, not a NIR graph")
        nodes = dict(g.nodes)
        for name, node in nodes.items():
            check_node(name, type(node).__name__, vars(node))
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


def budget_for(preset: str, *, max_core_load: float = MAX_CORE_LOAD) -> CoreBudget:
    """:func:`budget_of` the sim_hw preset named ``preset`` (its numbers are cited in its YAML)."""
    from sim_hw.spec import load_preset

    if not (math.isfinite(max_core_load) and 0 < max_core_load <= 1):
        raise PlanError(f"--max-core-load must be in (0, 1], got {max_core_load}")
    try:
        spec = load_preset(preset)
    except (KeyError, FileNotFoundError, ValueError):
        raise PlanError(f"--preset {preset!r}: unknown (loihi2, spinnaker2, akida)") from None
    return budget_of(spec, max_core_load=max_core_load)


def budget_of(spec: MachineSpec, *, max_core_load: float = MAX_CORE_LOAD) -> CoreBudget:
    """Neurons and synapses per core, cores per chip, and the events per second a core is planned to take (its
    event rate x ``max_core_load``) of a machine."""
    return CoreBudget(
        neurons_per_core=spec.neurons_per_core,
        synapses_per_core=spec.synapses_per_core,
        cores_per_chip=spec.cores_per_chip,
        events_per_core=spec.core_service_rate * max_core_load,
    )


def event_throughput_devices(events_keps: float) -> int:
    """``snnrm.io/event-throughput`` devices a stage requests for the events it processes (in and inside, in
    KEPS): blocks of :data:`BLOCK_KEPS`, at least one (every stage counts against the node's event capacity)."""
    return max(1, math.ceil(events_keps / BLOCK_KEPS - 1e-9))


def _input_shape(graph: Graph) -> tuple[str, tuple[int, ...]]:
    inputs = [n for n, node in graph.nodes.items() if type(node).__name__ == "Input"]
    if len(inputs) != 1:
        raise PlanError(f"--input needs a graph with exactly one Input node, this one has {len(inputs)}")
    name = inputs[0]
    raw = np.asarray((graph.nodes[name].input_type or {}).get("input", []))
    ok = raw.ndim == 1 and raw.size >= 1 and raw.dtype.kind in "biuf"
    if ok:
        with np.errstate(invalid="ignore"):
            ok = bool(np.isfinite(raw).all() and (raw == np.rint(raw)).all() and (raw >= 1).all())
    if not ok:
        raise PlanError(f"Input node {name!r}: its shape {raw.tolist()} is not a list of whole numbers >= 1")
    return name, tuple(int(v) for v in raw.tolist())


def _npz_array(data: Any, key: str, label: str) -> np.ndarray:
    """One array of an .npz archive, refused unless it holds real numbers (no strings, objects or records)."""
    try:
        a = np.asarray(data[key])
    except ValueError as e:  # object arrays (allow_pickle=False), a malformed header
        raise PlanError(f"{label}: array {key!r} cannot be read ({' '.join(str(e).split())[:120]})") from None
    if a.dtype.kind not in "biuf":
        raise PlanError(f"{label}: array {key!r} must hold real numbers, got dtype {a.dtype}")
    return a


def input_frames(path: Path, graph: Graph, dt: float) -> dict[str, np.ndarray]:
    """``--input EVENTS.npz``: ``spikes`` (T, channels) per step, or ``t`` (seconds), ``x``, ``y``, ``p`` events.

    Every failure to read or interpret the file is one :class:`PlanError` naming it (:func:`reading`).
    """
    name, shape = _input_shape(graph)
    label = f"--input {path}"
    # The file is opened here, not by np.load, which leaks its handle when the zip directory is unreadable.
    with reading(label, path, "a readable .npz file"), path.open("rb") as fh:
        data = np.load(fh, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise PlanError(f"{label}: a single .npy array, not an .npz archive of named arrays")
        with data:
            keys = set(data.files)
            if "spikes" in keys:
                return {name: _spike_frames(_npz_array(data, "spikes", label), shape, label, name)}
            if {"t", "x", "y", "p"} <= keys:
                t, x, y, p = (_npz_array(data, k, label) for k in ("t", "x", "y", "p"))
                return {name: _bin_events(t, x, y, p, shape, dt, label, name)}
    raise PlanError(f"{label}: expected an array 'spikes' (time, channels) or arrays 't', 'x', 'y', 'p'")


def _spike_frames(spikes: np.ndarray, shape: tuple[int, ...], label: str, name: str) -> np.ndarray:
    per_step = int(np.prod(spikes.shape[1:])) if spikes.ndim >= 2 else 0
    if spikes.ndim < 2 or per_step != int(np.prod(shape)):
        raise PlanError(
            f"{label}: 'spikes' has {per_step} channels per step, Input node {name!r} has {int(np.prod(shape))} "
            f"{list(shape)}"
        )
    spikes = spikes.astype(np.float64)
    if not np.isfinite(spikes).all() or (spikes < 0).any():
        raise PlanError(f"{label}: 'spikes' must hold finite counts >= 0")
    with np.errstate(over="ignore"):  # checked just below
        total = float(spikes.sum())
    if not math.isfinite(total):
        raise PlanError(f"{label}: 'spikes' counts are too large (their sum overflows)")
    return spikes.reshape((len(spikes), *shape))


def _integral(a: np.ndarray) -> bool:
    if a.dtype.kind in "biu":
        return True
    with np.errstate(invalid="ignore"):
        return bool((np.isfinite(a) & (a == np.rint(a))).all())


def _bin_events(
    t: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    shape: tuple[int, ...],
    dt: float,
    label: str,
    name: str,
) -> np.ndarray:
    if len(shape) != 3:
        raise PlanError(f"{label}: events need an Input of shape (polarity, height, width), {name!r} is {shape}")
    if any(a.ndim != 1 for a in (t, x, y, p)):
        dims = ", ".join(f"{k} {a.shape}" for k, a in zip("txyp", (t, x, y, p), strict=True))
        raise PlanError(f"{label}: 't', 'x', 'y', 'p' must be 1-D arrays, got {dims}")
    if not (len(t) == len(x) == len(y) == len(p)) or len(t) == 0:
        raise PlanError(f"{label}: 't', 'x', 'y', 'p' must be non-empty and equally long")
    for key, a in (("x", x), ("y", y), ("p", p)):
        if not _integral(a):
            i = int(np.flatnonzero(~np.isfinite(a) | (a != np.rint(a)))[0]) if a.dtype.kind == "f" else 0
            raise PlanError(
                f"{label}: '{key}' must hold whole numbers (an integer array, or floats without a fraction), "
                f"event {i} has {key}={a[i]}"
            )
    t = t.astype(np.float64)
    bad_t = ~np.isfinite(t) | (t < 0)
    if bad_t.any():
        i = int(np.flatnonzero(bad_t)[0])
        raise PlanError(f"{label}: event {i} has time t={t[i]}; times must be finite and >= 0 seconds")
    c, h, w = shape
    bad = (x < 0) | (x >= w) | (y < 0) | (y >= h) | (p < 0) | (p >= c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PlanError(
            f"{label}: event {i} (x={x[i]}, y={y[i]}, p={p[i]}) is outside the Input's (polarity, height, width) "
            f"{shape}"
        )
    steps = math.floor(float(t.max()) / dt) + 1
    if steps > 1_000_000:
        raise PlanError(f"{label}: {steps} steps of {dt} s; shorten the recording or raise --dt")
    if steps * c * h * w > MAX_INPUT_VALUES:  # the frames, and each layer's activity, are held whole in memory
        raise PlanError(
            f"{label}: {steps} steps x {c * h * w} inputs is {steps * c * h * w:,} values, more than "
            f"{MAX_INPUT_VALUES:,}; shorten the recording or raise --dt"
        )
    frames = np.zeros((steps, c, h, w))
    np.add.at(frames, ((t / dt).astype(np.int64), p.astype(np.int64), y.astype(np.int64), x.astype(np.int64)), 1.0)
    return frames


def recorded_rates(path: Path, graph: Graph) -> dict[str, float]:
    """``--recorded``: spikes per second per node from ``nir.NIRGraphData`` spike observables.

    Every failure to read or interpret the file is one :class:`PlanError` naming it (:func:`reading`).
    """
    import nir

    label = f"--recorded {path}"
    with reading(label, path, "NIR graph data (.h5)"):
        data = nir.read_data(str(path))
        rates: dict[str, float] = {}
        for name, node_data in data.nodes.items():
            if name not in graph.nodes:
                raise PlanError(f"{label}: data for node {name!r}, which the graph does not have")
            obs = getattr(node_data, "observables", {}).get("spikes")
            if obs is None:
                continue
            rates[name] = _recorded_rate(nir, obs, f"{label}: node {name!r}")
    if not rates:
        raise PlanError(f"{label}: no node has a 'spikes' observable")
    return rates


def _recorded_rate(nir: Any, obs: Any, where: str) -> float:
    # Both layouts are per sample: TimeGriddedData (samples, steps, neurons); EventData idx/time (samples,
    # events) padded with -1 / inf. The rate is the mean over samples.
    if isinstance(obs, nir.TimeGriddedData):
        arr = np.asarray(obs.data)
        if arr.dtype.kind not in "biuf":
            raise PlanError(f"{where}: 'spikes' data must hold numbers, got dtype {arr.dtype}")
        if arr.ndim < 2:
            raise PlanError(f"{where}: 'spikes' data must be (samples, steps, ...), got shape {arr.shape}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all() or (arr < 0).any():
            raise PlanError(f"{where}: 'spikes' data must hold finite counts >= 0")
        dt = float(obs.dt)
        if not (math.isfinite(dt) and dt > 0):
            raise PlanError(f"{where}: dt must be a finite number of seconds > 0, got {dt}")
        with np.errstate(over="ignore"):  # checked just below
            total = float(arr.sum())
        seconds = arr.shape[0] * arr.shape[1] * dt
    elif isinstance(obs, nir.EventData):
        idx = np.atleast_2d(np.asarray(obs.idx))
        if idx.dtype.kind not in "iu":
            raise PlanError(f"{where}: 'spikes' idx must hold integer neuron indices, got dtype {idx.dtype}")
        t_max = float(obs.t_max)
        if not (math.isfinite(t_max) and t_max > 0):
            raise PlanError(f"{where}: t_max must be a finite number of seconds > 0, got {t_max}")
        total = float(np.count_nonzero(idx >= 0))
        seconds = idx.shape[0] * t_max
    else:
        raise PlanError(f"{where}: 'spikes' is a {type(obs).__name__}, not TimeGriddedData or EventData")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise PlanError(f"{where}: the recording has no duration ({seconds} s)")
    if not math.isfinite(total):
        raise PlanError(f"{where}: the spike counts are too large (their sum overflows)")
    return float(total / seconds)


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
    max_core_load: float = MAX_CORE_LOAD,
) -> JobPlan:
    """Everything ``snnrm job plan`` computes; raises :class:`PlanError` with one line on bad input."""
    if (input_path is None) == (recorded_path is None):
        raise PlanError("give exactly one of --input EVENTS.npz (run the graph) and --recorded RATES.h5")
    budget = budget_for(preset, max_core_load=max_core_load)
    graph = load_graph(graph_path)
    if input_path is not None:
        frames = input_frames(input_path, graph, dt)
        try:
            result = run(graph.nodes, graph.edges, frames, dt=dt)
        except GraphError as e:
            raise PlanError(f"{graph_path}: {e}") from None
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
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"  # [registry[:port]/]path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # :tag
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"  # @digest
)
"""A container image reference, after the grammar of github.com/distribution/reference."""


def check_namespace(raw: str | None) -> None:
    """Refuse a ``--namespace`` that is not a DNS-1123 label (what Kubernetes requires of a namespace)."""
    if raw is not None and not _LABEL.fullmatch(raw):
        raise PlanError(
            f"--namespace {raw!r}: not a Kubernetes namespace (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )


def check_scheduler_name(raw: str | None) -> None:
    """Refuse a ``--scheduler-name`` the apiserver would refuse (a pod's schedulerName is a DNS-1123 subdomain)."""
    if raw is not None and not _SUBDOMAIN.fullmatch(raw):
        raise PlanError(
            f"--scheduler-name {raw!r}: not a scheduler profile name (a DNS-1123 subdomain: lowercase letters, "
            "digits, '-' and '.', at most 253 characters)"
        )


def check_image(raw: str) -> None:
    """Refuse an ``--image`` that is not a container image reference (``[registry/]name[:tag][@digest]``)."""
    if not _IMAGE.fullmatch(raw):
        raise PlanError(f"--image {raw!r}: not a container image reference ([registry[:port]/]name[:tag][@digest])")


def job_name(raw: str) -> str:
    """A DNS-1123 label from a file stem or a user's name."""
    name = _DNS.sub("-", raw.lower()).strip("-")[:40].strip("-")
    if not name:
        raise PlanError(f"--job {raw!r}: cannot make a Kubernetes name of it")
    return name


def manifests(
    plan: JobPlan,
    *,
    image: str,
    namespace: str | None,
    scheduler_name: str | None = None,
    live_remap: bool = False,
) -> list[dict[str, Any]]:
    """One gated stage Pod per stage, as docs/split-learning.md's job contract describes.

    ``scheduler_name``: the scheduler profile whose extenders list snnrm (``snnrm-scheduler`` in the chart), when
    the cluster keeps its default scheduler for other pods. ``live_remap``: the stages' runtime follows a rewritten
    allocation file, so a node may move a degraded stage without evicting it (``snnrm.io/live-remap: "true"``).

    Raises :class:`PlanError` for a namespace, image or scheduler name Kubernetes would not accept.
    """
    check_namespace(namespace)
    check_image(image)
    check_scheduler_name(scheduler_name)
    out = []
    n = len(plan.stages)
    for st in plan.stages:
        annotations = {STAGES: str(n), SPIKE_RATE: f"{st.out_keps:.3f}"}
        if st.index == 0 and st.in_keps > 0:
            annotations[INPUT_RATE] = f"{st.in_keps:.3f}"
        if live_remap:
            annotations[LIVE_REMAP] = "true"
        limits: Mapping[str, int] = {
            "snnrm.io/neuron-core": st.cores,
            "snnrm.io/event-throughput": event_throughput_devices(st.in_keps + st.internal_keps),
        }
        meta: dict[str, Any] = {
            "name": f"{plan.job}-stage{st.index}",
            "labels": {JOB: plan.job, STAGE: str(st.index)},
            "annotations": annotations,
        }
        if namespace:
            meta["namespace"] = namespace
        spec: dict[str, Any] = {"schedulerName": scheduler_name} if scheduler_name else {}
        spec["schedulingGates"] = [{"name": GATE}]
        spec["containers"] = [{"name": "snn", "image": image, "resources": {"limits": dict(limits)}}]
        out.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    return out
