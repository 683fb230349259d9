"""The reference workloads as NIR graphs: published shapes, deterministic generation, and the checked-in
measurements (sim_hw/nir/workloads.json) equal a fresh run of the interpreter and planner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nir
import numpy as np
import pytest
from click.testing import CliRunner

from sim_hw import networks
from snnrm.cli import main
from snnrm.job import workloads


def _neurons(graph: nir.NIRGraph) -> dict[str, tuple[int, ...]]:
    return {
        n: tuple(np.asarray(node.v_leak).shape)
        for n, node in graph.nodes.items()
        if type(node).__name__ in ("LIF", "CubaLIF", "CubaLI")
    }


def test_dvs_gesture_has_slayers_published_shapes() -> None:
    """SLAYER IBM Gesture net: 128x128x2 -> pool 4 -> 16c5 -> pool 2 -> 32c3 -> pool 2 -> 512 -> 11."""
    g = workloads.dvs_gesture_graph()
    assert list(np.asarray(g.nodes["input"].input_type["input"])) == [2, 128, 128]
    assert list(np.asarray(g.nodes["pool1"].kernel_size)) == [4, 4]
    assert g.nodes["conv1"].weight.shape == (16, 2, 5, 5)
    assert g.nodes["conv2"].weight.shape == (32, 16, 3, 3)
    assert g.nodes["fc1"].weight.shape == (512, 8 * 8 * 32)
    assert g.nodes["fc2"].weight.shape == (11, 512)
    assert list(_neurons(g).values()) == [
        (2, 32, 32),
        (16, 32, 32),
        (16, 16, 16),
        (32, 16, 16),
        (32, 8, 8),
        (512,),
        (11,),
    ]


def test_nmnist_has_slayers_published_shapes() -> None:
    """SLAYER N-MNIST CNN: 34x34x2 -> 16c5 -> pool 2 -> 32c3 -> pool 2 -> 64c3 -> 10."""
    g = workloads.nmnist_graph()
    assert list(np.asarray(g.nodes["input"].input_type["input"])) == [2, 34, 34]
    assert g.nodes["conv1"].weight.shape == (16, 2, 5, 5)
    assert g.nodes["conv2"].weight.shape == (32, 16, 3, 3)
    assert g.nodes["conv3"].weight.shape == (64, 32, 3, 3)
    assert g.nodes["fc"].weight.shape == (10, 8 * 8 * 64)
    assert list(_neurons(g).values()) == [(16, 32, 32), (16, 16, 16), (32, 16, 16), (32, 8, 8), (64, 8, 8), (10,)]


def test_shd_is_700_channels_200_recurrent_20_classes() -> None:
    g = workloads.shd_graph()
    assert list(np.asarray(g.nodes["input"].input_type["input"])) == [700]
    assert g.nodes["fc_in"].weight.shape == (200, 700)
    assert g.nodes["recurrent"].weight.shape == (200, 200)
    assert ("hidden_lif", "recurrent") in g.edges
    assert ("recurrent", "hidden_lif") in g.edges
    assert _neurons(g) == {"hidden_lif": (200,), "readout": (20,)}


def test_graphs_and_events_are_deterministic_and_in_range() -> None:
    for w in workloads.WORKLOADS.values():
        a, b = w.build(), w.build()
        for name, node in a.nodes.items():
            if hasattr(node, "weight"):
                np.testing.assert_array_equal(node.weight, b.nodes[name].weight)
        s0, s0_again, s1 = w.sample(0), w.sample(0), w.sample(1)
        for key in s0:
            np.testing.assert_array_equal(s0[key], s0_again[key])
        assert any(not np.array_equal(s0[k], s1[k]) for k in s0)
    dvs = workloads.WORKLOADS["dvs-gesture"].sample(0)
    assert dvs["x"].max() < 128
    assert dvs["y"].max() < 128
    assert set(np.unique(dvs["p"])) == {0, 1}
    assert np.all(np.diff(dvs["t"]) >= 0)
    nm = workloads.WORKLOADS["nmnist"].sample(0)
    assert nm["x"].max() < 34
    assert nm["y"].max() < 34
    assert nm["t"].max() < 0.301
    assert workloads.WORKLOADS["shd"].sample(0)["spikes"].shape == (700, 700)


@pytest.fixture(scope="module")
def fresh() -> dict[str, Any]:
    return workloads.generate()


def _close(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict), where
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list), where
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5), where
    else:
        assert a == b, where


def test_checked_in_measurements_equal_a_fresh_run(fresh: dict[str, Any]) -> None:
    """sim_hw reads the data file; regenerating it with the interpreter and planner gives the same numbers."""
    stored = json.loads(workloads.DATA_FILE.read_text())
    _close(json.loads(json.dumps(fresh)), stored)
    assert networks.measurements() == stored


def test_measured_activity_is_in_neurobenchs_published_range(fresh: dict[str, Any]) -> None:
    """0.1-8.4 % of a layer's neurons per step: NeuroBench's SNN baselines (activation sparsity 0.916-0.999)."""
    for net in fresh["networks"].values():
        for layer in net["layers"]:
            assert 0.001 <= layer["activity"] <= 0.084, layer


def test_snnrm_job_plan_on_a_written_graph_gives_the_stored_stages(tmp_path: Path) -> None:
    """The same graph and input through the CLI give the stage traffic sim_hw uses (SHD, two stages)."""
    workloads.write_graphs(tmp_path, only=("shd",))
    result = CliRunner().invoke(
        main,
        [
            "job",
            "plan",
            str(tmp_path / "shd.nir"),
            "--stages",
            "2",
            "--input",
            str(tmp_path / "shd-events.npz"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)["stages"]
    stored = networks.measurements()["networks"]["shd"]
    # the CLI runs one sample; the stored plan averages three: same cut, rates of the same order
    assert [s["nodes"] for s in got] == [s["nodes"] for s in stored["plans"]["2"]]
    assert got[0]["in_keps"] == pytest.approx(stored["plans"]["2"][0]["in_keps"], rel=0.2)
    assert got[0]["out_keps"] == pytest.approx(stored["plans"]["2"][0]["out_keps"], rel=0.5)
