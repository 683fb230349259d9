"""`snnrm job plan` end to end: a NIR file written by the nir package, events, manifests the controller accepts,
and bad input refused with one line, a non-zero exit and no files."""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import nir
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from snnrm.cli import main
from snnrm.core.jobs import stage_of

C, H, W = 2, 12, 12


def _csnn(path: Path, *, extra: dict[str, object] | None = None) -> Path:
    rng = np.random.default_rng(0)
    hw = (8, H, W)
    nodes: dict[str, object] = {
        "input": nir.Input(input_type={"input": np.array([C, H, W])}),
        "conv1": nir.Conv2d(
            input_shape=(H, W),
            weight=rng.normal(0, 0.6, (8, C, 3, 3)),
            stride=1,
            padding=1,
            dilation=1,
            groups=1,
            bias=np.zeros(8),
        ),
        "lif1": nir.LIF(tau=np.full(hw, 0.02), r=np.ones(hw), v_leak=np.zeros(hw), v_threshold=np.full(hw, 0.3)),
        "pool1": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([8, 6, 6])}, start_dim=0, end_dim=-1),
        "fc1": nir.Affine(weight=rng.normal(0, 0.5, (64, 288)), bias=np.zeros(64)),
        "lif2": nir.LIF(tau=np.full(64, 0.02), r=np.ones(64), v_leak=np.zeros(64), v_threshold=np.full(64, 0.3)),
        "fc2": nir.Affine(weight=rng.normal(0, 0.5, (10, 64)), bias=np.zeros(10)),
        "lif3": nir.LIF(tau=np.full(10, 0.02), r=np.ones(10), v_leak=np.zeros(10), v_threshold=np.full(10, 0.3)),
        "output": nir.Output(output_type={"output": np.array([10])}),
    }
    edges = [
        ("input", "conv1"),
        ("conv1", "lif1"),
        ("lif1", "pool1"),
        ("pool1", "flat"),
        ("flat", "fc1"),
        ("fc1", "lif2"),
        ("lif2", "fc2"),
        ("fc2", "lif3"),
        ("lif3", "output"),
    ]
    if extra:
        nodes.update(extra)
        edges.append(("lif3", next(iter(extra))))
    nir.write(str(path), nir.NIRGraph(nodes=nodes, edges=edges))
    return path


def _events(path: Path) -> Path:
    rng = np.random.default_rng(1)
    n = 4000
    np.savez(
        path, t=np.sort(rng.random(n) * 0.2), x=rng.integers(0, W, n), y=rng.integers(0, H, n), p=rng.integers(0, C, n)
    )
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["job", "plan", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_plan_writes_gated_stage_pods_the_controller_accepts(tmp_path: Path) -> None:
    graph, events, out = _csnn(tmp_path / "dvs.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out"
    code, output = _run(str(graph), "--stages", "3", "--input", str(events), "-o", str(out))
    assert code == 0, output
    assert "KEPS in" in output
    files = sorted(out.iterdir())
    assert [f.name for f in files] == ["dvs-stage0.yaml", "dvs-stage1.yaml", "dvs-stage2.yaml"]
    refs = [stage_of(yaml.safe_load(f.read_text())) for f in files]
    assert all(r is not None and r.gated and r.stages == 3 for r in refs)
    assert [r.index for r in refs if r] == [0, 1, 2]
    assert refs[0] is not None
    assert refs[0].in_keps == pytest.approx(4000 / 0.2 / 1e3, rel=0.01)  # the input events per second, in KEPS
    assert refs[0].out_keps > 0


def test_json_and_stdout_stream(tmp_path: Path) -> None:
    graph, events = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz")
    code, output = _run(str(graph), "--max-cores-per-stage", "64", "--input", str(events), "--json")
    assert code == 0, output
    import json

    body = json.loads(output)
    assert body["stages"][0]["nodes"][0] == "input"
    assert sum(s["neurons"] for s in body["stages"]) == 8 * H * W + 64 + 10
    result = CliRunner().invoke(main, ["job", "plan", str(graph), "--stages", "2", "--input", str(events)])
    docs = list(yaml.safe_load_all(result.stdout))
    assert [d["metadata"]["labels"]["snnrm.io/stage"] for d in docs] == ["0", "1"]


def test_recorded_activity(tmp_path: Path) -> None:
    graph = _csnn(tmp_path / "g.nir")
    grid = nir.TimeGriddedData(data=np.ones((2, 100, 8), dtype=bool), dt=1e-3)
    data = nir.NIRGraphData(
        nodes={
            "lif1": nir.NIRNodeData(observables={"spikes": grid}),
            "lif2": nir.NIRNodeData(
                observables={
                    "spikes": nir.EventData(
                        idx=np.array([np.arange(50), [*range(30), *[-1] * 20]]),
                        time=np.array([np.linspace(0, 0.09, 50), [*np.linspace(0, 0.09, 30), *[np.inf] * 20]]),
                        n_neurons=64,
                        t_max=0.1,
                    )
                }
            ),
        }
    )
    nir.write_data(str(tmp_path / "rates.h5"), data)
    code, output = _run(str(graph), "--stages", "2", "--recorded", str(tmp_path / "rates.h5"), "--json")
    assert code == 0, output
    import json

    rates = json.loads(output)["node_rates_hz"]
    assert rates["lif1"] == pytest.approx(8 / 1e-3)  # 8 neurons firing every 1 ms step
    assert rates["lif2"] == pytest.approx((50 + 30) / (2 * 0.1))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", "not a readable NIR graph"),
        ("unknown-node", "type AvgPool2d is not supported"),
        ("channels", "Input node 'input' has 288"),
        ("too-many-stages", "more than the graph allows"),
        ("no-activity", "exactly one of --input"),
        ("bad-events", "is outside"),
        ("shapes", "flat.output: [[288]] -> fc1.input: [[300]]"),
        ("too-big", "nodes conv1,lif1 cannot be split and need 5 cores, more than --max-cores-per-stage 1"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, case: str, message: str) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out"
    args = [str(graph), "--stages", "2", "--input", str(events), "-o", str(out)]
    if case == "truncated":
        bad = tmp_path / "bad.nir"
        bad.write_bytes(graph.read_bytes()[:200])
        args[0] = str(bad)
    elif case == "unknown-node":
        pool = nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
        args[0] = str(_csnn(tmp_path / "u.nir", extra={"avg": pool}))
    elif case == "channels":
        np.savez(tmp_path / "s.npz", spikes=np.zeros((10, 17)))
        args[4] = str(tmp_path / "s.npz")
    elif case == "too-many-stages":
        args[2] = "9"
    elif case == "no-activity":
        args = args[:3] + args[5:]
    elif case == "shapes":
        g = nir.read(str(graph))
        g.nodes["fc1"] = nir.Affine(weight=np.zeros((64, 300)), bias=np.zeros(64))
        nir.write(str(tmp_path / "s.nir"), g)
        args[0] = str(tmp_path / "s.nir")
    elif case == "too-big":
        # SpiNNaker 2 maps 256 neurons per core; a Loihi 2 core (7,812) holds the whole test graph
        args[1:3] = ["--max-cores-per-stage", "1", "--preset", "spinnaker2"]
    elif case == "bad-events":
        np.savez(tmp_path / "e.npz", t=np.array([0.0]), x=np.array([W]), y=np.array([0]), p=np.array([0]))
        args[4] = str(tmp_path / "e.npz")
    code, output = _run(*args)
    assert code == 2
    lines = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, output
    assert message in lines[0]
    assert "Traceback" not in output
    assert not out.exists()


def test_the_daemon_never_imports_nir() -> None:
    code = "import sys, snnrm.app, snnrm.cli; assert 'nir' not in sys.modules and 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- Refusals: every bad file or option is one `Error:` line, exit code 2, no numpy warning and no files. ---


def _refused(args: list[str], out: Path) -> str:
    """Run ``snnrm job plan`` expecting a refusal; the whole output must be the one error line."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning would print a second line on a terminal
        code, output = _run(*args)
    assert code == 2, output
    lines = output.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("Error: "), output
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def _graph_with(tmp_path: Path, node: str, **attrs: object) -> Path:
    """The test graph with attributes of one node replaced (set after construction, as a bad exporter might)."""
    g = nir.read(str(_csnn(tmp_path / "base.nir")))
    for key, value in attrs.items():
        setattr(g.nodes[node], key, value)
    path = tmp_path / f"{node}-{'-'.join(attrs)}.nir"
    nir.write(str(path), g)
    return path


def _recorded(tmp_path: Path, spikes: object) -> Path:
    path = tmp_path / "rates.h5"
    nir.write_data(str(path), nir.NIRGraphData(nodes={"lif1": nir.NIRNodeData(observables={"spikes": spikes})}))
    return path


def _npz(tmp_path: Path, **arrays: object) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _xy(**override: object) -> dict[str, object]:
    """Two valid events, with some of t, x, y, p replaced."""
    return {"t": np.array([0.0, 0.01]), "x": np.array([0, 1]), "y": np.array([0, 1]), "p": np.array([0, 1])} | override


INPUT_CASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "empty": ("the file is empty, not a readable .npz file", lambda d: _touch(d / "e.npz", b"")),
    "truncated": (
        "not a readable .npz file (BadZipFile",
        lambda d: _touch(d / "t.npz", _events(d / "ev2.npz").read_bytes()[:300]),
    ),
    "object-array": (
        "array 't' cannot be read (Object arrays cannot be loaded",
        lambda d: _npz(d, **_xy(t=np.array([None, 1], dtype=object))),
    ),
    "string-spikes": ("array 'spikes' must hold real numbers", lambda d: _npz(d, spikes=np.full((3, C * H * W), "a"))),
    "npy": ("a single .npy array, not an .npz archive", lambda d: _npy(d / "one.npz")),
    "huge-spikes": ("'spikes' counts are too large", lambda d: _npz(d, spikes=np.full((3, C * H * W), 1e308))),
    "negative-time": (
        "event 1 has time t=-1.0; times must be finite and >= 0",
        lambda d: _npz(d, **_xy(t=np.array([0.0, -1.0]))),
    ),
    "nan-time": ("event 0 has time t=nan", lambda d: _npz(d, **_xy(t=np.array([np.nan, 0.0])))),
    "2-d": ("must be 1-D arrays", lambda d: _npz(d, **{k: np.zeros((2, 2), dtype=int) for k in "txyp"})),
    "unequal": ("must be non-empty and equally long", lambda d: _npz(d, **_xy(x=np.array([0, 1, 2])))),
    "fractional-x": (
        "'x' must hold whole numbers (an integer array, or floats without a fraction)",
        lambda d: _npz(d, **_xy(x=np.array([0.0, 1.5]))),
    ),
    "string-y": ("array 'y' must hold real numbers", lambda d: _npz(d, **_xy(y=np.array(["0", "1"])))),
}


def _touch(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _npy(path: Path) -> Path:
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    return path


def _unknown_type(tmp_path: Path) -> Path:
    """A node whose type nir itself does not know (a newer exporter's): rewritten in the HDF5 file."""
    import h5py  # type: ignore[import-untyped]

    path = _csnn(tmp_path / "unknown.nir")
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc2/type"]
        f["node/nodes/fc2"].create_dataset("type", data="Mystery", dtype=h5py.string_dtype())
    return path


GRAPH_CASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "unknown-type": ("node 'fc2': type Mystery is not supported", _unknown_type),
    "groups-0": (
        "node 'conv1' (Conv2d): groups must be a whole number >= 1, got 0",
        lambda d: _graph_with(d, "conv1", groups=0),
    ),
    "groups-not-dividing": (
        "groups 3 does not divide the 8 output channels",
        lambda d: _graph_with(d, "conv1", groups=3),
    ),
    "conv-stride-0": (
        "node 'conv1' (Conv2d): stride must be one or two whole numbers >= 1",
        lambda d: _graph_with(d, "conv1", stride=0),
    ),
    "conv-dilation-0": (
        "dilation must be one or two whole numbers >= 1",
        lambda d: _graph_with(d, "conv1", dilation=np.array([1, 0])),
    ),
    "conv-padding": (
        "padding (100, 100) is larger than the kernel (3, 3)",
        lambda d: _graph_with(d, "conv1", padding=100),
    ),
    "pool-stride-0": (
        "node 'pool1' (SumPool2d): stride must be",
        lambda d: _graph_with(d, "pool1", stride=np.array([0, 0])),
    ),
    "pool-kernel-0": (
        "node 'pool1' (SumPool2d): kernel_size must be",
        lambda d: _graph_with(d, "pool1", kernel_size=np.array([0, 2])),
    ),
    "nan-weight": (
        "node 'fc1' (Affine): weight holds NaN or infinite values",
        lambda d: _graph_with(d, "fc1", weight=np.full((64, 288), np.nan)),
    ),
    "inf-bias": (
        "node 'fc2' (Affine): bias holds NaN or infinite values",
        lambda d: _graph_with(d, "fc2", bias=np.full(10, np.inf)),
    ),
    "tau-0": ("node 'lif2' (LIF): time constant tau must be > 0 s", lambda d: _graph_with(d, "lif2", tau=np.zeros(64))),
    "negative-tau": (
        "node 'lif1' (LIF): time constant tau must be > 0 s, got -0.02",
        lambda d: _graph_with(d, "lif1", tau=np.full((8, H, W), -0.02)),
    ),
    "huge-weight": (
        "node 'fc1' (Affine): values overflow to inf or NaN",
        lambda d: _graph_with(d, "fc1", weight=np.full((64, 288), 1e308)),
    ),
}

RECORDED_CASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "not-h5": ("not NIR graph data (.h5) (OSError", lambda d: _touch(d / "r.h5", b"not hdf5")),
    "bytes-grid": (
        "node 'lif1': 'spikes' data must hold numbers",
        lambda d: _recorded(d, nir.TimeGriddedData(data=np.full((1, 2, 8), b"a"), dt=1e-3)),
    ),
    "bytes-idx": (
        "node 'lif1': 'spikes' idx must hold integer neuron indices",
        lambda d: _recorded(
            d, nir.EventData(idx=np.array([[b"a", b"b"]]), time=np.array([[0.0, 0.1]]), n_neurons=8, t_max=0.2)
        ),
    ),
    "huge-grid": (
        "the spike counts are too large",
        lambda d: _recorded(d, nir.TimeGriddedData(data=np.full((2, 100, 8), 1e308), dt=1e-3)),
    ),
    "t_max-inf": (
        "t_max must be a finite number of seconds > 0, got inf",
        lambda d: _recorded(
            d, nir.EventData(idx=np.array([[0, 1]]), time=np.array([[0.0, 0.1]]), n_neurons=8, t_max=np.inf)
        ),
    ),
}


@pytest.mark.parametrize(
    ("flag", "case"),
    [
        *(("--input", c) for c in INPUT_CASES),
        *(("graph", c) for c in GRAPH_CASES),
        *(("--recorded", c) for c in RECORDED_CASES),
    ],
)
def test_bad_files_are_refused_in_one_line_naming_the_file(tmp_path: Path, flag: str, case: str) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out"
    cases = {"--input": INPUT_CASES, "graph": GRAPH_CASES, "--recorded": RECORDED_CASES}[flag]
    message, make = cases[case]
    bad = make(tmp_path)
    if flag == "graph":
        args, named = [str(bad), "--stages", "2", "--input", str(events)], f"Error: {bad}: "
    else:
        args, named = [str(graph), "--stages", "2", flag, str(bad)], f"Error: {flag} {bad}: "
    line = _refused([*args, "-o", str(out)], out)
    assert line.startswith(named), line
    assert message in line


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--namespace", "Bad Namespace!"], "--namespace 'Bad Namespace!': not a Kubernetes namespace"),
        (["--namespace", "a" * 64], "at most 63 characters"),
        (["--namespace", "-lead"], "not a Kubernetes namespace"),
        (["--image", ""], "--image '': not a container image reference"),
        (["--image", "bad image"], "not a container image reference"),
        (["--scheduler-name", "Snnrm_Scheduler"], "--scheduler-name 'Snnrm_Scheduler': not a scheduler profile name"),
        (["--scheduler-name", ""], "not a scheduler profile name"),
        (["--scheduler-name", "a" * 254], "at most 253 characters"),
        (["--max-core-load", "0"], "--max-core-load must be in (0, 1], got 0.0"),
        (["--max-core-load", "1.5"], "--max-core-load must be in (0, 1]"),
        (["--max-core-load", "nan"], "--max-core-load must be in (0, 1]"),
    ],
)
def test_bad_options_are_refused_before_any_work(tmp_path: Path, option: list[str], message: str) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out"
    line = _refused([str(graph), "--stages", "2", "--input", str(events), *option, "-o", str(out)], out)
    assert message in line


def test_a_stage_gets_the_cores_its_events_need_and_requests_their_throughput(tmp_path: Path) -> None:
    import json

    from snnrm.job.plan import BLOCK_KEPS, MAX_CORE_LOAD

    graph, events = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz")
    code, output = _run(str(graph), "--stages", "2", "--input", str(events), "--json")
    assert code == 0, output
    by_neurons = json.loads(output)["stages"]
    # A Loihi 2 core takes 2 MEPS: at 0.1 % of that (2 KEPS a core) the stages' events bind.
    code, output = _run(str(graph), "--stages", "2", "--input", str(events), "--max-core-load", "0.001", "--json")
    assert code == 0, output
    by_events = json.loads(output)["stages"]
    for a, b in zip(by_neurons, by_events, strict=True):
        keps = b["in_keps"] + b["internal_keps"]
        assert b["cores"] >= a["cores"]
        if b["cores"] > a["cores"]:
            assert b["cores_bound_by"] == "events"
            assert b["cores"] == math.ceil(keps / 2.0 - 1e-9)
    assert by_events[0]["cores_bound_by"] == "events"
    out = tmp_path / "out"
    assert _run(str(graph), "--stages", "2", "--input", str(events), "--max-core-load", "0.001", "-o", str(out))[0] == 0
    pod = yaml.safe_load((out / "g-stage0.yaml").read_text())
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits["snnrm.io/neuron-core"] == by_events[0]["cores"]
    keps0 = by_events[0]["in_keps"] + by_events[0]["internal_keps"]
    assert limits["snnrm.io/event-throughput"] == max(1, math.ceil(keps0 / BLOCK_KEPS))
    # The CLI's default is the planner's (written out in the CLI so that --help does not load numpy).
    from snnrm.job.cli import plan

    default = next(p.default for p in plan.params if p.name == "max_core_load")
    assert default == MAX_CORE_LOAD


def test_whole_number_float_coordinates_are_accepted_as_integers(tmp_path: Path) -> None:
    graph = _csnn(tmp_path / "g.nir")
    with np.load(_events(tmp_path / "ev.npz")) as ints:
        floats = _npz(tmp_path, **{k: ints[k].astype(np.float64) for k in "txyp"})
    runs = []
    for path in (tmp_path / "ev.npz", floats):
        code, output = _run(str(graph), "--stages", "2", "--input", str(path), "--json")
        assert code == 0, output
        runs.append(json.loads(output)["node_rates_hz"])
    assert runs[0] == runs[1]


def test_valid_recordings_and_namespaces_still_plan(tmp_path: Path) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out"
    code, output = _run(
        str(graph),
        "--stages",
        "2",
        "--input",
        str(events),
        "--namespace",
        "snn-jobs",
        "--image",
        "localhost:5000/snn/stage:v1.2",
        "-o",
        str(out),
    )
    assert code == 0, output
    doc = yaml.safe_load((out / "g-stage0.yaml").read_text())
    assert doc["metadata"]["namespace"] == "snn-jobs"
    assert doc["spec"]["containers"][0]["image"] == "localhost:5000/snn/stage:v1.2"


def test_scheduler_profile_and_live_remap_reach_every_stage_pod(tmp_path: Path) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out"
    args = [str(graph), "--stages", "2", "--input", str(events), "-o", str(out)]
    code, output = _run(*args, "--scheduler-name", "snnrm-scheduler", "--live-remap")
    assert code == 0, output
    docs = [yaml.safe_load(f.read_text()) for f in sorted(out.iterdir())]
    assert [d["spec"]["schedulerName"] for d in docs] == ["snnrm-scheduler"] * 2
    refs = [stage_of(d) for d in docs]
    assert all(r is not None and r.live_remap and r.gated for r in refs)  # what the node's reallocator reads
    plain = tmp_path / "plain"
    code, output = _run(*args[:-1], str(plain))
    assert code == 0, output
    doc = yaml.safe_load((plain / "g-stage0.yaml").read_text())
    assert "schedulerName" not in doc["spec"]  # the cluster's default scheduler unless asked
    ref = stage_of(doc)
    assert ref is not None
    assert not ref.live_remap  # a runtime opts in; the plan does not assume it


# --- The output directory: checked and written before anything is printed; all files or none. ---


@pytest.mark.parametrize(
    ("layout", "message"),
    [("below-a-file", "which exists and is not a directory"), ("is-a-file", "exists and is not a directory")],
)
def test_output_directory_that_cannot_exist_is_refused_first(tmp_path: Path, layout: str, message: str) -> None:
    graph, events = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub" if layout == "below-a-file" else tmp_path / "afile"
    code, output = _run(str(graph), "--stages", "2", "--input", str(events), "-o", str(out))
    assert code == 2
    assert len(output.splitlines()) == 1, output
    assert output.startswith(f"Error: -o {out}: ")
    assert message in output
    assert (tmp_path / "afile").read_text() == "x"


def test_unwritable_output_directory_is_refused_before_printing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "ro" / "out"
    (tmp_path / "ro").mkdir()
    real_access = os.access
    # Tests may run as root, whom file modes do not stop: stand in for a read-only directory.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    line = _refused([str(graph), "--stages", "2", "--input", str(events), "-o", str(out)], out)
    assert line.startswith(f"Error: -o {out}: {tmp_path / 'ro'} ")


def test_failed_write_leaves_no_files_and_prints_only_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "new" / "out"

    def read_only(src: object, dst: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    line = _refused([str(graph), "--stages", "2", "--input", str(events), "-o", str(out)], out)
    assert line == f"Error: -o {out}: cannot write the manifests there (Read-only file system)"
    assert not (tmp_path / "new").exists()  # the directories this run made are gone again


def test_output_directory_on_its_own_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o an existing mount point: a rename from outside it fails with EXDEV, so files must be staged inside it."""
    graph, events, out = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "volume"
    out.mkdir()
    real_replace = os.replace

    def mount_point(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if (Path(src).parent == out) != (Path(dst).parent == out):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", mount_point)
    code, output = _run(str(graph), "--stages", "2", "--input", str(events), "-o", str(out))
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["g-stage0.yaml", "g-stage1.yaml"]  # no temporary files left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.npz", "g.nir", "volume"]


def test_a_recording_too_long_to_hold_in_memory_is_refused(tmp_path: Path) -> None:
    """1,000,000 steps of a small sensor passed the step limit and built a frame array of hundreds of GB."""
    graph, events, out = _csnn(tmp_path / "g.nir"), tmp_path / "long.npz", tmp_path / "out"
    np.savez(events, t=np.array([0.0, 999.0]), x=np.array([0, 1]), y=np.array([0, 1]), p=np.array([0, 0]))
    line = _refused([str(graph), "--stages", "2", "--input", str(events), "-o", str(out)], out)
    assert "shorten the recording or raise --dt" in line
    assert "more than 100,000,000" in line


def test_a_directory_given_for_a_file_is_one_line(tmp_path: Path) -> None:
    """click's own check printed its usage text around the error: three lines, not one."""
    graph, events, out, folder = _csnn(tmp_path / "g.nir"), _events(tmp_path / "ev.npz"), tmp_path / "out", tmp_path
    line = _refused([str(folder), "--stages", "2", "--input", str(events), "-o", str(out)], out)
    assert line == f"Error: {folder}: is a directory, not a readable NIR graph"
    line = _refused([str(graph), "--stages", "2", "--input", str(folder), "-o", str(out)], out)
    assert line.startswith(f"Error: --input {folder}: is a directory")
