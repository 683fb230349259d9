"""Per-resource answers to GetPreferredAllocation and Allocate, on top of the pure policy.

The servicer is resource-agnostic; each resource supplies a :class:`ResourceAllocator` that maps device IDs to
indices (:class:`~snnrm.kubelet.id_index.IdIndex`, which also decodes GetPreferredAllocation's request straight
into them), asks :mod:`snnrm.core.allocation`, and describes an allocation to the container: environment
variables, a read-only JSON file describing the devices, and the CDI names of the chips touched.

The Allocate path stays cheap: IDs are resolved with C-level dict lookups, the JSON file is written once per
distinct set of IDs (its name is the SHA-256 of the IDs sorted as strings, its content a function of them) and again
only when a live remap has rewritten it since (one ``stat``), and the CDI spec is static, checked with one ``stat``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from snnrm.core import allocation
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, ThroughputBlocks
from snnrm.core.placement import follow_plan
from snnrm.core.topology import BoolArray, IntArray
from snnrm.kubelet.allocation_file import (
    AllocationFile,
    core_allocation,
    encode,
    throughput_allocation,
    write_allocation,
)
from snnrm.kubelet.cdi import CdiSpecWriter, qualified_name
from snnrm.kubelet.id_index import IdIndex
from snnrm.kubelet.protos.deviceplugin.v1beta1 import api_pb2
from snnrm.kubelet.state import AllocationState

CORES_MOUNT = "/var/run/snnrm/allocation.json"
"""Where a container finds the description of its neuron cores."""
THROUGHPUT_MOUNT = "/var/run/snnrm/event-throughput.json"
"""Where a container finds the description of its event-throughput blocks (a separate path: a pod may request
both resources and two mounts on one path would clash)."""


PLAN_SETTLE_S = 1.0
"""How long GetPreferredAllocation waits for the pod watch when no plan matches: the kubelet hears of a pod bound
here as soon as the daemon does, and may ask before the daemon has read the pod's plan. 0.3 s was too short on a
loaded 2-core CI machine; the kubelet sets no deadline on this call. The cost: with placement on, a pod of the
resource that has no plan is admitted up to this much later."""


class ResourceAllocator(Protocol):
    """Resource-specific half of the device plugin servicer."""

    resource: str

    @property
    def id_index(self) -> IdIndex:
        """The advertised IDs' indices (what :meth:`settle` and :meth:`preferred` take)."""
        ...

    async def settle(self, available: IntArray, size: int) -> None:
        """Called before :meth:`preferred`: wait (briefly) for whatever the choice depends on to be current."""
        ...

    def preferred(self, available: IntArray, must: IntArray, size: int, healthy: BoolArray) -> list[str]:
        """Advisory choice of ``size`` IDs in total among ``available`` (indices), keeping ``must``."""
        ...

    def validate(self, ids: Sequence[str], healthy: BoolArray) -> None:
        """Raise :class:`~snnrm.core.allocation.AllocationError` unless every ID is known, distinct and healthy;
        changes nothing (the servicer validates every container of a request before allocating any)."""
        ...

    def allocate(self, ids: Sequence[str], healthy: BoolArray) -> api_pb2.ContainerAllocateResponse:
        """Validate ``ids`` (raises :class:`~snnrm.core.allocation.AllocationError`) and describe them."""
        ...


class AllocationFiles:
    """``<state_dir>/allocations/<sha256 of the IDs sorted as strings>.json``, written atomically once per process
    and name. The name is the one identity of an allocation's file: Allocate (IDs in core order) and the remap
    ledger (IDs as PodResources lists them) must reach the same file, so the order callers pass is ignored."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "allocations"
        # digest -> (inode, mtime, size) of the file as this process last wrote it. A live remap rewrites a file
        # in place, so a file whose stat differs is no longer Allocate's: the next Allocate of those IDs (a new
        # pod admitted to the same cores) writes it again rather than mounting the old pod's remap.
        # (Timestamps can be coarse; the size still differs, as a remapped file carries the remap fields.)
        self._written: dict[str, tuple[int, int, int]] = {}

    def path_for(self, ids: Sequence[str]) -> tuple[str, Path]:
        """Digest and path of the file for the allocation of ``ids`` (any order)."""
        digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
        return digest, self.dir / f"{digest}.json"

    def ensure(self, ids: Sequence[str], describe: Callable[[], AllocationFile]) -> Path:
        """Path of the file for ``ids``, writing ``describe()`` there unless it is as this process last wrote it."""
        digest, path = self.path_for(ids)
        if self._written.get(digest) != _stamp(path):
            write_allocation(path, describe(), in_place=False)
            self._written[digest] = _stamp(path)
        return path

    def verify(self, ids: Sequence[str], body: AllocationFile) -> bool:
        """Make the file for ``ids`` hold exactly ``body``: rewritten in place (a running container may have it
        bind-mounted) when it is missing, unreadable or different. Returns whether it had to be rewritten."""
        digest, path = self.path_for(ids)
        data = encode(body)
        try:
            intact = path.read_bytes() == data
        except OSError:
            intact = False
        if not intact:
            write_allocation(path, body, in_place=True)
        self._written[digest] = _stamp(path)  # now current: Allocate of the same IDs need not write it again
        return not intact


def _stamp(path: Path) -> tuple[int, int, int]:
    """(inode, mtime in ns, size) of ``path``; all -1 when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


@dataclass(frozen=True, slots=True)
class Verified:
    """What :func:`verify_allocation_files` found."""

    intact: int = 0
    rewritten: int = 0
    skipped: int = 0
    """Allocations left alone: remapped (the remap ledger restores them) or naming devices this node lacks."""


def verify_allocation_files(
    files: AllocationFiles,
    state: AllocationState,
    held: Mapping[str, Iterable[Sequence[str]]],
    *,
    remapped: Collection[Path] = (),
) -> Verified:
    """At start: make every allocation file the kubelet still holds a container to match its devices.

    ``held``: resource -> the device IDs of each container holding that resource (from the kubelet's PodResources,
    which persists admissions across restarts). A missing or corrupt file is rewritten from the IDs (its content
    is a function of them, as Allocate wrote it). Files in ``remapped`` are a live remap's, restored by the remap
    ledger; they are not touched. Files of containers the kubelet no longer holds are left as they are.
    """
    intact = rewritten = skipped = 0
    for resource, groups in held.items():
        for ids in groups:
            if files.path_for(ids)[1] in remapped:
                skipped += 1
                continue
            body = _describe(state, resource, ids)
            if body is None:
                skipped += 1
            elif files.verify(ids, body):
                rewritten += 1
            else:
                intact += 1
    return Verified(intact, rewritten, skipped)


def _describe(state: AllocationState, resource: str, ids: Sequence[str]) -> AllocationFile | None:
    """The file Allocate writes for ``ids`` of ``resource``, or None if an ID is not one of this node's."""
    if resource == NEURON_CORE:
        index_of = state.topology.index_of
        if not all(i in index_of for i in ids):
            return None
        return core_allocation(state.topology, allocation.lookup(index_of, ids))
    if resource == EVENT_THROUGHPUT:
        blocks = state.blocks
        block_of = {b: i for i, b in enumerate(blocks.ids)}
        if not all(i in block_of for i in ids):
            return None
        return throughput_allocation(blocks, allocation.lookup(block_of, ids))
    return None


def _chips(chip_of: IntArray) -> list[int]:
    """The distinct chips of an allocation, ascending (computed once per Allocate: np.unique is its costliest step)."""
    chips: list[int] = np.unique(chip_of).tolist()
    return chips


def _chips_csv(chips: list[int]) -> str:
    return ",".join(f"chip{c}" for c in chips)


def _response(
    envs: dict[str, str], host_path: Path, container_path: str, chips: list[int]
) -> api_pb2.ContainerAllocateResponse:
    return api_pb2.ContainerAllocateResponse(
        envs=envs,
        mounts=[api_pb2.Mount(container_path=container_path, host_path=str(host_path), read_only=True)],
        cdi_devices=[api_pb2.CDIDevice(name=qualified_name(c)) for c in chips],
    )


class PlacementHints(Protocol):
    """Cores the placement controller planned for the pod being admitted (snnrm/cluster/hints.py).

    GetPreferredAllocation and Allocate carry no pod identity, so the hints guess which planned pod is being
    admitted from the request itself (see docs/split-learning.md, "Matching an admission to its plan").
    """

    def planned(self, available: IntArray, size: int) -> IntArray | None:
        """Planned cores of the pod most likely being admitted, or None when no plan matches."""
        ...

    def matches(self, available: IntArray, size: int) -> bool:
        """Whether :meth:`planned` would find a plan now (claims nothing)."""
        ...

    async def refreshed(self) -> None:
        """Return when the plans are next refreshed."""
        ...

    def admitted(self, cores: IntArray) -> None:
        """Allocate handed out ``cores`` (confirms or refutes the guess)."""
        ...


class CoreAllocator:
    """``snnrm.io/neuron-core``: one device per core, IDs from :attr:`Topology.ids`."""

    resource = NEURON_CORE

    def __init__(
        self,
        *,
        state: AllocationState,
        files: AllocationFiles,
        cdi: CdiSpecWriter,
        hints: PlacementHints | None = None,
    ) -> None:
        self._state = state
        self._files = files
        self._cdi = cdi
        self._hints = hints
        self._index: tuple[object, IdIndex] | None = None

    @property
    def id_index(self) -> IdIndex:
        topo = self._state.topology
        if self._index is None or self._index[0] is not topo:  # built once per topology (the table is ~0.6 MB)
            self._index = (topo, IdIndex(topo.ids, index_of=topo.index_of))
        return self._index[1]

    async def settle(self, available: IntArray, size: int) -> None:
        if self._hints is None:
            return
        # Wait for a refresh that brings this admission's plan, not merely the next refresh: another pod's change can
        # refresh the plans first (a 4-stage job admitted in one kubelet batch did, under load in CI).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PLAN_SETTLE_S):
                while not self._hints.matches(available, size):
                    await self._hints.refreshed()

    def preferred(self, available: IntArray, must: IntArray, size: int, healthy: BoolArray) -> list[str]:
        topo = self._state.topology
        planned = self._hints.planned(available, size) if self._hints is not None else None
        if planned is not None:  # a planned stage pod: follow the plan's cores
            idx = follow_plan(topo, available, must, size, planned, self._state.queue_fill(), healthy)
        else:
            idx = allocation.preferred_cores(topo, available, must, size, self._state.queue_fill(), healthy)
        ids = topo.ids
        return [ids[i] for i in idx.tolist()]

    def validate(self, ids: Sequence[str], healthy: BoolArray) -> None:
        allocation.validate_allocation(self._state.topology.index_of, ids, healthy)

    def allocate(self, ids: Sequence[str], healthy: BoolArray) -> api_pb2.ContainerAllocateResponse:
        topo = self._state.topology
        idx = np.sort(allocation.validate_allocation(topo.index_of, ids, healthy))
        if self._hints is not None:
            self._hints.admitted(idx)
        all_ids = topo.ids
        sorted_ids = [all_ids[i] for i in idx.tolist()]
        chips = _chips(topo.chip_of[idx])
        path = self._files.ensure(sorted_ids, lambda: core_allocation(topo, idx))
        self._cdi.ensure()
        envs = {"SNNRM_CORES": ",".join(sorted_ids), "SNNRM_CHIPS": _chips_csv(chips)}
        return _response(envs, path, CORES_MOUNT, chips)


class ThroughputAllocator:
    """``snnrm.io/event-throughput``: one device per block of ``blocks.block_keps`` KEPS on one chip."""

    resource = EVENT_THROUGHPUT

    def __init__(self, *, state: AllocationState, files: AllocationFiles, cdi: CdiSpecWriter) -> None:
        self._state = state
        self._files = files
        self._cdi = cdi
        self._blocks: ThroughputBlocks | None = None
        self._id_index = IdIndex(())

    def _index(self) -> tuple[ThroughputBlocks, IdIndex]:
        blocks = self._state.blocks
        if blocks is not self._blocks:  # the layout changes only if the app re-plans it
            self._id_index = IdIndex(blocks.ids)
            self._blocks = blocks
        return blocks, self._id_index

    @property
    def id_index(self) -> IdIndex:
        return self._index()[1]

    async def settle(self, available: IntArray, size: int) -> None:
        return  # blocks are interchangeable within a chip: nothing to wait for

    def preferred(self, available: IntArray, must: IntArray, size: int, healthy: BoolArray) -> list[str]:
        blocks = self._index()[0]
        idx = allocation.preferred_blocks(blocks, available, must, size, healthy, self._state.chip_headroom_keps())
        ids = blocks.ids
        return [ids[i] for i in idx.tolist()]

    def validate(self, ids: Sequence[str], healthy: BoolArray) -> None:
        allocation.validate_allocation(self._index()[1].index_of, ids, healthy)

    def allocate(self, ids: Sequence[str], healthy: BoolArray) -> api_pb2.ContainerAllocateResponse:
        blocks, index = self._index()
        idx = np.sort(allocation.validate_allocation(index.index_of, ids, healthy))
        all_ids = blocks.ids
        sorted_ids = [all_ids[i] for i in idx.tolist()]
        chips = _chips(blocks.chip_of_block[idx])
        keps = blocks.block_keps * len(idx)
        path = self._files.ensure(sorted_ids, lambda: throughput_allocation(blocks, idx))
        self._cdi.ensure()
        envs = {
            "SNNRM_EVENT_THROUGHPUT_KEPS": f"{keps:g}",
            "SNNRM_EVENT_THROUGHPUT_CHIPS": _chips_csv(chips),
        }
        return _response(envs, path, THROUGHPUT_MOUNT, chips)
