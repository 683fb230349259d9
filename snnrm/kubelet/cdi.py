"""Container Device Interface (CDI) spec for snnrm's chips.

Allocate answers with CDI device names (``snnrm.io/chip=chip3``, kubelet forwards them to the runtime through
CRI ``CDIDevices``); the runtime resolves them against spec files in ``/etc/cdi`` or ``/var/run/cdi``, so the
spec must exist before Allocate returns. One static spec lists every chip: it depends only on the topology,
so it is written at start-up and rewritten only if someone deletes it.

``cdiVersion`` is the lowest that covers the fields used (0.5.0: ``env`` and ``deviceNodes`` only, no
annotations): CDI loaders reject specs whose version is lower than their fields need, and older runtimes reject
versions they do not know.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snnrm.core.devices import CDI_VERSION
from snnrm.kubelet.files import write_atomic

CDI_KIND = "snnrm.io/chip"
SPEC_FILE = "snnrm.io-chip.json"


def chip_device_name(chip: int) -> str:
    """Device name inside the spec (``chip3``): alphanumeric at both ends as CDI requires."""
    return f"chip{chip}"


def qualified_name(chip: int) -> str:
    """Fully qualified CDI device name, as returned in ``ContainerAllocateResponse.cdi_devices``."""
    return f"{CDI_KIND}={chip_device_name(chip)}"


def build_spec(n_chips: int, *, device_nodes: Mapping[int, str] | None = None) -> dict[str, Any]:
    """The spec as JSON data. ``device_nodes`` maps a chip to its host device node, when the hardware has one.

    Every device carries an ``env`` edit (``SNNRM_CDI_CHIP_<n>=chip<n>``): CDI rejects devices with no edits,
    and the variable tells a container which chips the runtime actually injected.
    """
    devices = []
    for chip in range(n_chips):
        edits: dict[str, Any] = {"env": [f"SNNRM_CDI_CHIP_{chip}={chip_device_name(chip)}"]}
        if device_nodes and chip in device_nodes:
            edits["deviceNodes"] = [{"path": device_nodes[chip], "permissions": "rw"}]
        devices.append({"name": chip_device_name(chip), "containerEdits": edits})
    return {"cdiVersion": CDI_VERSION, "kind": CDI_KIND, "devices": devices}


class CdiSpecWriter:
    """Writes the spec into ``cdi_dir`` and makes sure it is still there before each Allocate answer."""

    def __init__(self, cdi_dir: Path, n_chips: int, *, device_nodes: Mapping[int, str] | None = None) -> None:
        self.path = Path(cdi_dir) / SPEC_FILE
        self._data = (json.dumps(build_spec(n_chips, device_nodes=device_nodes), indent=2) + "\n").encode()

    def write(self) -> None:
        """(Re)write the spec atomically."""
        write_atomic(self.path, self._data)

    def ensure(self) -> None:
        """Rewrite the spec only if it vanished (one ``stat`` on the Allocate path)."""
        if not self.path.exists():
            self.write()
