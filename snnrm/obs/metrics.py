"""Prometheus metrics of one node, rendered from the telemetry pipeline's arrays on every scrape.

Following prometheus/client_python's custom-collector pattern, no values are kept between scrapes: the arrays the
telemetry pipeline maintains are the source of truth. What *is* kept is static: the label text of every series
(the topology never changes), built once per granularity, so that a scrape is bulk value formatting (see
:mod:`snnrm.obs.exposition`). Names follow the Prometheus conventions (reference §5.3): ``snnrm_`` prefix, base
units, ``_total`` counters, ``_ratio`` for 0-1, ``_info`` for metadata.

Granularity (``--metrics-granularity``) sets the unit of the per-core families:

* ``core``: one series per neuron core, labelled ``node, chip, core`` (the device ID), plus ``namespace, pod,
  container`` on cores the kubelet assigned to a container (from the PodResources API, when available);
* ``group`` (default): one per router domain (the cores sharing a router, an asynchronous unit; on chips with one
  core per router, as Loihi 2, that is one core), labelled ``node, chip, group``;
* ``chip``: one per chip, labelled ``node, chip``.

Aggregation keeps ``sum()``/``max()`` meaningful at every level: event counts, queue depths and healthy cores are
summed, spike-transfer efficiency is the spike-weighted mean, queue fill is total depth over total capacity and
link utilisation is the highest of the links aggregated. Per-chip and per-node families are the same at every
granularity. This module imports no layer above ``obs``: the node, plugins and pod assignments come in through
the small Protocols below.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from snnrm import __version__
from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE, DeviceSet, ThroughputBlocks, core_counts
from snnrm.core.health import Health, HealthReason
from snnrm.core.monitor import NodeMonitor
from snnrm.core.topology import FloatArray, IntArray, Topology
from snnrm.obs.exposition import Family, Labels, SnapshotCollector

Granularity = Literal["core", "group", "chip"]
GRANULARITIES: tuple[Granularity, ...] = ("core", "group", "chip")
ContainerRef = tuple[str, str, str]
"""(namespace, pod, container) a device is assigned to."""
Owners = Mapping[str, Mapping[str, ContainerRef]]
"""resource name -> device ID -> the container holding it."""


class MetricsSource(Protocol):
    """What the collector reads from the node service (:class:`snnrm.node.NodeService` satisfies it)."""

    @property
    def monitor(self) -> NodeMonitor: ...

    @property
    def blocks(self) -> ThroughputBlocks: ...

    @property
    def frame_errors(self) -> int:
        """Telemetry reads that raised."""
        ...

    @property
    def last_sample_wall(self) -> float:
        """``time.monotonic()`` of the last folded frame (NaN before the first)."""
        ...

    def devices(self) -> Mapping[str, DeviceSet]: ...

    def core_counts(self) -> dict[str, int]:
        """Neuron cores by meaning (:func:`snnrm.core.devices.core_counts`)."""
        ...


class PluginView(Protocol):
    """A device plugin's registration state (:class:`snnrm.kubelet.plugin.DevicePlugin` satisfies it)."""

    @property
    def resource(self) -> str: ...

    @property
    def registrations(self) -> int: ...

    @property
    def registered(self) -> asyncio.Event: ...


class PodAttribution(Protocol):
    """Which container holds which device (:class:`snnrm.kubelet.podresources.PodResourcesClient`)."""

    @property
    def available(self) -> bool:
        """The kubelet's PodResources socket is there."""
        ...

    @property
    def request_counts(self) -> Mapping[str, int]:
        """PodResources ``List`` calls by result (``ok``, ``error``, ``rate_limited``)."""
        ...

    def owners(self) -> Owners:
        """The latest known assignments (empty when unknown); must not block."""
        ...


_REASONS = [r for r in HealthReason if r.value]
_REASON_NAMES = [*(HealthReason.names(int(r))[0] for r in _REASONS), "recovering"]
_STATES = [(h, h.name.lower()) for h in Health]


@dataclass(frozen=True, slots=True, eq=False)
class _Level:
    """One granularity: the unit of every core, unit label text, and how links aggregate at this level."""

    granularity: Granularity
    unit_of_core: IntArray | None
    """Unit index of each core (None: one unit per core)."""
    n_units: int
    cores_per_unit: int
    """Consecutive cores per unit (units are contiguous runs of global core indices)."""
    units: Labels
    link_order: IntArray | None
    """Links sorted by series (None: one series per link, in link order)."""
    link_starts: IntArray
    links: Labels


def _link_series(keys: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Group links by ``keys``: sort order, start of each group in it, and each group's key."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return order.astype(np.int64), starts.astype(np.int64), sorted_keys[starts]


def _build_level(t: Topology, granularity: Granularity, node: str) -> _Level:
    """Label text of every unit and link series at ``granularity`` (rows rebuilt lazily, see :class:`Labels`)."""
    chip_str = [str(c) for c in range(t.n_chips)]
    src_chip = t.router_chip[t.link_src]
    inter = t.link_inter_chip.astype(np.int64)
    inter_str = ("false", "true")
    if granularity == "core":
        chip_of, src, dst = t.chip_of.tolist(), t.link_src.tolist(), t.link_dst.tolist()
        link_chip, link_inter = src_chip.tolist(), inter.tolist()
        units = Labels.lazy(
            ("node", "chip", "core"), lambda: ((node, chip_str[c], i) for c, i in zip(chip_of, t.ids, strict=True))
        )
        links = Labels.lazy(
            ("node", "chip", "link", "inter_chip"),
            lambda: (
                (node, chip_str[c], f"r{s}-r{d}", inter_str[x])
                for c, s, d, x in zip(link_chip, src, dst, link_inter, strict=True)
            ),
        )
        return _Level(granularity, None, t.n_cores, 1, units, None, np.arange(t.n_links, dtype=np.int64), links)
    if granularity == "group":
        rpc = t.routers_per_chip
        units = Labels.lazy(
            ("node", "chip", "group"), lambda: ((node, chip_str[r // rpc], str(r % rpc)) for r in range(t.n_routers))
        )
        order, starts, keys = _link_series(t.link_src * 2 + inter)
        key_list = keys.tolist()
        links = Labels.lazy(
            ("node", "chip", "group", "inter_chip"),
            lambda: ((node, chip_str[(k // 2) // rpc], str((k // 2) % rpc), inter_str[k % 2]) for k in key_list),
        )
        return _Level(granularity, t.router, t.n_routers, t.geometry.cores_per_router, units, order, starts, links)
    units = Labels.build(("node", "chip"), ((node, c) for c in chip_str))
    order, starts, keys = _link_series(src_chip * 2 + inter)
    links = Labels.build(
        ("node", "chip", "inter_chip"), ((node, chip_str[k // 2], inter_str[k % 2]) for k in keys.tolist())
    )
    return _Level(granularity, t.chip_of, t.n_chips, t.geometry.cores, units, order, starts, links)


@dataclass(frozen=True, slots=True, eq=False)
class _MonitorOnly:
    """A :class:`MetricsSource` over a bare monitor (tests, tools): no read errors, no wall-clock sample time."""

    monitor: NodeMonitor
    devices_of: Callable[[], Mapping[str, DeviceSet]]
    frame_errors: int = 0
    last_sample_wall: float = float("nan")

    @property
    def blocks(self) -> ThroughputBlocks:
        return self.monitor.blocks

    def devices(self) -> Mapping[str, DeviceSet]:
        return self.devices_of()

    def core_counts(self) -> dict[str, int]:
        return core_counts(self.monitor.core_healthy, None)


class NodeCollector(SnapshotCollector):
    """Per-unit, per-chip and per-node series of one node; see the module docstring for the families.

    :param source: the node service (anything with :class:`MetricsSource`'s attributes), or a bare
        :class:`NodeMonitor` together with ``devices`` (what it advertised).
    :param node: value of the ``node`` label.
    :param granularity: ``core`` (the default here; the daemon's own default, from its config, is ``group``),
        ``group`` or ``chip``.
    :param plugins: device plugins whose registrations are exported.
    :param pods: container assignments for attribution labels; None when the PodResources API is not used.
    :param clock: the clock ``last_sample_wall`` is on.
    """

    def __init__(
        self,
        source: MetricsSource | NodeMonitor,
        devices: Callable[[], Mapping[str, DeviceSet]] | None = None,
        *,
        node: str,
        granularity: Granularity = "core",
        plugins: Sequence[PluginView] = (),
        pods: PodAttribution | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(source, NodeMonitor):
            source = _MonitorOnly(source, devices if devices is not None else source.devices)
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        node_name = node  # the label value; ``node`` reads better at call sites, ``node_name`` below
        self._node: MetricsSource = source
        self._name = node_name
        self._plugins = plugins
        self._pods = pods
        self._clock = clock
        t = source.monitor.topology
        self._t = t
        self._level = _build_level(t, granularity, node_name)
        self._chips = Labels.build(("node", "chip"), ((node_name, str(c)) for c in range(t.n_chips)))
        self._node_labels = Labels.single(node=node_name)
        self._chip_states = Labels.build(
            ("node", "chip", "state"), ((node_name, str(c), s) for c in range(t.n_chips) for _, s in _STATES)
        )
        self._chip_reasons = Labels.build(
            ("node", "chip", "reason"), ((node_name, str(c), r) for c in range(t.n_chips) for r in _REASON_NAMES)
        )
        self._build = Labels.single(node=node_name, version=__version__, python=platform.python_version())
        self._unit_capacity = self._per_unit(t.core_queue_capacity)
        self._cores_per_unit = self._per_unit(np.ones(t.n_cores))
        self._nominal_per_chip = np.bincount(t.chip_of, weights=t.core_nominal_keps, minlength=t.n_chips) * 1e3
        self._block_index: dict[str, int] = {}
        self._blocks_seen: ThroughputBlocks | None = None
        self._owners_seen: Owners | None = None
        self._owned: tuple[Labels, Family | None] = (self._level.units, None)

    @property
    def granularity(self) -> Granularity:
        return self._level.granularity

    # -- aggregation -----------------------------------------------------------------------------------------

    def _per_unit(self, x: npt.NDArray[np.float64]) -> FloatArray:
        lv = self._level
        if lv.unit_of_core is None:
            return np.array(x, dtype=np.float64)
        out: FloatArray = np.asarray(x, dtype=np.float64).reshape(lv.n_units, lv.cores_per_unit).sum(axis=1)
        return out

    def _per_chip(self, x: npt.NDArray[np.float64]) -> FloatArray:
        t = self._t
        out: FloatArray = np.asarray(x, dtype=np.float64).reshape(t.n_chips, t.geometry.cores).sum(axis=1)
        return out

    def _links(self, util: FloatArray) -> FloatArray:
        lv = self._level
        if lv.link_order is None:
            return np.array(util, dtype=np.float64)
        if not len(util):
            return np.zeros(0)
        return np.maximum.reduceat(util[lv.link_order], lv.link_starts)

    # -- pod attribution -------------------------------------------------------------------------------------

    def _block_ids(self) -> dict[str, int]:
        blocks = self._node.blocks
        if blocks is not self._blocks_seen:
            self._block_index = {b: i for i, b in enumerate(blocks.ids)}
            self._blocks_seen = blocks
        return self._block_index

    def _attribution(self) -> tuple[Labels, Family | None]:
        """Unit labels with namespace/pod/container on assigned cores, and per-container device counts.

        Recomputed only when the assignments object changes (the client swaps in a new one per refresh).
        """
        if self._pods is None:
            return self._level.units, None
        owners = self._pods.owners()
        if owners is self._owners_seen:
            return self._owned
        t = self._t
        extra: dict[int, tuple[tuple[str, str], ...]] = {}
        counts: Counter[tuple[str, int, ContainerRef]] = Counter()
        for device, ref in owners.get(NEURON_CORE, {}).items():
            i = t.index_of.get(device)
            if i is None:
                continue  # an ID we do not serve (an older topology); never guess
            counts[(NEURON_CORE, int(t.chip_of[i]), (ref[0], ref[1], ref[2]))] += 1
            extra[i] = (("namespace", ref[0]), ("pod", ref[1]), ("container", ref[2]))
        blocks = self._node.blocks
        index = self._block_ids()
        for device, ref in owners.get(EVENT_THROUGHPUT, {}).items():
            b = index.get(device)
            if b is not None:
                counts[(EVENT_THROUGHPUT, int(blocks.chip_of_block[b]), (ref[0], ref[1], ref[2]))] += 1
        units = self._level.units.with_extra(extra) if self._level.granularity == "core" else self._level.units
        keys = sorted(counts)
        family = Family(
            "snnrm_container_devices",
            "gauge",
            "Devices of a resource on a chip assigned to a container (kubelet PodResources API).",
            Labels.build(
                ("node", "resource", "chip", "namespace", "pod", "container"),
                ((self._name, res, str(chip), *ref) for res, chip, ref in keys),
            ),
            np.array([counts[k] for k in keys], dtype=np.int64),
        )
        self._owners_seen = owners
        self._owned = (units, family)
        return self._owned

    # -- the scrape ------------------------------------------------------------------------------------------

    def snapshot(self) -> list[Family]:
        node = self._node
        m = node.monitor
        t = self._t
        r = m.rates.rates
        lv = self._level
        units, containers = self._attribution()
        state = m.health.state.copy()
        reasons = m.health.reasons.copy()
        healthy = state == Health.HEALTHY
        depth = self._per_unit(r.queue_depth)
        if lv.unit_of_core is None:
            eff = np.array(r.efficiency, dtype=np.float64)
            healthy_units: npt.NDArray[np.int64] = healthy.astype(np.int64)
        else:
            w = np.nan_to_num(r.spikes_sent_rate, nan=0.0).clip(0.0, None)
            sent = self._per_unit(w)
            mean = self._per_unit(r.efficiency) / self._cores_per_unit
            eff = np.divide(self._per_unit(r.efficiency * w), sent, out=mean, where=sent > 0)
            healthy_units = self._per_unit(healthy).astype(np.int64)
        fill = np.divide(depth, self._unit_capacity, out=np.zeros_like(depth), where=self._unit_capacity > 0)
        name = self._name
        fams: list[Family] = [
            Family("snnrm_core_event_queue_depth", "gauge", "Events waiting in input queues (smoothed).", units, depth),
            Family(
                "snnrm_core_event_queue_fill_ratio",
                "gauge",
                "Queued events over queue capacity, 0-1 (smoothed).",
                units,
                fill,
            ),
            Family(
                "snnrm_core_spike_transfer_efficiency_ratio",
                "gauge",
                "Delivered over sent spikes, 0-1 (smoothed; spike-weighted mean above core granularity).",
                units,
                eff,
            ),
        ]
        for counter, what in (
            ("events_processed", "Events processed"),
            ("events_dropped", "Events dropped (queue overflow or failure)"),
            ("spikes_sent", "Spikes sent towards other cores"),
            ("spikes_delivered", "Spikes sent that reached their destination"),
        ):
            fams.append(
                Family(
                    f"snnrm_core_{counter}",
                    "counter",
                    f"{what}, from hardware counters.",
                    units,
                    self._per_unit(r.counters[counter]),
                )
            )
        fams.append(
            Family(
                "snnrm_core_healthy",
                "gauge",
                "Healthy neuron cores: 1/0 per core at core granularity, the count per group or chip otherwise.",
                units,
                healthy_units,
            )
        )
        if lv.granularity == "core":
            bad = np.flatnonzero(~healthy)
            cols = ("node", "chip", "core", "state", "reason")
            rows = [
                (
                    name,
                    str(int(t.chip_of[i])),
                    t.ids[i],
                    Health(int(state[i])).name.lower(),
                    ",".join(HealthReason.names(int(reasons[i]))) or "recovering",
                )
                for i in bad.tolist()
            ]
            fams.append(
                Family(
                    "snnrm_core_unhealthy",
                    "info",
                    "Why a core is not Healthy: one series per such core (state and reasons as labels).",
                    Labels.build(cols, rows),
                    np.ones(len(rows), dtype=np.int64),
                )
            )
        fams.append(
            Family(
                "snnrm_link_utilization_ratio",
                "gauge",
                "Load of directed mesh links over the last sample, 0-1 of capacity: per link at core granularity, "
                "the highest of the links leaving the group or chip otherwise.",
                lv.links,
                self._links(np.asarray(m.link_utilization, dtype=np.float64)),
            )
        )
        fams.extend(self._chip_families(m, state, reasons))
        fams.extend(self._node_families(m))
        if containers is not None:
            fams.append(containers)
        return fams

    def _chip_families(self, m: NodeMonitor, state: IntArray, reasons: IntArray) -> list[Family]:
        t = self._t
        chips = self._chips
        by_state = np.stack([self._per_chip(state == h) for h, _ in _STATES], axis=1).astype(np.int64).ravel()
        bad = state != Health.HEALTHY
        by_reason = [self._per_chip(bad & ((reasons & int(r)) != 0)) for r in _REASONS]
        by_reason.append(self._per_chip(bad & (reasons == 0)))
        link_failed_chip = np.bincount(
            t.router_chip[t.link_src], weights=np.asarray(m.link_failed, dtype=np.float64), minlength=t.n_chips
        )
        age = m.last_frame_time - m.rates.rates.last_valid
        chip_age = age.reshape(t.n_chips, t.geometry.cores).max(axis=1)
        advertised = m.capacity.healthy_per_chip * self._node.blocks.block_keps * 1e3
        return [
            Family(
                "snnrm_chip_cores", "gauge", "Neuron cores on the chip by health state.", self._chip_states, by_state
            ),
            Family(
                "snnrm_chip_degraded_cores",
                "gauge",
                "Cores not Healthy on the chip by reason (a core with several reasons counts under each).",
                self._chip_reasons,
                np.stack(by_reason, axis=1).astype(np.int64).ravel(),
            ),
            Family(
                "snnrm_chip_failed_links",
                "gauge",
                "Mesh links leaving the chip's routers that hardware reports failed.",
                chips,
                link_failed_chip.astype(np.int64),
            ),
            Family(
                "snnrm_chip_telemetry_age_seconds",
                "gauge",
                "Largest age among the chip's cores of their last accepted sample (backend clock; +Inf: none yet).",
                chips,
                chip_age,
            ),
            Family(
                "snnrm_chip_capacity_nominal_events_per_second",
                "gauge",
                "Event throughput the chip's cores are rated for.",
                chips,
                self._nominal_per_chip,
            ),
            Family(
                "snnrm_chip_capacity_effective_events_per_second",
                "gauge",
                "Event throughput the chip can take now: healthy cores scaled by measured efficiency and queue "
                "headroom.",
                chips,
                np.bincount(t.chip_of, weights=m.effective_keps(), minlength=t.n_chips) * 1e3,
            ),
            Family(
                "snnrm_chip_capacity_advertised_events_per_second",
                "gauge",
                "Event throughput behind the chip's Healthy snnrm.io/event-throughput devices.",
                chips,
                advertised.astype(np.float64),
            ),
        ]

    def _node_families(self, m: NodeMonitor) -> list[Family]:
        node = self._node
        name = self._name
        one = self._node_labels
        devices = sorted(node.devices().items())
        core_counts = {k: v for k, v in node.core_counts().items() if k != "total"}
        rows = [(name, res, s) for res, _ in devices for s in ("healthy", "unhealthy")]
        counts = [v for _, d in devices for v in (d.healthy_count, len(d.ids) - d.healthy_count)]
        fams = [
            Family(
                "snnrm_resource_devices",
                "gauge",
                "Devices advertised to the kubelet by resource and health.",
                Labels.build(("node", "resource", "state"), rows),
                np.array(counts, dtype=np.int64),
            ),
            Family(
                "snnrm_neuron_cores",
                "gauge",
                "Neuron cores by meaning: healthy (telemetry) = allocatable (advertised to the kubelet) + "
                "withheld_for_remap (healthy but lent to a live remap); unhealthy = total - healthy.",
                Labels.build(("node", "state"), [(name, k) for k in core_counts]),
                np.array(list(core_counts.values()), dtype=np.int64),
            ),
            Family(
                "snnrm_event_throughput_device_events_per_second",
                "gauge",
                "Event throughput one snnrm.io/event-throughput device stands for.",
                one,
                np.array([node.blocks.block_keps * 1e3]),
            ),
            Family("snnrm_telemetry_frames", "counter", "Telemetry frames folded in.", one, np.array([m.frames])),
            Family(
                "snnrm_telemetry_rejected_frames",
                "counter",
                "Telemetry frames rejected whole (wrong shape).",
                one,
                np.array([m.rejected_frames]),
            ),
            Family(
                "snnrm_telemetry_rejected_samples",
                "counter",
                "Core samples rejected as NaN, negative, stale or impossible.",
                one,
                np.array([int(m.rates.rejected_samples.sum())]),
            ),
            Family(
                "snnrm_telemetry_read_errors",
                "counter",
                "Telemetry reads from the backend that failed.",
                one,
                np.array([node.frame_errors]),
            ),
            Family(
                "snnrm_telemetry_last_frame_age_seconds",
                "gauge",
                "Seconds since the last telemetry frame was folded in (NaN before the first).",
                one,
                np.array([self._clock() - node.last_sample_wall]),
            ),
        ]
        if self._plugins:
            plugins = sorted(self._plugins, key=lambda p: p.resource)
            labels = Labels.build(("node", "resource"), ((name, p.resource) for p in plugins))
            fams += [
                Family(
                    "snnrm_device_plugin_registrations",
                    "counter",
                    "Successful registrations with the kubelet.",
                    labels,
                    np.array([p.registrations for p in plugins], dtype=np.int64),
                ),
                Family(
                    "snnrm_device_plugin_registered",
                    "gauge",
                    "1 while the device plugin is registered with the current kubelet.",
                    labels,
                    np.array([p.registered.is_set() for p in plugins], dtype=np.int64),
                ),
            ]
        if self._pods is not None:
            counts_by = sorted(self._pods.request_counts.items())
            fams += [
                Family(
                    "snnrm_pod_resources_available",
                    "gauge",
                    "1 if the kubelet's PodResources socket is present (pod attribution on), else 0.",
                    one,
                    np.array([int(self._pods.available)]),
                ),
                Family(
                    "snnrm_pod_resources_requests",
                    "counter",
                    "PodResources List calls by result.",
                    Labels.build(("node", "result"), ((name, k) for k, _ in counts_by)),
                    np.array([v for _, v in counts_by], dtype=np.int64),
                ),
            ]
        fams.append(Family("snnrm_build", "info", "Version of snnrm and Python.", self._build, np.ones(1, np.int64)))
        return fams
