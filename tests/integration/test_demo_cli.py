"""`snnrm demo` as `make demo` runs it: a real process, both faults answered, the recap, exit 0, nothing left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_tells_its_story_and_exits_cleanly() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="d", dir="/tmp"))  # short: the kubelet's sockets go in here
    env = {**os.environ, "SNNRM_LOG_FORMAT": "json", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "snnrm", "demo", "--http", f"127.0.0.1:{_free_port()}", "--seconds", "32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    events = []
    for line in (proc.stdout + proc.stderr).splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    recaps = [e for e in events if e.get("event") == "demo_recap"]
    assert len(recaps) == 1, [e.get("event") for e in events][-20:]
    recap = recaps[0]
    # Both faults were answered by a move: the hot spot and the failed core.
    assert recap["remaps"] >= 2
    assert (recap["hot_spot_to_remap_s"] or 0) > 0
    assert (recap["core_failure_to_remap_s"] or 0) > 0
    # The move is worth making: latency after the remap is back near where it was before the hot spot.
    assert recap["latency_during_hot_spot_us"] > 10 * recap["latency_before_us"]
    assert recap["latency_after_remap_us"] < recap["latency_during_hot_spot_us"] / 10
    assert 0 <= recap["events_dropped_pct"] < 100
    # State and CDI specs went to a temporary directory that is gone again.
    assert not any(tmp_path.glob("snnrm-demo-*"))
    tmp_path.rmdir()
