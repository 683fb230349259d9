"""Fixtures for the sim_hw tests."""

from __future__ import annotations

import pytest
from sim_helpers import small_spec

from sim_hw import Simulator


@pytest.fixture
def sim() -> Simulator:
    """A 4-chip machine of 4x4 cores, seed 0, 10 ms steps."""
    return Simulator(small_spec(), seed=0, dt=0.01)
