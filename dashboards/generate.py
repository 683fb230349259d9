"""snnrm's Grafana dashboards, as code: ``python dashboards/generate.py`` writes ``dashboards/json/*.json``.

Built with grafana-foundation-sdk (Grafana's own typed builders, generated from the dashboard schema), so a wrong
field name or type is a mypy error here, not a blank panel in production. The JSON is the classic dashboard model
(schemaVersion from the SDK), provisioned by file or by the Grafana sidecar from ConfigMaps (reference §6).

Conventions every dashboard follows (checked by tests/integration/test_dashboards.py):

* a ``datasource`` variable of type prometheus, and every panel, target, variable and annotation uses
  ``${datasource}``, never a fixed uid (the kube-prometheus-stack convention);
* ``node``, ``chip`` and ``job`` variables (multi-value) used as ``node=~"$node"`` etc.; ``job`` is the
  split-learning job (metric label ``snn_job``: Prometheus owns the ``job`` label, the scrape job);
* fleet size: ``node`` defaults to the first node (no "All" option) on every board that reads per-core or per-link
  series; only the cluster overview, whose queries read per-chip series and the recording rules of
  rules/snnrm.rules.yaml (``node_chip:...``), offers "All" and starts there. ``chip`` and ``job`` offer "All"
  (``.*``): within one node they are few;
* per-chip panels group by node and chip (two nodes' chip 0 are two lines);
* every panel has a unit; uids are fixed strings (links and bookmarks survive regeneration);
* a panel whose metric the daemon does not export yet says so in its description (``PENDING`` below), so the
  live test can tell "pending" from "broken".

``python dashboards/generate.py --check`` exits 1 when the committed JSON differs from what this code generates.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, dashboard, heatmap, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dashboard_m
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode, HeatmapColorScale

OUT = Path(__file__).resolve().parent / "json"
DATASOURCE = common_m.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = 'node=~"$node"'
CHIP = 'node=~"$node", chip=~"$chip"'
RATE = "$__rate_interval"
# Recording rules of rules/snnrm.rules.yaml: per-(node, chip) aggregates of the per-core and per-link families.
PROCESSED = "node_chip:snnrm_core_events_processed:rate2m"
DROPPED = "node_chip:snnrm_core_events_dropped:rate2m"
SENT = "node_chip:snnrm_core_spikes_sent:rate2m"
DELIVERED = "node_chip:snnrm_core_spikes_delivered:rate2m"
DEPTH = "node_chip:snnrm_core_event_queue_depth:sum"
EFF_MIN = "node_chip:snnrm_core_spike_transfer_efficiency_ratio:min"
EFF_AVG = "node_chip:snnrm_core_spike_transfer_efficiency_ratio:avg"
EFF_P10 = "node_chip:snnrm_core_spike_transfer_efficiency_ratio:p10"
LINK_MAX = "node_chip_inter_chip:snnrm_link_utilization_ratio:max"

PENDING: dict[str, str] = {}
"""Metrics (or label matchers) a panel may use that the running daemon does not export yet -> what will export
them. A panel using one is marked in its description; tests/integration/test_dashboards.py fails when such a panel
has data (remove the entry then) and when any other panel has none. Empty: the daemon exports every metric the
boards read."""

FLEET_BOARDS = ("snnrm-cluster-overview",)
"""Boards whose node variable offers "All" and starts there: their queries read only per-chip and per-node series
and recording rules, never a per-core or per-link family (the dashboard test checks)."""


def pending_in(expr: str) -> list[str]:
    """The ``PENDING`` keys an expression uses (metric names as whole words, matchers as written)."""
    return [k for k in PENDING if re.search(rf"(?<![A-Za-z0-9_]){re.escape(k)}(?![A-Za-z0-9_])", expr)]


@dataclass
class Board:
    """One dashboard being built: numbering of panels and refIds, and the pending notes."""

    uid: str
    title: str
    description: str
    tags: list[str]
    variables: Sequence[str] = ("node", "chip", "job")
    builder: dashboard.Dashboard = field(init=False)
    _next_id: int = field(default=1, init=False)
    _annotation_extra: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        fleet = self.uid in FLEET_BOARDS
        self.builder = (
            dashboard.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags(["snnrm", *self.tags])
            .editable()
            .timezone("browser")
            .time("now-1h", "now")
            .refresh("30s")
            .tooltip(dashboard_m.DashboardCursorSync.CROSSHAIR)
            .timepicker(dashboard.TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m"]))
            .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        )
        queries = {
            "node": "label_values(snnrm_build_info, node)",
            "chip": 'label_values(snnrm_chip_cores{node=~"$node"}, chip)',
            "job": "label_values(snnrm_job_stage_info, snn_job)",
        }
        labels = {"node": "Node", "chip": "Chip", "job": "Split-learning job"}
        for name in self.variables:
            var = (
                dashboard.QueryVariable(name)
                .label(labels[name])
                .datasource(DATASOURCE)
                .query({"query": queries[name], "refId": f"{name}-variable"})
                .refresh(dashboard_m.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dashboard_m.VariableSort.NATURAL_ASC)
                .multi(True)
            )
            # Grafana starts a variable that offers "All" on "All": at 100 nodes that is every core of the fleet
            # per query. Without it, Grafana starts on the first value (one node); pick more by hand.
            if name != "node" or fleet:
                var.include_all(True).all_value(".*")
            else:
                var.include_all(False)
            self.builder.with_variable(var)

    def row(self, title: str) -> None:
        self.builder.with_row(dashboard.Row(title).id(self._take_id()))

    def _take_id(self) -> int:
        n = self._next_id
        self._next_id += 1
        return n

    def add(self, panel: Any, targets: Sequence[tuple[str, str]], *, description: str, unit: str) -> None:
        """Finish ``panel`` (id, datasource, targets, unit, pending note) and place it."""
        names = sorted({k for expr, _ in targets for k in pending_in(expr)})
        pending = sorted({PENDING[k] for k in names})
        if pending:
            description += f" PENDING: needs {', '.join(names)}, from {'; '.join(pending)}."
        panel.id(self._take_id()).datasource(DATASOURCE).description(description).unit(unit)
        for i, (expr, legend) in enumerate(targets):
            panel.with_target(
                prometheus.Dataquery()
                .expr(expr)
                .legend_format(legend)
                .ref_id(chr(ord("A") + i))
                .datasource(DATASOURCE)
                .range()
            )
        self.builder.with_panel(panel)

    def annotation(self, name: str, expr: str, *, title: str, text: str, color: str) -> None:
        """A Prometheus annotation: a marker wherever ``expr`` has a value (e.g. a counter increased)."""
        self.builder.annotation(
            dashboard.AnnotationQuery().name(name).datasource(DATASOURCE).enable(True).icon_color(color).expr(expr)
        )
        # Fields of the Prometheus annotation editor the SDK's generic AnnotationQuery does not model.
        self._annotation_extra[name] = {
            "step": "60s",
            "titleFormat": title,
            "textFormat": text,
            "useValueForTime": False,
        }

    def build(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder, sort_keys=True))
        for ann in out.get("annotations", {}).get("list", []):
            ann.update(self._annotation_extra.get(ann["name"], {}))
        out["id"] = None
        return out


# -- panel constructors ---------------------------------------------------------------------------------------------


def ts(
    title: str,
    *,
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    lo: float | None = None,
    hi: float | None = None,
    legend_right: bool = False,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .span(w)
        .height(h)
        .line_width(1)
        .fill_opacity(10 if not stack else 60)
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(common_m.LegendDisplayMode.TABLE if legend_right else common_m.LegendDisplayMode.LIST)
            .placement(common_m.LegendPlacement.RIGHT if legend_right else common_m.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"] if legend_right else [])
        )
        .tooltip(common.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI).sort(common_m.SortOrder.DESCENDING))
    )
    if stack:
        p.stacking(common.StackingConfig().mode(common_m.StackingMode.NORMAL))
    if lo is not None:
        p.min(lo)
    if hi is not None:
        p.max(hi)
    return p


def big(title: str, *, w: int = 4, h: int = 4, thresholds: list[tuple[float | None, str]] | None = None) -> stat.Panel:
    steps = thresholds or [(None, "green")]
    return (
        stat.Panel()
        .title(title)
        .span(w)
        .height(h)
        .graph_mode(common_m.BigValueGraphMode.AREA)
        .color_mode(common_m.BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(
            dashboard.ThresholdsConfig()
            .mode(dashboard_m.ThresholdsMode.ABSOLUTE)
            .steps([dashboard_m.Threshold(value=v, color=c) for v, c in steps])
        )
    )


def bars(title: str, *, w: int = 12, h: int = 8, hi: float | None = None) -> bargauge.Panel:
    p = (
        bargauge.Panel()
        .title(title)
        .span(w)
        .height(h)
        .display_mode(common_m.BarGaugeDisplayMode.GRADIENT)
        .orientation(common_m.VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .min(0)
    )
    if hi is not None:
        p.max(hi)
    return p


def heat(title: str, *, w: int = 24, h: int = 10) -> heatmap.Panel:
    """Rows are the series (one per core or group), colour is the value: a queue-depth map of the mesh over time."""
    return (
        heatmap.Panel()
        .title(title)
        .span(w)
        .height(h)
        .calculate(False)
        .color(
            heatmap.HeatmapColorOptions()
            .mode(HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(HeatmapColorScale.LINEAR)
            .min(0)
            .max(1)
            .steps(64)
        )
        .with_transformation(
            dashboard_m.DataTransformerConfig(id_val="joinByField", options={"byField": "Time", "mode": "outer"})
        )
    )


# -- the dashboards ---------------------------------------------------------------------------------------------


def cluster_overview() -> Board:
    b = Board(
        "snnrm-cluster-overview",
        "snnrm / Cluster overview",
        "Every snnrm node: chips, healthy vs total neuron cores, event-throughput capacity, allocations, dropped "
        "events and firing snnrm alerts.",
        ["overview"],
    )
    b.row("Fleet")
    b.add(
        big("Nodes up"),
        [('count(up{job="snnrm"} == 1)', "nodes")],
        description="snnrm daemons Prometheus scrapes successfully.",
        unit="short",
    )
    b.add(
        big("Chips"),
        [(f"count(count by (node, chip) (snnrm_chip_cores{{{CHIP}}}))", "chips")],
        description="Neuromorphic chips discovered on the selected nodes.",
        unit="short",
    )
    b.add(
        big("Healthy cores", thresholds=[(None, "red"), (0.9, "orange"), (0.99, "green")]),
        [(f'sum(snnrm_chip_cores{{{CHIP}, state="healthy"}}) / sum(snnrm_chip_cores{{{CHIP}}})', "healthy")],
        description="Share of neuron cores that are Healthy (advertised to the kubelet as healthy devices).",
        unit="percentunit",
    )
    b.add(
        big("Effective throughput"),
        [(f"sum(snnrm_chip_capacity_effective_events_per_second{{{CHIP}}})", "eff")],
        description="Event throughput the chips can take now (healthy cores x measured efficiency and queue headroom).",
        unit="si:ev/s",
    )
    b.add(
        big("Firing snnrm alerts", thresholds=[(None, "green"), (1, "red")]),
        [('count(ALERTS{alertname=~"Snnrm.*", alertstate="firing"}) or vector(0)', "alerts")],
        description="Alerts of rules/snnrm.rules.yaml firing now (needs the rules loaded in this Prometheus).",
        unit="short",
    )
    b.add(
        big("Dropped events/s", thresholds=[(None, "green"), (1, "orange")]),
        [(f"sum({DROPPED}{{{CHIP}}})", "dropped")],
        description="Events dropped at the cores (queue overflow or failure), all selected chips.",
        unit="si:ev/s",
    )
    b.row("Capacity")
    b.add(
        ts("Neuron cores by health", stack=True),
        [(f"sum by (state) (snnrm_chip_cores{{{CHIP}}})", "{{state}}")],
        description="Neuron cores by health state (healthy, unknown: telemetry quiet, unhealthy).",
        unit="short",
    )
    b.add(
        ts("Event-throughput capacity"),
        [
            (f"sum by (node) (snnrm_chip_capacity_nominal_events_per_second{{{CHIP}}})", "{{node}} nominal"),
            (f"sum by (node) (snnrm_chip_capacity_effective_events_per_second{{{CHIP}}})", "{{node}} effective"),
            (f"sum by (node) (snnrm_chip_capacity_advertised_events_per_second{{{CHIP}}})", "{{node}} advertised"),
        ],
        description="Rated, measured-effective and advertised (healthy snnrm.io/event-throughput devices) event "
        "throughput per node.",
        unit="si:ev/s",
    )
    b.add(
        ts("Devices advertised to the kubelet", legend_right=True),
        [(f"sum by (node, resource, state) (snnrm_resource_devices{{{SEL}}})", "{{node}} {{resource}} {{state}}")],
        description="snnrm.io/neuron-core and snnrm.io/event-throughput devices by health, as ListAndWatch "
        "reports them.",
        unit="short",
    )
    b.add(
        ts("Allocations"),
        [(f"sum by (resource, result) (rate(snnrm_allocations_total{{{SEL}}}[{RATE}]))", "{{resource}} {{result}}")],
        description="Container allocations the kubelet asked for (Allocate), by result.",
        unit="reqps",
    )
    b.row("Traffic")
    b.add(
        ts("Events processed and dropped"),
        [
            (f"sum by (node) ({PROCESSED}{{{CHIP}}})", "{{node}} processed"),
            (f"sum by (node) ({DROPPED}{{{CHIP}}})", "{{node}} dropped"),
        ],
        description="Event throughput actually processed, and events lost, per node (2-minute rates).",
        unit="si:ev/s",
    )
    b.add(
        ts("Spike-transfer efficiency", lo=0, hi=1),
        [
            (f"min by (node) ({EFF_MIN}{{{CHIP}}})", "{{node}} worst"),
            (f"avg by (node) ({EFF_AVG}{{{CHIP}}})", "{{node}} mean"),
        ],
        description="Delivered over sent spikes: the worst core/group and the mean per node.",
        unit="percentunit",
    )
    return b


def node_chip() -> Board:
    b = Board(
        "snnrm-node-chip",
        "snnrm / Node and chip",
        "One node's chips: event-queue fill over the mesh, per-link utilisation, spike-transfer efficiency, health "
        "by reason and capacity. Pick a node and chips.",
        ["node", "chip"],
    )
    b.annotation(
        "Device health changes",
        f'sum by (node, resource) (increase(snnrm_device_health_transitions_total{{{SEL}, to="unhealthy"}}[1m])) > 0',
        title="{{resource}} devices turned unhealthy",
        text="node {{node}}",
        color="red",
    )
    b.row("Event queues")
    b.add(
        heat("Event-queue fill over the mesh (rows: cores or groups)"),
        [(f"snnrm_core_event_queue_fill_ratio{{{CHIP}}}", "{{node}} chip {{chip}} {{core}}{{group}}")],
        description="Queued events over queue capacity per core (or router group, by --metrics-granularity); "
        "a hot spot shows as a bright band.",
        unit="percentunit",
    )
    b.add(
        ts("Fullest queues", lo=0, hi=1),
        [(f"topk(5, snnrm_core_event_queue_fill_ratio{{{CHIP}}})", "{{node}} chip {{chip}} {{core}}{{group}}")],
        description="The five fullest event queues; above 0.8 the daemon marks the core queue-saturated.",
        unit="percentunit",
    )
    b.add(
        ts("Queued events per chip"),
        [(f"{DEPTH}{{{CHIP}}}", "{{node}} chip {{chip}}")],
        description="Events waiting in the input queues of each chip (smoothed).",
        unit="short",
    )
    b.row("Mesh links")
    b.add(
        ts("Link utilisation, hottest 10", lo=0, hi=1, legend_right=True),
        [
            (
                f"topk(10, snnrm_link_utilization_ratio{{{CHIP}}})",
                "{{node}} chip {{chip}} {{link}}{{group}} inter={{inter_chip}}",
            )
        ],
        description="Load of directed mesh links, 0-1 of capacity (per link at core granularity, the hottest "
        "link of each group or chip otherwise).",
        unit="percentunit",
    )
    b.add(
        bars("Hottest link per chip", hi=1),
        [(f"{LINK_MAX}{{{CHIP}}}", "{{node}} chip {{chip}} inter={{inter_chip}}")],
        description="Highest link utilisation on each chip, on-chip and inter-chip links apart.",
        unit="percentunit",
    )
    b.add(
        ts("Failed links"),
        [(f"snnrm_chip_failed_links{{{CHIP}}}", "{{node}} chip {{chip}}")],
        description="Mesh links leaving the chip's routers that hardware reports failed.",
        unit="short",
    )
    b.row("Spikes")
    b.add(
        ts("Spike-transfer efficiency", lo=0, hi=1),
        [
            (f"{EFF_MIN}{{{CHIP}}}", "{{node}} chip {{chip}} worst"),
            (f"{EFF_P10}{{{CHIP}}}", "{{node}} chip {{chip}} p10"),
        ],
        description="Delivered over sent spikes per chip: the worst unit and the 10th percentile (what "
        "SnnrmLowSpikeTransferEfficiency alerts on).",
        unit="percentunit",
    )
    b.add(
        ts("Spikes sent and delivered"),
        [
            (f"{SENT}{{{CHIP}}}", "{{node}} chip {{chip}} sent"),
            (f"{DELIVERED}{{{CHIP}}}", "{{node}} chip {{chip}} delivered"),
        ],
        description="Spike rate leaving the chip's cores and reaching their destination (KSPS/MSPS).",
        unit="si:spikes/s",
    )
    b.add(
        ts("Events processed and dropped"),
        [
            (f"{PROCESSED}{{{CHIP}}}", "{{node}} chip {{chip}} processed"),
            (f"{DROPPED}{{{CHIP}}}", "{{node}} chip {{chip}} dropped"),
        ],
        description="Event throughput per chip (KEPS/MEPS) and events lost (2-minute rates).",
        unit="si:ev/s",
    )
    b.row("Health and capacity")
    b.add(
        ts("Cores by state", stack=True),
        [(f"sum by (node, chip, state) (snnrm_chip_cores{{{CHIP}}})", "{{node}} chip {{chip}} {{state}}")],
        description="Neuron cores of each chip by health state.",
        unit="short",
    )
    b.add(
        ts("Degraded cores by reason", stack=True),
        [(f"sum by (node, reason) (snnrm_chip_degraded_cores{{{CHIP}}}) > 0", "{{node}} {{reason}}")],
        description="Cores not Healthy, by reason (failed, stale, queue-saturated, low-efficiency, link-congested, "
        "recovering); a core with several reasons counts under each.",
        unit="short",
    )
    b.add(
        ts("Capacity per chip"),
        [
            (f"snnrm_chip_capacity_effective_events_per_second{{{CHIP}}}", "{{node}} chip {{chip}} effective"),
            (f"snnrm_chip_capacity_advertised_events_per_second{{{CHIP}}}", "{{node}} chip {{chip}} advertised"),
        ],
        description="Measured effective and advertised event throughput per chip.",
        unit="si:ev/s",
    )
    b.add(
        ts("Telemetry age per chip"),
        [(f"snnrm_chip_telemetry_age_seconds{{{CHIP}}}", "{{node}} chip {{chip}}")],
        description="Age of the oldest last-accepted core sample of each chip (backend clock); growth means a "
        "chip's telemetry went quiet.",
        unit="s",
    )
    return b


def split_learning() -> Board:
    b = Board(
        "snnrm-split-learning",
        "snnrm / Split-learning jobs",
        "Split-learning / split-inference jobs: stages (one pod each) on their cores, per-stage spike latency and "
        "rates, and reallocations. The stage series come from the daemons (placement enabled), no controller needed.",
        ["jobs"],
    )
    stage = 'snn_job=~"$job"'
    moves = f"snnrm_reallocations_total{{{stage}}}"
    # A counter series is born at 1 on the first decision of its (job, stage, reason, action): increase() cannot
    # see that one, so a series that did not exist a minute ago counts as an event too.
    b.annotation(
        "Reallocations",
        f"sum by (namespace, snn_job, stage, reason, action) ((increase({moves}[1m]) > 0) or ({moves} unless "
        f"{moves} offset 1m))",
        title="{{snn_job}} stage {{stage}}: {{action}}",
        text="{{namespace}}: {{reason}}",
        color="orange",
    )
    join = f" * on (namespace, pod) group_left (snn_job, stage) snnrm_job_stage_info{{{stage}}}"
    b.row("Stages")
    b.add(
        ts("Spike latency per stage"),
        [(f"max by (snn_job, stage) (snnrm_stage_spike_latency_seconds{{{stage}}})", "{{snn_job}} stage {{stage}}")],
        description="Spike latency into each stage (route from the previous stage plus queueing delay), as the "
        "node running the stage measures it (today: simulated chips only).",
        unit="s",
    )
    b.add(
        ts("Cores per stage"),
        [(f"max by (node, snn_job, stage) (snnrm_stage_cores{{{stage}}})", "{{snn_job}} stage {{stage}} on {{node}}")],
        description="Neuron cores each stage uses now (a live remap's target, else the cores it was admitted to).",
        unit="short",
    )
    b.add(
        ts("Spike rate per stage"),
        [
            (
                f'sum by (snn_job, stage) (rate(snnrm_core_spikes_sent_total{{{SEL}, pod!=""}}[{RATE}]){join})',
                "{{snn_job}} stage {{stage}}",
            )
        ],
        description="Spikes sent by the cores each stage's pod holds (core series carry namespace/pod at "
        "--metrics-granularity core with the PodResources socket), joined to stages.",
        unit="si:spikes/s",
    )
    b.add(
        ts("Events per pod"),
        [
            (
                f'sum by (namespace, pod) (rate(snnrm_core_events_processed_total{{{SEL}, pod!=""}}[{RATE}]))',
                "{{namespace}}/{{pod}} processed",
            ),
            (
                f'sum by (namespace, pod) (rate(snnrm_core_events_dropped_total{{{SEL}, pod!=""}}[{RATE}]))',
                "{{namespace}}/{{pod}} dropped",
            ),
        ],
        description="Event throughput of the cores each pod holds (needs --metrics-granularity core and the "
        "kubelet PodResources socket).",
        unit="si:ev/s",
    )
    b.add(
        ts("Spike-transfer efficiency per pod", lo=0, hi=1),
        [
            (
                f'min by (namespace, pod) (snnrm_core_spike_transfer_efficiency_ratio{{{SEL}, pod!=""}})',
                "{{namespace}}/{{pod}} worst core",
            )
        ],
        description="Worst delivered/sent spike ratio among each pod's cores: a stage about to be reallocated "
        "shows here first.",
        unit="percentunit",
    )
    b.add(
        bars("Devices held per pod"),
        [
            (
                f"sum by (namespace, pod, resource) (snnrm_container_devices{{{SEL}}})",
                "{{namespace}}/{{pod}} {{resource}}",
            )
        ],
        description="snnrm devices each pod's containers hold, from the kubelet PodResources API.",
        unit="short",
    )
    b.row("Reallocations")
    b.add(
        ts("Reallocation decisions by reason"),
        [(f"sum by (snn_job, reason, action) (increase({moves}[1h]))", "{{snn_job}} {{reason}} {{action}}")],
        description="Decisions in the last hour, from the nodes (live remaps) and the controller (evictions), "
        "by degradation reason and action (SnnrmReallocationStorm fires above 6 moves).",
        unit="short",
    )
    b.add(
        ts("Live remaps per stage"),
        [
            (
                f"sum by (snn_job, stage) (increase(snnrm_stage_remaps_total{{{stage}}}[1h]))",
                "{{snn_job}} stage {{stage}}",
            )
        ],
        description="Live remaps of each stage on its node in the last hour (0 from the stage's admission, so "
        "the first move counts).",
        unit="short",
    )
    return b


def daemon_health() -> Board:
    b = Board(
        "snnrm-daemon",
        "snnrm / Daemon health",
        "snnrm itself: device plugin RPC latency and errors, ListAndWatch, registration, scrape time, telemetry "
        "pipeline errors and the autoscaling hooks.",
        ["daemon"],
        variables=("node",),
    )
    b.row("Device plugin")
    b.add(
        ts("RPC latency (p99, p50)"),
        [
            (
                f"histogram_quantile(0.99, sum by (rpc, le) "
                f"(rate(snnrm_device_plugin_rpc_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                "{{rpc}} p99",
            ),
            (
                f"histogram_quantile(0.5, sum by (rpc, le) "
                f"(rate(snnrm_device_plugin_rpc_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                "{{rpc}} p50",
            ),
        ],
        description="Time to answer device plugin RPCs (Allocate, GetPreferredAllocation, ...).",
        unit="s",
    )
    b.add(
        ts("RPC errors"),
        [
            (
                f'sum by (rpc, code) (rate(snnrm_device_plugin_rpcs_total{{{SEL}, code!="OK"}}[{RATE}])) or on (rpc) '
                f"sum by (rpc) (rate(snnrm_device_plugin_rpcs_total{{{SEL}}}[{RATE}])) * 0",
                "{{rpc}} {{code}}",
            )
        ],
        description="Device plugin RPCs answered with a non-OK gRPC status (0 for an RPC served without error, so "
        "no errors and no data look different).",
        unit="reqps",
    )
    b.add(
        ts("ListAndWatch messages"),
        [(f"sum by (resource) (rate(snnrm_list_and_watch_messages_total{{{SEL}}}[{RATE}]))", "{{resource}}")],
        description="Device lists sent to the kubelet (one per health or capacity change).",
        unit="short",
    )
    b.add(
        ts("Registered with the kubelet", lo=0, hi=1),
        [(f"snnrm_device_plugin_registered{{{SEL}}}", "{{node}} {{resource}}")],
        description="1 while the resource's plugin is registered (SnnrmDevicePluginNotRegistered alerts on 0).",
        unit="bool",
    )
    b.row("HTTP")
    b.add(
        ts("HTTP requests by route and code"),
        [
            (
                f"sum by (route, code) (rate(snnrm_http_requests_total{{{SEL}}}[{RATE}]))",
                "{{route}} {{code}}",
            )
        ],
        description="Requests the daemon's HTTP server answered, by route template and status: probes, scrapes, "
        "the status page and API, fault injection, the Alertmanager hook. A rise of 4xx is a client sending bad "
        "input (each is refused and changes nothing); any 500 is a bug (its traceback is in the log).",
        unit="reqps",
    )
    b.add(
        ts("HTTP latency (p99)"),
        [
            (
                f"histogram_quantile(0.99, sum by (route, le) "
                f"(rate(snnrm_http_request_duration_seconds_bucket{{{SEL}}}[{RATE}])))",
                "{{route}}",
            )
        ],
        description="Time to answer, by route template (a /metrics scrape grows with cores x granularity).",
        unit="s",
    )
    b.row("Scrape and telemetry")
    b.add(
        ts("Scrape duration"),
        [
            (
                f'scrape_duration_seconds{{job="snnrm"}} * on (instance) group_left (node) '
                f"max by (instance, node) (snnrm_build_info{{{SEL}}})",
                "{{node}}",
            )
        ],
        description="How long Prometheus takes to scrape /metrics (target: < 100 ms at 4,096 cores).",
        unit="s",
    )
    b.add(
        ts("Series per scrape"),
        [
            (
                f'scrape_samples_scraped{{job="snnrm"}} * on (instance) group_left (node) '
                f"max by (instance, node) (snnrm_build_info{{{SEL}}})",
                "{{node}}",
            )
        ],
        description="Samples in one scrape: grows with cores x --metrics-granularity.",
        unit="short",
    )
    b.add(
        ts("Telemetry frames and errors"),
        [
            (f"sum by (node) (rate(snnrm_telemetry_frames_total{{{SEL}}}[{RATE}]))", "{{node}} frames"),
            (f"sum by (node) (rate(snnrm_telemetry_read_errors_total{{{SEL}}}[{RATE}]))", "{{node}} read errors"),
            (
                f"sum by (node) (rate(snnrm_telemetry_rejected_frames_total{{{SEL}}}[{RATE}]))",
                "{{node}} rejected frames",
            ),
        ],
        description="Frames folded in per second, and backend reads that failed or were rejected whole.",
        unit="ops",
    )
    b.add(
        ts("Rejected core samples"),
        [(f"sum by (node) (rate(snnrm_telemetry_rejected_samples_total{{{SEL}}}[{RATE}]))", "{{node}}")],
        description="Core samples rejected as NaN, negative, stale or impossible (never propagated).",
        unit="ops",
    )
    b.add(
        ts("Last frame age"),
        [(f"snnrm_telemetry_last_frame_age_seconds{{{SEL}}}", "{{node}}")],
        description="Seconds since the last telemetry frame (SnnrmTelemetryStale alerts above 10 s).",
        unit="s",
    )
    b.add(
        ts("Up"),
        [('up{job="snnrm"}', "{{instance}}")],
        description="Prometheus' view of each snnrm target (SnnrmDaemonDown alerts on 0).",
        unit="bool",
    )
    b.row("Autoscaling hooks")
    b.add(
        ts("Alertmanager notifications"),
        [(f"sum by (result) (increase(snnrm_hook_notifications_total{{{SEL}}}[{RATE}]))", "{{result}}")],
        description="Notifications received on /hooks/alertmanager by result (ok, retry, unauthorized, "
        "bad-request, too-large, ...).",
        unit="short",
    )
    b.add(
        ts("Hook actions"),
        [(f"sum by (hook, outcome) (increase(snnrm_hook_actions_total{{{SEL}}}[{RATE}]))", "{{hook}} {{outcome}}")],
        description="What each configured hook did (applied, undone, duplicate, cooldown, at-bound, failed, retry).",
        unit="short",
    )
    return b


BOARDS = (cluster_overview, node_chip, split_learning, daemon_health)


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    out = {}
    for make in BOARDS:
        board = make().build()
        out[f"{board['uid']}.json"] = json.dumps(board, indent=2, sort_keys=True) + "\n"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if dashboards/json differs from the code")
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory [default: {OUT}]")
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        out: Path = args.out
        stale = [n for n, text in rendered.items() if not (out / n).is_file() or (out / n).read_text() != text]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in rendered)
        for name in stale:
            print(f"stale: {args.out / name} (run python dashboards/generate.py)", file=sys.stderr)
        for name in extra:
            print(f"not generated by this code: {args.out / name}", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
    print(f"wrote {len(rendered)} dashboards to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
