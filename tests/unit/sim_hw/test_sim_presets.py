"""The shipped presets load and cite their sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim_hw import load_preset, preset_names
from sim_hw.spec import PRESET_DIR


def test_the_three_presets_ship() -> None:
    """loihi2, spinnaker2 and akida are available."""
    assert {"loihi2", "spinnaker2", "akida"} <= set(preset_names())


@pytest.mark.parametrize("name", ["loihi2", "spinnaker2", "akida"])
def test_preset_loads_with_positive_figures(name: str) -> None:
    """Every figure is a positive number and the geometry is consistent."""
    spec = load_preset(name)
    assert spec.name == name
    assert spec.cores_per_chip == spec.cols * spec.rows * spec.cores_per_router
    assert spec.core_service_rate > 0
    assert spec.core_queue_capacity > 0
    assert spec.inter_chip_hop_latency >= spec.hop_latency


@pytest.mark.parametrize("name", ["loihi2", "spinnaker2", "akida"])
def test_preset_cites_its_figures(name: str) -> None:
    """Each preset says where its numbers come from and marks derived or assumed ones."""
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    assert "[v]" in text
    assert "derived" in text or "assumed" in text
    # Cites the papers and vendor documents, not a file outside the repo or a path on a build machine.
    assert not any(marker in text for marker in ("/" + "work/", "shared/" + "reference"))
    assert "synapses_per_core:" in text


def test_loihi2_matches_the_published_chip() -> None:
    """128 cores on an 8x16 mesh."""
    spec = load_preset("loihi2")
    assert (spec.cols, spec.rows, spec.cores_per_router, spec.cores_per_chip) == (16, 8, 1, 128)


def test_unknown_preset_is_a_clear_error() -> None:
    """The message lists the known presets."""
    with pytest.raises(ValueError, match=r"unknown preset 'nope'.*loihi2"):
        load_preset("nope")


def test_preset_from_a_path_rejects_unknown_keys(tmp_path: Path) -> None:
    """Typos in a custom preset are reported, not ignored."""
    path = tmp_path / "custom.yaml"
    text = (PRESET_DIR / "akida.yaml").read_text() + "\ncore_servce_rate: 3\n"
    path.write_text(text)
    with pytest.raises(ValueError, match="unknown keys: core_servce_rate"):
        load_preset(str(path))
