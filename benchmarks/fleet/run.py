"""``python -m benchmarks fleet``: the placement tier at fleet size against the real control plane.

Real etcd, kube-apiserver, kube-scheduler (its own profile, our extender configured) and ``snnrm controller``
(the e2e rig's code: tests/e2e/e2e_controlplane.py and e2e_placement.py), kwok making the Nodes Ready and the
bound pods Running, and N node agents publishing their summaries through the real NodeAgent code at its real
cadence from simulated telemetry (:mod:`benchmarks.fleet.agents`, one process). Then four-stage split jobs
(the job contract: gated stage pods with ``snnrm.io/job``/``stage`` labels and rate annotations) arrive as a
Poisson stream while 5 % of the nodes lose a chip.

Measured per size: job creation -> every stage bound (p50/p99, from a pod watch); the controller's CPU and RSS
(/proc); apiserver requests per second by the controller and by the node agents, split into reads, writes and
watches (the apiserver's audit log, which names the user: each side has its own client certificate); etcd's
database size (its /metrics) before the nodes, after the summaries and after the jobs; the extender's latency as
the scheduler sees it (``scheduler_scheduling_algorithm_duration_seconds``: the filter and prioritize calls to
the extender plus the in-tree plugins; kube-scheduler has no extender-only metric). ``uptime`` load is printed
alongside: the machine is shared.

``SNNRM_FLEET_SIZES`` (default ``1000:150,5000:500``, nodes:jobs) picks the sizes.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fleet.agents import TOPOLOGY
from benchmarks.verdict import verdict
from snnrm.core.jobs import JOB, STAGE
from snnrm.core.summary import PublishPolicy
from snnrm.kube.api import NODES, PODS, KubeError
from snnrm.kube.client import KubeAsyncApi
from snnrm.testing.fake_cluster import stage_pod
from snnrm.testing.tools import REPO, built_tool

# The e2e rig's control plane, controller and scheduler start-up, reused as is (tests/e2e is not a package).
sys.path.insert(0, str(REPO / "tests" / "e2e"))
from e2e_controlplane import ControlPlane, issue_cert, write_kubeconfig
from e2e_placement import (
    NEURON_CORE,
    SCHEDULER,
    Proc,
    spawn,
    start_controller,
    start_scheduler,
)

HERE = Path(__file__).resolve().parent
TARGET_P99 = {1000: 2.0, 5000: 5.0}
"""Issue targets: p99 job -> every stage bound."""
TARGET_RSS_MB = 500.0
TARGET_WRITES = 100.0
"""Node-agent writes/s in steady state at 5,000 nodes (scaled linearly for other sizes)."""
JOB_RATE = 2.0
"""Poisson arrivals, jobs per second."""
STEADY_WINDOW = 60.0
"""Seconds of steady state (all summaries published, no jobs) over which request rates are measured."""
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [snnrm-controller, snnrm-node-agents]
- level: None
"""
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else math.nan


def client_cert(pki: Path, name: str) -> None:
    """A client certificate for ``name`` in system:masters, signed by the control plane's CA."""
    issue_cert(pki, name, f"/O=system:masters/CN={name}", "extendedKeyUsage=clientAuth\n")


def user_kubeconfig(cp: ControlPlane, name: str) -> Path:
    client_cert(cp.certs, name)
    path = cp.workdir / f"{name}.kubeconfig"
    write_kubeconfig(path, cp.server, cp.certs)
    cfg = json.loads(path.read_text())
    cfg["users"][0]["user"] = {
        "client-certificate": str(cp.certs / f"{name}.crt"),
        "client-key": str(cp.certs / f"{name}.key"),
    }
    path.write_text(json.dumps(cfg))
    return Path(path)


# -- measurements ----------------------------------------------------------------------------------------------


def proc_cpu_rss(pid: int) -> tuple[float, float, float]:
    """(CPU seconds, RSS MB, peak RSS MB) of a process from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss = int(status["VmRSS"].split()[0]) / 1024
    hwm = int(status["VmHWM"].split()[0]) / 1024
    return cpu, rss, hwm


def prom(url: str, *, context: ssl.SSLContext | None = None) -> dict[str, float]:
    """A Prometheus text page as {series: value} (labels kept verbatim)."""
    with urllib.request.urlopen(url, context=context, timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
    return out


def histogram_quantile(series: dict[str, float], name: str, q: float, base: dict[str, float] | None = None) -> float:
    """Prometheus' histogram_quantile over ``name``'s buckets (summed over labels), minus ``base``'s counts."""
    buckets: dict[float, float] = {}
    for key, v in series.items():
        if key.startswith(name + "_bucket{"):
            m = re.search(r'le="([^"]+)"', key)
            if m:
                le = float(m.group(1))
                buckets[le] = buckets.get(le, 0.0) + v - (base or {}).get(key, 0.0)
    if not buckets:
        return math.nan
    les = sorted(buckets)
    total = buckets[les[-1]]
    if total <= 0:
        return math.nan
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le in les:
        c = buckets[le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return les[-2] if len(les) > 1 else math.nan


@dataclass
class Audit:
    """Requests by user and kind from the apiserver's audit log (one line per request; a watch counts once)."""

    path: Path
    offset: int = 0
    entries: list[tuple[float, str, str]] = field(default_factory=list)
    """(received unix time, user, reads|writes|watches)."""

    def read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            e = json.loads(raw)
            verb, stage = e.get("verb", ""), e.get("stage", "")
            if (verb == "watch") != (stage == "ResponseStarted"):
                continue  # a watch at its start, everything else at its end
            kind = "watches" if verb == "watch" else "writes" if verb in WRITE_VERBS else "reads"
            ts = e.get("requestReceivedTimestamp", "")
            t = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])
            self.entries.append((t, e.get("user", {}).get("username", ""), kind))

    def count(self, user: str, kind: str) -> int:
        """Requests of ``kind`` by ``user`` since the start."""
        self.read()
        return sum(1 for _, u, k in self.entries if u == user and k == kind)

    def rates(self, user: str, t0: float, t1: float) -> dict[str, float]:
        self.read()
        out = {"reads": 0.0, "writes": 0.0, "watches": 0.0}
        for t, u, kind in self.entries:
            if u == user and t0 <= t < t1:
                out[kind] += 1
        return {k: v / max(t1 - t0, 1e-9) for k, v in out.items()}


# -- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Size:
    nodes: int
    jobs: int
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


async def create_nodes(api: KubeAsyncApi, names: list[str]) -> None:
    cores = str(TOPOLOGY.n_cores)
    res = {"cpu": "16", "memory": "32Gi", "pods": "110", NEURON_CORE: cores}
    sem = asyncio.Semaphore(32)

    async def one(name: str) -> None:
        async with sem:
            meta = {
                "name": name,
                "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
                "annotations": {"kwok.x-k8s.io/node": "fake"},
            }
            with contextlib.suppress(KubeError):
                await api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": meta})
            await api.merge_patch(NODES, name, {"status": {"capacity": res, "allocatable": res}}, subresource="status")
            # The apiserver taints a new Node not-ready; the node-lifecycle controller (not run here) would lift it.
            await api.merge_patch(NODES, name, {"spec": {"taints": None}})

    await asyncio.gather(*(one(n) for n in names))


@dataclass
class Binds:
    """When each job was created and when each of its stages was first seen bound (one pod watch)."""

    created: dict[str, float] = field(default_factory=dict)
    bound: dict[str, dict[int, float]] = field(default_factory=dict)
    stages: int = 4

    def job_latencies(self) -> list[float]:
        return [
            max(b.values()) - self.created[j]
            for j, b in self.bound.items()
            if len(b) == self.stages and j in self.created
        ]

    async def watch(self, api: KubeAsyncApi) -> None:
        rv = ""
        while True:
            try:
                if not rv:
                    _, rv = await api.list(PODS, namespace="default", label_selector=JOB)
                async for kind, pod in api.watch(PODS, namespace="default", resource_version=rv, label_selector=JOB):
                    now = time.monotonic()
                    rv = str(pod.get("metadata", {}).get("resourceVersion") or rv)
                    if kind in ("ADDED", "MODIFIED") and pod.get("spec", {}).get("nodeName"):
                        labels = pod["metadata"].get("labels", {})
                        self.bound.setdefault(labels[JOB], {}).setdefault(int(labels[STAGE]), now)
            except KubeError:
                rv = ""
                await asyncio.sleep(0.2)


async def submit_jobs(api: KubeAsyncApi, binds: Binds, n: int, rng: random.Random) -> None:
    """``n`` four-stage jobs arriving as a Poisson stream of :data:`JOB_RATE` per second."""

    async def one(i: int) -> None:
        job = f"job-{i:04d}"
        binds.created[job] = time.monotonic()
        for s in range(binds.stages):
            pod = stage_pod(
                job,
                s,
                binds.stages,
                rng.choice((8, 12, 16, 24)),
                keps=rng.uniform(50, 400),
                gated=True,
                scheduler=SCHEDULER,
            )
            for key in ("uid", "creationTimestamp"):
                pod["metadata"].pop(key)
            await api.create(PODS, pod, namespace="default")

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(rng.expovariate(JOB_RATE))
    await asyncio.gather(*tasks)


def argv(proc: subprocess.Popen[bytes]) -> list[str]:
    """The command line ``proc`` was started with (the e2e rigs always pass a list)."""
    assert isinstance(proc.args, list), proc.args
    return [os.fsdecode(a) for a in proc.args]


async def run_size(size: Size, workdir: Path) -> None:
    n = size.nodes
    cp = ControlPlane(
        workdir,
        built_tool("SNNRM_ETCD"),
        built_tool("SNNRM_KUBE_APISERVER"),
        built_tool("SNNRM_KUBE_SCHEDULER"),
        apiserver_args=[
            f"--audit-policy-file={workdir / 'audit.yaml'}",
            f"--audit-log-path={workdir / 'audit.log'}",
            "--audit-log-mode=batch",
            "--audit-log-maxsize=0",
            "--max-requests-inflight=800",
            "--max-mutating-requests-inflight=400",
        ],
    )
    (workdir / "audit.yaml").write_text(AUDIT_POLICY)
    procs: list[Proc] = []
    agents: asyncio.subprocess.Process | None = None
    procs_tasks: list[asyncio.Task[None]] = []
    try:
        cp.start()
        for name, proc in cp.procs:  # the default scheduler only costs CPU here: our pods name our profile
            if name == "kube-scheduler":
                proc.terminate()
                proc.wait(15)
        etcd_metrics = next(a for _, p in cp.procs for a in argv(p) if a.startswith("http://127.0.0.1")) + "/metrics"
        etcd_db = "etcd_mvcc_db_total_size_in_bytes"
        db0 = prom(etcd_metrics)[etcd_db]
        kwok = spawn(
            "kwok",
            [
                str(built_tool("SNNRM_KWOK")),
                "--kubeconfig",
                str(cp.kubeconfig),
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                "--cidr=10.0.0.0/16",
                "--node-ip=10.0.0.1",
                "--node-lease-duration-seconds=0",
                f"--config={HERE / 'kwok-stages.yaml'}",
            ],
            workdir,
        )
        procs.append(kwok)
        ctl_conf = user_kubeconfig(cp, "snnrm-controller")
        agent_conf = user_kubeconfig(cp, "snnrm-node-agents")
        audit = Audit(workdir / "audit.log")
        async with await KubeAsyncApi.connect(cp.kubeconfig, request_timeout=60.0) as api:
            t = time.monotonic()
            await create_nodes(api, [f"fleet-{i:05d}" for i in range(n)])
            size.say(f"  {n} Nodes created in {time.monotonic() - t:.1f} s ({load()})")
            ctl_args = ["--kubeconfig", str(ctl_conf), "--log-format", "json"]
            controller, base = start_controller(cp, workdir, identity="fleet", extra=ctl_args)
            procs.append(controller)
            # Delegated authn/authz, so that the admin certificate may read the scheduler's /metrics.
            kc = str(cp.kubeconfig)
            auth = [f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}"]
            procs.append(start_scheduler(cp, workdir, base, extra=auth))
            sched_port = next(a.split("=")[1] for a in argv(procs[-1].proc) if a.startswith("--secure-port="))
            admin_ctx = ssl.create_default_context()
            admin_ctx.check_hostname = False
            admin_ctx.verify_mode = ssl.CERT_NONE
            admin_ctx.load_cert_chain(str(cp.certs / "admin.crt"), str(cp.certs / "admin.key"))
            sched_metrics = f"https://127.0.0.1:{sched_port}/metrics"

            stats = workdir / "agents.json"
            with (workdir / "agents.log").open("ab") as out:
                agents = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "benchmarks.fleet.agents",
                    "--kubeconfig",
                    str(agent_conf),
                    "--nodes",
                    str(n),
                    "--stats",
                    str(stats),
                    "--state",
                    str(workdir / "agent-state"),
                    "--ramp",
                    str(min(60.0, n / 50)),
                    "--fault-window",
                    str(size.jobs / JOB_RATE),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                )

            def agent_stats() -> dict[str, Any]:
                if agents is not None and agents.returncode is not None:
                    raise RuntimeError(f"node agents exited with {agents.returncode}: see {workdir / 'agents.log'}")
                with contextlib.suppress(OSError, ValueError):
                    return dict(json.loads(stats.read_text()))
                return {}

            t = time.monotonic()
            while agent_stats().get("published_nodes", 0) < n:
                if time.monotonic() - t > 600:
                    raise RuntimeError(f"only {agent_stats().get('published_nodes')} of {n} summaries in 600 s")
                controller.check()
                await asyncio.sleep(1.0)
            size.say(f"  {n} summaries published by the agents in {time.monotonic() - t:.1f} s ({load()})")
            db1 = prom(etcd_metrics)[etcd_db]

            # Steady state: every agent published, no jobs. A daemon's first summary carries one noisy reading and
            # is re-published settle_after later (and may be corrected before): start measuring after that.
            await asyncio.sleep(PublishPolicy().settle_after + 2 * PublishPolicy().load_tau)
            s0, w0 = agent_stats(), time.time()
            c0 = proc_cpu_rss(controller.proc.pid)
            await asyncio.sleep(STEADY_WINDOW)
            s1, w1 = agent_stats(), time.time()
            c1 = proc_cpu_rss(controller.proc.pid)
            steady_agents = audit.rates("snnrm-node-agents", w0, w1)
            steady_ctl = audit.rates("snnrm-controller", w0, w1)
            pubs = (s1["publications"] - s0["publications"]) / (s1["time"] - s0["time"])
            agent_cpu = (s1["cpu_s"] - s0["cpu_s"]) / (s1["wall_s"] - s0["wall_s"])
            cadence = n * (s1["wall_s"] - s0["wall_s"]) / max(s1["syncs"] - s0["syncs"], 1)

            # Jobs, and faults on 5 % of the nodes over the same span.
            binds = Binds()
            watcher = asyncio.create_task(binds.watch(api))
            procs_tasks.append(watcher)
            sched0 = prom(sched_metrics, context=admin_ctx)
            await asyncio.sleep(1.0)
            agents.send_signal(signal.SIGUSR1)  # faults start
            j0, jc0 = time.time(), proc_cpu_rss(controller.proc.pid)
            others = {name: proc.pid for name, proc in cp.procs if proc.poll() is None}
            others |= {"kube-scheduler": procs[-1].proc.pid, "kwok": kwok.proc.pid, "agents": agents.pid}
            others0 = {name: proc_cpu_rss(pid)[0] for name, pid in others.items()}
            t = time.monotonic()
            await submit_jobs(api, binds, size.jobs, random.Random(n))
            deadline = time.monotonic() + 120
            while len(binds.job_latencies()) < size.jobs and time.monotonic() < deadline:
                controller.check()
                await asyncio.sleep(0.5)
            j1, jc1 = time.time(), proc_cpu_rss(controller.proc.pid)
            others_cpu = {name: (proc_cpu_rss(pid)[0] - others0[name]) / (j1 - j0) for name, pid in others.items()}
            watcher.cancel()
            sched1 = prom(sched_metrics, context=admin_ctx)
            db2 = prom(etcd_metrics)[etcd_db]
            s2 = agent_stats()
            job_agents = audit.rates("snnrm-node-agents", j0, j1)
            job_ctl = audit.rates("snnrm-controller", j0, j1)
            lat = binds.job_latencies()

        # -- report ---------------------------------------------------------------------------------------
        done = len(lat)
        target = TARGET_P99.get(n, 5.0)
        p50, p99 = pct(lat, 50), pct(lat, 99)
        size.say(
            f"  jobs: {done}/{size.jobs} fully bound ({size.jobs / JOB_RATE:.0f} s of Poisson arrivals at "
            f"{JOB_RATE:g}/s, {s2.get('faulted', 0)} nodes lost a chip meanwhile; {load()})"
        )
        if done < size.jobs:
            size.ok = False
            size.say(f"  {size.jobs - done} jobs not fully bound within 120 s of the last arrival")
        size.say(
            f"  {n} nodes: job creation -> every stage bound p50 {p50:.2f} s, p99 {p99:.2f} s "
            f"(target < {target:g} s, ratio {p99 / target:.2f}, {verdict(p99 < target)})"
        )
        _, rss, hwm = proc_cpu_rss(controller.proc.pid)
        size.say(
            f"  {n} nodes: controller RSS {rss:.0f} MB, peak {hwm:.0f} MB (target < {TARGET_RSS_MB:g} MB, "
            f"ratio {hwm / TARGET_RSS_MB:.2f}, {verdict(hwm < TARGET_RSS_MB)}); "
            f"CPU {(c1[0] - c0[0]) / (w1 - w0):.2f} cores steady, "
            f"{(jc1[0] - jc0[0]) / (j1 - j0):.2f} cores while jobs arrive"
        )
        heartbeat = n / PublishPolicy().max_interval
        target_w = TARGET_WRITES * n / 5000
        steady_w = steady_agents["writes"]
        size.say(
            f"  {n} nodes: node-agent Node writes {pubs:.2f}/s measured over {STEADY_WINDOW:.0f} s of steady "
            f"state (apiserver: {steady_w:.2f} writes/s), + heartbeats {heartbeat:.1f}/s "
            f"(every {PublishPolicy().max_interval:g} s) = {steady_w + heartbeat:.1f}/s "
            f"(target < {target_w:g}/s at this size, ratio {(steady_w + heartbeat) / target_w:.2f}, "
            f"{verdict(steady_w + heartbeat < target_w)})"
        )
        size.say(
            f"  {n} nodes: node agents while jobs arrive: {job_agents['writes']:.1f} writes/s, "
            f"{job_agents['reads']:.2f} reads/s, {job_agents['watches']:.2f} watches opened/s "
            f"(one shared pod watch here; a fleet holds {n}: one per daemon); agents' CPU "
            f"{agent_cpu * 1000 / n:.2f} ms/s per node at steady state, each syncing every {cadence:.2f} s "
            f"(the daemon's period: 1 s; more = the simulator is CPU-starved)"
        )
        size.say(
            f"  {n} nodes: controller requests/s steady: {steady_ctl['reads']:.2f} reads, "
            f"{steady_ctl['writes']:.2f} writes, {steady_ctl['watches']:.2f} watches; while jobs arrive: "
            f"{job_ctl['reads']:.2f} reads, {job_ctl['writes']:.2f} writes, {job_ctl['watches']:.2f} "
            f"watches ({job_ctl['writes'] * (j1 - j0) / max(size.jobs, 1):.1f} writes per job); "
            f"{audit.count('snnrm-controller', 'watches')} watches opened since its start"
        )
        size.say(
            f"  {n} nodes: etcd db {db0 / 1e6:.1f} MB empty, {db1 / 1e6:.1f} MB with nodes+summaries "
            f"(+{(db1 - db0) / n / 1e3:.1f} KB/node), {db2 / 1e6:.1f} MB after the jobs"
        )
        algo = "scheduler_scheduling_algorithm_duration_seconds"
        ext50 = histogram_quantile(sched1, algo, 0.5, sched0)
        ext99 = histogram_quantile(sched1, algo, 0.99, sched0)
        attempts = sum(
            v - sched0.get(k, 0.0) for k, v in sched1.items() if k.startswith("scheduler_schedule_attempts_total")
        )
        size.say(
            f"  {n} nodes: scheduling algorithm incl. extender filter+prioritize p50 {ext50 * 1e3:.1f} ms, "
            f"p99 {ext99 * 1e3:.1f} ms over {attempts:.0f} attempts (scheduler metrics)"
        )
        size.say(
            f"  {n} nodes: CPU while jobs arrive (cores): controller {(jc1[0] - jc0[0]) / (j1 - j0):.2f}, "
            + ", ".join(f"{k} {v:.2f}" for k, v in others_cpu.items())
        )
        size.say(f"  ({load()}; 2 shared cores)")
    finally:
        for task in procs_tasks:
            task.cancel()
        if agents is not None and agents.returncode is None:
            agents.terminate()
            try:
                await asyncio.wait_for(agents.wait(), 15)
            except TimeoutError:
                agents.kill()
                await agents.wait()
        for p in reversed(procs):
            p.stop()
        cp.stop()


def sizes() -> list[Size]:
    raw = os.environ.get("SNNRM_FLEET_SIZES", "1000:150,5000:500")
    return [Size(int(a), int(b)) for a, _, b in (s.partition(":") for s in raw.split(",") if s)]


def main() -> None:
    for size in sizes():
        print(f"\n-- {size.nodes} nodes, {size.jobs} four-stage jobs ({load()})", flush=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"snnrm-fleet-{size.nodes}-"))
        t = time.monotonic()
        try:
            asyncio.run(run_size(size, workdir))
        except Exception as e:  # noqa: BLE001 - report the size as failed and go on with the others
            print(f"  {size.nodes} nodes FAILED: {e!r} (logs in {workdir})", flush=True)
            continue
        print(f"  {size.nodes} nodes took {time.monotonic() - t:.0f} s", flush=True)
        if os.environ.get("SNNRM_FLEET_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
