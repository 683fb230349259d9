"""A compact live summary for a terminal (``make demo``): one block that refreshes in place.

On a TTY the block is redrawn where it stands with ANSI cursor moves (``ESC [ n F`` up to the block's first line,
``ESC [ J`` clear to the end of the screen). Log lines would otherwise land under the block and be wiped by the
next redraw, so while the summary is live, :meth:`LiveSummary.capture_logs` routes the root logger's terminal
handler through the summary: the block is erased, the log line printed, and the block drawn again below it, so
the log scrolls above a summary that stays at the bottom. Anywhere else (a pipe, a file, CI) every refresh is one
structured log line instead, and nothing is erased.

This module only renders what it is given (:class:`SummaryView`); the demo gathers the numbers.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TextIO

import structlog

log = structlog.get_logger("snnrm.demo")

_UP_AND_CLEAR: Final = "\x1b[{n}F\x1b[J"
"""Cursor to the first column ``n`` lines up (CPL), then clear to the end of the screen (ED 0)."""
_BOLD, _DIM, _RED, _GREEN, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[32m", "\x1b[0m"


@dataclass(frozen=True, slots=True)
class SummaryView:
    """The numbers the summary shows; all plain values so the caller decides where they come from."""

    elapsed_s: float
    chips: int
    cores_healthy: int
    cores_total: int
    blocks_healthy: int
    """Healthy ``snnrm.io/event-throughput`` devices."""
    blocks_total: int
    block_keps: float
    measured_keps: float
    """Effective event throughput the telemetry says the node can take now."""
    faults: int
    """Active injected faults."""
    reallocations: int
    stage_latency_s: tuple[float, ...] = ()
    """Estimated spike latency into each stage of the running job (inf: the stage has no live core)."""
    dropped_per_s: float = 0.0
    kubelet_allocatable: int | None = None
    """Neuron cores the kubelet sees as allocatable (None: unknown)."""
    cores_withheld: int = 0
    """Healthy cores lent to a live remap and so withheld from the kubelet (healthy = allocatable + withheld)."""
    url: str | None = None


def _si(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "∞"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _latency(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "down"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.2f} µs"


def render(view: SummaryView, *, color: bool = False) -> list[str]:
    """The block as lines, without trailing newlines."""

    def c(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if color else text

    def count(healthy: int, total: int) -> str:
        text = f"{healthy}/{total}"
        return c(_RED, text) if healthy < total else c(_GREEN, text)

    def label(text: str) -> str:
        return c(_DIM, f"{text:<15}")

    cores = f"{count(view.cores_healthy, view.cores_total)} healthy"
    if view.cores_withheld:
        cores += f" · {view.cores_withheld} withheld for a live remap"
    if view.kubelet_allocatable is not None:
        cores += f" · kubelet allocatable {view.kubelet_allocatable}"
    advertised_meps = view.blocks_healthy * view.block_keps / 1e3
    capacity = (
        f"{count(view.blocks_healthy, view.blocks_total)} event-throughput devices healthy"
        f" · {advertised_meps:,.0f} MEPS advertised · {view.measured_keps / 1e3:,.0f} MEPS measured"
    )
    faults = c(_RED, str(view.faults)) if view.faults else "0"
    stages = (
        " · ".join(f"s{i} {_latency(t)}" for i, t in enumerate(view.stage_latency_s))
        if view.stage_latency_s
        else "no job placed"
    )
    head = c(_BOLD, "snnrm demo") + f"  t={view.elapsed_s:.0f}s"
    if view.url:
        head += f"  status page {view.url}"
    dropped = _si(view.dropped_per_s, "events/s")
    return [
        head,
        f"  {label('chips')}{view.chips} · cores {cores}",
        f"  {label('capacity')}{capacity}",
        f"  {label('faults')}{faults} active · reallocations {view.reallocations}",
        f"  {label('stage latency')}{stages} · dropped {c(_RED, dropped) if view.dropped_per_s >= 1 else dropped}",
    ]


def _fit(line: str, width: int) -> str:
    """Cut a line to the terminal width (a wrapped line would throw the cursor arithmetic off by one)."""
    visible = 0
    out: list[str] = []
    i = 0
    while i < len(line):
        if line[i] == "\x1b":
            end = line.find("m", i)
            if end < 0:
                break
            out.append(line[i : end + 1])
            i = end + 1
            continue
        if visible >= width - 1:
            out.append(_RESET if "\x1b" in line else "")
            break
        out.append(line[i])
        visible += 1
        i += 1
    return "".join(out)


class LiveSummary:
    """Shows :class:`SummaryView` updates: redrawn in place on a TTY, one log line per update elsewhere."""

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None, color: bool | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout
        isatty = bool(getattr(self._stream, "isatty", lambda: False)())
        self.live = isatty if live is None else live
        """Redraw in place (a terminal) rather than log a line per update."""
        self._color = (self.live and "NO_COLOR" not in os.environ) if color is None else color
        self._drawn = 0
        self._last: list[str] = []
        self._lock = threading.Lock()
        """Log records can come from other threads (grpc); a redraw and a log line must not interleave."""

    @property
    def interval(self) -> float:
        """Seconds between updates the caller should aim for: once a second on a screen, every 10 s in a log (the
        log also has every transition and move as its own line; the summary is only a heartbeat there)."""
        return 1.0 if self.live else 10.0

    def update(self, view: SummaryView) -> None:
        if not self.live:
            log.info(
                "summary",
                t=round(view.elapsed_s, 1),
                healthy_cores=f"{view.cores_healthy}/{view.cores_total}",
                withheld_for_remap_cores=view.cores_withheld,
                allocatable_cores=view.kubelet_allocatable,
                throughput_blocks=f"{view.blocks_healthy}/{view.blocks_total}",
                measured_meps=round(view.measured_keps / 1e3, 1),
                latency_us=[round(t * 1e6, 2) if math.isfinite(t) else None for t in view.stage_latency_s],
                dropped_per_s=round(view.dropped_per_s, 1),
                faults=view.faults,
                reallocations=view.reallocations,
            )
            return
        width = shutil.get_terminal_size((120, 24)).columns
        with self._lock:
            self._last = [_fit(line, width) for line in render(view, color=self._color)]
            self._erase()
            self._draw()

    def _erase(self) -> None:
        if self._drawn:
            self._stream.write(_UP_AND_CLEAR.format(n=self._drawn))
            self._drawn = 0

    def _draw(self) -> None:
        if self._last:
            self._stream.write("\n".join(self._last) + "\n")
            self._drawn = len(self._last)
        self._stream.flush()

    def close(self) -> None:
        """Leave the last block on screen as it is (the cursor is already below it)."""
        self._stream.flush()

    @contextlib.contextmanager
    def capture_logs(self) -> Iterator[None]:
        """While live, print log records above the block instead of under it; restores the handlers after."""
        if not self.live:
            yield
            return
        swapped: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "isatty", lambda: False)():
                original = handler.stream
                handler.setStream(_AboveBlock(self, original))
                swapped.append((handler, original))
        try:
            yield
        finally:
            for handler, original in swapped:
                handler.setStream(original)

    def write_above(self, text: str, target: TextIO) -> None:
        """Write ``text`` to ``target`` (the same terminal) above the block, then redraw the block."""
        with self._lock:
            self._erase()
            self._stream.flush()
            target.write(text)
            target.flush()
            self._draw()


class _AboveBlock(io.TextIOBase):
    """A text stream for a logging handler: whole lines go above the live block."""

    def __init__(self, summary: LiveSummary, target: TextIO) -> None:
        super().__init__()
        self._summary = summary
        self._target = target
        self._pending = ""

    def write(self, s: str) -> int:
        self._pending += s
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            self._summary.write_above(complete + "\n", self._target)
        return len(s)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return True
