"""The one way a benchmark states a target's outcome: ``OK`` or ``MISSED``.

``python -m benchmarks`` collects every line that states a target with its ratio into its closing summary, and that
summary's contract (the README's ``make bench`` line) is that each such line says OK or MISSED; every benchmark
words it with this.
"""

from __future__ import annotations

VERDICTS = ("OK", "MISSED")


def verdict(ok: bool) -> str:
    """``OK`` when the target is met, else ``MISSED``."""
    return VERDICTS[0] if ok else VERDICTS[1]
