"""The per-allocation JSON file mounted read-only into a container: its shape, how it is built, how it is written.

One definition for every writer: Allocate (:mod:`snnrm.kubelet.allocator`) writes it when the kubelet admits a
container, a live remap (:mod:`snnrm.cluster.remap`) rewrites it in place with the remap fields, and the daemon
verifies it at start (:func:`snnrm.kubelet.allocator.verify_allocation_files`). A runtime reads ``cores`` (or
``blocks``) and follows ``generation`` when it is present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, ThroughputBlocks
from snnrm.core.topology import IntArray, Topology
from snnrm.kubelet.files import write_atomic


class CoreEntry(TypedDict):
    """One neuron core of an allocation."""

    id: str
    index: int
    chip: int
    router: int
    x: int
    y: int
    numa: int


class CoreAllocationFile(TypedDict):
    """``snnrm.io/neuron-core``: the cores a container may use (after a live remap: the cores it now uses)."""

    resource: str
    generation: NotRequired[int]
    """Present once a live remap rewrote the file; increases with every remap."""
    remapped_from: NotRequired[list[str]]
    """The IDs the kubelet admitted the container to (the file's name is derived from them)."""
    remapped_at: NotRequired[float]
    cores: list[CoreEntry]
    chips: list[int]


class ThroughputAllocationFile(TypedDict):
    """``snnrm.io/event-throughput``: the blocks a container may use and what they amount to per chip."""

    resource: str
    block_keps: float
    total_keps: float
    blocks: list[str]
    chips: dict[str, float]


AllocationFile = CoreAllocationFile | ThroughputAllocationFile


class Remap(TypedDict):
    """The fields a live remap adds to a core allocation file."""

    generation: int
    remapped_from: list[str]
    remapped_at: float


def core_allocation(topology: Topology, cores: IntArray, remap: Remap | None = None) -> CoreAllocationFile:
    """The file for ``cores`` (any order; listed in index order), with the remap fields when ``remap`` is given."""
    idx = np.sort(np.asarray(cores, dtype=np.int64))
    chips = topology.chip_of[idx]
    entries: list[CoreEntry] = [
        {"id": topology.ids[k], "index": k, "chip": c, "router": r, "x": x, "y": y, "numa": m}
        for k, c, r, x, y, m in zip(
            idx.tolist(),
            chips.tolist(),
            topology.router[idx].tolist(),
            topology.gx[idx].tolist(),
            topology.gy[idx].tolist(),
            topology.chip_numa[chips].tolist(),
            strict=True,
        )
    ]
    chip_list: list[int] = np.unique(chips).tolist()
    if remap is None:
        return {"resource": NEURON_CORE, "cores": entries, "chips": chip_list}
    # The remap fields sit after ``resource``, where the file has always had them (runtimes may diff the bytes).
    return {
        "resource": NEURON_CORE,
        "generation": remap["generation"],
        "remapped_from": remap["remapped_from"],
        "remapped_at": remap["remapped_at"],
        "cores": entries,
        "chips": chip_list,
    }


def throughput_allocation(blocks: ThroughputBlocks, idx: IntArray) -> ThroughputAllocationFile:
    """The file for the event-throughput blocks ``idx`` (any order)."""
    idx = np.sort(np.asarray(idx, dtype=np.int64))
    chips = blocks.chip_of_block[idx]
    per_chip = np.bincount(chips, minlength=1) * blocks.block_keps
    return {
        "resource": EVENT_THROUGHPUT,
        "block_keps": blocks.block_keps,
        "total_keps": blocks.block_keps * len(idx),
        "blocks": [blocks.ids[i] for i in idx.tolist()],
        "chips": {f"chip{c}": float(per_chip[c]) for c in np.unique(chips).tolist()},
    }


def encode(body: AllocationFile) -> bytes:
    """The file's bytes: what every writer writes, and what verification compares."""
    return (json.dumps(body, indent=1) + "\n").encode()


def write_allocation(path: Path, body: AllocationFile, *, in_place: bool) -> None:
    """Write an allocation file.

    ``in_place=False`` (Allocate, before the container exists): atomically by rename, so no reader sees half a
    file. ``in_place=True`` (a remap or a repair, while a container may have the file bind-mounted): the bytes are
    replaced keeping the inode, since a bind mount pins the inode and a renamed file would never be seen; a
    runtime that reads mid-rewrite sees invalid JSON and reads again (:func:`read_allocation`).
    """
    data = encode(body)
    if not in_place:
        write_atomic(path, data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_allocation(path: Path) -> dict[str, Any] | None:
    """What a runtime reads: None while the file is missing or mid-rewrite (then read again)."""
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None
