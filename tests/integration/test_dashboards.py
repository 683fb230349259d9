"""The Grafana dashboards: generated from code (the committed JSON is never stale), follow the conventions, and every
panel query returns data from a real Prometheus that scraped a running ``snnrm run --backend sim``.

The live test runs the CLI as a subprocess with placement on (a daemon-only install: the in-memory apiserver over
HTTP, no controller) against the kubelet stand-in and a fake PodResources server. Two stage pods of a split-learning
job are bound to the node and admitted, a fault is injected, one Alertmanager notification goes to the hooks
endpoint, and once Prometheus scrapes (every second, rules/snnrm.rules.yaml loaded) a core under a stage fails, so
the node's reallocator live-remaps it: every family the boards read exists. Then every target of every panel,
every variable and every annotation is queried with the variables set to "All". A panel whose description says
PENDING (its metric is not exported yet) must be empty, and says "unmark it" when it has data; any other panel,
variable or annotation must have data. The report lists them all.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from snnrm.core.devices import EVENT_THROUGHPUT, NEURON_CORE
from snnrm.core.jobs import LIVE_REMAP
from snnrm.kube.api import NODES, PODS
from snnrm.kubelet.standin import KubeletStandIn
from snnrm.testing.fake_apiserver import FakeApiServer
from snnrm.testing.fake_cluster import stage_pod
from snnrm.testing.fake_podresources import FakePodResourcesLister
from snnrm.testing.promstack import Prometheus, eventually, free_port
from snnrm.testing.tools import REPO, require_tool

DASHBOARDS = REPO / "dashboards"
BOARDS = {p.stem: json.loads(p.read_text()) for p in sorted((DASHBOARDS / "json").glob("*.json"))}
TOKEN = "dashboards-test"
VARS = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
RULES = REPO / "rules" / "snnrm.rules.yaml"
NODE = "dash-node"
JOB = "dvs-gesture"
RAW_FAMILIES = re.compile(r"(?<![\w:])snnrm_(core|link)_\w+")
"""Per-core and per-link families: a query reading them costs a series per core (or link) of every node selected."""


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("snnrm_dashboards_generate", DASHBOARDS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def test_committed_json_is_what_the_code_generates() -> None:
    """`python dashboards/generate.py --check`: fails when someone edited the code or the JSON alone."""
    r = subprocess.run([sys.executable, str(DASHBOARDS / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, f"dashboards/json is stale; run `python dashboards/generate.py`\n{r.stderr}"


def test_dashboards_follow_the_conventions() -> None:
    """${datasource} everywhere, the variables exist and are used, units are set, uids are stable file names."""
    assert set(BOARDS) == {"snnrm-cluster-overview", "snnrm-node-chip", "snnrm-split-learning", "snnrm-daemon"}
    for uid, board in BOARDS.items():
        assert board["uid"] == uid
        assert 8 <= len(uid) <= 40
        assert board["id"] is None
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        expected = {"datasource", "node"} if uid == "snnrm-daemon" else {"datasource", "node", "chip", "job"}
        assert set(variables) == expected, uid
        for name, v in variables.items():
            if name != "datasource":
                assert v["multi"] is True, (uid, name)
        for name, v in variables.items():
            if name != "datasource":
                assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (uid, name)
        for ann in board.get("annotations", {}).get("list", []):
            assert ann["datasource"]["uid"] == "${datasource}", (uid, ann["name"])
        ids = [p["id"] for p in board["panels"]] + [q["id"] for p in board["panels"] for q in p.get("panels", [])]
        assert len(ids) == len(set(ids)), uid
        for panel in _panels(board):
            where = f"{uid}: {panel['title']}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
            assert panel["targets"], where
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == "${datasource}", where
                used = {a or b for a, b in VARS.findall(t["expr"])} - {"__rate_interval", "__interval", "__range"}
                assert used <= set(variables), f"{where}: undefined variables {used - set(variables)}"


def _exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(board) for t in p["targets"]] + [
        a["expr"] for a in board.get("annotations", {}).get("list", [])
    ]


def test_node_defaults_to_one_node_wherever_a_query_reads_cores_or_links() -> None:
    """Grafana starts a variable that offers "All" on "All": at 100 nodes that is every core of the fleet in every
    query (51,200 series, 17.7 MB per 4-minute query, measured before this rule). So the node variable offers no
    "All" (Grafana starts on the first node) except on the fleet boards, whose queries read only per-chip series and
    the recording rules."""
    gen = _generator()
    assert set(gen.FLEET_BOARDS) <= set(BOARDS)
    for uid, board in BOARDS.items():
        node = next(v for v in board["templating"]["list"] if v["name"] == "node")
        if uid in gen.FLEET_BOARDS:
            assert node["includeAll"] is True, uid
            heavy = [e for e in _exprs(board) if RAW_FAMILIES.search(e)]
            assert heavy == [], f"{uid} starts on All nodes but reads per-core/per-link series: {heavy}"
        else:
            assert node["includeAll"] is False, f"{uid}: the node variable would start on All"
            assert "allValue" not in node, uid
            assert not node.get("current"), f"{uid}: a fixed current node would not exist on another cluster"


def test_per_chip_panels_group_by_node_and_chip() -> None:
    """Two nodes' chip 0 are two series: nothing aggregates by chip without node, and every legend naming the chip
    names the node too."""
    for uid, board in BOARDS.items():
        for panel in _panels(board):
            for t in panel["targets"]:
                for by in re.findall(r"by \(([^)]*)\)", t["expr"]):
                    labels = {x.strip() for x in by.split(",")}
                    assert "chip" not in labels or "node" in labels, f"{uid}: {panel['title']}: by ({by})"
                if "{{chip}}" in t["legendFormat"]:
                    assert "{{node}}" in t["legendFormat"], f"{uid}: {panel['title']}: {t['legendFormat']}"


def test_recorded_series_the_boards_read_are_recorded_by_the_shipped_rules() -> None:
    """A dashboard reading a recording rule that the rules file does not define would be empty everywhere."""
    doc = yaml.safe_load(RULES.read_text())
    records = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    used = {m for board in BOARDS.values() for e in _exprs(board) for m in re.findall(r"\b\w+:\w+:\w+\b", e)}
    assert used, "the boards read no recording rule"
    assert used <= records, f"not recorded by {RULES.name}: {sorted(used - records)}"
    heavy = {
        "node_chip:snnrm_core_events_processed:rate2m",
        "node_chip:snnrm_core_event_queue_depth:sum",
        "node_chip_inter_chip:snnrm_link_utilization_ratio:max",
    }
    assert heavy <= used


# -- the live test ----------------------------------------------------------------------------------------------


@dataclass
class Live:
    prom: Prometheus
    base: str
    log: Path


def _substitute(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    return VARS.sub(".*", expr)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    prom_bin = require_tool("SNNRM_PROMETHEUS", "prometheus", "build-observability-tools.sh prometheus")
    tmp = tmp_path_factory.mktemp("dashboards")
    short = Path(tempfile.mkdtemp(prefix="snnrm-dash-", dir="/tmp"))  # unix socket paths must stay short
    token = tmp / "token"
    token.write_text(TOKEN)
    config = tmp / "snnrm.yaml"

    # The hook's outgoing webhook lands here, so the notification succeeds and the hook metrics have data.
    async def received(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    receiver = web.Application()
    receiver.router.add_post("/", received)
    receiver_runner = web.AppRunner(receiver)
    await receiver_runner.setup()
    receiver_port = free_port()
    await web.TCPSite(receiver_runner, "127.0.0.1", receiver_port).start()
    hooks = {
        "token_file": str(token),
        "rules": [
            {
                "name": "notify",
                "match": ['alertname="SnnrmCoresUnhealthy"'],
                "action": "webhook",
                "url": f"http://127.0.0.1:{receiver_port}/",
            }
        ],
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp / "snnrm.log"
    async with (
        KubeletStandIn(short / "dp") as kubelet,
        FakePodResourcesLister(short / "pr" / "kubelet.sock") as pods,
        FakeApiServer() as apiserver,
    ):
        # A daemon-only install: the node's placement agent reads the stage pods bound to it from the apiserver;
        # no controller runs. cooldown 0: the stage moved below may already have moved once before.
        placement = {
            "enabled": True,
            "node_name": NODE,
            "kubeconfig": str(apiserver.kubeconfig(tmp / "kubeconfig")),
            "cooldown": 0.0,
            "publish_min_interval": 0.5,
        }
        config.write_text(yaml.safe_dump({"hooks": hooks, "placement": placement}))
        apiserver.api.put(NODES, {"metadata": {"name": NODE}})
        for i, n in enumerate((4, 2)):
            apiserver.api.put(
                PODS,
                stage_pod(
                    JOB,
                    i,
                    2,
                    n,
                    keps=200.0,
                    node=NODE,
                    namespace="snn",
                    name=f"{JOB}-stage{i}",
                    annotations={LIVE_REMAP: "true"},
                ),
            )
        argv = [
            sys.executable,
            "-m",
            "snnrm",
            "run",
            "--config",
            str(config),
            "--backend",
            "sim",
            "--kubelet-dir",
            str(short / "dp"),
            "--http",
            f"127.0.0.1:{port}",
            "--sim-chips",
            "2",
            "--sim-cores",
            "16",
            "--state-dir",
            str(tmp / "state"),
            "--cdi-dir",
            str(tmp / "cdi"),
            "--sample-period",
            "0.1",
            "--metrics-granularity",
            "core",
            "--pod-resources-socket",
            str(short / "pr" / "kubelet.sock"),
        ]
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            await kubelet.wait_capacity(NEURON_CORE, 32, within=60)
            for i, n in enumerate((4, 2)):
                pod = f"{JOB}-stage{i}"
                answer = await kubelet.admit(pod, "snn", {NEURON_CORE: n, EVENT_THROUGHPUT: 1})
                pods.assign("snn", pod, "snn", NEURON_CORE, answer[NEURON_CORE].envs["SNNRM_CORES"].split(","))
            async with aiohttp.ClientSession() as http:
                async with http.post(base + "/sim/faults", json={"kind": "core-failure", "chip": 1, "core": 3}) as r:
                    assert r.status == 201, await r.text()
                note = {
                    "version": "4",
                    "groupKey": "{}:{}",
                    "status": "firing",
                    "receiver": "snnrm",
                    "groupLabels": {},
                    "commonLabels": {},
                    "commonAnnotations": {},
                    "externalURL": "",
                    "truncatedAlerts": 0,
                    "alerts": [
                        {
                            "status": "firing",
                            "labels": {"alertname": "SnnrmCoresUnhealthy", "snn_job": "dvs"},
                            "annotations": {},
                            "startsAt": "2026-01-01T00:00:00Z",
                            "endsAt": "",
                            "fingerprint": "f1",
                        }
                    ],
                }
                headers = {"Authorization": f"Bearer {TOKEN}"}
                async with http.post(base + "/hooks/alertmanager", json=note, headers=headers) as r:
                    assert r.status == 200, await r.text()
            prom = Prometheus(prom_bin, tmp / "prom", targets=[f"127.0.0.1:{port}"], rule_files=[RULES])
            async with prom:
                await eventually(lambda: prom.query('up{job="snnrm"} == 1'), within=30, what="daemon scraped")
                # rate()/increase() need two samples in the window, quantile/topk a full set; give it a few scrapes.
                await eventually(
                    lambda: prom.query("rate(snnrm_telemetry_frames_total[1m]) > 0"), within=30, what="frame rate"
                )
                await _more_scrapes(prom, 5, "five more scrapes before the fault")
                # Now a core under stage 1 fails: its node live-remaps it while Prometheus watches (the
                # reallocation and health-transition annotations need the counters to move in front of it).
                async with aiohttp.ClientSession() as http:
                    before = await _stage(http, base, 1)
                    chip, core = map(int, re.findall(r"\d+", before["cores"][0]))
                    fault = {"kind": "core-failure", "chip": chip, "core": core}
                    async with http.post(base + "/sim/faults", json=fault) as r:
                        assert r.status == 201, await r.text()

                    async def moved() -> bool:
                        return int((await _stage(http, base, 1))["generation"]) > int(before["generation"])

                    await eventually(moved, within=30, what="stage 1 live-remapped off its failed core")
                await eventually(lambda: prom.query("snnrm_stage_spike_latency_seconds"), within=30, what="latency")
                await _more_scrapes(prom, 3, "three scrapes after the remap")
                yield Live(prom, base, log)
        finally:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            await receiver_runner.cleanup()
    shutil.rmtree(short, ignore_errors=True)


async def _scrapes(prom: Prometheus) -> int:
    """How many scrapes of the daemon Prometheus has stored (a window longer than the test: it never slides)."""
    result = await prom.query('count_over_time(up{job="snnrm"}[10m])')
    return int(float(result[0]["value"][1])) if result else 0


async def _more_scrapes(prom: Prometheus, n: int, what: str) -> None:
    """Wait until Prometheus has stored ``n`` more scrapes: counted, not assumed from the scrape interval (a busy
    machine scrapes late)."""
    target = await _scrapes(prom) + n

    async def enough() -> bool:
        return await _scrapes(prom) >= target

    await eventually(enough, within=60, what=what)


async def _stage(http: aiohttp.ClientSession, base: str, index: int) -> dict[str, Any]:
    """Stage ``index`` of the job as the daemon's ``GET /api/v1/stages`` shows it (waits for the job to appear)."""
    deadline = time.monotonic() + 30
    while True:
        async with http.get(base + "/api/v1/stages") as r:
            jobs = (await r.json())["jobs"]
        stages = {s["stage"]: s for j in jobs if j["job"] == JOB for s in j["stages"]}
        if index in stages:
            stage: dict[str, Any] = stages[index]
            return stage
        assert time.monotonic() < deadline, f"stage {index} of {JOB} never showed on the node: {jobs}"
        await asyncio.sleep(0.2)


async def _has_data(prom: Prometheus, expr: str) -> tuple[bool, str]:
    end = time.time()
    try:
        result = await prom.query_range(_substitute(expr), start=end - 30, end=end, step=2)
    except RuntimeError as e:
        return False, f"error: {e}"
    points = sum(len(s.get("values", [])) for s in result)
    return points > 0, f"{len(result)} series, {points} points"


@pytest.mark.asyncio(loop_scope="module")
async def test_every_panel_query_returns_data_from_a_real_prometheus(live: Live) -> None:
    gen = _generator()
    rows: list[tuple[str, str, str, str]] = []
    failures = []
    for uid, board in BOARDS.items():
        for panel in _panels(board):
            pending = "PENDING:" in panel.get("description", "")
            results = [await _has_data(live.prom, t["expr"]) for t in panel["targets"]]
            ok = all(r[0] for r in results)
            detail = "; ".join(d for _, d in results)
            status = ("PENDING BUT HAS DATA: unmark it" if ok else "pending") if pending else ("ok" if ok else "EMPTY")
            rows.append((uid, "panel", panel["title"], f"{status} ({detail})"))
            if ok == pending:
                failures.append(f"{uid}: panel {panel['title']!r}: {status} ({detail})")
        for ann in board.get("annotations", {}).get("list", []):
            ok, detail = await _has_data(live.prom, ann["expr"])
            pending = bool(gen.pending_in(ann["expr"]))
            label = f"{'ok' if ok else 'NO EVENTS'}{' (pending)' if pending else ''} ({detail})"
            rows.append((uid, "annotation", ann["name"], label))
            if ok == pending or detail.startswith("error"):
                failures.append(f"{uid}: annotation {ann['name']!r}: {label}")
        for var in board["templating"]["list"]:
            if var["type"] != "query":
                continue
            m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", var["query"]["query"])
            assert m is not None, var["query"]
            values = await live.prom.label_values(m.group(2), _substitute(m.group(1)) if m.group(1) else None)
            pending = bool(gen.pending_in(var["query"]["query"]))
            rows.append((uid, "variable", var["name"], f"{len(values)} values{' (pending)' if pending else ''}"))
            if bool(values) == pending:
                failures.append(f"{uid}: variable {var['name']}: {len(values)} values, pending={pending}")
    report = "\n".join(f"{u:24} {k:10} {t:58} {s}" for u, k, t, s in rows)
    print("\n" + report)
    assert not failures, "empty or failing dashboard queries:\n" + "\n".join(failures) + "\n\nfull report:\n" + report


@pytest.mark.asyncio(loop_scope="module")
async def test_every_alert_rule_expression_parses_on_the_live_data(live: Live) -> None:
    """The rule expressions run against the daemon's real series (whether or not they fire)."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            await live.prom.query(rule["expr"])  # raises on a PromQL error
    rules_state = await live.prom._json("GET", "/api/v1/rules")
    health = {r["name"]: r["health"] for g in rules_state["data"]["groups"] for r in g["rules"]}
    assert set(health.values()) <= {"ok", "unknown"}, health
