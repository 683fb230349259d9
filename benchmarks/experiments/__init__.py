"""Experiments: does snnrm's placement + reallocation beat the classic device plugin? (``snnrm bench``)

Reproducible runs on :mod:`sim_hw` in simulated time, no sockets: split-SNN workloads share a multi-chip mesh,
faults hit them at T/3, and each policy (count-based first-fit, random, static topology-aware placement, snnrm and
two ablations) runs on the same seeds. snnrm's decisions go through the daemon's real pure pipeline:
``sim.counters()`` frames into :class:`snnrm.core.monitor.NodeMonitor`, the placement core
(:func:`snnrm.core.placement.plan_job`) and the reallocation core (:mod:`snnrm.core.reallocation`).

Modules: :mod:`.config` (every knob, with its reason), :mod:`.workloads`, :mod:`.scenarios`, :mod:`.policies`,
:mod:`.runner` (one run), :mod:`.suite` (all runs, in parallel), :mod:`.metrics`, :mod:`.report` (tables, CSV,
README section), :mod:`.plots`, :mod:`.cli`.
"""

from __future__ import annotations


def main() -> None:
    """The ``experiments`` entry of ``python -m benchmarks`` (``make bench``): the default set."""
    from benchmarks.experiments.cli import main as cli_main

    cli_main([])
