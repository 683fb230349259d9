"""The CDI spec: lowest version for its fields, valid names, one device per chip, atomic refresh."""

from __future__ import annotations

import json
import re
from pathlib import Path

from snnrm.kubelet.cdi import CDI_KIND, CdiSpecWriter, build_spec, qualified_name

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


def test_spec_content() -> None:
    """cdiVersion 0.5.0, kind snnrm.io/chip, one device per chip, each with at least one edit."""
    spec = build_spec(3)
    assert spec["cdiVersion"] == "0.5.0"
    assert spec["kind"] == CDI_KIND == "snnrm.io/chip"
    assert "annotations" not in spec  # annotations would need 0.6.0
    assert [d["name"] for d in spec["devices"]] == ["chip0", "chip1", "chip2"]
    for d in spec["devices"]:
        assert _NAME.match(d["name"])
        assert len(d["name"]) <= 63
        assert d["containerEdits"]["env"]
        assert set(d) == {"name", "containerEdits"}
    assert qualified_name(2) == "snnrm.io/chip=chip2"


def test_device_nodes_when_known() -> None:
    """Chips with a host device node get a deviceNodes edit."""
    spec = build_spec(2, device_nodes={1: "/dev/snnrm1"})
    assert "deviceNodes" not in spec["devices"][0]["containerEdits"]
    assert spec["devices"][1]["containerEdits"]["deviceNodes"] == [{"path": "/dev/snnrm1", "permissions": "rw"}]


def test_writer_writes_and_restores(tmp_path: Path) -> None:
    """The writer writes the file, and ensure() restores it after deletion, leaving no temp files."""
    w = CdiSpecWriter(tmp_path / "cdi", 2)
    w.write()
    assert json.loads(w.path.read_text())["kind"] == CDI_KIND
    w.path.unlink()
    w.ensure()
    assert w.path.exists()
    assert [p.name for p in w.path.parent.iterdir()] == ["snnrm.io-chip.json"]
