"""`snnrm job plan` end to end: a NIR file written by the nir package, events, manifests the controller accepts,
and bad input refused with one line, a non-zero exit and no files."""

from __future__ import annotations

import subprocess
import sys
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
