"""The seam between snnrm and neuromorphic hardware.

A backend discovers the node's chips and cores, reads whole telemetry frames (numpy arrays indexed by global
core index, see :class:`snnrm.core.topology.Topology`) and pushes hard faults as events the moment the hardware
raises them, as NVML's event sets do for GPUs, so that a failed core reaches the kubelet without waiting for
the next poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from snnrm.core.telemetry import HardFault, TelemetryFrame
from snnrm.core.topology import Topology


class BackendError(Exception):
    """The hardware (or its driver's files) could not be read or made no sense; the message says which."""


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
