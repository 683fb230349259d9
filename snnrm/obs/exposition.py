"""Prometheus text 0.0.4 and OpenMetrics 1.0 exposition, fast for families backed by numpy arrays.

prometheus_client renders every sample through a ``Sample`` tuple, a label dict and per-label escaping: about
3 µs a sample, so the ~50,000 per-core and per-link samples of a 4,096-core node at core granularity would take
well over the 100 ms scrape budget. Array-backed families are written here instead:

* a family's label sets are static (the topology does not change), so each series' ``{label="value",...}`` text
  is built and escaped **once** (:class:`Labels`); a scrape only appends the value;
* values are formatted in bulk: integral arrays through ``int.__repr__`` (4x faster than floats), counters
  otherwise through ``float.__repr__`` (exact), gauges with six significant digits; NaN and infinities are
  patched to the exposition spelling; a family is one ``str.join`` over (name, labels, value, newline) tuples
  (no Python-level loop and no intermediate string per sample).

Collectors with few series (RPC histograms, process metrics) stay ordinary prometheus_client collectors and are
rendered by its own encoders; :class:`MetricsRegistry` concatenates both. Every array-backed family can still be
turned into ordinary ``Metric`` objects (:func:`to_metric`), so ``registry.collect()``, ``generate_latest`` and
``get_sample_value`` keep working, and the tests check that both paths render the same samples.

A scrape is two-phase: collectors take a consistent :meth:`SnapshotCollector.snapshot` of their arrays on the
event loop (copies and sums, about a millisecond at 16,384 cores), and the string work runs in worker threads,
batch by batch (:meth:`MetricsRegistry.chunks`), so a scrape never holds the loop for the tens of milliseconds
formatting takes, and never holds a whole multi-megabyte body in memory.
"""

from __future__ import annotations

import abc
import asyncio
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_exposition
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

Kind = Literal["gauge", "counter", "info"]
ScrapeHook = Callable[[], Awaitable[object]]


class Format(enum.Enum):
    """The two exposition formats served, with the Content-Type each is sent with."""

    TEXT = "text/plain; version=0.0.4; charset=utf-8"
    OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

    @property
    def content_type(self) -> str:
        return self.value


def negotiate(accept: str | None) -> Format:
    """Pick the format for an ``Accept`` header, honouring q-values (RFC 9110 §12.5.1).

    OpenMetrics is served only when asked for at version 1.0.0 (or without a version); any ``text/plain``
    (0.0.4 or 1.0.0: our names are all legacy-valid, so 0.0.4 is a correct answer to both), ``*/*`` or an
    unusable header gets text 0.0.4, which every Prometheus accepts. Among equal q-values the first listed wins.
    """
    best: tuple[float, Format] | None = None
    for item in (accept or "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        opts = dict(p.split("=", 1) for p in params if "=" in p)
        try:
            q = float(opts.get("q", "1"))
        except ValueError:
            continue
        media = media.lower()
        if media == "application/openmetrics-text" and opts.get("version", "1.0.0") == "1.0.0":
            fmt = Format.OPENMETRICS
        elif media in ("text/plain", "text/*", "*/*"):
            fmt = Format.TEXT
        else:
            continue
        if q > 0 and (best is None or q > best[0]):
            best = (q, fmt)
    return Format.TEXT if best is None else best[1]


def _escape_label_value(v: str) -> str:
    return v.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return " "
    inner = ",".join(f'{n}="{_escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "} "


@dataclass(frozen=True, slots=True, eq=False)
class Labels:
    """The label sets of one family's series, as ready-to-write text (and, on demand, as values).

    ``text[i]`` is ``{a="x",b="y"} `` (escaped, with the trailing space before the value). Only the text is kept:
    the values are rebuilt by ``rows()`` when the slow path (:func:`to_metric`) asks, which saves a tuple per
    series (megabytes at 16k cores). Series may carry labels beyond ``names``: ``extra[i]`` holds them (e.g.
    namespace/pod/container on allocated cores).
    """

    names: tuple[str, ...]
    text: Sequence[str]
    rows: Callable[[], Sequence[tuple[str, ...]]]
    extra: Mapping[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @classmethod
    def build(cls, names: Sequence[str], values: Iterable[Sequence[str]]) -> Labels:
        """Labels from rows of values (kept: for small or per-scrape label sets)."""
        vals = [tuple(v) for v in values]
        names_ = tuple(names)
        return cls(names_, [_label_text(names_, v) for v in vals], lambda: vals)

    @classmethod
    def lazy(cls, names: Sequence[str], rows: Callable[[], Iterable[Sequence[str]]]) -> Labels:
        """Labels whose rows are regenerated by ``rows()`` when needed (large static label sets)."""
        names_ = tuple(names)
        return cls(names_, [_label_text(names_, v) for v in rows()], lambda: [tuple(v) for v in rows()])

    @classmethod
    def single(cls, **labels: str) -> Labels:
        return cls.build(tuple(labels), [tuple(labels.values())])

    def __len__(self) -> int:
        return len(self.text)

    def with_extra(self, extra: Mapping[int, tuple[tuple[str, str], ...]]) -> Labels:
        """The same series with more labels on some of them (the base text is shared, patched copies)."""
        if not extra:
            return self
        text = list(self.text)
        for i, pairs in extra.items():
            more = _label_text([k for k, _ in pairs], [v for _, v in pairs])  # '{k="v",...} '
            base = text[i]
            text[i] = more if base == " " else base[:-2] + "," + more[1:]  # O(len(extra)), rows never rebuilt
        return Labels(self.names, text, self.rows, dict(extra))

    def dicts(self) -> list[dict[str, str]]:
        """Every series' labels as a dict (the slow path)."""
        out = [dict(zip(self.names, row, strict=True)) for row in self.rows()]
        for i, pairs in self.extra.items():
            out[i].update(pairs)
        return out


@dataclass(frozen=True, slots=True, eq=False)
class Family:
    """One metric family: its base name (no ``_total``/``_info`` suffix), type, help, series and values."""

    name: str
    kind: Kind
    help: str
    labels: Labels
    values: npt.NDArray[Any]

    def __post_init__(self) -> None:
        if len(self.values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.values)} values for {len(self.labels)} series")

    @property
    def sample_name(self) -> str:
        return self.name + ("_total" if self.kind == "counter" else "_info" if self.kind == "info" else "")


_SPECIAL = {np.inf: "+Inf", -np.inf: "-Inf"}
_MAX_EXACT_INT = float(2**53)
GAUGE_FORMAT = "%.6g"
"""Gauges are measurements (smoothed, sampled every 100 ms): six significant digits say all they know, and
``%``-formatting them is twice as fast as ``repr`` and makes the body ~40% smaller. Counters are exact."""


def value_spelling(values: npt.NDArray[Any], *, exact: bool = True) -> Callable[[int, int], list[str]]:
    """How a family's values are spelled, decided once over all of them; the function returned spells
    ``values[lo:hi]`` (so a family rendered in slices reads the same as one rendered whole).

    Integral values as integers, NaN as ``NaN``, infinities ``±Inf``; non-integral values ``repr`` (exact,
    round-trips) when ``exact``, else six significant digits.
    """
    a = np.asarray(values)
    if a.dtype.kind not in "iub":
        a = a.astype(np.float64, copy=False)
        finite = np.isfinite(a)
        all_finite = bool(finite.all())
        if not (all_finite and np.all(np.abs(a) < _MAX_EXACT_INT) and np.array_equal(a, np.trunc(a))):
            spell = float.__repr__ if exact else GAUGE_FORMAT.__mod__

            def spelled(lo: int, hi: int) -> list[str]:
                part = a[lo:hi]
                out = list(map(spell, part.tolist()))
                if not all_finite:
                    for i in np.flatnonzero(~finite[lo:hi]).tolist():
                        out[i] = _SPECIAL.get(float(part[i]), "NaN")
                return out

            return spelled
    ints = a.astype(np.int64)
    return lambda lo, hi: list(map(int.__repr__, ints[lo:hi].tolist()))


def format_values(values: npt.NDArray[Any], *, exact: bool = True) -> list[str]:
    """Exposition spelling of every value (:func:`value_spelling` over all of them)."""
    return value_spelling(values, exact=exact)(0, len(values))


def _escape_help(text: str, fmt: Format) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if fmt is Format.OPENMETRICS else text


def _no_pause() -> None:
    """:class:`MetricsRegistry`'s default pause: render the slices back to back."""


RENDER_SLICE_SAMPLES = 1024
"""Samples of a family rendered between two calls of :class:`MetricsRegistry`'s pause (~0.3 ms of work here): a
per-core family at 16,384 cores is ~5 ms of GIL-holding string work, longer than a hard fault may wait."""


def render_parts(f: Family, fmt: Format, pause: Callable[[], None] = _no_pause) -> Iterator[str]:
    """:func:`render_family` in parts: the HELP and TYPE lines, then ``RENDER_SLICE_SAMPLES`` sample lines at a
    time, ``pause()`` called before each slice."""
    sample = f.sample_name
    if fmt is Format.OPENMETRICS:
        header, typ = f.name, f.kind
    else:
        header, typ = sample, "gauge" if f.kind == "info" else f.kind
    yield f"# HELP {header} {_escape_help(f.help, fmt)}\n# TYPE {header} {typ}\n"
    spelled = value_spelling(f.values, exact=f.kind != "gauge")
    text = f.labels.text
    for lo in range(0, len(f.values), RENDER_SLICE_SAMPLES):
        pause()
        hi = lo + RENDER_SLICE_SAMPLES
        values = spelled(lo, hi)
        # One join over (name, labels, value, newline) tuples: no intermediate string per sample.
        yield "".join(chain.from_iterable(zip(repeat(sample), text[lo:hi], values, repeat("\n"))))


def render_family(f: Family, fmt: Format) -> str:
    """HELP, TYPE and sample lines of one family in ``fmt`` (OpenMetrics names counters/infos without suffix)."""
    return "".join(render_parts(f, fmt))


def to_metric(f: Family) -> Metric:
    """The family as a prometheus_client ``Metric`` (the slow, obviously-right path; for collect() and tests)."""
    m = Metric(f.name, f.help, f.kind)
    sample = f.sample_name
    for labels, v in zip(f.labels.dicts(), f.values.tolist(), strict=True):
        m.add_sample(sample, labels, float(v))
    return m


class SnapshotCollector(Collector, abc.ABC):
    """A collector whose families come from arrays; :class:`MetricsRegistry` renders them with the fast writer."""

    @abc.abstractmethod
    def snapshot(self) -> list[Family]:
        """Every family with values copied now. Called on the event loop; must be cheap and must not block."""

    def collect(self) -> Iterator[Metric]:
        for f in self.snapshot():
            yield to_metric(f)

    def describe(self) -> list[Metric]:
        return []  # families are dynamic; no up-front name-clash checks for them


@dataclass(slots=True)
class _Plain:
    """The ordinary collectors of a registry, as one object with ``collect()`` (what the encoders take)."""

    collectors: list[Collector]

    def collect(self) -> Iterator[Metric]:
        for c in list(self.collectors):
            yield from c.collect()


_EOF = "# EOF\n"
_EOF_BYTES = _EOF.encode()
CHUNK_SAMPLES = 8192
"""Samples rendered per worker-thread hop when streaming: ~1 MB of text, a few milliseconds of work."""


def _om_latest(collectors: Collector) -> bytes:
    """prometheus_client's OpenMetrics encoder (untyped there); takes anything with ``collect()``."""
    body: bytes = om_exposition.generate_latest(collectors)  # type: ignore[no-untyped-call]
    return body


class MetricsRegistry(CollectorRegistry):
    """A ``CollectorRegistry`` that renders :class:`SnapshotCollector` s with the fast writer.

    Ordinary collectors registered here are rendered by prometheus_client. Scrape hooks (e.g. refreshing the
    kubelet's pod assignments) run before each scrape, concurrently, each bounded by ``hook_timeout``; a
    failing or slow hook is logged and the scrape goes on with what the collectors already have.
    """

    def __init__(self, *, hook_timeout: float = 1.0, pause: Callable[[], None] = _no_pause) -> None:
        super().__init__(auto_describe=False)
        self._snapshotters: list[SnapshotCollector] = []
        self._plain = _Plain([])
        self._hooks: list[ScrapeHook] = []
        self.hook_timeout = hook_timeout
        self.pause = pause
        """Called in the render worker before each slice of a family (:data:`RENDER_SLICE_SAMPLES`): the daemon's
        waits while a pushed hard fault's ListAndWatch message is sent (a scrape at 16,384 cores is ~50 ms of
        GIL-holding string work, and the message's loop turns would otherwise each wait for the GIL behind it)."""

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if isinstance(collector, SnapshotCollector):
            self._snapshotters.append(collector)
        else:
            self._plain.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        for group in (self._snapshotters, self._plain.collectors):
            if collector in group:
                group.remove(collector)  # type: ignore[arg-type]  # one of the two lists holds it

    def add_scrape_hook(self, hook: ScrapeHook) -> None:
        """Run ``hook()`` before every scrape (awaited, with a timeout)."""
        self._hooks.append(hook)

    async def _run_hooks(self) -> None:
        async def bounded(hook: ScrapeHook) -> None:
            try:
                async with asyncio.timeout(self.hook_timeout):
                    await hook()
            except Exception as e:  # noqa: BLE001 - a hook failing must not fail the scrape; it is logged
                log.warning("scrape_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)), error=repr(e))

        if self._hooks:
            await asyncio.gather(*(bounded(h) for h in self._hooks))

    def snapshot(self) -> list[Family]:
        """Every array-backed family now (on the event loop)."""
        return [f for c in self._snapshotters for f in c.snapshot()]

    def _plain_part(self, fmt: Format) -> bytes:
        if fmt is Format.OPENMETRICS:
            return _om_latest(self._plain).removesuffix(_EOF_BYTES)
        return text_exposition.generate_latest(self._plain)

    def render(self, families: Sequence[Family], fmt: Format) -> bytes:
        """The whole exposition at once: ``families``, the ordinary collectors, the OpenMetrics EOF."""
        parts = ["".join(render_parts(f, fmt, self.pause)).encode() for f in families]
        parts.append(self._plain_part(fmt))
        if fmt is Format.OPENMETRICS:
            parts.append(_EOF_BYTES)
        return b"".join(parts)

    async def scrape(self, fmt: Format) -> bytes:
        """Run the hooks, snapshot on the loop, render in a worker thread; the whole body."""
        await self._run_hooks()
        families = self.snapshot()
        return await asyncio.to_thread(self.render, families, fmt)

    async def prepare(self) -> list[Family]:
        """Run the hooks and snapshot (on the loop): the first half of :meth:`chunks`, which can fail cleanly."""
        await self._run_hooks()
        return self.snapshot()

    async def chunks(
        self, families: Sequence[Family], fmt: Format, *, encode: Callable[[bytes], bytes] | None = None
    ) -> AsyncIterator[bytes]:
        """The exposition of ``families`` (then the ordinary collectors) as a stream of chunks.

        Each batch of about :data:`CHUNK_SAMPLES` samples is rendered (and passed through ``encode``, e.g. a
        compressor, which must accept being called from one thread at a time) in a worker thread. Streaming
        keeps the memory of a scrape to one batch, instead of a whole body that at 16k cores runs to tens of MB
        of short-lived strings: freed, but left in the allocator's arenas as resident memory.
        """
        enc = encode or (lambda b: b)
        batch: list[Family] = []
        size = 0

        def rendered(fams: list[Family]) -> Iterator[bytes]:
            for f in fams:
                yield "".join(render_parts(f, fmt, self.pause)).encode()

        def render_batch(fams: list[Family]) -> bytes:
            text = b"".join(rendered(fams))
            self.pause()  # the compression too (~1-2 ms a batch at level 1)
            return enc(text)

        for f in families:
            batch.append(f)
            size += len(f.values)
            if size >= CHUNK_SAMPLES:
                yield await asyncio.to_thread(render_batch, batch)
                batch, size = [], 0

        def render_tail(fams: list[Family]) -> bytes:
            tail = b"".join(rendered(fams)) + self._plain_part(fmt)
            self.pause()
            return enc(tail + _EOF_BYTES if fmt is Format.OPENMETRICS else tail)

        yield await asyncio.to_thread(render_tail, batch)


def encode_plain(registry: CollectorRegistry, fmt: Format) -> bytes:
    """Any registry through prometheus_client's own encoders (for registries that are not ours)."""
    if fmt is Format.OPENMETRICS:
        return _om_latest(registry)
    return text_exposition.generate_latest(registry)
