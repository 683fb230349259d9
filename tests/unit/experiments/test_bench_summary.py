"""``python -m benchmarks``'s closing summary: it keeps every line that states a target and marks one without a
verdict, so a benchmark that forgets to say OK or MISSED shows instead of passing silently."""

from __future__ import annotations

import io

from benchmarks.__main__ import _Tee, summary_lines
from benchmarks.verdict import verdict


def test_target_lines_are_kept_and_other_output_passes_through() -> None:
    out = io.StringIO()
    tee = _Tee(out)
    tee.write("machine: 128 chips\n  p50 1.0 ms ratio 0.2")
    tee.write(f"0 ({verdict(True)})\n10.0 s simulated = 0.9x the 50x target ({verdict(False)})\nno target here\n")
    assert out.getvalue().count("\n") == 4  # everything reaches the terminal
    assert tee.kept == ["p50 1.0 ms ratio 0.20 (OK)", "10.0 s simulated = 0.9x the 50x target (MISSED)"]


def test_a_target_line_without_a_verdict_is_marked() -> None:
    lines = summary_lines(["p99 2 ms: ratio 0.40 (OK)", "p99 9 ms: ratio 1.80 (MISSED)", "p99 3 ms: ratio 0.60"])
    assert lines[:2] == ["p99 2 ms: ratio 0.40 (OK)", "p99 9 ms: ratio 1.80 (MISSED)"]
    assert lines[2] == "p99 3 ms: ratio 0.60  [no OK/MISSED verdict on this line]"
    assert summary_lines([]) == ["(no target line printed)"]
    # Lowercase "ok" (what two benchmarks printed before benchmarks.verdict) is not a verdict.
    assert summary_lines(["ratio 0.5: ok"])[0].endswith("[no OK/MISSED verdict on this line]")
