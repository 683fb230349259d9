"""The assumed-parameter sweep: variants change exactly one parameter, and a tiny real sweep yields every outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.experiments import sensitivity
from benchmarks.experiments.config import DEFAULT
from sim_hw import load_preset


def test_a_spec_variant_changes_only_its_field(tmp_path: Path) -> None:
    base = load_preset("loihi2", chips=DEFAULT.chips)
    cfg, label = sensitivity._variant(DEFAULT, sensitivity.PARAMETERS["queue"], 4.0, tmp_path)
    spec = load_preset(cfg.preset, chips=cfg.chips)
    assert spec.core_queue_capacity == 4 * base.core_queue_capacity
    assert label == f"core_queue_capacity={4 * base.core_queue_capacity:g}"
    for f in ("core_service_rate", "inter_chip_hop_latency", "overflow", "neurons_per_core", "energy_per_synop"):
        assert getattr(spec, f) == getattr(base, f), f


def test_mode_and_config_variants(tmp_path: Path) -> None:
    cfg, _ = sensitivity._variant(DEFAULT, sensitivity.PARAMETERS["overflow"], "drop", tmp_path)
    assert load_preset(cfg.preset).overflow == "drop"
    cfg, label = sensitivity._variant(DEFAULT, sensitivity.PARAMETERS["telemetry"], 2.0, tmp_path)
    assert cfg.sample_period == pytest.approx(2 * DEFAULT.sample_period)
    assert cfg.preset == DEFAULT.preset
    assert label.startswith("sample_period=")


def test_tiny_sweep_reports_every_outcome(tmp_path: Path) -> None:
    cfg = DEFAULT.with_(seeds=(0,), duration=6.0, scenarios=("hot-spot",), policies=("static",))
    points = sensitivity.sweep(cfg, ["overflow"], workers=1, verbose=False)
    assert [p.value for p in points] == ["drop", "backpressure"]
    rows = sensitivity.table(points)
    assert rows[0].split(",")[4:] == list(sensitivity.OUTCOMES)
    drop, bp = (dict(zip(rows[0].split(","), r.split(","), strict=True)) for r in rows[1:])
    # Flow control loses only what the host sheds after holding a second of input; drop mode loses from the moment
    # the queue is full. (A hot spot overloads its stage 2x: in the long run both lose the excess.)
    assert float(bp["dropped_pct"]) < float(drop["dropped_pct"])
    assert float(drop["energy_uj_per_step"]) > 0.0


def test_unknown_parameter_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        sensitivity.main(["--parameters", "queue,nope"])
    assert e.value.code == 2
    assert "unknown parameters nope" in capsys.readouterr().err


def test_the_hot_region_widens_with_its_radius(tmp_path: Path) -> None:
    """The sweep's hot-radius variant reaches further than the daemon's one-hop avoidance: radius 2 holds every
    core of radius 1 and the cores two hops out, on the victim's chip only."""
    from benchmarks.experiments.scenarios import hot_region
    from sim_hw import Simulator

    cfg, label = sensitivity._variant(DEFAULT, sensitivity.PARAMETERS["hot-radius"], 2, tmp_path)
    assert cfg.hot_radius == 2
    assert label == "hot_radius=2"
    sim = Simulator(load_preset("loihi2", chips=2), seed=0)
    centre = np.array([sim.spec.cores_per_chip // 2])
    one, two = hot_region(sim, centre), hot_region(sim, centre, cfg.hot_radius)
    assert set(one.tolist()) < set(two.tolist())
    assert len(two) > len(one)
    assert (two // sim.spec.cores_per_chip == 0).all()
