"""The real-node failover benchmark's stand-in runtime (benchmarks/node_failover.py): it must see a rewrite in place
(what a live remap does to the mounted allocation file), report each generation once, and ``seen_at`` must read
the time of the generation asked for, not an earlier one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.node_failover import runtime, seen_at


def _rewrite_in_place(path: Path, generation: int) -> None:
    with path.open("r+", encoding="utf-8") as f:  # same inode, as snnrm/kubelet/allocator.py rewrites it
        f.truncate(0)
        f.write(json.dumps({"generation": generation, "cores": []}))


def _wait_for(log: Path, generation: int) -> None:
    deadline = time.monotonic() + 10
    while seen_at(log.read_text(encoding="utf-8"), generation) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"no SEEN line for generation {generation}: {log.read_text(encoding='utf-8')!r}")
        time.sleep(0.01)


def test_the_runtime_reports_each_generation_rewritten_in_place(tmp_path: Path) -> None:
    path, log = tmp_path / "allocation.json", tmp_path / "runtime.log"
    path.write_text(json.dumps({"generation": 0, "cores": []}), encoding="utf-8")
    with (
        log.open("w", encoding="utf-8") as out,
        subprocess.Popen([sys.executable, "-c", runtime(str(path))], stdout=out) as proc,
    ):
        try:
            _wait_for(log, 0)
            before = time.time()
            _rewrite_in_place(path, 1)
            _wait_for(log, 1)
            _rewrite_in_place(path, 2)
            _wait_for(log, 2)
        finally:
            proc.kill()  # it loops until killed (Popen's exit waits for it)
    text = log.read_text(encoding="utf-8")
    t1, t2 = seen_at(text, 1), seen_at(text, 2)
    assert t1 is not None
    assert t2 is not None
    assert before <= t1 <= t2
    assert seen_at(text, 3) is None
    assert [line.split()[2] for line in text.splitlines()].count("1") == 1  # each state reported once


def test_seen_at_takes_the_first_read_of_that_generation_only() -> None:
    log = "SEEN 10.5 0\nSEEN 11.25 -1\nSEEN 11.5 1\nSEEN 12.0 1\nSEEN 13.0 11\nnoise\n"
    assert seen_at(log, 1) == 11.5
    assert seen_at(log, 11) == 13.0
    assert seen_at(log, 2) is None
