"""Scheduler extender over 5,000 nodes: prioritize (and filter) round trips over real HTTP, p50/p99.

The controller's index holds 5,000 node summaries (4 Loihi-2-like chips, 512 cores each, with varied free cores,
queue fill and link load) and a 4-stage job whose stages 0 and 2 already run, so scoring stage 1 exercises the
traffic term as well as headroom. A client on the same host posts ``ExtenderArgs`` with ``NodeNames`` (the
``nodeCacheCapable: true`` form the chart configures) to the aiohttp server, as kube-scheduler would. The
target is prioritize p99 < 50 ms; the ratio printed is p99 / target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import numpy as np

from benchmarks.verdict import verdict
from snnrm.core.cluster import ClusterIndex
from snnrm.core.extender import demand_of, prioritize
from snnrm.core.jobs import stage_of
from snnrm.core.summary import summarize
from snnrm.core.topology import INTER_CHIP_WEIGHT, ChipGeometry, Topology
from snnrm.http.extender import ExtenderContext, build_extender_app
from snnrm.http.server import serve
from snnrm.testing.fake_cluster import stage_pod

NODES = 5000
ROUNDS = 300
TARGET_P99_S = 0.050


def build_index(now: float) -> ClusterIndex:
    topo = Topology.grid(chips=4, geometry=ChipGeometry(cols=16, rows=8))
    rng = np.random.default_rng(0)
    index = ClusterIndex()
    for k in range(NODES):
        free = rng.random(topo.n_cores) > rng.uniform(0.0, 0.9)
        index.set_summary(
            f"node-{k:05d}",
            summarize(
                topo,
                now=now,
                free=free,
                healthy=np.ones(topo.n_cores, dtype=bool),
                queue_fill=np.full(topo.n_cores, rng.uniform(0, 0.8)),
                link_utilization=np.full(topo.n_links, rng.uniform(0, 0.8)),
                chip_headroom_keps=np.full(topo.n_chips, 1e5),
                inter_chip_weight=INTER_CHIP_WEIGHT,
            ),
        )
    for i, node in ((0, "node-00010"), (2, "node-04000")):
        ref = stage_of(stage_pod("bench", i, 4, 16, keps=800, node=node))
        assert ref is not None
        index.set_pod(ref)
    return index


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


async def run() -> None:
    now = time.time()
    t0 = time.perf_counter()
    index = build_index(now)
    print(f"index of {NODES} node summaries built in {time.perf_counter() - t0:.1f} s")
    names = index.node_names()
    pod = stage_pod("bench", 1, 4, 16, keps=300)
    demand = demand_of(pod)

    # The pure decision alone, for reference.
    pure = []
    for _ in range(ROUNDS):
        t = time.perf_counter()
        prioritize(index, demand, names, now=now)
        pure.append(time.perf_counter() - t)

    app = build_extender_app(ExtenderContext(index, clock=time.time))
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(app, "127.0.0.1", 0, on_started=started.set_result))
    port = await started
    body = json.dumps({"Pod": pod, "NodeNames": names}).encode()
    results: dict[str, list[float]] = {"prioritize": [], "filter": []}
    try:
        async with aiohttp.ClientSession() as s:
            for verb in ("prioritize", "filter"):
                url = f"http://127.0.0.1:{port}/extender/{verb}"
                for k in range(ROUNDS + 20):
                    t = time.perf_counter()
                    async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        answer = await r.read()
                        assert r.status == 200, answer[:200]
                    if k >= 20:  # warm-up rounds are not counted
                        results[verb].append(time.perf_counter() - t)
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server

    print(f"request body: {len(body) / 1024:.0f} KiB ({NODES} node names)")
    print(
        f"pure prioritize over {NODES} nodes: p50 {percentile(pure, 50) * 1e3:.2f} ms, "
        f"p99 {percentile(pure, 99) * 1e3:.2f} ms"
    )
    for verb, xs in results.items():
        p50, p99 = percentile(xs, 50), percentile(xs, 99)
        line = f"HTTP {verb} over {NODES} nodes ({ROUNDS} rounds): p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms"
        if verb == "prioritize":
            line += (
                f"  (target p99 < {TARGET_P99_S * 1e3:.0f} ms: ratio {p99 / TARGET_P99_S:.2f}, "
                f"{verdict(p99 < TARGET_P99_S)})"
            )
        print(line)


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
