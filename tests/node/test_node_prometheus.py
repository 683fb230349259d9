"""A real Prometheus scrapes the chart's DaemonSet pod on the real node, as the chart's ServiceMonitor would (the
endpoint it selects, the pod's ``http`` port, translated to a static target), with the shipped alert and
recording rules loaded: the node's numbers arrive and agree with what the kubelet advertises."""

from __future__ import annotations

import asyncio
from pathlib import Path

from snnrm.testing.promstack import Prometheus, PromSeries, eventually
from snnrm.testing.real_node import NEURON_CORE, Node, wait_for
from snnrm.testing.tools import require_tool

RULES = Path(__file__).resolve().parents[2] / "rules" / "snnrm.rules.yaml"


def test_prometheus_scrapes_the_daemon_pod_and_its_numbers_agree_with_the_node(node: Node, tmp_path: Path) -> None:
    binary = require_tool("SNNRM_PROMETHEUS", "prometheus", "build-observability-tools.sh")
    pod = node.daemon_pod()
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "http")
    target = f"{pod['status']['podIP']}:{port}"
    allocatable = int(wait_for("allocatable neuron cores", lambda: node.allocatable().get(NEURON_CORE)))

    async def scrape() -> None:
        async with Prometheus(binary, tmp_path / "prom", targets=[target], rule_files=[RULES]) as prom:

            async def up() -> bool:
                return any(t["health"] == "up" for t in await prom.targets_up())

            await eventually(up, within=30, what="the daemon pod's target up")

            async def counts() -> list[PromSeries] | None:
                return await prom.query('snnrm_neuron_cores{state="allocatable"}') or None

            result: list[PromSeries] | None = await eventually(
                counts, within=30, what="snnrm_neuron_cores from the node"
            )
            assert result is not None
            assert float(result[0]["value"][1]) == allocatable
            # Per-core telemetry of the node's chips arrives at the chart's default granularity.
            fill = await prom.query("count(snnrm_core_event_queue_fill_ratio)")
            assert fill
            assert float(fill[0]["value"][1]) > 0
            # The shipped rules load and evaluate against the node's series.
            rules = await prom._json("GET", "/api/v1/rules")
            groups = rules["data"]["groups"]
            assert groups
            assert all(r.get("health") != "err" for g in groups for r in g["rules"]), groups

    asyncio.run(scrape())
