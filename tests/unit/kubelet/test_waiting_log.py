"""A daemon whose --kubelet-dir never gets a kubelet.sock keeps saying so (at once, then every 30 s), rather than
looking like a quiet, healthy daemon after one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import structlog

from snnrm.core.devices import NEURON_CORE, ThroughputBlocks, neuron_core_devices
from snnrm.core.topology import ChipGeometry, Topology
from snnrm.kubelet.feed import DeviceFeed
from snnrm.kubelet.plugin import WAITING_LOG_EVERY, DevicePlugin
from snnrm.kubelet.state import StaticAllocationState

TOPOLOGY = Topology.grid(chips=1, geometry=ChipGeometry(cols=2, rows=2))


def test_waiting_for_the_kubelet_is_logged_at_once_and_then_periodically(tmp_path: Path) -> None:
    plugin = DevicePlugin(
        kubelet_dir=tmp_path / "device-plugins",
        resource=NEURON_CORE,
        feed=DeviceFeed(NEURON_CORE, neuron_core_devices(TOPOLOGY, np.ones(TOPOLOGY.n_cores, dtype=bool))),
        state=StaticAllocationState(topology=TOPOLOGY, blocks=ThroughputBlocks.plan(TOPOLOGY, block_keps=1000.0)),
        state_dir=tmp_path / "state",
        cdi_dir=tmp_path / "cdi",
    )
    with structlog.testing.capture_logs() as logs:
        next_log = plugin._log_waiting(since=0.0, next_log=0.0)
        assert plugin._log_waiting(since=0.0, next_log=next_log) == next_log  # not again within the period
        plugin._log_waiting(since=0.0, next_log=next_log - WAITING_LOG_EVERY)  # the period has passed
    waiting = [e for e in logs if e["event"] == "waiting for kubelet"]
    assert len(waiting) == 2
    assert waiting[0]["socket"].endswith("device-plugins/kubelet.sock")
