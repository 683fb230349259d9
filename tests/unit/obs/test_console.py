"""The demo's terminal summary: one block redrawn in place on a TTY, one log line per refresh elsewhere."""

from __future__ import annotations

import io
import logging
import math
import os
import re
import shutil

import pytest
from structlog.testing import capture_logs

from snnrm.obs.console import LiveSummary, SummaryView, render

VIEW = SummaryView(
    elapsed_s=12.3,
    chips=4,
    cores_healthy=510,
    cores_total=512,
    blocks_healthy=1020,
    blocks_total=1024,
    block_keps=1000.0,
    measured_keps=998_000.0,
    faults=1,
    reallocations=1,
    stage_latency_s=(0.0, 1.23e-6, math.inf),
    dropped_per_s=12_300.0,
    kubelet_allocatable=510,
    url="http://127.0.0.1:9400/",
)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_render_shows_every_number_in_a_compact_block() -> None:
    lines = render(VIEW)
    text = "\n".join(lines)
    assert len(lines) == 5
    assert "t=12s" in text
    assert "http://127.0.0.1:9400/" in text
    assert "4 · cores 510/512 healthy · kubelet allocatable 510" in text
    assert "1020/1024 event-throughput devices healthy · 1,020 MEPS advertised · 998 MEPS measured" in text
    assert "1 active · reallocations 1" in text
    assert "s0 0.00 µs · s1 1.23 µs · s2 down" in text
    assert "dropped 12.3 kevents/s" in text
    assert "\x1b" not in text


def test_colour_marks_shortfalls_in_red() -> None:
    text = "\n".join(render(VIEW, color=True))
    assert "\x1b[31m510/512\x1b[0m" in text


def test_on_a_tty_each_update_redraws_the_block_in_place() -> None:
    out = FakeTTY()
    live = LiveSummary(out, color=False)
    assert live.live
    assert live.interval == 1.0
    live.update(VIEW)
    first = out.getvalue()
    assert "\x1b[" not in first  # nothing to erase yet
    live.update(VIEW)
    second = out.getvalue()[len(first) :]
    assert second.startswith("\x1b[5F\x1b[J")  # up to the block's first line, clear, draw again
    assert second.count("\n") == 5


def test_elsewhere_each_update_is_one_log_line() -> None:
    out = io.StringIO()
    live = LiveSummary(out)
    assert not live.live
    assert live.interval == 10.0
    with capture_logs() as logs:
        live.update(VIEW)
    assert out.getvalue() == ""
    [entry] = logs
    assert entry["event"] == "summary"
    assert entry["healthy_cores"] == "510/512"
    assert entry["latency_us"] == [0.0, 1.23, None]


def test_long_lines_are_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrapped line would throw the cursor-up count off; ANSI colour codes don't count as width."""
    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size((40, 24)))
    out = FakeTTY()
    LiveSummary(out, color=True).update(VIEW)
    for line in out.getvalue().splitlines():
        assert len(re.sub(r"\x1b\[[0-9;]*m", "", line)) < 40


def test_log_lines_scroll_above_the_live_block() -> None:
    """While captured, a log record erases the block, is printed, and the block is drawn again below it."""
    out = FakeTTY()
    err = FakeTTY()
    handler = logging.StreamHandler(err)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        live = LiveSummary(out, color=False)
        live.update(VIEW)
        drawn = len(out.getvalue())
        with live.capture_logs():
            assert handler.stream is not err
            logging.getLogger("x").warning("stage_reallocated")
        assert handler.stream is err
    finally:
        root.handlers[:] = saved
    assert err.getvalue() == "stage_reallocated\n"
    after = out.getvalue()[drawn:]
    assert after.startswith("\x1b[5F\x1b[J")
    assert after.count("\n") == 5
