"""The seam between snnrm and neuromorphic hardware.

A backend discovers the node's chips and cores, reads whole telemetry frames (numpy arrays indexed by global
core index, see :class:`snnrm.core.topology.Topology`) and pushes hard faults as events the moment the hardware
raises them, as NVML's event sets do for GPUs, so that a failed core reaches the kubelet without waiting for
the next poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

from snnrm.core.telemetry import HardFault, TelemetryFrame
from snnrm.core.topology import Topology


class BackendError(Exception):
    """The hardware (or its driver's files) could not be read or made no sense; the message says which."""


class FaultLimitError(Exception):
    """Too many faults are pending or active; clear some first."""


@runtime_checkable
class HardwareBackend(Protocol):
    """What every hardware backend offers the daemon."""

    name: str

    async def discover(self) -> Topology:
        """Find chips and cores. Called once at start-up; raises :class:`BackendError` if nothing usable."""
        ...

    async def read_frame(self) -> TelemetryFrame:
        """Sample every core and link now. Never blocks the event loop for long (offload slow reads)."""
        ...

    def hard_faults(self) -> AsyncIterator[HardFault]:
        """Core/link failures and recoveries as they happen. Each call gives an independent subscription."""
        ...

    async def run(self) -> None:
        """Whatever the backend must keep doing in the background (a simulator's clock, a driver watch).

        Runs until cancelled; returns at once for backends that need nothing.
        """
        ...


class FaultInjection(Protocol):
    """Capability of a backend into which faults can be injected on demand (the simulator; ``/sim/faults``).

    The HTTP layer reaches fault injection only through this Protocol: the app hands it the backend when the
    backend offers the capability, and None otherwise (then the routes answer 404).
    """

    @property
    def faults(self) -> Mapping[int, Mapping[str, Any]]:
        """Injected faults by id, as injected (kind, targets, ``at``, ``duration``, ``injected_at``)."""
        ...

    @property
    def sim_time(self) -> float:
        """The backend's clock (simulated seconds), in which ``at``, ``duration`` and ``injected_at`` count."""
        ...

    def inject(self, spec: dict[str, Any]) -> int:
        """Inject (or schedule) a fault from plain JSON; returns its id. ValueError/TypeError/KeyError/IndexError
        on a bad spec, :class:`FaultLimitError` when too many are live."""
        ...

    def clear(self, fault_id: int) -> None:
        """Reverse an injected fault; KeyError if there is no such fault."""
        ...

    def fault_list(self) -> list[dict[str, Any]]:
        """Faults pending, active or recently ended, each with its ``status``."""
        ...

    def fault_status(self, fault_id: int) -> str:
        """``pending``, ``active`` or ``ended``; KeyError for an id never issued."""
        ...
