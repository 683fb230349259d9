"""Telemetry a test sets by hand: :class:`StaticTelemetry`, a :class:`~snnrm.dra.view.DraTelemetry` whose per-core
arrays are plain numpy arrays. (The DRA driver's apiserver is the one in-memory fake,
:class:`snnrm.testing.fake_cluster.FakeClusterApi`.)"""

from __future__ import annotations

import numpy as np

from snnrm.core.health import Health, HealthReason
from snnrm.core.topology import FloatArray, IntArray, Topology


class StaticTelemetry:
    """A :class:`~snnrm.dra.view.DraTelemetry` whose per-core arrays tests set directly (all healthy, nominal)."""

    def __init__(self, topology: Topology, *, blocks_per_chip: int = 4) -> None:
        n = topology.n_cores
        self.state = np.full(n, int(Health.HEALTHY), dtype=np.int64)
        self.reasons = np.zeros(n, dtype=np.int64)
        self.keps = topology.core_nominal_keps.copy()
        self.blocks = np.full(topology.n_chips, blocks_per_chip, dtype=np.int64)
        self.time = 0.0

    def fail(self, core: int, reason: int = int(HealthReason.FAILED)) -> None:
        self.state[core] = int(Health.UNHEALTHY)
        self.reasons[core] = reason

    def recover(self, core: int) -> None:
        self.state[core] = int(Health.HEALTHY)
        self.reasons[core] = 0

    def core_state(self) -> IntArray:
        return self.state

    def core_reasons(self) -> IntArray:
        return self.reasons

    def effective_keps(self) -> FloatArray:
        return self.keps

    def healthy_blocks_per_chip(self) -> IntArray:
        return self.blocks

    def now(self) -> float:
        return self.time
